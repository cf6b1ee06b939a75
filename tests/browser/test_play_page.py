"""The /play page and client.js in a real (headless) chromium against the real server.

Every test starts ``python -m supervisor`` (tests.support.open_server) and opens
``http://…/play`` in a fresh browser context (its own sessionStorage). The page exposes
``window.client`` (the ReconnectingClient), ``window.events`` (client event names),
``window.received`` (stream seqs delivered) and ``window.saids`` (said texts).
"""

from __future__ import annotations

import signal
from typing import Any

import trio

from client.reconnecting import Connected, open_reconnecting_client
from lab.rawws import RawClient
from lab.server import open_server
from tests.browser.browser import ARTIFACTS, BrowserThread

WAIT_MS = 20000


def open_play(b: Any, port: int, room: str) -> tuple[Any, Any]:
    context = b.new_context(viewport={"width": 900, "height": 760})
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/play?room={room}&join=1")
    page.wait_for_function("window.client && window.client.connected", timeout=WAIT_MS)
    return context, page


async def test_page_connects_and_shows_the_welcome(browser: BrowserThread) -> None:
    async with open_server(shards=2) as server:

        def scenario(b: Any) -> tuple[str, str, list[str]]:
            context, page = open_play(b, server.port, "t-welcome")
            try:
                return (
                    page.inner_text("#session"),
                    page.evaluate("window.client.session"),
                    page.evaluate("window.events"),
                )
            finally:
                context.close()

        shown, session, events = await browser.run(scenario)
        assert len(shown) == 16 and shown == session
        assert events[0] == "connected"
        await server.log.wait_for("disconnect", session=session)


async def test_reload_resumes_the_same_session(browser: BrowserThread) -> None:
    async with open_server(shards=2) as server:

        def scenario(b: Any) -> tuple[str, str, list[str], str]:
            context, page = open_play(b, server.port, "t-reload")
            try:
                before = page.evaluate("window.client.session")
                page.reload()
                page.wait_for_function(
                    "window.events && window.events.includes('resumed')", timeout=WAIT_MS
                )
                return (
                    before,
                    page.evaluate("window.client.session"),
                    page.evaluate("window.events"),
                    page.inner_text("#session"),
                )
            finally:
                context.close()

        before, after, events, shown = await browser.run(scenario)
        assert before == after == shown
        assert events[0] == "resumed" and "connected" not in events
        # The unload closed with 4001 (away, not a leave): no user_left for the session.
        assert not server.log.events("disconnect", session=before, kind="graceful")


async def test_rolling_restart_resumes_the_page_without_losing_a_message(
    browser: BrowserThread,
) -> None:
    async with open_server(shards=2) as server:
        state: dict[str, Any] = {}

        def open_page(b: Any) -> str:
            state["context"], state["page"] = open_play(b, server.port, "t-roll")
            return state["page"].evaluate("window.client.session")

        session = await browser.run(open_page)
        sent: list[str] = []
        async with open_reconnecting_client(server.url("/")) as sender:
            events = sender.events()
            with trio.fail_after(10):
                async for event in events:
                    if isinstance(event, Connected):
                        break
            done = trio.Event()

            async def roll() -> None:
                server.signal(signal.SIGHUP)
                await server.log.wait_for("roll_done", timeout=60)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(roll)
                extra = 10
                while extra:
                    text = f"n-{len(sent)}"
                    await sender.send({"type": "say", "text": text})
                    sent.append(text)
                    if done.is_set():
                        extra -= 1
                    await trio.sleep(0.05)

            def collect(b: Any) -> dict[str, Any]:
                page = state["page"]
                try:
                    page.wait_for_function(
                        f"window.saids.filter((t) => t.startsWith('n-')).length >= {len(sent)}",
                        timeout=WAIT_MS,
                    )
                    page.wait_for_timeout(300)  # a duplicate would arrive right behind
                    return page.evaluate(
                        "({session: window.client.session, events: window.events,"
                        " received: window.received, saids: window.saids,"
                        " dups: window.client.duplicatesDropped, gaps: window.client.gaps})"
                    )
                finally:
                    state["context"].close()

            result = await browser.run(collect)
        assert result["session"] == session
        assert "away" in result["events"] and "resumed" in result["events"]
        assert result["events"][0] == "connected" and result["events"].count("connected") == 1
        assert [t for t in result["saids"] if t.startswith("n-")] == sent  # once, in order
        received = result["received"]
        assert received == list(range(received[0], received[0] + len(received)))
        assert result["gaps"] == 0
        drained = server.log.events("disconnect", session=session, code=1012)
        assert drained, "the page's connection was not drained by the roll"


