"""compose.yaml and the Dockerfile: valid Compose, and the deployment semantics
the product relies on (durable Redis, scalable workers, task events, Flower
behind basic auth, one shared output volume).

Also the compose quick start: the `demo` profile's demo API, the job file
examples/demo-compose.toml that targets it, health checks, Flower on loopback,
and the README's compose commands naming services and files that exist.

Docker does not run here: these tests read the files only (no sockets).
The schema in tests/data/compose-spec.json is the Compose Specification's own
JSON schema (compose-spec/compose-spec, schema/compose-spec.json), unmodified.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from harvester.cli import build_parser
from harvester.core.job import load_job
from harvester.edges.outdir import SYSTEM_DIRS
from harvester.core.secrets import TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
COMPOSE_JOB = EXAMPLES / "demo-compose.toml"
README_COMPOSE_SECTION = "## Scaling out, compose and Flower"

# The services that run the project's image (everything but redis).
HARVESTER_SERVICES = ("worker", "flower", "harvest", "serve")
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
    """Flower, the web-exposed service, is not handed the job secrets (API_TOKEN, DEMO_API_TOKEN)."""
    env = _env(services["flower"])
    assert "API_TOKEN" not in env
    assert "DEMO_API_TOKEN" not in env


def test_the_job_service_runs_beside_flower_locked_and_on_loopback(services: dict) -> None:
    """`serve` runs `harvest serve` on 0.0.0.0:8900 inside the network, needs a required
    `${HARVEST_API_TOKEN:?msg}`, publishes 8900 on 127.0.0.1 unless SERVE_BIND says
    otherwise, is health-checked on /healthz, reads the workers' broker, and gets no job
    secrets (it runs no page)."""
    serve = services["serve"]
    argv = _argv(serve["command"])
    assert argv[:2] == ["harvest", "serve"] and argv[argv.index("--port") + 1] == "8900"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    env = _env(serve)
    assert re.fullmatch(r"\$\{HARVEST_API_TOKEN:\?[^}]+\}", env["HARVEST_API_TOKEN"])
    assert env["HARVEST_REDIS_URL"] == _env(services["worker"])["HARVEST_REDIS_URL"]
    assert "API_TOKEN" not in env and "DEMO_API_TOKEN" not in env
    [port] = serve["ports"]
    assert _interpolate(str(port)) == "127.0.0.1:8900:8900"
    assert _interpolate(str(port), {"SERVE_BIND": "0.0.0.0"}) == "0.0.0.0:8900:8900"
    assert "/healthz" in " ".join(_argv(serve["healthcheck"]["test"]))


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
    """Based on python:3.11-slim, installs the project (with only the serve extra, pinned
    by the tested constraints.txt) plus flower, runs as a non-root user in /app."""
    instructions = _dockerfile_instructions()
    stage = _final_stage(instructions)
    assert stage[0][1].split()[0] == "python:3.11-slim"
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert re.search(r"pip install\s+-c constraints\.txt\s+\"\.\[serve\]\"(\s|$)", runs), runs
    assert "flower" in runs
    users = [args for word, args in stage if word == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    workdirs = [args for word, args in stage if word == "WORKDIR"]
    assert workdirs[-1] == "/app"


# --------------------------------------------------------------------------- quick start

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation of one string: `$$`, `${X}`, `${X:-d}`, `${X-d}`, `${X:?m}`.

    ``env`` is the host environment (empty by default: what a user gets who
    exported nothing); a required variable that is missing raises KeyError.
    """
    env = env or {}

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op in (":-", ":?"):
            missing = not value
        else:
            missing = value is None
        if not missing:
            return value
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, value)


def _strings(node) -> list[str]:
    """Every string value anywhere in a YAML document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the Dockerfile stage `FROM ... AS name`."""
    instructions = _dockerfile_instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    for k, start in enumerate(starts):
        words = instructions[start][1].split()
        if len(words) == 3 and words[1].upper() == "AS" and words[2] == name:
            end = starts[k + 1] if k + 1 < len(starts) else len(instructions)
            return instructions[start:end]
    raise AssertionError(f"Dockerfile has no stage {name!r}")


