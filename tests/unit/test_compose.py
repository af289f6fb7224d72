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
    from api.settings import ApiSettings

    known = _env_names(StreamSettings) | _env_names(EngineSettings) | _env_names(ApiSettings)
    for name in ("worker", "replay", "api"):
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
    api_env = svc["api"]["environment"]
    assert int(api_env["FINPULSE_API_PORT"]) in published("api") and api_env["FINPULSE_API_HOST"] == "0.0.0.0"
    worker_env = svc["worker"]["environment"]
    assert worker_env["FINPULSE_KAFKA_BOOTSTRAP"].endswith(":9092")
    assert "kafka" in worker_env["FINPULSE_KAFKA_BOOTSTRAP"] and "redis://redis:" in worker_env["FINPULSE_REDIS_URL"]


def test_worker_has_gpu_reservation() -> None:
    devices = _config()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


@pytest.mark.parametrize("service", ["worker", "replay", "api"])
def test_commands_are_finpulse_cli_commands(service: str) -> None:
    from stream.cli.main import cli

    cmd = _config()["services"][service]["command"]
    assert cmd[0] == "finpulse" and cmd[1] in cli.commands


INFRA = PROJECT_ROOT / "infra"


def test_prometheus_scrapes_the_worker_where_it_listens() -> None:
    svc = _config()["services"]
    env = svc["worker"]["environment"]
    # Inside a container the worker must bind every interface, or nothing can scrape it.
    assert env["FINPULSE_WORKER_WEB_HOST"] == "0.0.0.0"
    prom = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "finpulse-worker")
    assert job["metrics_path"] == "/metrics"
    assert f"worker:{env['FINPULSE_WORKER_WEB_PORT']}" in job["static_configs"][0]["targets"]
    # Every file compose mounts into Prometheus and Grafana is in the repository.
    for name in ("prometheus", "grafana"):
        for vol in svc[name]["volumes"]:
            src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            assert (PROJECT_ROOT / src).resolve().exists(), f"{name} mounts {src}, which is missing"


def test_grafana_dashboard_queries_only_metrics_the_worker_exposes() -> None:
    import json
    import re

    from stream.metrics import WorkerMetrics

    m = WorkerMetrics()
    # Touch every labelled family once so its samples (and the histogram series) are exposed.
    m.window.labels("counted").inc()
    m.dead_letters.labels("not_json").inc()
    m.alerts.labels("warning").inc()
    m.retries.labels("redis_apply").inc()
    m.degraded.labels("redis_apply").set(0)
    m.set_engine({"backend": "null", "device": "cpu", "precision": "fp32", "model_id": "x"})
    exposed = {s.name for fam in m.registry.collect() for s in fam.samples} | {"finpulse_consumer_lag"}
    dash = json.loads((INFRA / "grafana" / "dashboards" / "finpulse.json").read_text())
    used = {
        name
        for panel in dash["panels"]
        for t in panel["targets"]
        for name in re.findall(r"\bfinpulse_[a-z_]+\b", t["expr"])
    }
    assert used and used <= exposed, f"dashboard queries unknown metrics: {sorted(used - exposed)}"
    # Each panel reads the provisioned data source.
    ds = yaml.safe_load((INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dash["panels"])
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
