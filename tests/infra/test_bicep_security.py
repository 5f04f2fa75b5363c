"""infra/ against #13's findings: Redis only through a private endpoint, the API's identity kept away
from the webhook secrets, forwarded headers trusted from the ingress only, the WAF blocking everywhere."""

from __future__ import annotations

import ipaddress
from typing import Any

from bicep_source import BicepFile, BicepProject, Expr, Resource
from infra_toolbox import INFRA_DIR
from test_bicep import KEY_VAULT_SECRETS_USER_ROLE, _app, _container, _env_values, _param_files, _props, _resolved


def _one(bicep: BicepProject, resource_type: str) -> tuple[BicepFile, Resource]:
    (found,) = bicep.resources(resource_type)
    return found


def _network(bicep: BicepProject) -> BicepFile:
    return bicep.files[INFRA_DIR / "modules" / "network.bicep"]


def _subnets(bicep: BicepProject) -> dict[str, dict[str, Any]]:
    network = _network(bicep)
    vnet = network.resources["vnet"].properties["properties"]
    return {subnet["name"]: _resolved(bicep, network, subnet["properties"]) for subnet in vnet["subnets"]}


def _subnet_output(bicep: BicepProject, owner: BicepFile, value: Any) -> str:
    """Which subnet of network.bicep a value names (through module params and outputs)."""
    source, resolved = bicep.resolve(owner, value)
    assert source.path.name == "network.bicep", f"{value} does not come from network.bicep"
    assert isinstance(resolved, Expr)
    index = resolved.text.removeprefix("vnet.properties.subnets[").removesuffix("].id")
    subnet = _network(bicep).resources["vnet"].properties["properties"]["subnets"][int(index)]
    name: str = subnet["name"]
    return name


def test_redis_refuses_public_networks_and_is_reached_by_a_private_endpoint(bicep: BicepProject) -> None:
    owner, cluster = _one(bicep, "Microsoft.Cache/redisEnterprise")
    assert cluster.properties["properties"]["publicNetworkAccess"] == "Disabled"
    _, endpoint = _one(bicep, "Microsoft.Network/privateEndpoints")
    properties = endpoint.properties["properties"]
    assert _subnet_output(bicep, owner, properties["subnet"]["id"]) == "private-endpoints"
    (connection,) = properties["privateLinkServiceConnections"]
    assert connection["properties"]["privateLinkServiceId"] == Expr("cluster.id")
    assert connection["properties"]["groupIds"] == ["redisEnterprise"]
    # The apps resolve the cluster's host name to the endpoint through the linked private zone.
    _, zone = _one(bicep, "Microsoft.Network/privateDnsZones")
    assert zone.properties["name"] == "privatelink.redis.azure.net"
    _, link = _one(bicep, "Microsoft.Network/privateDnsZones/virtualNetworkLinks")
    vnet_owner, vnet = bicep.resolve(owner, link.properties["properties"]["virtualNetwork"]["id"])
    assert (vnet_owner.path.name, vnet) == ("network.bicep", Expr("vnet.id"))
    _, group = _one(bicep, "Microsoft.Network/privateEndpoints/privateDnsZoneGroups")
    (config,) = group.properties["properties"]["privateDnsZoneConfigs"]
    assert config["properties"]["privateDnsZoneId"] == Expr("privateDns.id")


def test_the_apps_run_in_the_vnet_that_holds_the_endpoint(bicep: BicepProject) -> None:
    owner, environment = _one(bicep, "Microsoft.App/managedEnvironments")
    vnet_configuration = environment.properties["properties"]["vnetConfiguration"]
    assert _subnet_output(bicep, owner, vnet_configuration["infrastructureSubnetId"]) == "apps"
    delegations = _subnets(bicep)["apps"]["delegations"]
    assert [d["properties"]["serviceName"] for d in delegations] == ["Microsoft.App/environments"]


def test_the_api_identity_can_read_only_its_two_secrets(bicep: BicepProject) -> None:
    owner, api = _app(bicep, "api")
    api_identity = set(_resolved(bicep, owner, api.properties["identity"])["userAssignedIdentities"])
    (_, worker), (_, webhooks) = _app(bicep, "captionWorker"), _app(bicep, "webhookWorker")
    worker_identity = set(_resolved(bicep, owner, worker.properties["identity"])["userAssignedIdentities"])
    assert api_identity != worker_identity
    assert _resolved(bicep, owner, webhooks.properties["identity"]) == _resolved(
        bicep, owner, worker.properties["identity"]
    )
    api_secrets = [_resolved(bicep, owner, s) for s in _props(bicep, owner, "api")["configuration"]["secrets"]]
    assert {secret["name"] for secret in api_secrets} == {"redis-url", "api-key-hashes"}
    assert {secret["identity"].text for secret in api_secrets} == {"apiIdentityId"}
    # Key Vault roles: the API's principal only ever on single secrets, never on the vault (webhook-secrets).
    scopes = []
    for role_owner, assignment in bicep.resources("Microsoft.Authorization/roleAssignments"):
        body = assignment.properties["properties"]
        role_owner_, principal = bicep.resolve(role_owner, body["principalId"])
        if principal == Expr("apiIdentity.properties.principalId"):
            assert role_owner_.path.name == "registry.bicep"
            scopes.append((role_owner.path.name, assignment.properties["scope"].text))
    assert sorted(scopes) == [
        ("keyvault.bicep", "apiKeyHashesSecret"),
        ("redis.bicep", "redisUrlSecret"),
        ("registry.bicep", "registry"),
    ]
    keyvault = bicep.files[INFRA_DIR / "modules" / "keyvault.bicep"]
    assert keyvault.vars["secretsUserRoleId"] == KEY_VAULT_SECRETS_USER_ROLE
    assert keyvault.resources["webhookSecretsSecret"].properties["name"] == "webhook-secrets"


def test_forwarded_headers_are_trusted_from_the_ingress_subnet_only(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "api")
    trusted = _resolved(bicep, owner, _env_values(bicep, owner, _container(bicep, owner, "api"))["FORWARDED_ALLOW_IPS"])
    assert trusted != "*"
    assert trusted == _resolved(bicep, _network(bicep), _subnets(bicep)["apps"]["addressPrefix"])
    assert ipaddress.ip_network(trusted).is_private


def test_every_environment_runs_the_waf_in_prevention_mode(bicep: BicepProject) -> None:
    for params in _param_files(bicep):
        assert params.assignments["wafMode"] == "Prevention", params.path.name
