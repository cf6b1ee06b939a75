"""The reconnecting client against a small in-test server that speaks the wire contract.

``FakeServer`` implements just enough of docs/PROTOCOL.md: welcome with rotating
one-use tokens, per-session ``seq`` with a replay buffer, ``cseq`` dedup and
``last_cseq``, heartbeat acks. Each test gives it a plan: one behaviour per incoming
connection (shut down with 1012, close 1013/4000/..., go silent, abort TCP, ...).
Timings use real time with small delays and generous upper bounds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from client import (
    Away,
    Backoff,
    Connected,
    GaveUp,
    Message,
    ReconnectingClient,
    Resumed,
    SessionLost,
    open_reconnecting_client,
)

FAST = Backoff(base=0.02, cap=0.1, max_retries=5)


# ------------------------------------------------------------------ fake server
@dataclass
class FakeSession:
    id: str
    epoch: int = 0
    seq: int = 0
    last_cseq: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Conn:
    """What the server saw on one connection."""

    query: dict[str, str]
    started: float
    binary: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    client_close: int | None = None
    ended: float | None = None
    token: str | None = None

    @property
    def cseqs(self) -> list[int]:
        return [m["cseq"] for m in self.received if m["type"] != "heartbeat"]

    @property
    def heartbeats(self) -> int:
        return sum(1 for m in self.received if m["type"] == "heartbeat")


Behaviour = Callable[["FakeServer", WebSocketRequest, Conn], Awaitable[None]]


class FakeServer:
    def __init__(
        self, plan: list[Behaviour] | None = None, *, interval_ms: int = 100, timeout_ms: int = 200
    ) -> None:
        self.plan = plan or []
        self.heartbeat = {"interval_ms": interval_ms, "timeout_ms": timeout_ms}
        self.sessions: dict[str, FakeSession] = {}
        self.tokens: dict[str, str] = {}  # current token -> session id
        self.conns: list[Conn] = []
        self.port = 0
        self.gate = trio.Event()
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def handler(self, request: WebSocketRequest) -> None:
        query = dict(parse_qsl(urlsplit(request.path).query))
        conn = Conn(query=query, started=trio.current_time())
        index = len(self.conns)
        self.conns.append(conn)
        self.changed()
        behaviour = self.plan[index] if index < len(self.plan) else normal
        try:
            await behaviour(self, request, conn)
        finally:
            conn.ended = trio.current_time()
            self.changed()

    # ---- building blocks for behaviours
    async def accept(self, request: WebSocketRequest, conn: Conn) -> WebSocketConnection:
        conn.binary = "msgpack" in request.proposed_subprotocols
        return await request.accept(subprotocol="msgpack" if conn.binary else None)

    async def send(self, ws: WebSocketConnection, conn: Conn, message: dict[str, Any]) -> None:
        if conn.binary:
            await ws.send_message(msgspec.msgpack.encode(message))
        else:
            await ws.send_message(msgspec.json.encode(message).decode())

    def record(self, session: FakeSession, message: dict[str, Any]) -> dict[str, Any]:
        session.seq += 1
        stamped = {**message, "seq": session.seq}
        session.buffer.append(stamped)
        return stamped

    async def read(self, ws: WebSocketConnection, conn: Conn) -> dict[str, Any]:
        """Read and record one client message without processing it."""
        frame = await ws.get_message()
        message = (msgspec.msgpack if conn.binary else msgspec.json).decode(frame)
        conn.received.append(message)
        self.changed()
        return message

    async def push(
        self, ws: WebSocketConnection, conn: Conn, session: FakeSession, message: dict[str, Any]
    ) -> None:
        await self.send(ws, conn, self.record(session, message))

    async def welcome(
        self,
        ws: WebSocketConnection,
        conn: Conn,
        *,
        resume_error: str | None = None,
        replay_gap: bool = False,
        replay_after: int | None = None,
        heartbeat: dict[str, int] | None = None,
    ) -> FakeSession:
        """Welcome (resuming when the token is good), then replay ``seq > last_seq``
        (``replay_after`` overrides where the replay starts)."""
        session: FakeSession | None = None
        token = conn.query.get("resume")
        if token is not None and resume_error is None:
            sid = self.tokens.pop(token, None)
            session = self.sessions.get(sid) if sid else None
            if session is None:
                resume_error = "invalid"
        resumed = session is not None
        if session is None:
            session = FakeSession(f"s{len(self.sessions)}")
            self.sessions[session.id] = session
        session.epoch += 1
        new_token = f"{session.id}.{session.epoch}"
        self.tokens = {t: s for t, s in self.tokens.items() if s != session.id}
        self.tokens[new_token] = session.id
        conn.token = new_token
        welcome: dict[str, Any] = {
            "type": "welcome",
            "session": session.id,
            "token": new_token,
            "resumed": resumed,
            "shard": 0,
            "heartbeat": heartbeat or self.heartbeat,
            "last_cseq": session.last_cseq,
        }
        if token is not None and not resumed:
            welcome["resume_error"] = resume_error
        if replay_gap:
            welcome["replay_gap"] = True
        await self.send(ws, conn, welcome)
        if resumed:
            start = int(conn.query["last_seq"]) if replay_after is None else replay_after
            for message in session.buffer:
                if message["seq"] > start:
                    await self.send(ws, conn, message)
        return session

    async def serve(
        self,
        ws: WebSocketConnection,
        conn: Conn,
        session: FakeSession,
        *,
        stop_after: int | None = None,
        answer_heartbeats: bool = True,
    ) -> None:
        """Process client messages (dedup by cseq, echo replies, heartbeat acks) until
        the client closes, or until ``stop_after`` messages were processed."""
        processed = 0
        try:
            while stop_after is None or processed < stop_after:
                message = await self.read(ws, conn)
                if message["type"] == "heartbeat":
                    if answer_heartbeats:
                        ack = {"type": "heartbeat_ack", "ts": message["ts"]}
                        await self.send(ws, conn, {**ack, "last_cseq": session.last_cseq})
                    continue
                cseq = message.get("cseq")
                if cseq is not None and cseq <= session.last_cseq:
                    continue  # a re-send the server already processed
                session.last_cseq = cseq or session.last_cseq
                processed += 1
                if message["type"] == "echo":
                    await self.push(ws, conn, session, {"type": "echo", "data": message["data"]})
        except ConnectionClosed as exc:
            conn.client_close = exc.reason.code if exc.reason else None


async def normal(srv: FakeServer, request: WebSocketRequest, conn: Conn) -> None:
    ws = await srv.accept(request, conn)
    session = await srv.welcome(ws, conn)
    await srv.serve(ws, conn, session)


async def abort(ws: WebSocketConnection) -> None:
    """Drop TCP without a close frame (the client sees 1006)."""
    await trio.aclose_forcefully(ws)


@asynccontextmanager
async def fake_server(
    plan: list[Behaviour] | None = None, **kwargs: Any
) -> AsyncIterator[FakeServer]:
    srv = FakeServer(plan, **kwargs)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, srv.handler, "127.0.0.1", 0, None)
        srv.port = server.port
        yield srv
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- event recorder
class Recorder:
    """Collects a client's events with the time each arrived."""

    def __init__(self, client: ReconnectingClient) -> None:
        self.client = client
        self.items: list[tuple[float, Any]] = []
        self.finished = False
        self._changed = trio.Event()

    async def run(self) -> None:
        async for event in self.client.events():
            self.items.append((trio.current_time(), event))
            self._changed.set()
            self._changed = trio.Event()
        self.finished = True
        self._changed.set()

    def of(self, cls: type) -> list[Any]:
        return [e for _, e in self.items if isinstance(e, cls)]

    def times(self, cls: type) -> list[float]:
        return [t for t, e in self.items if isinstance(e, cls)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for _, e in self.items]

    def seqs(self) -> list[int]:
        return [e.message["seq"] for e in self.of(Message)]

    async def wait(self, cls: type, count: int = 1, timeout: float = 5.0) -> Any:
        with trio.fail_after(timeout):
            while len(self.of(cls)) < count:
                if self.finished:
                    raise AssertionError(f"events ended before {cls.__name__}: {self.kinds()}")
                await self._changed.wait()
        return self.of(cls)[count - 1]


