"""The live dashboard in a real browser, on a real run.

A worker process with the tiny keyword model scores a replayed slice of the real stream plus a
negative burst on this test's own ticker; the query service (``api.app.create_app`` under a real
uvicorn server) serves the page; headless Chromium (Debian's, driven by Playwright) opens it before
the replay starts. The page must show the burst's alert as it is raised (over the alert stream),
rank entities in its table, chart the burst ticker with its alert marker, keep its view in the address
and work behind a path prefix (the alert seeded from ``/v1/alerts`` there), chart a topic clicked in the
table, and raise no script, console or server error on the way.

A screenshot of the burst ticker's view is kept as an artifact (of the page as it was, when the test
fails before it): ``$FINPULSE_ARTIFACTS_DIR/dashboard.png``, or
``.local/artifacts/dashboard.png`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from playwright.async_api import ConsoleMessage, Page, async_playwright

from api.app import create_app
from api.settings import ApiSettings
from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.cli.replay import produce, read_events
from stream.cli.supervise import clear_redis_prefix, start_worker_process, stop_process, wait_worker_ready
from stream.events import parse_event_time
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan
from tests.support.surge import REPLAY_SURGE, negative_stories
from tests.support.tiny_bert import NEGATIVE_PHRASES

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(420)]

# Debian's Chromium (scripts/bootstrap.sh installs it; Playwright's own browser download is not used).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SAMPLE = 300
BURST_TICKER = "ZQDASH"  # this test's own ticker: no real event names it
UI_TIMEOUT_MS = 90_000
PREFIX = "/desk"  # the page is also opened behind this path prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _artifact_path(settings: StreamSettings) -> Path:
    """Where the screenshot goes: ``$FINPULSE_ARTIFACTS_DIR`` if set, else ``<local dir>/artifacts``."""
    base = os.environ.get("FINPULSE_ARTIFACTS_DIR")
    folder = Path(base) if base else Path(settings.local_dir) / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "dashboard.png"


class _Front:
    """ASGI wrapper in front of the API: keeps every request's server-side exception and 5xx status (the
    test asserts none), and serves the API under ``PREFIX`` too, the way a reverse proxy that strips a
    path prefix does (the page must work there: relative URLs only)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.failures: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and path.startswith(PREFIX + "/"):
            raw = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": path[len(PREFIX) :], "raw_path": raw[len(PREFIX) :]}

        async def send_checked(message: Any) -> None:
            if message.get("type") == "http.response.start" and message.get("status", 200) >= 500:
                self.failures.append(f"{message['status']} {path}")
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion, then re-raised for uvicorn
            self.failures.append(f"{path}: {traceback.format_exc()}")
            raise exc


