"""docker-compose.yml alone (the local stack, no configuration) and with docker-compose.prod.yml (production),
checked by the Docker Compose v2 binary and against the settings and queues."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from infra_toolbox import REPO_ROOT, SETTING_VARIABLES, InfraTools, run_tool

from shared.keys import CAPTION_QUEUE, WEBHOOK_QUEUE, Keys
from shared.settings import Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROD_FILE = REPO_ROOT / "docker-compose.prod.yml"
#: The files of each way to run it.
LOCAL = (COMPOSE_FILE,)
PROD = (COMPOSE_FILE, PROD_FILE)

#: The secrets the production override requires (${VAR:?...}), with values the settings accept.
REQUIRED_SECRETS = {
    "REDIS_PASSWORD": "0123456789abcdef0123456789abcdef",
    "CAPTIONIZER_API_KEY_HASHES": hashlib.sha256(b"cap_test").hexdigest(),
    "CAPTIONIZER_WEBHOOK_SECRETS": "whsec_" + base64.b64encode(bytes(32)).decode(),
}

#: Services built from this repository's Dockerfiles.
OUR_SERVICES = ("api", "caption-worker", "caption-worker-gpu", "webhook-worker")


def _compose(tools: InfraTools, *args: str, files: tuple[Path, ...] = PROD, env: dict[str, str] | None = None) -> Any:
    # --project-directory pins relative paths; no .env is read from a developer's checkout.
    file_args = [arg for path in files for arg in ("--file", str(path))]
    return run_tool(
        [tools.compose, *file_args, "--project-directory", REPO_ROOT, "--env-file", "/dev/null", *args],
        env=env if env is not None else REQUIRED_SECRETS,
    )


def _resolve(tools: InfraTools, files: tuple[Path, ...], env: dict[str, str]) -> dict[str, Any]:
    """Every service, all profiles on, as compose resolves them (interpolated, anchors and files merged)."""
    done = _compose(tools, "--profile", "*", "config", "--format", "json", files=files, env=env)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = json.loads(done.stdout)["services"]
    return resolved


@pytest.fixture(scope="module")
def services(infra_tools: InfraTools) -> dict[str, Any]:
    """The production services: both files, with the required secrets."""
    return _resolve(infra_tools, PROD, REQUIRED_SECRETS)


@pytest.fixture(scope="module")
def local_services(infra_tools: InfraTools) -> dict[str, Any]:
    """`docker compose up` with nothing set: docker-compose.yml alone and an empty environment."""
    return _resolve(infra_tools, LOCAL, {})


@pytest.mark.parametrize("files", [LOCAL, PROD], ids=["local", "prod"])
@pytest.mark.parametrize("profiles", [[], ["--profile", "gpu"], ["--profile", "monitoring"]])
def test_compose_files_are_valid(infra_tools: InfraTools, profiles: list[str], files: tuple[Path, ...]) -> None:
    env = {} if files == LOCAL else REQUIRED_SECRETS
    done = _compose(infra_tools, *profiles, "config", "--quiet", files=files, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_a_missing_secret_stops_the_production_stack(infra_tools: InfraTools, missing: str) -> None:
    env = {name: value for name, value in REQUIRED_SECRETS.items() if name != missing}
    done = _compose(infra_tools, "config", "--quiet", env=env)
    assert done.returncode != 0
    assert missing in done.stderr


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_the_local_stack_is_anonymous_and_needs_no_secret(local_services: dict[str, Any], service: str) -> None:
    settings = _settings(local_services[service]["environment"])
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.api_key_hashes == [] and settings.webhook_secrets == []
    # Only the API reads it, and it is what makes a stack without keys usable.
    assert settings.allow_anonymous is (service == "api")


def test_the_local_stack_publishes_the_api_on_loopback_and_redis_nowhere(local_services: dict[str, Any]) -> None:
    assert "ports" not in local_services["redis"]
    assert "--requirepass" not in local_services["redis"]["command"]
    assert [(port["host_ip"], port["published"]) for port in local_services["api"]["ports"]] == [("127.0.0.1", "8000")]


def test_production_publishes_the_api_and_guards_redis_with_the_password(services: dict[str, Any]) -> None:
    assert [port.get("host_ip") for port in services["api"]["ports"]] == [None]  # every interface, once
    assert "ports" not in services["redis"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == REQUIRED_SECRETS["REDIS_PASSWORD"]
    password = REQUIRED_SECRETS["REDIS_PASSWORD"]
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == f"redis://:{password}@redis:6379/0"


def test_default_set_is_redis_api_cpu_worker_and_webhook_worker(services: dict[str, Any]) -> None:
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"redis", "api", "caption-worker", "webhook-worker"}
    assert services["caption-worker-gpu"]["profiles"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"


def test_dependencies_wait_for_health(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] == "service_healthy", f"{name} starts before {dependency} is healthy"
    for name in OUR_SERVICES:
        assert "redis" in services[name]["depends_on"], name


def test_redis_keeps_every_job_on_disk(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    # Celery needs every key: an evicted queue entry is a lost job.
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in redis["volumes"])


def test_gpu_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    worker = services["caption-worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert services["caption-worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert "deploy" not in services["caption-worker"]


@pytest.mark.parametrize(
    ("service", "queue"),
    [("caption-worker", CAPTION_QUEUE), ("caption-worker-gpu", CAPTION_QUEUE), ("webhook-worker", WEBHOOK_QUEUE)],
)
def test_workers_consume_the_queues_of_shared_keys(services: dict[str, Any], service: str, queue: str) -> None:
    command = services[service]["command"]
    assert command[:4] == ["celery", "-A", "worker", "worker"]
    assert command[command.index("-Q") + 1] == queue
    keys = Keys(_settings(services[service]["environment"]).key_prefix)
    assert queue in {keys.caption_queue(), keys.webhook_queue()}
    if queue == CAPTION_QUEUE:
        # One process owns the model and sizes its own threads pool to batch; no -c to mislead.
        assert "--concurrency" not in command


def test_flower_listens_on_loopback_only(services: dict[str, Any]) -> None:
    ports = services["flower"]["ports"]
    assert ports and all(port["host_ip"] == "127.0.0.1" for port in ports)


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_service_environment_names_real_settings_and_validates(services: dict[str, Any], service: str) -> None:
    environment = services[service]["environment"]
    unknown = sorted(name for name in environment if name.startswith("CAPTIONIZER_") and name not in SETTING_VARIABLES)
    assert not unknown, f"{service} sets variables no setting reads: {unknown}"
    settings = _settings(environment)
    assert not settings.allow_anonymous, "production requires API keys"
    assert settings.redis_url.startswith("redis://") and "@redis:6379" in settings.redis_url


def _settings(environment: dict[str, str | None]) -> Settings:
    """Settings as the service's process would build them from its environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            if name.startswith("CAPTIONIZER_") and value is not None:
                patch.setenv(name, value)
        return Settings()


