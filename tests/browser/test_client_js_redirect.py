"""client.js in a real (headless) chromium follows a cluster redirect (first message
``redirect``, then close 4002) at once: no backoff, no retry counted, its own resume
state in the query; the same servers as tests/client/test_redirect.py.

The page comes from a tiny HTTP server on 127.0.0.1 (``origin``): ``/client.js`` is the
file in shards/web, ``/`` a module page with ``window.start(url, options)`` that creates
the client (no sessionStorage, jitter ``random: () => 1`` so every backoff wait is its
full ceiling) and records every event with its detail in ``window.events``. Times are
taken by the servers, on one trio clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.browser.browser import BrowserThread
from tests.client.test_reconnecting_client import normal
from tests.client.test_redirect import AT_ONCE, free_port, owner, redirector, to, two_then_drop

CLIENT_JS = Path(__file__).resolve().parents[2] / "shards" / "web" / "client.js"
PAGE = """<!doctype html><meta charset="utf-8"><title>redirect</title>
<script type="module">
import { ReconnectingClient } from "/client.js";
window.events = [];
window.start = (url, options) => {
  const client = new ReconnectingClient(url, { storage: false, random: () => 1, ...options });
  for (const name of ["connected", "resumed", "session_lost", "message", "away", "gave_up"]) {
    client.addEventListener(name, (e) => window.events.push({ name, ...e.detail }));
  }
  window.client = client;
  client.start();
};
</script>"""
WAIT_MS = 20000
MAX_REDIRECTS = 5  # client.js's MAX_REDIRECTS, checked against the module in run()


async def serve_page(stream: trio.SocketStream) -> None:
    """``GET /``: the page; ``GET /client.js``: shards/web/client.js; else 404. The page
    comes from 127.0.0.1 like the WebSocket servers (chromium blocks a page of another
    address space from opening loopback connections)."""
    async with stream:
        head = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in head and (chunk := await stream.receive_some(4096)):
                head += chunk
        path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else ""
        pages = {"/": (PAGE.encode(), "text/html"), "/client.js": (CLIENT_JS.read_bytes(), "")}
        body, kind = pages.get(path, (b"not found", "text/plain"))
        status = "200 OK" if path in pages else "404 Not Found"
        kind = kind or "text/javascript"
        answer = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(answer.encode() + body)


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """The page's http://127.0.0.1:PORT origin."""
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, serve_page, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


def open_page(b: Any, origin: str) -> tuple[Any, Any]:
    context = b.new_context()
    page = context.new_page()
    page.goto(f"{origin}/")
    page.wait_for_function("typeof window.start === 'function'", timeout=WAIT_MS)
    return context, page


def run_until(origin: str, url: str, options: dict[str, Any], until: str) -> Any:
    """A scenario for ``browser.run``: start the client, wait for ``until`` (a JS
    expression), return the events and the client's counters."""

    def scenario(b: Any) -> dict[str, Any]:
        context, page = open_page(b, origin)
        try:
            page.evaluate("([url, options]) => window.start(url, options)", [url, options])
            page.wait_for_function(until, timeout=WAIT_MS)
            page.wait_for_timeout(300)  # anything that should not happen would by now
            return page.evaluate(
                "async () => ({events: window.events, connected: window.client.connected,"
                " followed: window.client.redirectsFollowed,"
                " max: (await import('/client.js')).MAX_REDIRECTS})"
            )
        finally:
            context.close()

    return scenario


async def run(
    browser: BrowserThread, origin: str, url: str, options: dict[str, Any], until: str
) -> Any:
    result = await browser.run(run_until(origin, url, options, until))
    assert result["max"] == MAX_REDIRECTS
    return result


def names(result: dict[str, Any]) -> list[str]:
    return [e["name"] for e in result["events"]]