@asynccontextmanager
async def running_client(url: str, **kwargs: Any) -> AsyncIterator[tuple[Any, Recorder]]:
    kwargs.setdefault("backoff", FAST)
    async with open_reconnecting_client(url, **kwargs) as client:
        recorder = Recorder(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recorder.run)
            yield client, recorder
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------- tests
async def test_messages_in_order_acks_trim_outbox_and_close_is_1000() -> None:
    async with fake_server() as srv:
        async with running_client(srv.url) as (client, rec):
            for i in range(3):
                await client.send({"type": "echo", "data": i})
            welcome = (await rec.wait(Connected)).welcome
            await rec.wait(Message, 3)
            assert [e.message for e in rec.of(Message)] == [
                {"type": "echo", "data": i, "seq": i + 1} for i in range(3)
            ]
            assert client.session == welcome["session"] and client.last_seq == 3
            assert client.connected
            await srv.wait(lambda: client.outbox_size == 0)  # heartbeat_ack.last_cseq
            # A live server answering heartbeats is never taken for dead.
            await trio.sleep(0.6)
            assert srv.conns[0].heartbeats >= 5
            assert rec.kinds() == ["Connected", "Message", "Message", "Message"]
        await srv.wait(lambda: srv.conns[0].client_close is not None)
        assert srv.conns[0].client_close == 1000
        assert len(srv.conns) == 1
        assert srv.conns[0].cseqs == [1, 2, 3]


