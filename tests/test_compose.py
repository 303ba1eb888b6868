"""docker-compose.yml, Dockerfile and .dockerignore agree with the code they deploy.

Docker is not needed: the files are parsed and checked against the Typer CLI, the Settings class and
pyproject.toml, so a renamed command, option or setting breaks a test here instead of a deployment. The same checks
cover docker-compose.offline.yml, the override for hosts without a registry or a bridge; tests/test_fleet_docker.py
builds and runs the fleet for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # dev extra; a missing yaml should fail loudly, not skip these checks

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PORTS_FILE = ROOT / "docker-compose.override.yml"  # read with COMPOSE_FILE when no -f is given: published ports
OFFLINE_FILE = ROOT / "docker-compose.offline.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

PREFIX = "TRIAGE_"
REQUIRED_SERVICES = {"redis", "postgres", "listener", "worker", "web"}
SHARED_DATA_SERVICES = ("listener", "worker", "web")
IMAGE_NAME = "cxr-triage"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt}, $VAR, $$
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
# What a deployer must put in .env (the file refuses to start without it); everything else has a default.
DEPLOYER_ENV = {"TRIAGE_API_TOKEN": "example-token"}
_TRIAGE_NAME = re.compile(r"\bTRIAGE_[A-Z0-9_]+\b")


# --------------------------------------------------------------------------------------------- helpers


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    """Compose-style variable substitution against ``env`` (the test uses the defaults plus DEPLOYER_ENV)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op is None:
            return value or ""
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset_or_empty else value  # type: ignore[return-value]
        if op.endswith("?"):
            if unset_or_empty:
                pytest.fail(f"compose variable {name} is required ({arg!r}); give it a default")
            return value  # type: ignore[return-value]
        return "" if unset_or_empty else arg  # "+"

    return _INTERPOLATION.sub(substitute, text)


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    return node


def _raw_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def _merge(base: Any, over: Any, key: str = "") -> Any:
    """Compose's merge of a later file over an earlier one: mappings key by key; ports and volumes add up."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for name, value in over.items():
            merged[name] = _merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(over, list) and key in {"ports", "expose", "volumes"}:
        return base + over
    return over


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.override.yml over it, as `docker compose` reads them without -f, as
    YAML (anchors and merge keys resolved), before variable substitution."""
    merged: dict[str, Any] = _merge(_raw_compose(), _raw_compose(PORTS_FILE))
    return merged


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with no variables set (defaults only)."""
    return _interpolate(raw_compose, DEPLOYER_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict) and services, "docker-compose.yml has no services"
    return services


def _is_app_service(service: dict[str, Any]) -> bool:
    image = str(service.get("image", ""))
    return "build" in service or image.split(":")[0].split("/")[-1] == IMAGE_NAME


@pytest.fixture(scope="module")
def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    apps = {name: svc for name, svc in services.items() if _is_app_service(svc)}
    assert apps, "no service runs the cxr-triage image"
    return apps


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs: dict[str, str | None] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            pairs[key] = value if sep else None
        return pairs
    return {str(key): (None if value is None else str(value)) for key, value in env.items()}


def _triage_env(service: dict[str, Any]) -> dict[str, str]:
    """The TRIAGE_* variables a service sets (a bare ``KEY`` / ``KEY:`` passes the host's through: skipped)."""
    return {k: v for k, v in _environment(service).items() if k.startswith(PREFIX) and v is not None}


def _command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command]


def _settings_cls():
    from triage.settings import Settings

    return Settings


def _field_names() -> set[str]:
    return set(_settings_cls().model_fields)