@pytest.mark.parametrize("close", [4002, None], ids=["close-4002", "tcp-just-ends"])
async def test_redirect_is_followed_at_once_without_backoff_or_counting_a_retry(
    browser: BrowserThread, origin: str, close: int | None
) -> None:
    async with owner() as w, redirector(to(w.port), close=close) as r:
        # maxRetries 0 and a 5 s first wait: only a redirect that is not a retry and not
        # a backoff gets the page to W, and within AT_ONCE.
        options = {"maxRetries": 0, "backoffBaseMs": 5000, "backoffCapMs": 5000}
        result = await run(
            browser, origin, r.url("/rooms/j1?x=1"), options, "window.client.connected"
        )
    assert result["connected"] and result["followed"] == 1
    assert names(result) == ["away", "connected"]
    away = result["events"][0]
    assert away["code"] == 4002 and away["delayMs"] == 0
    assert away["reason"] == f"redirected to ws://127.0.0.1:{w.port}/rooms/j1"
    (hop,) = r.hops
    assert hop.sent is not None
    followed_in = w.conns[0].started - hop.sent
    assert 0 <= followed_in < AT_ONCE, followed_in
    assert w.targets == ["/rooms/j1?x=1"]  # the redirect's path, the client's query


async def test_resume_through_a_redirect_uses_the_clients_own_token_and_last_seq(
    browser: BrowserThread, origin: str
) -> None:
    state: dict[str, Any] = {}

    def start(b: Any) -> None:
        state["context"], page = open_page(b, origin)
        state["page"] = page
        options = {"maxRetries": 1, "backoffBaseMs": 20, "backoffCapMs": 100}
        page.evaluate("([url, options]) => window.start(url, options)", [state["url"], options])
        page.wait_for_function("window.client.lastSeq === 2", timeout=WAIT_MS)

    def resumed(b: Any) -> dict[str, Any]:
        page = state["page"]
        try:
            page.wait_for_function("window.client.lastSeq === 3", timeout=WAIT_MS)
            return page.evaluate(
                "({events: window.events, session: window.client.session,"
                " followed: window.client.redirectsFollowed})"
            )
        finally:
            state["context"].close()

    async with owner([two_then_drop, normal]) as w:
        # R's redirect URL carries a stale token: the client must not use it.
        async with redirector(to(w.port, "resume=s0.0&last_seq=0")) as r:
            state["url"] = r.url("/rooms/j2")
            await browser.run(start)
            w.gate.set()
            result = await browser.run(resumed)
    first, second = w.conns
    own = {"resume": first.token, "last_seq": "2"}
    assert first.query == {}  # no token yet: the stale one in the redirect was not used
    assert [hop.query for hop in r.hops] == [{}, own]  # after the drop: R again
    assert second.query == own
    assert result["session"] == "s0" and result["followed"] == 2
    kinds = [e["name"] for e in result["events"]]
    assert kinds == [
        "away",
        "connected",
        "message",
        "message",
        "away",
        "away",
        "resumed",
        "message",
    ]
    codes = [e["code"] for e in result["events"] if e["name"] == "away"]
    assert codes == [4002, 1006, 4002]


async def test_a_redirect_loop_is_cut_after_five_then_backs_off_and_gives_up(
    browser: BrowserThread, origin: str
) -> None:
    async with redirector(to(0)) as r:
        r.reply = to(r.port)  # to itself, forever
        options = {"maxRetries": 1, "backoffBaseMs": 1000, "backoffCapMs": 1000}
        result = await run(
            browser,
            origin,
            r.url("/rooms/loop"),
            options,
            "window.events.some(e => e.name === 'gave_up')",
        )
    assert len(r.hops) == 2 * (MAX_REDIRECTS + 1)
    assert result["followed"] == 2 * MAX_REDIRECTS
    events = result["events"]
    round_ = ["away"] * (MAX_REDIRECTS + 1)
    assert names(result) == round_ + round_[:-1] + ["gave_up"]
    assert [e["delayMs"] for e in events[: MAX_REDIRECTS + 1]] == [0] * MAX_REDIRECTS + [1000]
    cut = events[MAX_REDIRECTS]
    assert cut["code"] == 4002 and cut["reason"].startswith("redirect loop: more than 5")
    gave_up = events[-1]
    assert (
        gave_up["code"] == 4002
        and "gave up after 1 retries; last: redirect loop" in (gave_up["reason"])
    )
    waits = [b.started - a.sent for a, b in zip(r.hops, r.hops[1:], strict=False) if a.sent]
    assert 0.99 <= waits[MAX_REDIRECTS] < 1.0 + AT_ONCE, waits
    assert all(0 <= w < 0.5 for i, w in enumerate(waits) if i != MAX_REDIRECTS), waits


