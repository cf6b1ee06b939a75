"""The /dashboard page in a real (headless) chromium, watching a roll and a crash under load.

The server runs with ``--metrics-port 0``; reconnecting players (``client``) chat in the
lobby while the supervisor rolls every shard and then loses one to SIGKILL. Everything
is asserted from what the page itself holds (``window.dashboard``: the samples and
markers it fetched and was pushed), so the test is the page's view, not the server's.

``WRITE_DOCS_SCREENSHOT=1`` also rolls once more and writes ``docs/dashboard-roll.png``
(the picture in the README) mid-roll.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import trio

from client import Backoff, Connected, open_reconnecting_client
from lab.crowd import ROLL_ARGS
from lab.procfs import cmdline_has, pid_alive
from lab.server import ROOT, ServerProcess, open_server
from tests.browser.browser import ARTIFACTS, BrowserThread
from tests.browser.test_static import http_get

pytestmark = pytest.mark.timeout(90)

PLAYERS = 16
WAIT_MS = 20000
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard-roll.png"
# A crashed shard's players wait 1-2 s before they try again (equal jitter on a 2 s
# ceiling): longer than the second between two samples, so the crash shows as a dip. A
# roll's players come back when the server's hint says (ROLL_ARGS: after 100 ms).
BACKOFF = Backoff(base=2.0, cap=2.0, max_retries=20, jitter="equal")

# The page's data, as Python sees it.
SNAPSHOT = """() => ({
  samples: window.dashboard.samples,
  markers: window.dashboard.markers,
  updates: window.dashboard.updates,
  live: window.dashboard.live,
  canvases: document.querySelectorAll("#chart-players canvas").length,
  charts: document.querySelectorAll(".uplot").length,
  roll: document.getElementById("roll").textContent,
})"""


async def player(url: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """One lobby player: an echo every 0.25 s and a say every 2 s, until cancelled."""
    async with open_reconnecting_client(url, backoff=BACKOFF) as client:
        events = client.events()
        first = await events.receive()
        assert isinstance(first, Connected), first
        task_status.started()

        async def chat() -> None:
            n = 0
            while True:
                n += 1
                await client.send({"type": "echo", "data": n})
                if n % 8 == 0:
                    await client.send({"type": "say", "text": f"hello {n}"})
                await trio.sleep(0.25)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chat)
            async for _ in events:  # read, so the client's event queue stays empty
                pass


def wait_page(page: Any, condition: str, timeout_ms: int = WAIT_MS) -> bool:
    """Whether the page's ``condition`` (a JS expression) came true in time. A timeout
    is not raised here: the caller asserts on the page's data, which says more."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, timeout=timeout_ms)
    except PlaywrightTimeout:
        return False
    return True


def all_back(after: float) -> str:
    """JS: a sample after ``after`` has every player connected, every shard ready."""
    return (
        f"window.dashboard.samples.some((s) => s.t > {after} && s.players === {PLAYERS}"
        " && Object.values(s.shards).every((x) => x.state === 'ready'))"
    )


# JS: the roll panel says a roll is running.
ROLL_SHOWN = "document.getElementById('roll').className === 'on'"


def marker(kind: str, after: float) -> str:
    return f"window.dashboard.markers.some((m) => m.kind === '{kind}' && m.t > {after})"


async def status(port: int) -> dict[str, Any]:
    code, _, body = await http_get(port, "/status")
    assert code == 200
    return json.loads(body)


