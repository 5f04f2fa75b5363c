"""infra/*.bicep without a Bicep compiler: checkov, pinned API versions, the Container Apps SDK
models, and the invariants the service depends on (GPU profile, scale from zero on the real
Celery queue, Key Vault secrets, Front Door)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from bicep_source import NO_DEFAULT, BicepFile, BicepProject, Expr, ForLoop, Param, Resource
from dockerfile_source import parse_dockerfile
from infra_toolbox import INFRA_DIR, REPO_ROOT, InfraTools, run_tool

from api.http.security import PROBE_PATHS
from shared.keys import BULK_QUEUE, CAPTION_QUEUE, WEBHOOK_QUEUE, Keys
from shared.settings import Settings

GPU_PROFILE_TYPES = {"Consumption-GPU-NC8as-T4", "Consumption-GPU-NC24-A100"}
ACR_PULL_ROLE = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
KEY_VAULT_SECRETS_USER_ROLE = "4633458b-17de-408a-b874-0445c86b69e6"

#: The SDK model of each Microsoft.App resource type we declare.
ROOT_MODELS = {
    "microsoft.app/containerapps": "ContainerApp",
    "microsoft.app/managedenvironments": "ManagedEnvironment",
}
#: Keys of a Bicep resource body that are the declaration's, not the ARM payload's.
DECLARATION_KEYS = {"name", "parent", "scope", "dependsOn"}

#: A file checkov cannot parse: it must show up as exactly one parsing error, which proves the
#: count is read at all (checkov exits 0 on files it cannot parse).
CANARY = "resource broken 'Microsoft.App/containerApps@2025-01-01' = {\n  properties: {\n    template: [\n}\n"

_TYPE_REFERENCE = re.compile(r"'([A-Za-z]+\.[A-Za-z]+/[A-Za-z/]+)@([^']*)'")


# --- checkov -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov(infra_tools: InfraTools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """checkov's report on a copy of infra/ plus the canary (one run, about 10-30 s)."""
    folder = tmp_path_factory.mktemp("checkov") / "infra"
    shutil.copytree(INFRA_DIR, folder)
    (folder / "canary-unparsable.bicep").write_text(CANARY, encoding="utf-8")
    done = run_tool(
        [
            infra_tools.checkov,
            "--directory",
            folder,
            "--framework",
            "bicep",
            "--skip-download",
            "--output",
            "json",
            "--compact",
        ],
        env={"LOG_LEVEL": "WARNING"},
    )
    report = json.loads(done.stdout)
    if isinstance(report, list):
        report = next(part for part in report if part.get("check_type") == "bicep")
    report["returncode"] = done.returncode
    return dict(report)


def test_checkov_parses_every_template(checkov: dict[str, Any]) -> None:
    summary = checkov["summary"]
    assert summary["parsing_errors"] == 1, "only the canary may fail to parse (it proves errors are counted)"
    assert summary["resource_count"] >= 30


def test_checkov_policies_pass_or_are_skipped_with_a_reason(checkov: dict[str, Any]) -> None:
    results = checkov["results"]
    failed = [(check["check_id"], check["resource"], check["file_path"]) for check in results.get("failed_checks", [])]
    assert not failed
    assert checkov["returncode"] == 0
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) > 15, f"{check['check_id']} on {check['resource']} is skipped without a reason"


# --- API versions ------------------------------------------------------------------------------


