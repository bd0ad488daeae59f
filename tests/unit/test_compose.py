"""compose.yaml and the Dockerfile: valid Compose, and the deployment semantics
the product relies on (durable Redis, scalable workers, task events, Flower
behind basic auth, one shared output volume).

Docker does not run here: these tests read the files only (no sockets).
The schema in tests/data/compose-spec.json is the Compose Specification's own
JSON schema (compose-spec/compose-spec, schema/compose-spec.json), unmodified.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"

# The services that run the project's image (everything but redis).
HARVESTER_SERVICES = ("worker", "flower", "harvest")
DATA_MOUNT = "/data"


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> dict:
    # SafeLoader resolves anchors, aliases and `<<` merge keys as Compose does.
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def schema() -> dict:
    with SCHEMA_FILE.open(encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def validator(schema: dict) -> jsonschema.protocols.Validator:
    # The schema declares "$schema": "https://json-schema.org/draft-07/schema";
    # jsonschema's validator_for() only knows the http:// spelling, so the
    # draft is picked from the declared URL explicitly.
    declared = schema["$schema"]
    assert "draft-07" in declared, declared
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _env(service: dict) -> dict:
    """A service's environment as a dict (map or KEY=VAL list syntax)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, sep, value = item.partition("=")
            out[key] = value if sep else None
        return out
    return dict(env)


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume, short or long syntax."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) == 1:
                mounts.append(("", parts[0], False))
            else:
                mode = parts[2] if len(parts) > 2 else ""
                mounts.append((parts[0], parts[1], "ro" in mode.split(",")))
        else:
            mounts.append((vol.get("source", ""), vol["target"], bool(vol.get("read_only"))))
    return mounts


def _argv(value) -> list[str]:
    """A command/entrypoint as an argv list (exec or shell form)."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return list(value)


def _redis_args(services: dict) -> dict[str, str]:
    argv = _argv(services["redis"].get("command"))
    assert argv and argv[0] == "redis-server", argv
    args = {}
    rest = argv[1:]
    i = 0
    while i < len(rest):
        assert rest[i].startswith("--"), rest
        args[rest[i][2:]] = rest[i + 1]
        i += 2
    return args


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    instructions = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1]:]


# --------------------------------------------------------------------------- schema


def test_schema_is_the_compose_specification(schema: dict) -> None:
    """The vendored schema is the Compose Specification (Draft 7) and is itself a valid JSON schema."""
    assert schema["title"] == "Compose Specification"
    assert schema["$id"] == "compose_spec.json"
    assert "service" in schema["definitions"]
    jsonschema.Draft7Validator.check_schema(schema)


def test_compose_file_is_valid_compose_specification(compose: dict, validator) -> None:
    """compose.yaml validates against the Compose Specification's JSON schema."""
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_schema_rejects_a_broken_compose_file(validator) -> None:
    """The schema really rejects bad input (wrong type, unknown key), so the validation test can fail."""
    broken = {"services": {"x": {"image": 3, "bogus_key": 1}}}
    assert not validator.is_valid(broken)
    messages = {
        ("/".join(map(str, e.absolute_path)), e.validator) for e in validator.iter_errors(broken)
    }
    assert ("services/x/image", "type") in messages
    assert ("services/x", "additionalProperties") in messages


def test_schema_rejects_a_typo_in_our_compose_file(compose: dict, validator) -> None:
    """A misspelt service key in compose.yaml (container_nam) would be caught by the validation."""
    mutated = copy.deepcopy(compose)
    mutated["services"]["worker"]["container_nam"] = "oops"
    assert not validator.is_valid(mutated)


def test_compose_file_uses_the_specification_format(compose: dict) -> None:
    """compose.yaml has no obsolete top-level `version:` key and declares its named volumes."""
    assert "version" not in compose
    assert set(compose["volumes"]) >= {"redis-data", "harvest-data"}


# --------------------------------------------------------------------------- redis


def test_redis_is_durable_and_never_evicts(services: dict) -> None:
    """Redis runs redis:7 with appendonly yes and maxmemory-policy noeviction, data on a named volume."""
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis"
    assert redis["image"].split(":")[1].split(".")[0] == "7"
    args = _redis_args(services)
    assert args.get("appendonly") == "yes"
    assert args.get("maxmemory-policy") == "noeviction"
    targets = {target: source for source, target, _ in _mounts(redis)}
    assert targets.get("/data") == "redis-data"
    assert redis.get("restart") == "unless-stopped"


