"""The reconnecting client follows a cluster redirect (first message ``redirect``, then
close 4002) at once: no backoff, no retry counted, its own resume state in the query.

Two real servers on free 127.0.0.1 ports: ``Redirector`` (R) answers every upgrade the
way a cluster node that does not own the room does (shards/connection.py): the ``101``,
the ``redirect`` frame and a 4002 close frame in one write; ``Owner`` (W) is the fake
wire-contract server of test_reconnecting_client (welcome with one-use tokens, echo,
resume with replay). The browser client's tests (tests/browser) use ``Redirector`` too.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from client import Away, Backoff, Connected, GaveUp, Message, Resumed
from client.reconnecting import MAX_REDIRECTS
from core.handshake import head_end, parse_head, upgrade
from core.ws_codec import OP_CLOSE, FrameDecoder, binary_frame, close_frame, text_frame
from tests.client.test_reconnecting_client import (
    Behaviour,
    Conn,
    FakeServer,
    abort,
    normal,
    running_client,
)

# Any backoff sleep at all would show: base 5 s, no jitter, so the first wait is 5 s.
SLOW = Backoff(base=5.0, cap=5.0, max_retries=0, jitter="none")
# A redirect is followed within this, under load too; far below SLOW's wait.
AT_ONCE = 2.5


# ------------------------------------------------------------------ the servers
@dataclass
class Hop:
    """One connection the redirector answered."""

    target: str  # the request target: path and query, as the client sent them
    started: float
    sent: float | None = None  # the redirect and the close frame are written
    client_close: int | None = None  # the client's close frame, if it sent one

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))


Reply = Callable[[str], dict[str, Any]]


class Redirector:
    """Answers every upgrade with ``reply(target)`` (the redirect message), then, if
    ``after`` is given, that message too, then a close frame with ``close`` (``None``:
    no close frame, TCP just ends), all in one write; then waits up to 2 s for the
    client's close frame and ends TCP."""

    def __init__(
        self, reply: Reply, *, close: int | None = 4002, after: dict[str, Any] | None = None
    ) -> None:
        self.reply = reply
        self.close = close
        self.after = after
        self.hops: list[Hop] = []
        self.port = 0
        self._changed = trio.Event()

    def url(self, target: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{target}"

    async def wait_hops(self, count: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while len(self.hops) < count:
                await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handler(self, stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while (end := head_end(data)) == -1:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
        request = parse_head(data[:end])
        answer = upgrade(request)
        hop = Hop(request.target, trio.current_time())
        self.hops.append(hop)
        binary = answer.subprotocol == "msgpack"

        def frame(message: dict[str, Any]) -> bytes:
            if binary:
                return binary_frame(msgspec.msgpack.encode(message))
            return text_frame(json.dumps(message).encode())

        out = answer.response + frame(self.reply(request.target))
        if self.after is not None:
            out += frame(self.after)
        if self.close is not None:
            out += close_frame(self.close, "redirect")
        try:
            await stream.send_all(out)
            hop.sent = trio.current_time()
            self._note()
            if self.close is None:
                return
            decoder = FrameDecoder()
            with trio.move_on_after(2):
                while chunk := await stream.receive_some(4096):
                    closes = [v for k, v in decoder.feed(chunk) if k == OP_CLOSE]
                    if closes:
                        hop.client_close = closes[0][0]  # type: ignore[index]
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def redirector(reply: Reply, **kwargs: Any) -> AsyncIterator[Redirector]:
    r = Redirector(reply, **kwargs)
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, r.handler, 0, host="127.0.0.1"))
        r.port = listener.socket.getsockname()[1]
        yield r
        nursery.cancel_scope.cancel()


class Owner(FakeServer):
    """The room's owner: the fake wire-contract server, also recording request paths.
    Its heartbeat (default 1 s interval, 2 s timeout) is lenient: the tests here are
    about connecting, not about a loaded machine's silences."""

    def __init__(
        self, plan: list[Behaviour] | None = None, interval_ms: int = 1000, timeout_ms: int = 2000
    ) -> None:
        super().__init__(plan, interval_ms=interval_ms, timeout_ms=timeout_ms)
        self.targets: list[str] = []

    async def handler(self, request: WebSocketRequest) -> None:
        self.targets.append(request.path)
        await super().handler(request)


@asynccontextmanager
async def owner(plan: list[Behaviour] | None = None) -> AsyncIterator[Owner]:
    srv = Owner(plan)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, srv.handler, "127.0.0.1", 0, None)
        srv.port = server.port
        yield srv
        nursery.cancel_scope.cancel()