def _type_references() -> list[tuple[Path, int, str, str, str]]:
    """(file, line, type, version, previous line) of every 'Type@version' in the templates."""
    found = []
    for path in sorted(INFRA_DIR.rglob("*.bicep")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            for match in _TYPE_REFERENCE.finditer(line):
                previous = lines[number - 2].strip() if number > 1 else ""
                found.append((path, number, match[1], match[2], previous))
    return found


def test_api_versions_are_pinned_dates_and_previews_are_justified() -> None:
    references = _type_references()
    assert len(references) > 20
    for path, line, resource_type, version, previous in references:
        where = f"{path.relative_to(REPO_ROOT)}:{line} {resource_type}"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", version), f"{where}: API version {version!r} is not pinned"
        if version.endswith("-preview"):
            assert previous.startswith("// preview:"), f"{where}: a preview API version needs '// preview: why' above"


def test_each_resource_type_uses_one_api_version() -> None:
    versions: dict[str, set[str]] = {}
    for _, _, resource_type, version, _ in _type_references():
        versions.setdefault(resource_type.lower(), set()).add(version)
    mixed = {resource_type: found for resource_type, found in versions.items() if len(found) > 1}
    assert not mixed


def test_container_apps_api_version_is_covered_by_the_sdk_models(
    bicep: BicepProject, appcontainers_schema: dict[str, Any]
) -> None:
    for _, resource in bicep.resources():
        if resource.type.lower().startswith("microsoft.app/"):
            assert not resource.api_version.endswith("-preview")
            assert resource.api_version <= appcontainers_schema["api_version"]


# --- Microsoft.App properties against azure-mgmt-appcontainers ---------------------------------


def _check_value(
    bicep: BicepProject, owner: BicepFile, value: Any, expected: dict[str, Any], models: dict[str, Any], path: str
) -> list[str]:
    """Problems of one value against one SDK type description."""
    owner, value = bicep.resolve(owner, value)
    if isinstance(value, Param):
        return []  # a parameter of the top-level template: its shape is not visible here
    if isinstance(value, Expr):
        hides_object = "{" in value.text.replace("${", "")
        shaped = expected["kind"] in {"model", "list"} or (
            expected["kind"] == "dict" and expected["value"]["kind"] != "scalar"
        )
        if hides_object and shaped:
            return [f"{path}: an object inside an expression cannot be checked; write it as a literal or a var"]
        return []  # a computed scalar (or a map of them, like tags: union(...))
    check = {"model": _check_model, "list": _check_list, "dict": _check_map}.get(expected["kind"], _check_scalar)
    return check(bicep, owner, value, expected, models, path)


def _check_model(
    bicep: BicepProject, owner: BicepFile, value: Any, expected: dict[str, Any], models: dict[str, Any], path: str
) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({expected['name']})"]
    return _check_object(bicep, owner, value, expected["name"], models, path)


def _check_list(
    bicep: BicepProject, owner: BicepFile, value: Any, expected: dict[str, Any], models: dict[str, Any], path: str
) -> list[str]:
    items = [value.body] if isinstance(value, ForLoop) else value if isinstance(value, list) else None
    if items is None:
        return [f"{path}: expected an array"]
    return [
        problem
        for index, item in enumerate(items)
        for problem in _check_value(bicep, owner, item, expected["item"], models, f"{path}[{index}]")
    ]


def _check_map(
    bicep: BicepProject, owner: BicepFile, value: Any, expected: dict[str, Any], models: dict[str, Any], path: str
) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    return [
        problem
        for key, item in value.items()
        for problem in _check_value(bicep, owner, item, expected["value"], models, f"{path}.{key}")
    ]


def _check_scalar(
    bicep: BicepProject, owner: BicepFile, value: Any, expected: dict[str, Any], models: dict[str, Any], path: str
) -> list[str]:
    if isinstance(value, dict | list):
        return [f"{path}: expected a scalar"]
    allowed = {choice.lower() for choice in expected.get("values", [])}
    if expected["kind"] == "enum" and isinstance(value, str) and value.lower() not in allowed:
        return [f"{path}: {value!r} is not one of {expected['values']}"]
    return []


def _check_object(
    bicep: BicepProject, owner: BicepFile, value: dict[str, Any], model: str, models: dict[str, Any], path: str
) -> list[str]:
    fields = models[model]
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: {model} has no such property (has: {', '.join(sorted(fields))})")
        elif not fields[key]["writable"]:
            problems.append(f"{path}.{key}: read-only in {model}")
        else:
            problems.extend(_check_value(bicep, owner, item, fields[key]["type"], models, f"{path}.{key}"))
    return problems


def test_microsoft_app_properties_exist_in_the_sdk_models(
    bicep: BicepProject, appcontainers_schema: dict[str, Any]
) -> None:
    models = appcontainers_schema["models"]
    checked = 0
    problems = []
    for owner, resource in bicep.resources():
        if not resource.type.lower().startswith("microsoft.app/"):
            continue
        root = ROOT_MODELS.get(resource.type.lower())
        assert root, f"{resource.type}: add its SDK model to ROOT_MODELS"
        body = {key: item for key, item in resource.properties.items() if key not in DECLARATION_KEYS}
        problems += _check_object(bicep, owner, body, root, models, f"{owner.path.name}:{resource.symbol}")
        checked += 1
    assert checked >= 4
    assert not problems, "\n".join(problems)


def test_the_sdk_check_notices_a_misspelt_property(bicep: BicepProject, appcontainers_schema: dict[str, Any]) -> None:
    owner, resource = _app(bicep, "captionWorker")
    body = {"properties": {"template": {"scale": {"minReplica": 0}}}}
    problems = _check_object(bicep, owner, body, "ContainerApp", appcontainers_schema["models"], resource.symbol)
    assert len(problems) == 1 and "minReplica" in problems[0]


# --- invariants --------------------------------------------------------------------------------


def _app(bicep: BicepProject, symbol: str) -> tuple[BicepFile, Resource]:
    apps = {resource.symbol: (owner, resource) for owner, resource in bicep.resources("Microsoft.App/containerApps")}
    assert symbol in apps, f"no container app {symbol} (have {sorted(apps)})"
    return apps[symbol]


def _resolved(bicep: BicepProject, owner: BicepFile, value: Any) -> Any:
    return bicep.resolve(owner, value)[1]


def _props(bicep: BicepProject, owner: BicepFile, symbol: str) -> dict[str, Any]:
    properties = _resolved(bicep, owner, _app(bicep, symbol)[1].properties["properties"])
    assert isinstance(properties, dict)
    return properties


def _container(bicep: BicepProject, owner: BicepFile, symbol: str, index: int = 0) -> dict[str, Any]:
    container = _resolved(bicep, owner, _props(bicep, owner, symbol)["template"]["containers"][index])
    assert isinstance(container, dict)
    return container


def _env_values(bicep: BicepProject, owner: BicepFile, container: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for entry in container.get("env", []):
        entry = _resolved(bicep, owner, entry)
        values[entry["name"]] = entry.get("value", Expr(f"secretRef:{entry.get('secretRef')}"))
    return values


def _main_param(bicep: BicepProject, value: Any, owner: BicepFile) -> Param:
    resolved = _resolved(bicep, owner, value)
    assert isinstance(resolved, Param), f"{value} does not come from a parameter of main.bicep"
    return resolved


def _param_files(bicep: BicepProject) -> list[BicepFile]:
    assert {path.stem for path in bicep.param_files} >= {"dev", "prod"}
    return list(bicep.param_files.values())


def test_gpu_profile_is_a_parameter_of_t4_or_a100(bicep: BicepProject) -> None:
    environments = bicep.resources("Microsoft.App/managedEnvironments")
    assert len(environments) == 1
    owner, environment = environments[0]
    profiles = [_resolved(bicep, owner, item) for item in environment.properties["properties"]["workloadProfiles"]]
    by_name = {_resolved(bicep, owner, profile["name"]): profile for profile in profiles}
    assert by_name["Consumption"]["workloadProfileType"] == "Consumption"
    owner_, gpu_app = _app(bicep, "captionWorker")
    gpu_name = _resolved(bicep, owner_, gpu_app.properties["properties"]["workloadProfileName"])
    gpu_type = _main_param(bicep, by_name[gpu_name]["workloadProfileType"], owner)
    assert set(gpu_type.decorators["allowed"][0]) == GPU_PROFILE_TYPES
    assert gpu_type.default in GPU_PROFILE_TYPES
    for params in _param_files(bicep):
        assert params.assignments.get("gpuProfileType", gpu_type.default) in GPU_PROFILE_TYPES


def test_caption_worker_runs_on_the_gpu_profile_and_api_and_webhooks_do_not(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "captionWorker")
    assert _resolved(bicep, owner, _props(bicep, owner, "captionWorker")["workloadProfileName"]) == "gpu"
    for symbol in ("api", "webhookWorker"):
        assert _props(bicep, owner, symbol)["workloadProfileName"] == "Consumption"


def _consumed_queues(bicep: BicepProject, owner: BicepFile, symbol: str) -> list[str]:
    command = _container(bicep, owner, symbol, 0)["command"]
    return str(command[command.index("-Q") + 1]).split(",")


def test_gpu_container_is_first_and_consumes_the_caption_then_the_bulk_queue(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "captionWorker")
    command = _container(bicep, owner, "captionWorker", 0)["command"]
    # Interactive jobs first: the worker consumes its queues in the order -Q lists them.
    assert _consumed_queues(bicep, owner, "captionWorker") == [CAPTION_QUEUE, BULK_QUEUE]
    # The worker sizes its own threads pool from max_batch_size; a -c here would only mislead.
    assert "--concurrency" not in command
    assert _env_values(bicep, owner, _container(bicep, owner, "captionWorker"))["CAPTIONIZER_DEVICE"] == "cuda"


def test_every_queue_the_caption_workers_consume_has_a_scale_rule_from_zero(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "captionWorker")
    properties = _props(bicep, owner, "captionWorker")
    scale = properties["template"]["scale"]
    assert scale["minReplicas"] == 0
    assert _main_param(bicep, scale["maxReplicas"], owner).decorators["minValue"][0] >= 1
    env = _env_values(bicep, owner, _container(bicep, owner, "captionWorker"))
    keys = Keys(env.get("CAPTIONIZER_KEY_PREFIX", Settings.model_fields["key_prefix"].default))
    redis_rules = {
        rule["custom"]["metadata"]["listName"]: rule["custom"]
        for rule in scale["rules"]
        if rule["custom"]["type"] == "redis"
    }
    # A list with no rule is work no replica wakes for: a bulk-only load sat at zero replicas before #23.
    assert set(_consumed_queues(bicep, owner, "captionWorker")) <= set(redis_rules)
    assert {keys.caption_queue(), keys.bulk_queue()} == set(redis_rules)
    secrets = {
        _resolved(bicep, owner, secret)["name"]: _resolved(bicep, owner, secret)
        for secret in properties["configuration"]["secrets"]
    }
    for custom in redis_rules.values():
        assert custom["metadata"]["enableTLS"] == "true"
        assert custom["metadata"]["activationListLength"] == "0"
        (auth,) = custom["auth"]
        assert auth["triggerParameter"] == "password"
        assert "keyVaultUrl" in secrets[auth["secretRef"]], "KEDA's Redis password comes from Key Vault"


def test_work_in_hand_keeps_a_replica_through_the_outstanding_work_endpoint(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "captionWorker")
    scale = _props(bicep, owner, "captionWorker")["template"]["scale"]
    (rule,) = [rule for rule in scale["rules"] if rule["custom"]["type"] == "metrics-api"]
    metadata = rule["custom"]["metadata"]
    # The endpoint the API serves (api/routes/health.py), exempt from the Front Door check like the probes.
    url = metadata["url"]
    assert isinstance(url, Expr) and url.text.strip("'").endswith(".fqdn}/scaler"), url
    assert "/scaler" in PROBE_PATHS
    assert (metadata["format"], metadata["valueLocation"], metadata["activationTargetValue"]) == (
        "json", "outstanding", "0",
    )  # fmt: skip


def test_webhook_worker_consumes_the_webhook_queue(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "webhookWorker")
    command = _container(bicep, owner, "webhookWorker")["command"]
    assert command[command.index("-Q") + 1] == WEBHOOK_QUEUE
    (rule,) = _props(bicep, owner, "webhookWorker")["template"]["scale"]["rules"]
    assert rule["custom"]["metadata"]["listName"] == Keys().webhook_queue()


def test_api_is_public_with_at_least_one_replica_and_checks_front_door(bicep: BicepProject) -> None:
    owner, _ = _app(bicep, "api")
    properties = _props(bicep, owner, "api")
    ingress = properties["configuration"]["ingress"]
    assert ingress["external"] is True and ingress["allowInsecure"] is False
    exposed = parse_dockerfile(REPO_ROOT / "Dockerfile.api").final.all("EXPOSE")[0].words[0]
    assert str(ingress["targetPort"]) == exposed
    min_replicas = _main_param(bicep, properties["template"]["scale"]["minReplicas"], owner)
    assert min_replicas.decorators["minValue"][0] >= 1
    for params in _param_files(bicep):
        assert params.assignments.get("apiMinReplicas", min_replicas.default) >= 1
    container = _container(bicep, owner, "api")
    front_door_env = _env_values(bicep, owner, container)["CAPTIONIZER_FRONT_DOOR_ID"]
    front_door_owner, front_door_id = bicep.resolve(owner, front_door_env)
    assert front_door_owner.path.name == "frontdoor.bicep"
    assert front_door_id == Expr("profile.properties.frontDoorId")
    probes = {probe["type"]: probe["httpGet"]["path"] for probe in container["probes"]}
    assert probes["Liveness"] == "/healthz" and probes["Readiness"] == "/readyz"


@pytest.mark.parametrize("symbol", ["api", "captionWorker", "webhookWorker"])
def test_app_pulls_and_reads_secrets_with_the_user_assigned_identity(bicep: BicepProject, symbol: str) -> None:
    owner, app = _app(bicep, symbol)
    identity = _resolved(bicep, owner, app.properties["identity"])
    assert identity["type"] == "UserAssigned"
    properties = _props(bicep, owner, symbol)
    for registry in _resolved(bicep, owner, properties["configuration"]["registries"]):
        assert set(registry) == {"server", "identity"}, "no registry passwords"
    secrets = [_resolved(bicep, owner, secret) for secret in properties["configuration"]["secrets"]]
    for secret in secrets:
        assert set(secret) == {"name", "keyVaultUrl", "identity"}, f"{secret.get('name')}: secrets come from Key Vault"
    declared = {secret["name"] for secret in secrets}
    for container in properties["template"]["containers"]:
        container = _resolved(bicep, owner, container)
        for entry in container.get("env", []):
            entry = _resolved(bicep, owner, entry)
            assert entry.get("secretRef", next(iter(declared))) in declared, entry


def test_apps_are_created_after_their_role_assignments(bicep: BicepProject) -> None:
    main = bicep.files[INFRA_DIR / "main.bicep"]
    depends_on = {item.text for item in main.modules["apps"].properties["dependsOn"]}
    assert {"registry", "vault"} <= depends_on
    for file_name, role in (("registry.bicep", ACR_PULL_ROLE), ("keyvault.bicep", KEY_VAULT_SECRETS_USER_ROLE)):
        owner = bicep.files[INFRA_DIR / "modules" / file_name]
        assignments = [r for r in owner.resources.values() if r.type == "Microsoft.Authorization/roleAssignments"]
        # One per identity: the workers' and the API's.
        assert len(assignments) == 2
        for assignment in assignments:
            role_reference = assignment.properties["properties"]["roleDefinitionId"].text
            assert any(role == value and name in role_reference for name, value in owner.vars.items())


def test_redis_is_tls_only_unclustered_and_never_evicts(bicep: BicepProject) -> None:
    ((_, cluster),) = bicep.resources("Microsoft.Cache/redisEnterprise")
    ((_, database),) = bicep.resources("Microsoft.Cache/redisEnterprise/databases")
    assert cluster.properties["properties"]["minimumTlsVersion"] == "1.2"
    properties = database.properties["properties"]
    assert properties["clientProtocol"] == "Encrypted"
    assert properties["clusteringPolicy"] == "NoCluster"
    assert properties["evictionPolicy"] == "NoEviction"
    # KEDA's redis scaler authenticates with the access key only.
    assert properties["accessKeysAuthentication"] == "Enabled"


def test_front_door_waf_guards_the_endpoint(bicep: BicepProject) -> None:
    ((owner, policy),) = bicep.resources("Microsoft.Cdn/profiles/securityPolicies")
    parameters = policy.properties["properties"]["parameters"]
    assert parameters["type"] == "WebApplicationFirewall"
    assert parameters["wafPolicy"]["id"] == Expr("wafPolicy.id")
    (association,) = parameters["associations"]
    assert association["domains"] == [{"id": Expr("endpoint.id")}] and association["patternsToMatch"] == ["/*"]
    mode = _main_param(bicep, owner.resources["wafPolicy"].properties["properties"]["policySettings"]["mode"], owner)
    assert set(mode.decorators["allowed"][0]) == {"Detection", "Prevention"}
    prod = next(params for path, params in bicep.param_files.items() if path.stem == "prod")
    assert prod.assignments["wafMode"] == "Prevention"


# --- the templates fit together (what `bicep build` would catch) -------------------------------


def test_module_calls_pass_exactly_the_declared_params(bicep: BicepProject) -> None:
    for owner in bicep.files.values():
        for module in owner.modules.values():
            target = bicep.module_target(owner, module)
            passed = set(module.properties.get("params", {}))
            declared = set(target.params)
            required = {name for name, param in target.params.items() if param.default is NO_DEFAULT}
            assert passed <= declared, f"{module.symbol}: unknown params {sorted(passed - declared)}"
            assert required <= passed, f"{module.symbol}: missing params {sorted(required - passed)}"


def test_module_outputs_referenced_exist(bicep: BicepProject) -> None:
    for owner in bicep.files.values():
        for symbol, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", owner.text):
            assert symbol in owner.modules, f"{owner.path.name}: {symbol} is not a module"
            target = bicep.module_target(owner, owner.modules[symbol])
            assert output in target.outputs, f"{owner.path.name}: {symbol} has no output {output}"


def test_parameter_files_set_every_required_param_within_its_bounds(bicep: BicepProject) -> None:
    main = bicep.files[INFRA_DIR / "main.bicep"]
    required = {name for name, param in main.params.items() if param.default is NO_DEFAULT}
    for params in _param_files(bicep):
        assert params.using == "../main.bicep"
        assert set(params.assignments) <= set(main.params), sorted(set(params.assignments) - set(main.params))
        assert required <= set(params.assignments), sorted(required - set(params.assignments))
        for name, value in params.assignments.items():
            declared = main.params[name]
            if isinstance(value, Expr):
                continue  # readEnvironmentVariable(...) and the like
            if "allowed" in declared.decorators:
                assert value in declared.decorators["allowed"][0], f"{params.path.name}: {name}={value!r}"
            if "minValue" in declared.decorators:
                assert value >= declared.decorators["minValue"][0], f"{params.path.name}: {name}={value!r}"
            if "maxValue" in declared.decorators:
                assert value <= declared.decorators["maxValue"][0], f"{params.path.name}: {name}={value!r}"


def test_secret_params_are_secure_and_read_from_the_environment(bicep: BicepProject) -> None:
    main = bicep.files[INFRA_DIR / "main.bicep"]
    for name in ("apiKeyHashes", "webhookSecrets"):
        assert "secure" in main.params[name].decorators
        for params in _param_files(bicep):
            assert isinstance(params.assignments[name], Expr)
            assert params.assignments[name].text.startswith("readEnvironmentVariable('CAPTIONIZER_")


def test_container_app_names_fit_32_characters_for_the_longest_environment_name(bicep: BicepProject) -> None:
    main = bicep.files[INFRA_DIR / "main.bicep"]
    longest = "x" * main.params["environmentName"].decorators["maxLength"][0]
    prefix = main.vars["prefix"].text.strip("'").replace("${environmentName}", longest)
    for _, app in bicep.resources("Microsoft.App/containerApps"):
        name = app.properties["name"].text.strip("'").replace("${prefix}", prefix)
        assert re.fullmatch(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", name), f"{name!r} is not a valid container app name"