async def test_dashboard_shows_a_roll_and_a_crash_under_load(browser: BrowserThread) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    args = ("--metrics-port", "0", "--checkpoint-interval", "0.2", *ROLL_ARGS)
    async with open_server(*args, shards=2, echo_logs=False) as server:
        metrics = int((await server.log.wait_for("metrics_ready"))["port"])
        page: dict[str, Any] = {}
        errors: list[str] = []
        async with trio.open_nursery() as load:
            for _ in range(PLAYERS):
                await load.start(player, server.url("/"))

            def open_dashboard(b: Any) -> None:
                context = b.new_context(viewport={"width": 1280, "height": 900})
                page["context"], page["page"] = context, context.new_page()
                page["page"].on("pageerror", lambda exc: errors.append(str(exc)))
                page["page"].goto(f"http://127.0.0.1:{metrics}/dashboard")
                assert wait_page(page["page"], "window.dashboard.live"), "no event stream"
                assert wait_page(page["page"], all_back(0))

            try:
                await browser.run(open_dashboard)
                hup_at = time.time()
                server.signal(signal.SIGHUP)

                def mid_roll(b: Any) -> str:
                    p = page["page"]
                    wait_page(p, f"{ROLL_SHOWN} || {marker('roll_done', hup_at)}")
                    p.screenshot(path=str(ARTIFACTS / "dashboard-mid-roll.png"), full_page=True)
                    shown = p.inner_text("#roll-panel")
                    assert wait_page(p, marker("roll_done", hup_at)), "the roll never ended"
                    return shown

                roll_panel = await browser.run(mid_roll)
                await browser.run(lambda b: wait_page(page["page"], all_back(hup_at)))

                # Kill the slot with the most players, its pid as /status has it.
                victim = max((await status(metrics))["shards"], key=lambda s: s["connections"])
                assert victim["connections"] > 0
                assert pid_alive(victim["pid"]) and cmdline_has(victim["pid"], b"shards")
                killed_at = time.time()
                os.kill(victim["pid"], signal.SIGKILL)

                def recovered(b: Any) -> dict[str, Any]:
                    p = page["page"]
                    wait_page(p, marker("shard_respawn", killed_at))
                    wait_page(p, all_back(killed_at))
                    p.screenshot(path=str(ARTIFACTS / "dashboard-end.png"), full_page=True)
                    return p.evaluate(SNAPSHOT)

                seen = await browser.run(recovered)
                if os.environ.get("WRITE_DOCS_SCREENSHOT") == "1":
                    await docs_screenshot(server, browser, page["page"])
            finally:
                if "context" in page:
                    await browser.run(lambda b: page["context"].close())
                load.cancel_scope.cancel()

    assert not errors, errors
    assert seen["live"] and seen["canvases"] >= 1 and seen["charts"] == 7, seen["charts"]
    samples, markers = seen["samples"], seen["markers"]
    times = [s["t"] for s in samples]
    assert times == sorted(set(times)), "samples out of order or doubled"
    kinds = [m["kind"] for m in markers]
    for kind in ("roll_start", "shard_replaced", "roll_done", "shard_crash", "shard_respawn"):
        assert kind in kinds, kinds
    assert kinds.count("shard_replaced") == 2, kinds  # one per slot
    crash = next(m for m in markers if m["kind"] == "shard_crash")
    assert crash["shard"] == victim["shard"] and crash["signal"] == "SIGKILL", crash
    # A roll lasts seconds (each step starts a process): samples and the panel show it.
    assert any(s["roll"] for s in samples if hup_at < s["t"] < killed_at)
    assert "rolling restart running: step" in roll_panel, roll_panel
    # The players line dips after the kill and comes back to everyone.
    before = [s["players"] for s in samples if s["t"] < killed_at]
    after = [s for s in samples if s["t"] > killed_at]
    assert before[-1] == PLAYERS, before[-5:]
    dip = next((i for i, s in enumerate(after) if s["players"] < PLAYERS), None)
    assert dip is not None, [s["players"] for s in after]
    assert after[dip]["shards"][str(victim["shard"])]["players"] < victim["connections"]
    assert any(s["players"] == PLAYERS for s in after[dip:]), [s["players"] for s in after]
    # Traffic and the crashed players' resumes reached the rate charts' data.
    assert any(s["rates"].get("messages_in", 0) > 0 for s in samples)
    assert any(s["away"] > 0 for s in after)
    assert any(s["rates"].get("resume|recovered", 0) > 0 for s in after)
    assert (ARTIFACTS / "dashboard-mid-roll.png").stat().st_size > 0
    assert (ARTIFACTS / "dashboard-end.png").stat().st_size > 0


async def docs_screenshot(server: ServerProcess, browser: BrowserThread, page: Any) -> None:
    """Roll once more and photograph the page (its first screenful) mid-roll."""
    hup_at = time.time()
    server.signal(signal.SIGHUP)

    def shoot(b: Any) -> None:
        assert wait_page(page, ROLL_SHOWN), "no roll on the page"
        page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)
        wait_page(page, marker("roll_done", hup_at))

    await browser.run(shoot)
    size = DOCS_SCREENSHOT.stat().st_size
    assert size < 300_000, f"{DOCS_SCREENSHOT} is {size} bytes"


async def test_a_lost_event_stream_is_reopened_and_the_gap_filled_from_history(
    browser: BrowserThread,
) -> None:
    """The first three ``/dashboard/events`` requests fail (as when the supervisor drops a
    reader that fell behind): the page retries every second, fetching
    ``/dashboard/history?since=`` its last sample each time, and ends with every sample,
    once, and no hole where the stream was missing. A marker's strings (here a node name
    that looks like markup) are shown as text."""
    async with open_server("--metrics-port", "0", shards=1, echo_logs=False) as server:
        metrics = int((await server.log.wait_for("metrics_ready"))["port"])

        def scenario(b: Any) -> tuple[list[str], list[str], dict[str, Any], str, bool]:
            context = b.new_context()
            try:
                page = context.new_page()
                streams: list[str] = []
                histories: list[str] = []

                def events(route: Any) -> None:
                    streams.append(route.request.url)
                    if len(streams) <= 3:
                        route.abort()
                    else:
                        route.continue_()

                page.route("**/dashboard/events", events)
                page.on(
                    "request",
                    lambda r: histories.append(r.url) if "/dashboard/history" in r.url else None,
                )
                page.goto(f"http://127.0.0.1:{metrics}/dashboard")
                wait_page(page, "window.dashboard.live")
                live_at = page.evaluate("window.dashboard.samples.length")
                # Two samples pushed over the stream after it came back.
                wait_page(page, f"window.dashboard.samples.length >= {live_at} + 2")
                seen = page.evaluate(SNAPSHOT)
                # Strings from the server go into the page as text, never as markup.
                page.evaluate(
                    "apply(['marker', {t: window.dashboard.samples.at(-1).t, kind: 'node_joined',"
                    " shard: null, node: '<img id=evil src=x>'}])"
                )
                wait_page(
                    page, "document.getElementById('event-rows').textContent.includes('evil')"
                )
                shown = page.inner_text("#event-rows")
                evil = page.evaluate("document.getElementById('evil') !== null")
                return streams, histories, seen, shown, evil
            finally:
                context.close()

        streams, histories, seen, shown, evil = await browser.run(scenario)
    assert "node <img id=evil src=x> joined" in shown and not evil, shown
    assert len(streams) == 4 and seen["live"], (streams, seen["live"])
    assert "since=" not in histories[0]
    assert len(histories) == 4 and all("?since=" in url for url in histories[1:]), histories
    times = [s["t"] for s in seen["samples"]]
    assert len(times) >= 5 and times == sorted(set(times)), times
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) < 1.5, gaps  # a sample every second, none missing