@contextmanager
def _serve(app: Any, port: int) -> Iterator[str]:
    """``app`` under a real uvicorn server in a thread; yields its base URL, stops it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the query service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(15)


async def _wait_for_alert(settings: StreamSettings, entity: str, timeout: float) -> dict[str, Any]:
    """The first alert on ``entity`` in the alert topic, read here independently of the page and the API."""
    consumer = AIOKafkaConsumer(
        settings.alerts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=2_000,
    )
    await consumer.start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    alert: dict[str, Any] = orjson.loads(m.value or b"{}")
                    if alert.get("entity") == entity:
                        return alert
                    seen.append(str(alert.get("entity")))
    finally:
        await consumer.stop()
    raise AssertionError(f"no alert on {entity} within {timeout:.0f}s; alerts seen: {seen}")


async def _hook(page: Page, expr: str, arg: Any = None, timeout: float = UI_TIMEOUT_MS) -> None:
    """Wait until ``expr`` (a function of ``arg`` over the page's ``window.finpulse`` hook) is truthy.

    Fails at once, with the page's own words, when the page has noted an error (a failed request or
    an uncaught script error) instead of waiting out the timeout.
    """
    await page.wait_for_function(
        f"(arg) => window.finpulse && (({expr}) || window.finpulse.errors().length > 0)", arg=arg, timeout=timeout
    )
    errors = await page.evaluate("window.finpulse.errors()")
    assert errors == [], f"the page noted errors while waiting for {expr}: {errors}"


async def test_dashboard_shows_live_alert_entities_and_chart(
    isolated_settings: StreamSettings, keyword_model_dir: Path, tmp_path: Path
) -> None:
    s = isolated_settings.model_copy(update=REPLAY_SURGE)
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=32)
    events = read_events(s.require_data_dir() / "stocknet-tweets" / "stream.csv", since="2014-05-01", limit=SAMPLE)
    times = sorted(parse_event_time(e["published_at"]) for e in events)
    # As in test_pipeline: the burst two thirds of the way in, so the real events after it close its
    # buckets (replay mode: event time only), and within a day of the last event (the page's 1d window).
    burst_ms = times[2 * SAMPLE // 3]
    assert times[-1] - burst_ms < 20 * 3600_000
    # Distinct stories (the rule counts novel events), checked negative by the test model.
    stories = negative_stories(load_classifier(engine, keyword_model_dir), BURST_TICKER, 12, NEGATIVE_PHRASES)
    burst = [
        {"id": f"dash-burst-{i}", "text": text, "published_at": burst_ms + i * 5_000, "source": "news"}
        for i, text in enumerate(stories)
    ]
    inputs = sorted(events + burst, key=lambda e: parse_event_time(e["published_at"]))

    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    log_path = tmp_path / "worker.log"
    proc = start_worker_process(s, engine, log_path)
    shot = _artifact_path(s)
    shot_taken = False
    page_errors: list[str] = []
    console_errors: list[str] = []
    started = time.monotonic()
    try:
        await asyncio.to_thread(wait_worker_ready, proc, s.worker_web_port, log_path, 180)
        app = _Front(create_app(s, ApiSettings(host="127.0.0.1", port=_free_port())))
        with _serve(app, _free_port()) as base_url:
            async with async_playwright() as pw:
                args = ["--no-sandbox"] if os.geteuid() == 0 else []
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 900})

                    def on_console(msg: ConsoleMessage) -> None:
                        if msg.type == "error":
                            console_errors.append(f"{msg.text} @ {msg.location.get('url', '')}")

                    page.on("pageerror", lambda exc: page_errors.append(repr(exc)))
                    page.on("console", on_console)
                    try:
                        # The page is open before anything is replayed: the alert must come over the stream.
                        await page.goto(base_url, wait_until="load")
                        await _hook(page, "window.finpulse.live() === 'live'")
                        await page.click("button[data-window='1d']")

                        await produce(s.kafka_bootstrap, s.input_topic, inputs)
                        alert = await _wait_for_alert(s, BURST_TICKER, timeout=240)
                        assert alert["entity_kind"] == "ticker"

                        # 1. the alert feed shows the alert of this test's own surge, with its entity
                        await _hook(page, "window.finpulse.alertsShown().includes(arg)", alert["id"])
                        item = page.locator(f"#alerts [data-alert-id='{alert['id']}']")
                        assert await item.get_attribute("data-entity") == BURST_TICKER
                        assert BURST_TICKER in await item.inner_text()

                        # 2. the top-entities table has rows (refreshed every few seconds)
                        await _hook(page, "window.finpulse.entityRows() > 0")
                        assert await page.locator("#entities tbody tr").count() > 0

                        # 3. the chart of the burst ticker, picked in the text box, has points and the alert marker
                        await page.select_option("#pick-kind", "ticker")
                        await page.fill("#pick-name", BURST_TICKER.lower())
                        await page.press("#pick-name", "Enter")
                        await _hook(page, "window.finpulse.chartEntity() === arg", f"ticker:{BURST_TICKER}")
                        await _hook(page, "window.finpulse.chartPoints() > 0")
                        await _hook(page, "window.finpulse.alertMarkers() > 0")
                        assert await page.locator("#chart canvas").count() > 0

                        # 4. the view lives in the address: open it behind a path prefix. The alert is there
                        # again (seeded from /v1/alerts), and so are the window and the entity picked by hand.
                        fragment = page.url.partition("#")[2]
                        assert f"ticker={BURST_TICKER}" in fragment and "window=1d" in fragment
                        await page.goto(f"{base_url.rstrip('/')}{PREFIX}/#{fragment}", wait_until="load")
                        await _hook(page, "window.finpulse.alertsShown().includes(arg)", alert["id"])
                        assert await page.evaluate("[window.finpulse.chartEntity(), window.finpulse.window()]") == [
                            f"ticker:{BURST_TICKER}",
                            "1d",
                        ]
                        await _hook(page, "window.finpulse.chartPoints() > 0 && window.finpulse.alertMarkers() > 0")
                        await _hook(page, "window.finpulse.entityRows() > 0")

                        # The artifact: the burst ticker's chart with its alert marker, the table and the feed.
                        await page.screenshot(path=str(shot), full_page=True)
                        shot_taken = True
                        print(f"dashboard screenshot: {shot}")

                        # 5. topics: the table switches, and a click on a row charts that topic
                        await page.click(".seg button[data-kind='topic']")
                        await _hook(page, "document.querySelector('#entities tbody tr[data-kind=topic]')")
                        row = page.locator("#entities tbody tr[data-kind='topic']").first
                        topic = await row.get_attribute("data-entity")
                        await row.click()
                        await _hook(page, "window.finpulse.chartEntity() === arg", f"topic:{topic}")
                        await _hook(page, "window.finpulse.chartPoints() > 0")
                        assert await page.evaluate("window.finpulse.errors()") == []
                    finally:
                        if not shot_taken:  # failed before it: the page as it was then
                            await page.screenshot(path=str(shot), full_page=True)
                            print(f"dashboard screenshot: {shot}")
                        state = await page.evaluate(
                            "window.finpulse && [finpulse.chartEntity(), finpulse.entityRows(), finpulse.errors()]"
                        )
                        print(f"page: {state}; page errors: {page_errors}; console errors: {console_errors}")
                        print(f"server failures: {app.failures}")
                finally:
                    await browser.close()
        # 6. no script error, no failed request and no server error anywhere on the way
        assert page_errors == []
        assert console_errors == []
        assert app.failures == []
        print(f"dashboard test body took {time.monotonic() - started:.1f}s")
    finally:
        stop_process(proc)
        await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
        await clear_redis_prefix(s)