# --- the local stack works offline, captions its own samples, and checks workers by heartbeat (#24) ---


@pytest.mark.parametrize("service", ["caption-worker", "caption-worker-gpu", "webhook-worker"])
def test_the_local_stack_builds_the_embedded_model_and_downloads_none(
    local_services: dict[str, Any], service: str
) -> None:
    # An empty MODEL_ID skips the Dockerfile's model.fetch step: the worker uses model/embedded/.
    assert local_services[service]["build"]["args"]["MODEL_ID"] == ""


def test_a_real_checkpoint_is_one_variable_away(infra_tools: InfraTools) -> None:
    resolved = _resolve(infra_tools, LOCAL, {"MODEL_ID": "microsoft/git-base-textcaps"})
    assert resolved["caption-worker"]["build"]["args"]["MODEL_ID"] == "microsoft/git-base-textcaps"


def test_the_local_stack_can_caption_the_samples_its_api_serves(local_services: dict[str, Any]) -> None:
    sample = "http://api:8000/samples/red-circle.png"  # what a worker fetches: the API by its service name
    for service in ("api", "caption-worker", "webhook-worker"):
        settings = _settings(local_services[service]["environment"])
        assert settings.allow_private_networks, service
        assert 8000 in settings.allowed_ports, service
    # The API's host guard answers the name the worker uses.
    assert "api" in _settings(local_services["api"]["environment"]).anonymous_hosts
    assert sample.startswith("http://api:8000/")


def test_production_refuses_private_networks_and_other_ports(services: dict[str, Any]) -> None:
    for service in OUR_SERVICES:
        settings = _settings(services[service]["environment"])
        assert not settings.allow_private_networks, service
        assert settings.allowed_ports == [80, 443], service


@pytest.mark.parametrize("service", ["caption-worker", "caption-worker-gpu"])
def test_caption_workers_are_checked_by_their_heartbeat_not_a_celery_ping(
    local_services: dict[str, Any], service: str
) -> None:
    test = local_services[service]["healthcheck"]["test"]
    assert test == ["CMD", "python", "-m", "worker.health"]
    assert "inspect" not in " ".join(test)
