"""docker-compose.yml and ops/Dockerfile, checked without a Docker engine (our machines
have none): the file parses, every service's command is a real `treadle` command with
real options, and its environment names only real settings."""

from __future__ import annotations

import re
from typing import Any

import click
import pytest
import yaml

from config.settings import unknown_environment_names
from orchestrator.cli import main
from tests.conftest import REPO

POOLS = ("critical", "default", "bulk")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def treadle_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in compose["services"].items() if s.get("image", "").startswith("treadle")
    }


def parse_command(argv: list[str]) -> click.Context:
    """What `treadle ARGV` would run, parsed by the CLI itself (nothing is run)."""
    group = click.Context(main, info_name="treadle")
    command = main.get_command(group, argv[0])
    if command is None:
        raise click.UsageError(f"no such command: {argv[0]}")
    return command.make_context(argv[0], list(argv[1:]), parent=group)


def test_the_services_are_redis_the_orchestrator_a_worker_per_pool_and_flower(
    compose: dict[str, Any],
) -> None:
    expected = {"redis", "orchestrator", "flower", *(f"worker-{p}" for p in POOLS)}
    assert set(compose["services"]) == expected


def test_redis_is_7_with_aof_and_a_password(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    assert "--requirepass ${REDIS_PASSWORD:?" in command
    assert "--maxmemory-policy noeviction" in command  # eviction breaks kombu's bindings
    assert redis["volumes"] and redis["healthcheck"]


def test_every_service_runs_a_real_treadle_command(compose: dict[str, Any]) -> None:
    services = treadle_services(compose)
    assert set(services) == set(compose["services"]) - {"redis"}
    for name, service in services.items():
        context = parse_command(service["command"])
        assert context.command.name == name.split("-")[0], name
        if name.startswith("worker-"):
            assert context.params["pool"] == name.removeprefix("worker-")
    assert parse_command(services["orchestrator"]["command"]).params["port"] == 8080


def test_a_command_the_cli_does_not_have_is_caught() -> None:
    with pytest.raises(click.UsageError):
        parse_command(["worker", "--pool", "bulk", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_command(["orchestrate"])


def test_environments_name_only_real_settings_and_secrets_come_from_outside(
    compose: dict[str, Any],
) -> None:
    for name, service in treadle_services(compose).items():
        environment = service["environment"]
        assert unknown_environment_names(environment) == [], name
        assert "TREADLE_REDIS_URL" in environment, name
        assert "${REDIS_PASSWORD:?" in environment["TREADLE_REDIS_URL"], name
        for key, value in environment.items():
            if key.endswith(("TOKEN", "AUTH", "PASSWORD")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{name}.{key}"
    services = compose["services"]
    assert "TREADLE_API_TOKEN" in services["orchestrator"]["environment"]
    assert "TREADLE_FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_worker_pools_can_scale(compose: dict[str, Any]) -> None:
    for pool in POOLS:
        service = compose["services"][f"worker-{pool}"]
        # A fixed name or host port would make `--scale worker-bulk=4` fail.
        assert "container_name" not in service and "ports" not in service
        assert service["stop_signal"] == "SIGTERM"  # warm shutdown


def test_the_image_is_built_from_ops_dockerfile_out_of_the_repository(
    compose: dict[str, Any],
) -> None:
    builds = {s["build"]["dockerfile"] for s in treadle_services(compose).values()}
    assert builds == {"ops/Dockerfile"}
    dockerfile = (REPO / "ops" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["treadle"]' in dockerfile


def test_the_build_context_has_what_the_dockerfile_copies_and_not_the_virtualenv() -> None:
    # The file list the docker SDK sends for a build (the tests marked docker build the
    # image through it), from .dockerignore.
    from docker.utils.build import exclude_paths

    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(REPO), ignored, dockerfile="ops/Dockerfile")
    dockerfile = (REPO / "ops" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert any(f == path or f.startswith(f"{path}/") for f in context), path
    assert "ops/Dockerfile" in context
    assert not [f for f in context if f.startswith((".venv/", ".treadle/")) or "__pycache__" in f]