def _stage_cmd(name: str) -> list[str]:
    cmds = [args for word, args in _stage(name) if word == "CMD"]
    assert cmds, f"stage {name} has no CMD"
    return json.loads(cmds[-1])


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _seconds(value: str) -> float:
    """A Compose duration (`30s`, `1m30s`, `500ms`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def _worker_services(services: dict) -> list[str]:
    """Services that run a Celery worker (`harvest worker`), whatever they are called."""
    names = []
    for name, service in services.items():
        argv = _argv(service.get("entrypoint")) + _argv(service.get("command"))
        if argv[:2] == ["harvest", "worker"] or (argv[:1] == ["celery"] and "worker" in argv):
            names.append(name)
    return names


@pytest.fixture(scope="module")
def compose_job() -> dict:
    with COMPOSE_JOB.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(README_COMPOSE_SECTION)
    end = text.find("\n## ", start + len(README_COMPOSE_SECTION))
    return text[start:end if end != -1 else len(text)]


def _readme_compose_commands(section: str) -> list[list[str]]:
    """Every `docker compose ...` command of the README's compose section, as argv:
    the lines of its ```sh blocks and its inline `code` spans."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("docker compose"):
                commands.append(shlex.split(line))
    for span in re.findall(r"`(docker compose [^`]+)`", section.replace("\n", " ")):
        commands.append(shlex.split(re.sub(r"\s+", " ", span)))
    return commands


def test_demo_profile_runs_the_bundled_demo_api(services: dict) -> None:
    """`demo` is a demo-profile service built from the Dockerfile's `demo` stage, which installs the
    `demo` extra and serves harvester.demo on 0.0.0.0:8765; it publishes no host port and is health-checked."""
    demo = services["demo"]
    assert demo["profiles"] == ["demo"]
    assert demo["build"]["target"] == "demo"
    assert demo["build"].get("context", ".") == "."
    assert demo["image"] != services["worker"]["image"], "the worker image carries no demo extra"
    assert not demo.get("ports")
    assert "healthcheck" in demo
    argv = _argv(demo.get("command")) or _stage_cmd("demo")
    assert argv[:3] == ["python", "-m", "harvester.demo"], argv
    assert _option(argv, "--host") == "0.0.0.0"  # reachable from the other containers
    assert _option(argv, "--port") == "8765"
    runs = " ".join(args for word, args in _stage("demo") if word == "RUN")
    assert re.search(r"""pip install\s+(-c constraints\.txt\s+)?["']?\.\[demo\]""", runs), runs
    # The default build (no --target) is still the harvester: the demo stage is not last.
    assert _final_stage(_dockerfile_instructions())[0][1].split()[0] == "python:3.11-slim"
    assert len(_final_stage(_dockerfile_instructions())[0][1].split()) == 1


def test_compose_example_job_targets_the_demo_service(services: dict, compose_job: dict) -> None:
    """examples/demo-compose.toml is a valid job whose URL host is the demo service's name and port."""
    spec = load_job(COMPOSE_JOB)  # raises on anything `harvest run` would refuse
    url = urlparse(compose_job["job"]["url"])
    assert url.hostname == "demo" and url.hostname in services
    assert "demo" in services[url.hostname]["profiles"]
    argv = _argv(services["demo"].get("command")) or _stage_cmd("demo")
    assert str(url.port) == _option(argv, "--port")
    assert spec.url == compose_job["job"]["url"]


def test_compose_example_job_writes_to_the_shared_volume(services: dict, compose_job: dict) -> None:
    """The compose example job's output dir is its own directory under the /data volume that every
    worker and the harvest tool mount: absolute, no `..`, not /data itself, not a system directory."""
    out = Path(compose_job["output"]["dir"])
    assert out.is_absolute() and ".." not in out.parts
    assert out.parent == Path(DATA_MOUNT), out
    assert out not in SYSTEM_DIRS
    for name in ("worker", "harvest"):
        assert DATA_MOUNT in {t for _, t, _ in _mounts(services[name])}


def test_compose_example_job_variables_reach_the_workers(services: dict) -> None:
    """Every `${VAR}` in the compose example job is in each worker's environment with a value that
    compose really passes (set, or a default), and the demo API gets the same token."""
    names = set(TEMPLATE.findall(COMPOSE_JOB.read_text(encoding="utf-8")))
    assert names, "the example shows a secret resolved on the workers"
    workers = _worker_services(services)
    assert workers
    for worker in workers:
        env = _env(services[worker])
        for name in names:
            assert name in env, f"{worker} is not given {name}"
            assert env[name] is not None, f"{name} is a bare pass-through: unset unless exported"
            assert _interpolate(str(env[name])), f"{name} is empty when nothing is exported"
    demo_env = _env(services["demo"])
    for name in names & {"DEMO_API_TOKEN"}:
        for worker in workers:
            for host_env in ({}, {name: "chosen"}):
                assert _interpolate(demo_env[name], host_env) == _interpolate(
                    _env(services[worker])[name], host_env)


def test_flower_is_published_on_loopback_by_default(services: dict) -> None:
    """Flower's only published port is 5555 bound to 127.0.0.1 unless FLOWER_BIND is exported."""
    ports = services["flower"]["ports"]
    assert len(ports) == 1
    assert _interpolate(str(ports[0])) == "127.0.0.1:5555:5555"
    assert _interpolate(str(ports[0]), {"FLOWER_BIND": "0.0.0.0"}) == "0.0.0.0:5555:5555"


def test_every_worker_has_a_healthcheck_that_pings_itself(services: dict) -> None:
    """Each worker service has a health check that pings its own Celery node (celery@$HOSTNAME, the
    default name `harvest worker` gives it) over the broker, with a timeout above the ping's own."""
    workers = _worker_services(services)
    assert workers == ["worker"], workers
    for name in workers:
        service = services[name]
        argv = _argv(service["command"])
        assert not {"-n", "--hostname"} & set(argv), "a custom node name would not match the check"
        assert not any(a.startswith("--hostname=") for a in argv)
        health = service["healthcheck"]
        assert not health.get("disable")
        test = health["test"]
        assert test[0] == "CMD-SHELL"
        command = _interpolate(test[1])
        check = shlex.split(command.split(">")[0])
        assert check[:5] == ["celery", "-A", "workers.app:app", "inspect", "ping"], check
        assert _option(check, "-d", "--destination") == "celery@$HOSTNAME"
        ping_timeout = float(_option(check, "-t", "--timeout") or 1)
        assert _seconds(health["timeout"]) > ping_timeout
        assert _seconds(health["start_period"]) >= _seconds(health["interval"])


def test_every_health_check_dependency_is_health_checked(services: dict) -> None:
    """Every `depends_on: condition: service_healthy` names a service that has a health check."""
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"


def test_every_compose_variable_has_a_default_or_is_required(compose: dict) -> None:
    """Every `${VAR}` in compose.yaml has a default (`:-`) or is required with a message (`:?`), so no
    value is silently blank; with FLOWER_BASIC_AUTH set, the whole file interpolates."""
    for text in _strings(compose):
        for match in _VAR.finditer(text):
            if match.group(0) == "$$":
                continue
            assert match.group(2) in (":-", ":?"), f"{match.group(0)} has no default"
        _interpolate(text, {"FLOWER_BASIC_AUTH": "admin:pw", "HARVEST_API_TOKEN": "t" * 24})


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    """.dockerignore excludes everything (no .venv, .git or harvest output in the build context) except
    the files the Dockerfile COPYs."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for word, args in _dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied and copied <= kept, copied - kept


def test_readme_compose_commands_are_correct_as_written(
    readme_section: str, compose: dict, services: dict, compose_job: dict
) -> None:
    """The README's `docker compose` commands use existing profiles, services and examples files,
    valid `harvest` arguments, and the demo run and verify name the compose job and its output dir."""
    commands = _readme_compose_commands(readme_section)
    assert commands
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    tool_mounts = {t: s for s, t, _ in _mounts(services["harvest"])}
    seen_run_jobs, seen_verify = [], []
    for argv in commands:
        assert argv[:2] == ["docker", "compose"], argv
        rest = argv[2:]
        while rest and rest[0].startswith("-"):
            assert rest[0] == "--profile", f"unknown global option in {argv}"
            assert rest[1] in profiles, f"no service has profile {rest[1]}: {argv}"
            rest = rest[2:]
        sub, rest = rest[0], rest[1:]
        assert sub in {"up", "run", "down", "logs", "ps", "config", "build"}, argv
        for i, arg in enumerate(rest):
            if arg == "--scale":
                assert rest[i + 1].split("=")[0] in services, argv
        if sub != "run":
            continue
        entrypoint = None
        while rest[0].startswith("-"):
            if rest[0] == "--entrypoint":
                entrypoint, rest = rest[1], rest[2:]
            else:
                assert rest[0] == "--rm", f"unexpected run option in {argv}"
                rest = rest[1:]
        service, args = rest[0], rest[1:]
        assert service in services, argv
        if entrypoint is not None or service != "harvest":
            continue
        # The harvest CLI's own parser accepts them (argparse exits on an error).
        try:
            build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"harvest refuses the arguments of {argv}")
        if args[0] == "run":
            job = Path(args[1])
            assert str(job.parent) in tool_mounts, f"the harvest service mounts nothing at {job.parent}"
            host_dir = tool_mounts[str(job.parent)]
            if job.stem.upper() != job.stem:  # JOB.toml is a placeholder
                assert (ROOT / host_dir / job.name).is_file(), argv
                seen_run_jobs.append(ROOT / host_dir / job.name)
        if args[0] == "verify":
            seen_verify.append(args[1])
    assert COMPOSE_JOB.resolve() in {p.resolve() for p in seen_run_jobs}
    assert compose_job["output"]["dir"] in seen_verify
    assert "http://127.0.0.1:5555" in readme_section  # where to open Flower