async def test_screenshots_of_play_with_an_away_player_and_of_the_dashboard(
    browser: BrowserThread,
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with open_server("--metrics-port", "0", shards=2) as server:
        metrics = int((await server.log.wait_for("metrics_ready"))["port"])
        state: dict[str, Any] = {}

        def open_page(b: Any) -> None:
            state["context"], state["page"] = open_play(b, server.port, "t-shot")

        await browser.run(open_page)
        other = await RawClient.connect(server.port, "/rooms/t-shot")
        welcome = await other.receive_until("welcome")

        def two_seats(b: Any) -> None:
            state["page"].wait_for_function(
                "document.querySelectorAll('#seats tr').length === 2", timeout=WAIT_MS
            )

        await browser.run(two_seats)
        other.vanish()

        def shoot_play(b: Any) -> str:
            page = state["page"]
            row = f"#seats tr[data-session='{welcome['session']}']"
            page.wait_for_function(
                f"document.querySelector(\"{row}\")?.textContent.includes('AI playing')",
                timeout=WAIT_MS,
            )
            page.screenshot(path=str(ARTIFACTS / "play.png"), full_page=True)
            return page.inner_text(row)

        row_text = await browser.run(shoot_play)
        assert "AI playing" in row_text

        def open_dashboard(b: Any) -> None:
            page = state["context"].new_page()
            page.set_viewport_size({"width": 1000, "height": 800})
            page.goto(f"http://127.0.0.1:{metrics}/dashboard")
            page.wait_for_function("window.polls >= 1", timeout=WAIT_MS)
            state["dashboard"] = page

        await browser.run(open_dashboard)
        server.signal(signal.SIGHUP)

        def shoot_dashboard(b: Any) -> str:
            page = state["dashboard"]
            try:
                page.wait_for_function(
                    "document.querySelector('#roll').className === 'on'", timeout=WAIT_MS
                )
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                return page.inner_text("body")
            finally:
                state["context"].close()

        text = await browser.run(shoot_dashboard)
        assert "rolling restart running" in text
        await server.log.wait_for("roll_done", timeout=60)
    assert (ARTIFACTS / "play.png").stat().st_size > 0
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 0


async def test_a_killed_server_is_retried_with_jittered_backoff_until_it_is_back(
    browser: BrowserThread,
) -> None:
    """The whole server dies (supervisor and shards, SIGKILL) and comes back seconds later
    on the same port: the page retries with full-jitter backoff and reconnects. Sessions
    died with the supervisor (it holds the checkpoints), so the page starts a new one and
    says so (``session_lost``) instead of pretending."""
    import socket as stdsocket

    with stdsocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    held: dict[str, Any] = {}

    def connect(b: Any) -> str:
        held["context"], held["page"] = open_play(b, port, "t-killed")
        page = held["page"]
        page.evaluate(
            "window.delays = []; window.client.addEventListener('away', "
            "e => window.delays.push(e.detail.delayMs))"
        )
        return page.evaluate("window.client.session")

    async with open_server("--port", str(port), shards=2) as first:
        assert first.port == port
        old_session = await browser.run(connect)
    # open_server killed every process it started: the server is gone.
    await trio.sleep(3.0)  # the outage itself

    def retried(b: Any) -> list[float]:
        page = held["page"]
        page.wait_for_function("window.delays.length >= 2", timeout=WAIT_MS)
        return page.evaluate("window.delays")

    delays = await browser.run(retried)
    try:
        async with open_server("--port", str(port), shards=2) as second:
            assert second.port == port

            def back(b: Any) -> tuple[bool, str, list[str], list[float]]:
                page = held["page"]
                page.wait_for_function("window.client && window.client.connected", timeout=60000)
                return (
                    page.evaluate("window.client.connected"),
                    page.evaluate("window.client.session"),
                    page.evaluate("window.events"),
                    page.evaluate("window.delays"),
                )

            connected, new_session, events, delays = await browser.run(back)
    finally:
        await browser.run(lambda b: held["context"].close())
    assert connected and new_session != old_session
    lost = events.index("session_lost")
    assert "connected" in events[lost:]  # then a new session (and its room's messages)
    assert len(delays) >= 2
    # Full jitter: uniform(0, min(cap, base * 2**attempt)) - never the same fixed wait.
    assert len(set(delays)) == len(delays)
    assert all(0 <= d <= 1000 * 2**i for i, d in enumerate(delays))