def to(port: int, query: str | None = None) -> Reply:
    """A reply that redirects to ``port`` with the client's own target (its path and
    query, like the real server) or with the path and ``query`` given instead."""

    def reply(target: str) -> dict[str, Any]:
        if query is not None:
            target = urlsplit(target).path + "?" + query
        return {"type": "redirect", "url": f"ws://127.0.0.1:{port}{target}"}

    return reply


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on (connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("close", "subprotocol"),
    [(4002, None), (None, None), (4002, "msgpack")],
    ids=["close-4002", "tcp-just-ends", "msgpack"],
)
async def test_redirect_is_followed_at_once_without_backoff_or_counting_a_retry(
    close: int | None, subprotocol: str | None
) -> None:
    async with owner() as w, redirector(to(w.port), close=close) as r:
        # max_retries=0 and a 5 s first wait: only a redirect that is not a retry and
        # not a backoff gets the client to W, and within AT_ONCE.
        async with running_client(
            r.url("/rooms/r1?x=1"), backoff=SLOW, subprotocol=subprotocol
        ) as (client, rec):
            welcome = (await rec.wait(Connected, timeout=10)).welcome
            await client.send({"type": "echo", "data": "hi"})
            echo = await rec.wait(Message)
            assert client.connected and client.session == welcome["session"]
            assert echo.message == {"type": "echo", "data": "hi", "seq": 1}
            assert client.redirects_followed == 1
            # No event for the redirect: it is part of connecting, not a drop.
            assert rec.kinds() == ["Connected", "Message"]
        (hop,) = r.hops
        assert hop.sent is not None
        followed_in = w.conns[0].started - hop.sent
        assert 0 <= followed_in < AT_ONCE, followed_in
        assert hop.target == "/rooms/r1?x=1"
        assert w.targets == ["/rooms/r1?x=1"]  # the redirect's path, the client's query
        assert w.conns[0].binary == (subprotocol == "msgpack")
        assert len(w.conns) == 1


async def two_then_drop(srv: FakeServer, request: Any, conn: Conn) -> None:
    """A welcome, two says, then (once ``srv.gate`` opens) a third recorded while the
    client is away and the link dropped without a close frame."""
    ws = await srv.accept(request, conn)
    session = await srv.welcome(ws, conn)
    for i in range(2):
        await srv.push(ws, conn, session, {"type": "said", "text": f"t{i + 1}"})
    await srv.gate.wait()
    srv.record(session, {"type": "said", "text": "t3"})  # missed while away
    await abort(ws)


async def test_resume_through_a_redirect_uses_the_clients_own_token_and_last_seq() -> None:
    fast = Backoff(base=0.02, cap=0.1, max_retries=1)  # the drop uses the one retry
    async with owner([two_then_drop, normal]) as w:
        # R's redirect URL carries a stale token: the client must not use it.
        async with redirector(to(w.port, "resume=s0.0&last_seq=0")) as r:
            async with running_client(r.url("/rooms/r2"), backoff=fast) as (client, rec):
                await rec.wait(Message, 2)
                assert client.last_seq == 2
                w.gate.set()
                resumed = await rec.wait(Resumed, timeout=10)
                await rec.wait(Message, 3)
                assert resumed.welcome["resumed"] and client.session == "s0"
                assert rec.seqs() == [1, 2, 3]
                assert client.redirects_followed == 2
    first, second = w.conns
    own = {"resume": first.token, "last_seq": "2"}
    # The first connection had no token: the stale one in the redirect was not used.
    assert first.query == {} and w.targets[0] == "/rooms/r2"
    # After the welcomed link dropped, the client asked R (the original URL) again.
    assert [hop.query for hop in r.hops] == [{}, own]
    assert second.query == own
    assert rec.kinds() == ["Connected", "Message", "Message", "Away", "Resumed", "Message"]
    assert rec.of(Away)[0].code == 1006