def test_redis_has_a_ping_healthcheck(services: dict) -> None:
    """Redis has a healthcheck built on `redis-cli ping`, so dependants can wait for service_healthy."""
    test = services["redis"]["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    assert "redis-cli" in text and "ping" in text


def test_redis_is_not_published_on_the_host(services: dict) -> None:
    """Redis publishes no host port: only services on the compose network reach the broker."""
    assert not services["redis"].get("ports")


# --------------------------------------------------------------------------- workers


def test_worker_is_scalable(services: dict) -> None:
    """The worker has no container_name and no published ports, so `--scale worker=N` works."""
    worker = services["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "hostname" not in worker  # each replica must be its own Celery node
    assert worker.get("restart") == "unless-stopped"
    assert worker.get("build"), "worker is built from the Dockerfile"


@pytest.mark.parametrize("name", HARVESTER_SERVICES)
def test_broker_url_points_at_the_redis_service(services: dict, name: str) -> None:
    """Every harvester service gets HARVEST_REDIS_URL=redis://redis:6379/... and waits for a healthy Redis."""
    url = urlparse(_env(services[name])["HARVEST_REDIS_URL"])
    assert url.scheme in ("redis", "rediss")
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis")
    assert (url.port or 6379) == 6379
    depends = services[name]["depends_on"]
    assert depends[url.hostname]["condition"] == "service_healthy"


def test_workers_log_json(services: dict) -> None:
    """Workers log JSON (HARVEST_LOG_FORMAT=json)."""
    assert _env(services["worker"])["HARVEST_LOG_FORMAT"] == "json"


def test_workers_send_task_events(services: dict) -> None:
    """The worker runs `harvest worker` with -E/--task-events, so Flower sees every page task."""
    argv = _argv(services["worker"]["command"])
    assert argv[:2] == ["harvest", "worker"]
    assert "-E" in argv or "--task-events" in argv


@pytest.mark.parametrize("name", ["worker", "harvest"])
def test_job_secrets_are_passed_through_from_the_host(services: dict, name: str) -> None:
    """API_TOKEN is passed through from the host env (bare key), never written into compose.yaml."""
    env = _env(services[name])
    assert "API_TOKEN" in env
    assert env["API_TOKEN"] is None


# --------------------------------------------------------------------------- flower


def test_flower_requires_basic_auth_from_env(services: dict) -> None:
    """Flower gets FLOWER_BASIC_AUTH from a required `${VAR:?msg}` (unset or empty refuses to start), not argv."""
    flower = services["flower"]
    value = _env(flower)["FLOWER_BASIC_AUTH"]
    # `:?` (with the colon) fails on unset *and* empty values.
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", value), value
    argv = _argv(flower.get("command")) + _argv(flower.get("entrypoint"))
    assert not any(a.lstrip("-").replace("-", "_").startswith("basic_auth") for a in argv)
    # No way to switch the API to unauthenticated.
    assert "FLOWER_UNAUTHENTICATED_API" not in _env(flower)


def test_flower_watches_the_same_app_and_broker(services: dict) -> None:
    """Flower runs `celery -A workers.app:app flower` on the workers' broker and publishes port 5555."""
    flower = services["flower"]
    argv = _argv(flower["command"])
    assert argv[0] == "celery"
    assert argv[argv.index("-A") + 1] == "workers.app:app"
    assert "flower" in argv
    assert (
        _env(flower)["HARVEST_REDIS_URL"] == _env(services["worker"])["HARVEST_REDIS_URL"]
    )
    published = [str(p) for p in flower["ports"]]
    assert any(p.split(":")[-1].split("/")[0] == "5555" for p in published), published


def test_flower_gets_no_job_secrets(services: dict) -> None:
    """Flower, the web-exposed service, is not handed the job secrets (API_TOKEN)."""
    assert "API_TOKEN" not in _env(services["flower"])


# --------------------------------------------------------------------------- shared data


def test_every_harvester_service_mounts_the_same_data_volume(compose: dict, services: dict) -> None:
    """worker, flower and harvest all mount one named (non-bind) volume at /data, from the same image."""
    sources = set()
    for name in HARVESTER_SERVICES:
        by_target = {target: source for source, target, _ in _mounts(services[name])}
        assert DATA_MOUNT in by_target, f"{name} does not mount {DATA_MOUNT}"
        sources.add(by_target[DATA_MOUNT])
    assert len(sources) == 1, sources
    (source,) = sources
    assert source in compose["volumes"], "the data volume must be a declared named volume"
    assert not source.startswith((".", "/")), "a bind mount is not shared across hosts"
    images = {services[name]["image"] for name in HARVESTER_SERVICES}
    assert len(images) == 1, images


def test_harvest_tool_service(services: dict) -> None:
    """`harvest` is a tools-profile one-off: entrypoint harvest, ./examples read-only at /jobs."""
    tool = services["harvest"]
    assert tool["profiles"] == ["tools"]
    assert _argv(tool["entrypoint"]) == ["harvest"]
    jobs = [(s, ro) for s, t, ro in _mounts(tool) if t == "/jobs"]
    assert jobs == [("./examples", True)]
    assert "restart" not in tool or tool["restart"] == "no"
    assert not tool.get("ports")


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_default_command_is_harvest_worker() -> None:
    """The image's default command is exec-form `harvest worker`, with no ENTRYPOINT in the way."""
    stage = _final_stage(_dockerfile_instructions())
    cmds = [args for word, args in stage if word == "CMD"]
    assert cmds, "no CMD in the final stage"
    assert json.loads(cmds[-1]) == ["harvest", "worker"]
    assert not [args for word, args in stage if word == "ENTRYPOINT"]


def test_dockerfile_base_user_and_install() -> None:
    """Based on python:3.11-slim, installs the project plus flower, runs as a non-root user in /app."""
    instructions = _dockerfile_instructions()
    stage = _final_stage(instructions)
    assert stage[0][1].split()[0] == "python:3.11-slim"
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert re.search(r"pip install\s+\.(\s|$)", runs), runs
    assert "flower" in runs
    users = [args for word, args in stage if word == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    workdirs = [args for word, args in stage if word == "WORKDIR"]
    assert workdirs[-1] == "/app"
