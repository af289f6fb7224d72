"""The Faust app can be built (agent, timer and web page wired) without any service running."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.app import create_app
from stream.settings import StreamSettings


def test_create_app_wires_agent_timer_and_health(tiny_model_dir: Path) -> None:
    clf = load_classifier(EngineSettings(backend="null"), tiny_model_dir)
    # redis-py connects lazily: building the app must not need a server.
    app = create_app(StreamSettings(time_mode="replay"), clf, redis=Redis.from_url("redis://127.0.0.1:1/0"))
    assert "classify" in {a.split(".")[-1] for a in app.agents}
    # Faust keeps timers among the app's start-up tasks (private, but there is no public listing).
    assert any(getattr(t, "__name__", "") == "close_tick" for t in app._app_tasks)
    assert app.finpulse_processor.store.time.mode == "replay"  # type: ignore[attr-defined]