async def test_a_dead_redirect_target_sends_the_next_attempt_to_the_original_url() -> None:
    backoff = Backoff(base=0.2, cap=1.0, max_retries=2, jitter="none")  # waits 0.2, 0.4
    async with redirector(to(free_port())) as r:
        async with running_client(r.url("/rooms/r3"), backoff=backoff) as (client, rec):
            gave_up = await rec.wait(GaveUp, timeout=10)
            assert client.redirects_followed == 3
    # Redirects are not retries: the first attempt plus max_retries=2 all reached R.
    assert len(r.hops) == 3
    assert "gave up after 2 retries" in gave_up.reason and "connect failed" in gave_up.reason
    waits = [b.started - a.sent for a, b in zip(r.hops, r.hops[1:], strict=False) if a.sent]
    assert len(waits) == 2
    assert 0.19 <= waits[0] < 0.2 + AT_ONCE and 0.39 <= waits[1] < 0.4 + AT_ONCE, waits
    assert rec.kinds() == ["GaveUp"]


async def test_a_redirect_loop_is_cut_after_five_then_backs_off_and_gives_up() -> None:
    backoff = Backoff(base=1.0, cap=1.0, max_retries=1, jitter="none")
    async with redirector(to(0)) as r:
        r.reply = to(r.port)  # to itself, forever
        async with running_client(r.url("/rooms/loop"), backoff=backoff) as (client, rec):
            gave_up = await rec.wait(GaveUp, timeout=10)
            await trio.sleep(0.5)  # nothing after giving up
            assert client.redirects_followed == 2 * MAX_REDIRECTS
    # Two rounds (the first attempt and one retry) of: the original URL, 5 redirects
    # followed at once, a 6th that counts as a failed attempt.
    assert len(r.hops) == 2 * (MAX_REDIRECTS + 1)
    assert gave_up.code == 4002
    assert "gave up after 1 retries" in gave_up.reason
    assert f"redirect loop: more than {MAX_REDIRECTS} redirects" in gave_up.reason
    waits = [b.started - a.sent for a, b in zip(r.hops, r.hops[1:], strict=False) if a.sent]
    backed_off = MAX_REDIRECTS  # between the 6th hop and the 7th
    assert 0.99 <= waits[backed_off] < 1.0 + AT_ONCE, waits
    assert all(0 <= w < 0.5 for i, w in enumerate(waits) if i != backed_off), waits
    assert rec.kinds() == ["GaveUp"]


@pytest.mark.parametrize(
    ("message", "after", "words"),
    [
        ({"type": "redirect", "url": "http://x/rooms/a"}, None, "'http://x/rooms/a' is not ws://"),
        ({"type": "redirect", "url": "ws:///rooms/a"}, None, "with a host"),
        ({"type": "redirect", "url": "ws://127.0.0.1:99999/"}, None, "with a host"),
        ({"type": "redirect"}, None, "url is None"),
        (None, {"type": "said", "text": "x"}, "a message followed it"),
    ],
    ids=["http", "no-host", "bad-port", "no-url", "message-after"],
)
async def test_a_redirect_that_cannot_be_followed_is_terminal(
    message: dict[str, Any] | None, after: dict[str, Any] | None, words: str
) -> None:
    async with owner() as w:
        reply = to(w.port) if message is None else (lambda target: message)
        async with redirector(reply, after=after) as r:
            async with running_client(r.url("/rooms/bad")) as (client, rec):
                gave_up = await rec.wait(GaveUp)
                await trio.sleep(0.25)  # FAST backoff would have reconnected by now
                assert client.redirects_followed == 0
        assert len(r.hops) == 1 and not w.conns
    assert gave_up.code == 1002
    assert gave_up.reason.startswith("bad redirect: ") and words in gave_up.reason
    assert rec.kinds() == ["GaveUp"]


async def test_a_redirect_closed_with_another_code_is_an_ordinary_failure() -> None:
    backoff = Backoff(base=0.02, cap=0.05, max_retries=2)
    async with owner() as w, redirector(to(w.port), close=1011) as r:
        async with running_client(r.url("/rooms/r4"), backoff=backoff) as (client, rec):
            gave_up = await rec.wait(GaveUp)
            assert client.redirects_followed == 0
    assert len(r.hops) == 3 and not w.conns  # every attempt went to R, none to W
    assert gave_up.code == 1011 and "gave up after 2 retries" in gave_up.reason
