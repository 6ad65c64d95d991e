"""docker-compose.yml runs what the Procfile runs (there is no Docker engine here, so the
files are compared): the same commands, the same variables, and the startup order."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from honcho.environ import parse_procfile

from tests.helpers import ROOT

# Read by example.settings / worker.celery rather than by a Procfile line, and needed by
# every process all the same.
APP_VARIABLES = {"DJANGO_SETTINGS_MODULE": "example.settings", "REDIS_URL": None}
COMPOSE_REDIS_URL = "redis://redis:6379/0"
ONLY_LOCAL = {"redis"}  # the demo's own redis-server; compose uses the redis image
# How the Procfile makes honcho's children die with honcho; a container needs none of it.
SUPERVISION_PREFIX = "exec setpriv --pdeathsig KILL -- "


def _normalise(command: str) -> str:
    """One spelling for a command: ``${VAR}`` and ``$VAR`` alike, single spaces."""
    command = re.sub(r"\$\{(\w+)\}", r"$\1", command)
    return " ".join(command.split())


def _procfile_command(line: str) -> str | None:
    """The command a Procfile line runs, without its supervision prefix (None: it has none)."""
    line = _normalise(line)
    return line[len(SUPERVISION_PREFIX) :] if line.startswith(SUPERVISION_PREFIX) else None


def _compose_command(service: dict[str, Any]) -> str | None:
    """The shell line a compose service runs: ``sh -c "exec …"`` with ``$$`` unescaped."""
    command = service.get("command")
    if command is None:
        return None
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    line = argv[2] if len(argv) == 3 and argv[:2] == ["sh", "-c"] else shlex.join(argv)
    line = line.replace("$$", "$")
    line = re.sub(r"^\s*exec\s+", "", line)
    return _normalise(line)


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {pair[0]: (pair[1] if len(pair) > 1 else None) for pair in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def compose_problems(procfile: str, compose: dict[str, Any], demo_script: str) -> list[str]:
    """Every way docker-compose.yml has drifted from the Procfile (and demo.sh's variables)."""
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    processes = parse_procfile(procfile).processes
    if not processes:
        return ["the Procfile has no processes"]

    for name, line in processes.items():
        variables = set(re.findall(r"\$\{?(\w+)", line))
        for variable in variables | set(APP_VARIABLES):
            if not re.search(rf"\bexport {variable}\b", demo_script):
                problems.append(f"scripts/demo.sh does not export {variable} (Procfile {name})")
        procfile_command = _procfile_command(line)
        if procfile_command is None:
            problems.append(f"Procfile {name}: does not start with {SUPERVISION_PREFIX!r}")
            procfile_command = _normalise(line)
        if name in ONLY_LOCAL:
            continue
        service = services.get(name)
        if service is None:
            problems.append(f"Procfile process {name!r} has no compose service")
            continue
        command = _compose_command(service)
        if command != procfile_command:
            problems.append(f"{name}: compose runs {command!r}, the Procfile {procfile_command!r}")
        env = _environment(service)
        for variable in sorted(variables | set(APP_VARIABLES)):
            if variable not in env:
                problems.append(f"{name}: compose does not set {variable}")
        for variable, value in APP_VARIABLES.items():
            if value is not None and env.get(variable) != value:
                problems.append(f"{name}: {variable} is {env.get(variable)!r}, not {value!r}")
        if env.get("REDIS_URL") not in (None, COMPOSE_REDIS_URL):
            problems.append(f"{name}: REDIS_URL is {env['REDIS_URL']!r}, not {COMPOSE_REDIS_URL}")
        if _depends(service).get("redis") != "service_healthy":
            problems.append(f"{name}: does not wait for redis to be healthy")

    for name in ("web", "worker"):
        if name in services and _depends(services[name]).get("migrate") != (
            "service_completed_successfully"
        ):
            problems.append(f"{name}: does not wait for migrate to complete")
    migrate = _compose_command(services.get("migrate", {})) or ""
    if "manage.py migrate" not in migrate or "manage.py seed_demo" not in migrate:
        problems.append("the migrate service must run migrate and seed_demo")
    for name, probe in (("redis", "redis-cli ping"), ("web", "")):
        test = (services.get(name) or {}).get("healthcheck", {}).get("test")
        if not test or probe not in " ".join(test if isinstance(test, list) else [test]):
            problems.append(f"{name}: no healthcheck{f' running {probe}' if probe else ''}")
    if "redis:7" not in str((services.get("redis") or {}).get("image")):
        problems.append("redis: not the redis:7 image")
    if (services.get("postgres") or {}).get("profiles") != ["postgres"]:
        problems.append("postgres: must sit behind the 'postgres' profile")
    return problems


def _problems(folder: Path = ROOT) -> list[str]:
    return compose_problems(
        (folder / "Procfile").read_text(),
        yaml.safe_load((folder / "docker-compose.yml").read_text()),
        (folder / "scripts" / "demo.sh").read_text(),
    )


def test_compose_runs_the_procfile_commands() -> None:
    assert _problems() == []


def test_demo_script_starts_the_procfile_with_honcho() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert re.search(r"^exec .*honcho\" start --procfile Procfile", script, re.M)
    assert "set -euo pipefail" in script


def test_dockerfile_installs_the_example() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'pip install -e ".[example]"' in dockerfile
    assert "npm install" in dockerfile
    assert "example/node_modules" in (ROOT / ".dockerignore").read_text()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    for name in ("Procfile", "docker-compose.yml", "scripts/demo.sh"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_drift_in_a_procfile_command_is_caught(copy: Path) -> None:
    _edit(copy / "Procfile", "-Q turbo_tasks -l info", "-Q turbo_tasks,other -l info")
    assert [p for p in _problems(copy) if p.startswith("worker: compose runs")]


def test_drift_in_a_compose_command_is_caught(copy: Path) -> None:
    _edit(copy / "docker-compose.yml", "--port=$$FLOWER_PORT", "--port=5555")
    assert [p for p in _problems(copy) if p.startswith("flower: compose runs")]


def test_equivalent_spellings_are_not_drift(copy: Path) -> None:
    _edit(copy / "Procfile", "--port $PORT", "--port  ${PORT}")
    _edit(copy / "docker-compose.yml", "--host $$HOST", "--host   $${HOST}")
    assert _problems(copy) == []


def test_a_new_procfile_process_needs_a_service(copy: Path) -> None:
    with open(copy / "Procfile", "a") as procfile:
        procfile.write("beat: exec setpriv --pdeathsig KILL -- celery -A worker beat\n")
    assert _problems(copy) == ["Procfile process 'beat' has no compose service"]


def test_a_procfile_process_that_would_outlive_honcho_is_caught(copy: Path) -> None:
    _edit(copy / "Procfile", "flower: exec setpriv --pdeathsig KILL -- celery", "flower: celery")
    assert _problems(copy) == [
        "Procfile flower: does not start with 'exec setpriv --pdeathsig KILL -- '"
    ]


def test_a_missing_variable_is_caught(copy: Path) -> None:
    _edit(copy / "docker-compose.yml", '    FLOWER_PORT: "5555"\n', "")
    assert "flower: compose does not set FLOWER_PORT" in _problems(copy)


def test_a_variable_the_demo_does_not_export_is_caught(copy: Path) -> None:
    _edit(copy / "Procfile", "-l info", "-l $LOG_LEVEL")
    problems = _problems(copy)
    assert "scripts/demo.sh does not export LOG_LEVEL (Procfile worker)" in problems
    assert "worker: compose does not set LOG_LEVEL" in problems


def test_missing_startup_order_and_healthchecks_are_caught(copy: Path) -> None:
    compose = yaml.safe_load((copy / "docker-compose.yml").read_text())
    del compose["services"]["web"]["depends_on"]["migrate"]
    compose["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_started"
    del compose["services"]["redis"]["healthcheck"]
    del compose["services"]["web"]["healthcheck"]
    problems = compose_problems(
        (copy / "Procfile").read_text(), compose, (copy / "scripts" / "demo.sh").read_text()
    )
    assert "web: does not wait for migrate to complete" in problems
    assert "worker: does not wait for redis to be healthy" in problems
    assert "redis: no healthcheck running redis-cli ping" in problems
    assert "web: no healthcheck" in problems
