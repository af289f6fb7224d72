"""docker-compose.yml describes the same system the code configures (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from engine.settings import EngineSettings
from stream.settings import PROJECT_ROOT, StreamSettings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"


def _config() -> dict[str, Any]:
    """`docker compose config` when the client has the compose plugin, else PyYAML."""
    docker = shutil.which("docker")
    if docker:
        res = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "FINPULSE_DATA_DIR": "/tmp"},
        )
        if res.returncode == 0:
            import json

            return json.loads(res.stdout)
    return yaml.safe_load(COMPOSE.read_text())


def _env_names(cls: type) -> set[str]:
    prefix = cls.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def test_services_present() -> None:
    cfg = _config()
    assert {"kafka", "redis", "worker", "replay"} <= set(cfg["services"])


def test_env_vars_are_real_settings() -> None:
    known = _env_names(StreamSettings) | _env_names(EngineSettings)
    for name in ("worker", "replay"):
        env = _config()["services"][name].get("environment", {})
        unknown = set(env) - known
        assert not unknown, f"{name} sets variables no settings class reads: {unknown}"


def test_ports_match_settings_defaults() -> None:
    s = StreamSettings()
    svc = _config()["services"]

    def published(service: str) -> set[int]:
        out = set()
        for p in svc[service].get("ports", []):
            out.add(int(p["published"]) if isinstance(p, dict) else int(str(p).split(":")[0]))
        return out

    assert int(s.kafka_bootstrap.rsplit(":", 1)[1]) in published("kafka")
    assert int(s.redis_url.rsplit(":", 1)[1].split("/")[0]) in published("redis")
    assert s.worker_web_port in published("worker")
    worker_env = svc["worker"]["environment"]
    assert worker_env["FINPULSE_KAFKA_BOOTSTRAP"].endswith(":9092")
    assert "kafka" in worker_env["FINPULSE_KAFKA_BOOTSTRAP"] and "redis://redis:" in worker_env["FINPULSE_REDIS_URL"]


def test_worker_has_gpu_reservation() -> None:
    devices = _config()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


@pytest.mark.parametrize("service", ["worker", "replay"])
def test_commands_are_finpulse_cli_commands(service: str) -> None:
    from stream.cli.main import cli

    cmd = _config()["services"][service]["command"]
    assert cmd[0] == "finpulse" and cmd[1] in cli.commands