async def test_a_dead_redirect_target_sends_the_next_attempt_to_the_original_url(
    browser: BrowserThread, origin: str
) -> None:
    async with redirector(to(free_port())) as r:
        options = {"maxRetries": 2, "backoffBaseMs": 200, "backoffCapMs": 1000}  # 200, 400
        result = await run(
            browser,
            origin,
            r.url("/rooms/j3"),
            options,
            "window.events.some(e => e.name === 'gave_up')",
        )
    assert len(r.hops) == 3 and result["followed"] == 3
    waits = [b.started - a.sent for a, b in zip(r.hops, r.hops[1:], strict=False) if a.sent]
    assert 0.19 <= waits[0] < 0.2 + AT_ONCE and 0.39 <= waits[1] < 0.4 + AT_ONCE, waits
    assert "gave up after 2 retries" in result["events"][-1]["reason"]


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"type": "redirect", "url": "http://x/rooms/a"}, '"http://x/rooms/a" is not ws://'),
        ({"type": "redirect", "url": "ws:///rooms/a"}, "with a host"),
        ({"type": "redirect", "url": "ws://127.0.0.1:99999/"}, "with a host"),
        ({"type": "redirect"}, "url is undefined"),
        ({"type": "hello"}, "bad welcome"),  # not a redirect either: as before, terminal
    ],
    ids=["http", "no-host", "bad-port", "no-url", "not-a-welcome"],
)
async def test_a_redirect_that_cannot_be_followed_is_terminal(
    browser: BrowserThread, origin: str, message: dict[str, Any], words: str
) -> None:
    async with owner() as w, redirector(lambda target: message) as r:
        result = await run(
            browser,
            origin,
            r.url("/rooms/bad"),
            {},
            "window.events.some(e => e.name === 'gave_up')",
        )
        await trio.sleep(0.2)
    assert len(r.hops) == 1 and not w.conns
    assert names(result) == ["gave_up"] and result["followed"] == 0
    gave_up = result["events"][0]
    assert gave_up["code"] == 1002
    assert words in gave_up["reason"]
    if message["type"] == "redirect":
        assert gave_up["reason"].startswith("bad redirect: ")


async def test_a_message_after_the_redirect_is_terminal(
    browser: BrowserThread, origin: str
) -> None:
    async with owner() as w, redirector(to(w.port), after={"type": "said", "text": "x"}) as r:
        result = await run(
            browser, origin, r.url("/rooms/j5"), {}, "window.events.some(e => e.name === 'gave_up')"
        )
    assert len(r.hops) == 1 and not w.conns
    assert names(result) == ["gave_up"]
    assert result["events"][0] == {
        "name": "gave_up",
        "reason": "bad redirect: a message followed it",
        "code": 1002,
    }


async def test_a_redirect_closed_with_another_code_is_an_ordinary_failure(
    browser: BrowserThread, origin: str
) -> None:
    async with owner() as w, redirector(to(w.port), close=1011) as r:
        options = {"maxRetries": 2, "backoffBaseMs": 20, "backoffCapMs": 50}
        result = await run(
            browser,
            origin,
            r.url("/rooms/j6"),
            options,
            "window.events.some(e => e.name === 'gave_up')",
        )
    assert len(r.hops) == 3 and not w.conns  # every attempt went to R, none to W
    assert result["followed"] == 0
    assert [e["code"] for e in result["events"]] == [1011, 1011, 1011]
    assert "gave up after 2 retries" in result["events"][-1]["reason"]