async def test_outbox_resent_after_resume_from_last_cseq_in_order() -> None:
    async def processes_two_then_drops(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn)
        await srv.serve(ws, conn, session, stop_after=2, answer_heartbeats=False)
        await abort(ws)

    async def waits_for_gate(srv: FakeServer, request: Any, conn: Conn) -> None:
        await srv.gate.wait()
        await normal(srv, request, conn)

    async with fake_server([processes_two_then_drops, waits_for_gate]) as srv:
        async with running_client(srv.url) as (client, rec):
            for i in range(1, 4):
                await client.send({"type": "echo", "data": f"m{i}"})
            await rec.wait(Away)
            assert not client.connected
            # Sent while away: queued, goes out after the re-sends.
            assert await client.send({"type": "echo", "data": "m4"}) == 4
            assert client.outbox_size == 4  # nothing acknowledged yet
            srv.gate.set()
            resumed = await rec.wait(Resumed)
            assert resumed.welcome["last_cseq"] == 2
            assert resumed.replayed_count == 2  # m3 and m4
            await rec.wait(Message, 4)
            assert [e.message["data"] for e in rec.of(Message)] == ["m1", "m2", "m3", "m4"]
            await srv.wait(lambda: client.outbox_size == 0)
        first, second = srv.conns
        assert second.query == {"resume": first.token, "last_seq": "2"}
        assert second.cseqs == [3, 4]  # acknowledged 1 and 2 were not re-sent
        assert rec.kinds()[:4] == ["Connected", "Message", "Message", "Away"]
        assert rec.of(Away)[0].code == 1006 and type(rec.of(Away)[0].code) is int