def _settings_for(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """Settings as the service's container would build them: only these TRIAGE_* vars, no .env file."""
    Settings = _settings_cls()
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(PREFIX):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings(_env_file=None)


def _setting_default(field: str) -> Any:
    info = _settings_cls().model_fields[field]
    return info.get_default(call_default_factory=True)


def _container_ports(service: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(published host port or None, container port) for each `ports` entry."""
    result: list[tuple[str | None, int]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((None if published is None else str(published), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]  # drop /tcp
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            result.append((None, int(parts[0])))
        else:
            result.append((parts[-2], int(parts[-1])))
    return result


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for each `volumes` entry of a service."""
    mounts: list[tuple[str, str]] = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"])))
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            mounts.append(("", parts[0]))  # anonymous volume
        else:
            mounts.append((parts[0], parts[1]))
    return mounts


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------- 1. commands exist in the CLI


def test_service_commands_are_cli_commands_with_known_options(app_services):
    import typer.main

    from triage.main import app  # imported here so the other tests run while cli.py is being written

    assert isinstance(app, typer.Typer), f"triage.main.app is {type(app).__name__}, not a typer.Typer"
    group = typer.main.get_command(app)
    # Typer may bring its own copy of click: duck-type instead of isinstance(click.Group).
    known = getattr(group, "commands", None)
    assert isinstance(known, dict) and known, "triage.main.app should be a group of several commands"

    for name, service in app_services.items():
        entrypoint = service.get("entrypoint")
        if entrypoint is not None:
            words = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
            assert words == [IMAGE_NAME], f"{name}: entrypoint {entrypoint!r} is not the cxr-triage script"
        words = _command_words(service)
        assert words, f"{name}: no command (the image's default is --help)"
        subcommand, args = words[0], words[1:]
        assert subcommand in known, f"{name}: `cxr-triage {subcommand}` is not a command; have {sorted(known)}"

        options: dict[str, Any] = {}
        for param in known[subcommand].params:
            if getattr(param, "param_type_name", "") == "option":
                for opt in (*param.opts, *param.secondary_opts):
                    options[opt] = param
        expect_value = False
        for word in args:
            if expect_value:
                expect_value = False
                continue
            if not word.startswith("-"):
                continue
            opt, has_inline_value = word.split("=", 1)[0], "=" in word
            assert opt in options, f"{name}: `cxr-triage {subcommand}` has no option {opt}; has {sorted(options)}"
            param = options[opt]
            is_flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
            expect_value = not is_flag and not has_inline_value
        assert not expect_value, f"{name}: option {args[-1]} lacks its value"


# ----------------------------------------------------------------- 2. TRIAGE_* variables are settings


def _all_strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _all_strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _all_strings(key)
            yield from _all_strings(value)


def test_every_triage_variable_is_a_settings_field(raw_compose):
    # Every TRIAGE_* name in the YAML (keys, values, ${...} references, anchors); comments excluded.
    names = {name for text in _all_strings(raw_compose) for name in _TRIAGE_NAME.findall(text)}
    assert names, "docker-compose.yml sets no TRIAGE_* variable"
    fields = _field_names()
    unknown = sorted(name for name in names if name[len(PREFIX):].lower() not in fields)
    assert not unknown, f"not fields of triage.settings.Settings: {unknown}"


def _came_through(value: Any, raw: str) -> bool:
    if isinstance(value, bool):
        return value == (raw.strip().lower() in {"1", "true", "yes", "on", "y", "t"})
    if isinstance(value, (int, float)):
        return value == float(raw)
    if isinstance(value, Path):
        return value == Path(raw)
    if isinstance(value, (list, tuple)):
        return list(map(str, value)) == [part.strip() for part in raw.split(",") if part.strip()]
    if value is None:
        return raw == ""
    return str(value) == raw


def test_triage_values_parse_into_settings(app_services, monkeypatch):
    checked = 0
    for name, service in app_services.items():
        env = _triage_env(service)
        settings = _settings_for(env, monkeypatch)  # raises ValidationError on a value that does not parse
        for key, raw in env.items():
            field = key[len(PREFIX):].lower()
            value = getattr(settings, field)
            assert _came_through(value, raw), f"{name}: {key}={raw!r} became {field}={value!r}"
            checked += 1

        # The fleet's shape, as the code will see it.
        assert settings.database_url.startswith("postgresql+psycopg://"), f"{name}: {settings.database_url!r}"
        assert settings.broker_url == "redis://redis:6379/0", f"{name}: {settings.broker_url!r}"
        assert settings.data_dir == Path("/data"), f"{name}: data_dir {settings.data_dir}"
    assert checked, "no TRIAGE_* value was checked"

    listener = _settings_for(_triage_env(app_services["listener"]), monkeypatch)
    assert listener.dicom_host == "0.0.0.0", "the listener must bind all interfaces inside its container"
    web = _settings_for(_triage_env(app_services["web"]), monkeypatch)
    assert web.web_host == "0.0.0.0", "the web service must bind all interfaces inside its container"


# ------------------------------------------------------------------------------- 3. the fleet's shape


def test_required_services_exist(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"
    assert str(services["redis"].get("image", "")).startswith("redis:7")
    assert str(services["postgres"].get("image", "")).startswith("postgres:16")
    for name in ("listener", "worker", "web"):
        assert _is_app_service(services[name]), f"{name} does not run the cxr-triage image"


def test_worker_reserves_an_nvidia_gpu(services):
    worker = services["worker"]
    devices = (((worker.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    assert devices, "worker: no deploy.resources.reservations.devices"
    gpus = [
        d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
    ]
    assert gpus, f"worker: no nvidia device with capability gpu in {devices}"
    for device in gpus:
        assert ("count" in device) != ("device_ids" in device), "give count or device_ids, not both/neither"
    assert "NVIDIA_VISIBLE_DEVICES" in _environment(worker)
    words = _command_words(worker)
    assert words[:1] == ["worker"] and "--pool" in words and words[words.index("--pool") + 1] == "solo", (
        "GPU workers run `worker --pool solo` (one process per GPU, CUDA only in that process)"
    )


def test_worker_can_be_scaled(services):
    worker = services["worker"]
    assert "container_name" not in worker, "container_name makes `--scale worker=N` impossible"
    fixed = [published for published, _ in _container_ports(worker) if published]
    assert not fixed, f"worker publishes host ports {fixed}: `--scale worker=N` would collide"


def test_app_services_share_the_data_volume_at_data_dir(compose, services):
    named_volumes = set((compose.get("volumes") or {}).keys())
    assert {"spool", "pgdata"} <= named_volumes, f"top-level volumes: {sorted(named_volumes)}"
    postgres_mounts = dict(_volume_mounts(services["postgres"]))
    assert "pgdata" in postgres_mounts, "postgres does not keep its data in the pgdata volume"

    seen: set[tuple[str, str]] = set()
    for name in SHARED_DATA_SERVICES:
        service = services[name]
        data_dir = _triage_env(service).get("TRIAGE_DATA_DIR")
        assert data_dir, f"{name}: TRIAGE_DATA_DIR is not set"
        mounts = [(src, dst) for src, dst in _volume_mounts(service) if dst.rstrip("/") == data_dir.rstrip("/")]
        assert mounts, f"{name}: nothing is mounted at TRIAGE_DATA_DIR={data_dir}"
        source, target = mounts[0]
        assert source in named_volumes, f"{name}: {source!r} at {target} is not a named volume"
        seen.add((source, target.rstrip("/")))
    assert len(seen) == 1, f"listener, worker and web mount different data volumes: {sorted(seen)}"


def test_published_ports_match_settings(services, monkeypatch):
    for name, field, env_key in (("listener", "dicom_port", "TRIAGE_DICOM_PORT"),
                                 ("web", "web_port", "TRIAGE_WEB_PORT")):
        service = services[name]
        env = _triage_env(service)
        port = int(env[env_key]) if env_key in env else int(_setting_default(field))
        assert getattr(_settings_for(env, monkeypatch), field) == port
        targets = [target for _, target in _container_ports(service)]
        assert port in targets, f"{name}: listens on {port} ({env_key}) but publishes container ports {targets}"
        # The healthcheck must probe the same port.
        assert str(port) in _healthcheck_text(service), f"{name}: healthcheck does not probe port {port}"


def test_app_services_wait_for_healthy_backends_and_restart(services, app_services):
    for backend in ("redis", "postgres"):
        assert services[backend].get("healthcheck", {}).get("test"), f"{backend}: no healthcheck"
    assert "pg_isready" in _healthcheck_text(services["postgres"])
    for name, service in app_services.items():
        depends = service.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for backend in ("redis", "postgres"):
            assert (depends.get(backend) or {}).get("condition") == "service_healthy", (
                f"{name}: does not wait for {backend} to be healthy"
            )
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", f"{name}: restart is {service.get('restart')!r}"


def test_database_url_matches_postgres_service(app_services, services):
    from urllib.parse import urlsplit

    pg_env = _environment(services["postgres"])
    for name, service in app_services.items():
        url = urlsplit(_triage_env(service)["TRIAGE_DATABASE_URL"])
        assert url.hostname == "postgres" and (url.port or 5432) == 5432, f"{name}: {url.geturl()}"
        assert url.username == pg_env.get("POSTGRES_USER"), f"{name}: user differs from POSTGRES_USER"
        assert url.password == pg_env.get("POSTGRES_PASSWORD"), f"{name}: password differs from POSTGRES_PASSWORD"
        assert url.path.lstrip("/") == pg_env.get("POSTGRES_DB"), f"{name}: database differs from POSTGRES_DB"


# ---------------------------------------------------------------------- 4. Dockerfile vs pyproject.toml


def _package_roots() -> set[str]:
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.split(".")[0].rstrip("*") for pattern in include}


def _context_path(path: str) -> str:
    path = path.rstrip("/")
    while path.startswith("./"):
        path = path[2:]
    return path or "."


def _copied_sources() -> list[str]:
    sources: list[str] = []
    for word, args in _dockerfile_instructions():
        if word not in {"COPY", "ADD"}:
            continue
        match = re.match(r"((?:--\S+\s+)*)(.*)", args, re.S)
        assert match is not None
        flags, rest = match.group(1).split(), match.group(2).strip()
        if any(flag.startswith("--from") for flag in flags):
            continue  # from another stage or image, not from the build context
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources.extend(_context_path(w) for w in words[:-1])
    return sources


def test_dockerfile_copies_exactly_the_packages():
    roots = _package_roots()
    sources = _copied_sources()
    assert "pyproject.toml" in sources, "Dockerfile does not copy pyproject.toml"
    copied_dirs = {
        src for src in sources if not any(ch in src for ch in "*?[") and (ROOT / src).is_dir()
    }
    missing_in_repo = sorted(
        src for src in sources if not any(ch in src for ch in "*?[") and not (ROOT / src).exists()
    )
    assert not missing_in_repo, f"Dockerfile copies paths that do not exist: {missing_in_repo}"
    assert "." not in copied_dirs, "copy the package folders, not the whole context"
    assert copied_dirs == roots, (
        f"Dockerfile copies {sorted(copied_dirs)}, pyproject packages.find includes {sorted(roots)}"
    )
    for root in roots:
        assert (ROOT / root).is_dir(), f"package folder {root}/ is missing from the repo"


def test_dockerfile_entrypoint_is_the_console_script():
    scripts = _pyproject()["project"]["scripts"]
    entrypoints = [args for word, args in _dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])  # exec form only: signals must reach the process
    assert isinstance(entrypoint, list) and len(entrypoint) == 1, f"ENTRYPOINT {entrypoint!r}"
    assert entrypoint[0] in scripts, f"ENTRYPOINT {entrypoint[0]!r} is not in [project.scripts] {sorted(scripts)}"
    assert scripts[entrypoint[0]] == "triage.main:app"


def _default_base(instructions: list[tuple[str, str]]) -> str:
    """The first FROM's image with the defaults of the ARGs before it substituted (what a plain build uses)."""
    defaults: dict[str, str] = {}
    for word, args in instructions:
        if word == "ARG":
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
        elif word == "FROM":
            image = args.split()[0]
            return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: defaults.get(m.group(1), ""), image)
    return ""


def test_dockerfile_runs_unprivileged_without_dev_extras():
    from packaging.requirements import Requirement
    from packaging.version import Version

    instructions = _dockerfile_instructions()
    assert instructions[0][0] in {"FROM", "ARG"} and _default_base(instructions).startswith("python:3.11-slim"), (
        "the default base image should be python:3.11-slim"
    )
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    env_text = " ".join(args for word, args in instructions if word == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env_text
    run_text = " ".join(args for word, args in instructions if word == "RUN")
    assert "[dev]" not in run_text and ".[" not in run_text, "dev extras must not be installed in the image"

    # The torch pins installed in the image satisfy pyproject's bounds.
    declared = {Requirement(dep).name: Requirement(dep) for dep in _pyproject()["project"]["dependencies"]}
    pins = dict(re.findall(r"\b(torch|torchvision)==([0-9][0-9A-Za-z.+]*)", run_text))
    assert set(pins) == {"torch", "torchvision"}, f"Dockerfile should pin torch and torchvision, found {pins}"
    for name, version in pins.items():
        assert Version(version) in declared[name].specifier, f"{name}=={version} outside {declared[name]}"


def test_dockerignore_keeps_context_small_and_secret_free():
    patterns = {
        line.strip().lstrip("/").rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for required in (".venv", "var", ".git", "tests", "test-output", ".env"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert {"__pycache__", "**/__pycache__"} & patterns, ".dockerignore does not exclude __pycache__"
    for source in _copied_sources():
        assert source not in patterns, f".dockerignore excludes {source}, which the Dockerfile copies"


# ------------------------------------------------------------ 5. compose 1.x and the offline override


def test_compose_files_work_with_compose_v1():
    for path in (COMPOSE_FILE, PORTS_FILE, OFFLINE_FILE):
        data = _raw_compose(path)
        assert "name" not in data, f"{path.name}: a top-level `name:` breaks docker-compose 1.x; use -p"
        extra = set(data) - {"version", "services", "volumes", "networks", "secrets", "configs"}
        assert all(key.startswith("x-") for key in extra), f"{path.name}: unknown top-level keys {sorted(extra)}"


def test_dockerfile_builds_offline():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a `# syntax=` line makes BuildKit pull an image"
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim") and ("FROM", "${BASE_IMAGE}") in instructions, (
        "the base image is a build argument (a locally made base where no registry is reachable)"
    )
    args = {a.split("=")[0] for w, a in instructions if w == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"} <= args, "pip's sources are build arguments"


@pytest.fixture(scope="module")
def offline() -> dict[str, Any]:
    return _raw_compose(OFFLINE_FILE)


def test_offline_override_puts_every_service_on_the_host_network(offline, raw_compose):
    services = raw_compose["services"]
    override = offline.get("services") or {}
    assert set(override) == set(services), (
        f"{OFFLINE_FILE.name} must cover every service: missing {sorted(set(services) - set(override))}, "
        f"unknown {sorted(set(override) - set(services))}"
    )
    for name, service in override.items():
        assert service.get("network_mode") == "host", f"{name}: not network_mode: host (no bridge in host mode)"
        assert "networks" not in service and "ports" not in service, f"{name}: networks/ports mean nothing in host mode"
    assert "networks" not in offline
    # Compose 1.x refuses published ports in host mode and an override cannot remove them: the ports live in the
    # file that the offline form leaves out.
    base = _raw_compose()
    published = [name for name, service in base["services"].items() if service.get("ports")]
    assert not published, f"docker-compose.yml publishes ports of {published}: put them in {PORTS_FILE.name}"
    assert set(_raw_compose(PORTS_FILE)["services"]) <= set(base["services"])


def test_offline_triage_variables_are_settings_fields(offline):
    names = {name for text in _all_strings(offline) for name in _TRIAGE_NAME.findall(text)}
    assert {"TRIAGE_DATABASE_URL", "TRIAGE_BROKER_URL", "TRIAGE_DICOM_PORT", "TRIAGE_WEB_PORT"} <= names
    unknown = sorted(name for name in names if name[len(PREFIX):].lower() not in _field_names())
    assert not unknown, f"not fields of triage.settings.Settings: {unknown}"


def test_offline_backends_are_built_from_debian_and_reached_on_loopback(offline, monkeypatch):
    env = {"FLEET_REDIS_PORT": "16001", "FLEET_POSTGRES_PORT": "16002", "TRIAGE_DICOM_PORT": "16003",
           "TRIAGE_WEB_PORT": "16004", **DEPLOYER_ENV}
    services = _interpolate(offline, env)["services"]
    for name in ("redis", "postgres"):
        service = services[name]
        assert str(service["image"]).startswith("local/"), f"{name}: {service['image']} is not a locally built image"
        build = service["build"]
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        assert any(w == "FROM" for w, _ in _dockerfile_instructions(dockerfile))
        assert build.get("network") == "host" and "BASE_IMAGE" in build.get("args", {})
    assert "16001" in _command_words(services["redis"]) and "127.0.0.1" in _command_words(services["redis"])
    assert "16001" in _healthcheck_text(services["redis"])
    assert services["postgres"]["environment"]["PGPORT"] == "16002"
    assert "listen_addresses=127.0.0.1" in _command_words(services["postgres"])

    for name in ("listener", "worker", "worker-cpu", "web"):
        settings = _settings_for(_triage_env(services[name]), monkeypatch)
        assert settings.database_url == "postgresql+psycopg://triage:triage@127.0.0.1:16002/triage", name
        assert settings.broker_url == "redis://127.0.0.1:16001/0", name
        assert services[name]["build"]["args"]["BASE_IMAGE"] == "local/bookworm-python:3.11"
    listener = _settings_for(_triage_env(services["listener"]), monkeypatch)
    assert listener.dicom_port == 16003 and "16003" in _healthcheck_text(services["listener"])
    web = _settings_for(_triage_env(services["web"]), monkeypatch)
    assert web.web_port == 16004 and "16004" in _healthcheck_text(services["web"])
    assert web.web_host == "127.0.0.1", "in host mode the web page stays on loopback unless told otherwise"