async def test_replay_delivers_missed_messages_once_and_drops_duplicates() -> None:
    async def three_then_drop(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn)
        for i in range(3):
            await srv.push(ws, conn, session, {"type": "said", "text": f"t{i + 1}"})
        await srv.read(ws, conn)  # a heartbeat: the client is live
        for i in range(3, 5):  # produced while the client is away
            srv.record(session, {"type": "said", "text": f"t{i + 1}"})
        await abort(ws)

    async def replays_too_much(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        # A sloppy replay starting at seq 2 although the client has seen 3.
        session = await srv.welcome(ws, conn, replay_after=1)
        await srv.push(ws, conn, session, {"type": "said", "text": "t6"})
        await srv.send(ws, conn, session.buffer[-1])  # the same seq again
        await srv.serve(ws, conn, session)

    async with fake_server([three_then_drop, replays_too_much]) as srv:
        async with running_client(srv.url) as (client, rec):
            await rec.wait(Message, 6)
            await trio.sleep(0.1)
            assert rec.seqs() == [1, 2, 3, 4, 5, 6]
            assert [e.message["text"] for e in rec.of(Message)] == [f"t{i}" for i in range(1, 7)]
            assert client.last_seq == 6
            assert client.duplicates_dropped == 3  # seq 2, 3 and the repeated 6
            assert client.gaps == 0
        assert srv.conns[1].query["last_seq"] == "3"
        assert rec.kinds()[:6] == ["Connected", "Message", "Message", "Message", "Away", "Resumed"]


async def test_resume_error_reports_session_lost_and_resets_seq_and_cseq() -> None:
    async def one_then_drop(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn)
        for i in range(2):
            await srv.push(ws, conn, session, {"type": "said", "text": f"old{i}"})
        await srv.read(ws, conn)
        await srv.read(ws, conn)
        await abort(ws)  # received, never processed or acknowledged

    async def expired(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn, resume_error="expired")
        await srv.push(ws, conn, session, {"type": "said", "text": "new"})
        await srv.serve(ws, conn, session)

    async with fake_server([one_then_drop, expired]) as srv:
        async with running_client(srv.url, heartbeat=False) as (client, rec):
            await client.send({"type": "say", "text": "a"})
            await client.send({"type": "say", "text": "b"})
            lost = await rec.wait(SessionLost)
            new = await rec.wait(Connected, 2)
            await rec.wait(Message, 3)
            assert lost.old_session == "s0" and lost.resume_error == "expired"
            assert lost.unacked == ({"type": "say", "text": "a"}, {"type": "say", "text": "b"})
            assert new.welcome["session"] == client.session == "s1"
            # seq restarted: the new session's seq 1 is delivered, not taken for a duplicate.
            assert rec.seqs() == [1, 2, 1]
            assert client.last_seq == 1 and client.outbox_size == 0
            assert await client.send({"type": "echo", "data": "c"}) == 1  # cseq restarted
            await rec.wait(Message, 4)
        assert rec.kinds() == [
            "Connected",
            "Message",
            "Message",
            "Away",
            "SessionLost",
            "Connected",
            "Message",
            "Message",
        ]
        assert srv.conns[1].cseqs == [1]  # the old session's messages were not re-sent
        assert srv.conns[1].received[0]["data"] == "c"


async def test_server_shutdown_reconnect_after_ms_is_honoured_instead_of_backoff() -> None:
    closed_at: list[float] = []

    async def shuts_down(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        await srv.welcome(ws, conn)
        shutdown = {"type": "server_shutdown", "reason": "deploy", "reconnect_after_ms": 300}
        await srv.send(ws, conn, shutdown)
        await ws.aclose(1012, "service restart")
        closed_at.append(trio.current_time())

    # The backoff alone would wait 5 s.
    slow = Backoff(base=5.0, cap=5.0, jitter="none")
    async with fake_server([shuts_down]) as srv:
        async with running_client(srv.url, backoff=slow) as (client, rec):
            await rec.wait(Resumed, timeout=3)
        waited = srv.conns[1].started - closed_at[0]
        assert 0.29 <= waited < 1.0, waited
        away = rec.of(Away)[0]
        assert away.code == 1012 and "deploy" in away.reason


async def test_try_again_later_backs_off_at_least_base_and_honours_hint() -> None:
    async def overloaded(hint: str) -> Behaviour:
        async def behaviour(srv: FakeServer, request: Any, conn: Conn) -> None:
            ws = await srv.accept(request, conn)
            await ws.aclose(1013, hint)  # before any welcome

        return behaviour

    plan = [await overloaded("over capacity; retry_after_ms=500"), await overloaded("busy")]
    backoff = Backoff(base=0.25, cap=0.3, max_retries=5)
    async with fake_server(plan) as srv:
        async with running_client(srv.url, backoff=backoff) as (client, rec):
            await rec.wait(Connected, timeout=4)
        first, second, third = srv.conns
        assert first.ended is not None and second.ended is not None
        assert 0.5 <= second.started - first.ended < 0.9
        assert 0.25 <= third.started - second.ended < 0.7
        assert rec.kinds()[:1] == ["Connected"]  # no Away: never welcomed before


async def test_backoff_is_jittered_per_rng_and_max_retries_gives_up() -> None:
    async def fails(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        await ws.aclose(1011, "boom")

    backoff = Backoff(base=0.08, cap=0.3, max_retries=4)
    seed = 1234
    rng = random.Random(seed)
    expected = [backoff.delay(n, rng) for n in range(4)]
    ceilings = [backoff.ceiling(n) for n in range(4)]
    assert any(d < 0.75 * c for d, c in zip(expected, ceilings, strict=True))  # jittered
    async with fake_server([fails] * 10) as srv:
        async with running_client(srv.url, backoff=backoff, rng=random.Random(seed)) as (
            client,
            rec,
        ):
            gave_up = await rec.wait(GaveUp, timeout=5)
            await trio.sleep(0.3)
            assert len(srv.conns) == 5  # the first attempt plus max_retries
            assert rec.finished and rec.kinds() == ["GaveUp"]
            assert "4 retries" in gave_up.reason and gave_up.code == 1011
            with pytest.raises(trio.ClosedResourceError):
                await client.send({"type": "echo", "data": 1})
        gaps = [b.started - a.ended for a, b in zip(srv.conns, srv.conns[1:], strict=False)]
        for gap, delay in zip(gaps, expected, strict=True):
            assert delay - 0.005 <= gap <= delay + 0.15, (gaps, expected)


async def test_dead_server_is_detected_and_the_client_reconnects() -> None:
    async def goes_silent(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        await srv.welcome(ws, conn, heartbeat={"interval_ms": 100, "timeout_ms": 200})
        await trio.sleep_forever()  # reads nothing, answers nothing

    async with fake_server([goes_silent]) as srv:
        async with running_client(srv.url) as (client, rec):
            away = await rec.wait(Away, timeout=3)
            await rec.wait(Resumed)
            silent_for = rec.times(Away)[0] - rec.times(Connected)[0]
            assert 0.3 <= silent_for < 0.6, silent_for
            assert away.code == 1006 and type(away.code) is int and "silent" in away.reason
            assert client.connected


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1000, "normal"),
        (1008, "policy"),
        (1002, "protocol"),
        (4000, "replaced"),
        (4500, "4500"),
    ],
)
async def test_terminal_close_codes_give_up_without_reconnecting(code: int, words: str) -> None:
    async def closes(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        await srv.welcome(ws, conn)
        await ws.aclose(code, "bye")

    async with fake_server([closes]) as srv:
        async with running_client(srv.url) as (client, rec):
            gave_up = await rec.wait(GaveUp)
            await trio.sleep(0.25)  # FAST backoff would have reconnected by now
            assert len(srv.conns) == 1
            assert rec.finished and rec.kinds() == ["Connected", "GaveUp"]
            assert gave_up.code == code and type(gave_up.code) is int
            assert words in gave_up.reason.lower()
            assert not client.connected


async def test_rejected_handshake_404_is_terminal_503_is_retried() -> None:
    async def reject(status: int) -> Behaviour:
        async def behaviour(srv: FakeServer, request: Any, conn: Conn) -> None:
            await request.reject(status, body=b"no")

        return behaviour

    async with fake_server([await reject(503), await reject(404)]) as srv:
        async with running_client(srv.url) as (client, rec):
            gave_up = await rec.wait(GaveUp)
            assert "404" in gave_up.reason
            assert len(srv.conns) == 2


async def test_handshake_reset_fails_fast_not_after_connect_timeout() -> None:
    accepted = 0

    async def slam(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.receive_some(1)  # the upgrade request has started
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, slam, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        backoff = Backoff(base=0.01, cap=0.01, max_retries=2)
        start = trio.current_time()
        async with running_client(
            f"ws://127.0.0.1:{port}/", backoff=backoff, connect_timeout=5.0
        ) as (client, rec):
            gave_up = await rec.wait(GaveUp, timeout=2)
        assert trio.current_time() - start < 1.5
        assert accepted == 3 and "handshake" in gave_up.reason
        nursery.cancel_scope.cancel()


async def test_connect_timeout_bounds_handshake_and_welcome_together() -> None:
    async def never_welcomes(srv: FakeServer, request: Any, conn: Conn) -> None:
        await srv.accept(request, conn)
        await trio.sleep_forever()

    backoff = Backoff(base=0.01, cap=0.01, max_retries=1)
    async with fake_server([never_welcomes] * 2) as srv:
        start = trio.current_time()
        async with running_client(srv.url, backoff=backoff, connect_timeout=0.2) as (_, rec):
            gave_up = await rec.wait(GaveUp, timeout=2)
        assert 0.4 <= trio.current_time() - start < 1.2
        assert "connect timeout" in gave_up.reason and len(srv.conns) == 2


async def test_msgpack_subprotocol() -> None:
    async with fake_server() as srv:
        async with running_client(srv.url, subprotocol="msgpack") as (client, rec):
            await client.send({"type": "echo", "data": b"\x00\x01"})
            message = (await rec.wait(Message)).message
        assert message == {"type": "echo", "data": b"\x00\x01", "seq": 1}
        assert srv.conns[0].binary and srv.conns[0].cseqs == [1]


async def test_stream_gap_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    async def skips(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn)
        await srv.push(ws, conn, session, {"type": "said", "text": "1"})
        session.seq += 1  # seq 2 is never sent
        await srv.push(ws, conn, session, {"type": "said", "text": "3"})
        await srv.serve(ws, conn, session)

    with caplog.at_level(logging.ERROR, logger="client.reconnecting"):
        async with fake_server([skips]) as srv:
            async with running_client(srv.url) as (client, rec):
                await rec.wait(Message, 2)
                assert rec.seqs() == [1, 3] and client.gaps == 1 and client.last_seq == 3
    assert any("stream gap" in r.getMessage() for r in caplog.records)


async def test_replay_gap_allows_one_jump_without_alarm(caplog: pytest.LogCaptureFixture) -> None:
    async def one_then_drop(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn)
        await srv.push(ws, conn, session, {"type": "said", "text": "1"})
        await srv.read(ws, conn)
        for i in range(2, 10):
            srv.record(session, {"type": "said", "text": str(i)})
        session.buffer = session.buffer[-2:]  # the buffer lost seq 2..7
        await abort(ws)

    async def gap(srv: FakeServer, request: Any, conn: Conn) -> None:
        ws = await srv.accept(request, conn)
        session = await srv.welcome(ws, conn, replay_gap=True)
        await srv.serve(ws, conn, session)

    with caplog.at_level(logging.ERROR, logger="client.reconnecting"):
        async with fake_server([one_then_drop, gap]) as srv:
            async with running_client(srv.url) as (client, rec):
                resumed = await rec.wait(Resumed)
                await rec.wait(Message, 3)
                assert resumed.replay_gap
                assert rec.seqs() == [1, 8, 9] and client.gaps == 0
    assert not caplog.records
