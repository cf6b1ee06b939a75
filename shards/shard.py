"""A shard: one trio process serving WebSocket connections from the shared listening socket.

Task tree (one nursery): the control channel reader and writer, the heartbeat task that
ticks the wheel, the accept loop (its own cancel scope, cancelled to drain), and one
task per connection in a separate nursery so that stopping the accept loop leaves the
connections running until they are told to go.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, wrap_server_stream

from core import balance
from core.close_codes import CloseCode, How
from core.config import ShardConfig
from core.control import (
    Adopt,
    Broadcast,
    ControlFrameError,
    ControlMessage,
    Drain,
    Drained,
    FrameReader,
    Handoff,
    Load,
    PassConnection,
    Ready,
    Surrender,
    encode_frame,
)
from core.heartbeat import HeartbeatPolicy
from core.heartbeat_wheel import HeartbeatWheel
from core.protocol import (
    MSGPACK_SUBPROTOCOL,
    Codec,
    Heartbeat,
    HeartbeatAck,
    HeartbeatInfo,
    ProtocolError,
    Said,
    ServerShutdown,
    StreamMessage,
    UserLeft,
)
from core.rate_limit import TokenBucket
from core.session import Session
from core.tokens import TokenSigner, load_or_create_secret
from shards import static
from shards import stats as shard_stats
from shards.activity import ActivityStream
from shards.app import App
from shards.connection import Connection, duration
from shards.load_table import LoadTable
from shards.log import log
from shards.routing import (
    BadRequest,
    check_upgrade,
    http_error,
    parse_target,
    peek_request_head,
    receive_connection,
    send_connection,
    target_of,
)
from shards.session_host import SessionHost
from shards.timers import TimerHandle, Timers

LOAD_REPORT_INTERVAL = 1.0  # seconds between Load reports to the supervisor
PING_BATCH = 64  # pings queued together; a tick's pings are spread in batches this size


async def spread_pings(
    slots: list[int],
    start: float,
    next_tick: float,
    ping: Callable[[list[int]], None],
    batch: int = PING_BATCH,
) -> None:
    """Call ``ping`` on one tick's slots in batches of ``batch`` (default 64) spread
    evenly over 80% of the time from ``start`` to ``next_tick``.

    A tick holds about N/10 of the connections' pings (tick = interval / 10): queued at
    once, they wake that many writers together and their pongs come back together, so
    every other frame of the shard waits behind the whole burst (120-150 ms at 10,000
    connections on one shard). Cost: a ping leaves up to 0.8 tick after it was decided,
    which shortens the client's time to answer by as much; the timeout runs from the
    decision, so the detection bound is unchanged.
    """
    if len(slots) <= batch:
        ping(slots)
        return
    batches = [slots[i : i + batch] for i in range(0, len(slots), batch)]
    step = max(0.0, next_tick - start) * 0.8 / len(batches)
    for i, part in enumerate(batches):
        if i:
            await trio.sleep_until(start + i * step)
        ping(part)


_ACCEPT_RESOURCE_ERRORS = {"EMFILE", "ENFILE", "ENOMEM", "ENOBUFS"}


class Shard:
    """Serves connections; ``app`` None means raw echo (``--app echo``)."""

    def __init__(
        self,
        config: ShardConfig,
        listen_sock: socket.socket,
        control_sock: socket.socket | None,
        app: App | None,
        handoff_sock: socket.socket | None = None,
        load_table: LoadTable | None = None,
    ) -> None:
        self.config = config
        self.server = config.server
        self.shard_index = config.index
        self.app = app
        self.policy = HeartbeatPolicy(self.server.heartbeat_interval, self.server.heartbeat_timeout)
        self.wheel = HeartbeatWheel(
            self.policy.interval, self.policy.timeout, tick=self.policy.tick
        )
        self.heartbeat_info = HeartbeatInfo(self.policy.interval_ms, self.policy.timeout_ms)
        self._listen_sock = listen_sock
        self._control_sock = control_sock
        self._handoff_std = handoff_sock
        self._handoff: trio.socket.SocketType | None = None
        self._handoff_lock = trio.Lock()
        self.timers = Timers(config.index)
        self._load_table = load_table if self.server.balance_accept else None
        self._live = 0  # connections accepted or received and not yet finished
        self.connections: dict[int, Connection] = {}
        self.host: SessionHost | None = None
        if app is not None:
            signer = TokenSigner(load_or_create_secret(self.server.secret_file))
            control = self._control if control_sock is not None else None
            self.host = SessionHost(
                self.shard_index,
                self.server,
                signer,
                app,
                self.heartbeat_info,
                control,
                booted_at=config.booted_at,
            )
        self._control_send, self._control_recv = trio.open_memory_channel[bytes](math.inf)
        self._control_queued = 0
        self._control_sent = 0
        self._control_flushed = trio.Event()
        self._accept_scope = trio.CancelScope()
        self._all_closed = trio.Event()
        self._draining = False
        self._done = trio.Event()
        self.stats = {"handshake_timeouts": 0}

    # ================================================================== lifecycle
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._listen_sock))
        if self.app is not None:
            self.app.start(self)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.host is not None:
                nursery.start_soon(self.host.grace_loop)
                nursery.start_soon(self.timers.run)
            if self._control_sock is not None:
                nursery.start_soon(self._load_reports)
                if self.host is not None:
                    nursery.start_soon(self.host.checkpoint_loop, self.server.checkpoint_interval)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._signal_loop)
            if self._control_sock is not None:
                control = trio.SocketStream(trio.socket.from_stdlib_socket(self._control_sock))
                nursery.start_soon(self._control_reader, control)
                nursery.start_soon(self._control_writer, control)
            async with trio.open_nursery() as connections:
                self._connections = connections
                connections.start_soon(self._accept_loop, listener, connections)
                if self._handoff_std is not None:
                    self._handoff = trio.socket.from_stdlib_socket(self._handoff_std)
                    connections.start_soon(self._handoff_reader, connections)
                self._control(
                    Ready(
                        shard=self.shard_index, pid=os.getpid(), generation=self.config.generation
                    )
                )
                log(
                    "shard_ready",
                    shard=self.shard_index,
                    pid=os.getpid(),
                    generation=self.config.generation,
                    app=self.server.app,
                    heartbeat_interval=self.policy.interval,
                    heartbeat_timeout=self.policy.timeout,
                    tick=self.policy.tick,
                )
                task_status.started()
                await self._done.wait()
                connections.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
        with trio.move_on_after(1):
            await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        with self._accept_scope:
            while True:
                await self._yield_if_busiest()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    name = _errno_name(exc)
                    if name in _ACCEPT_RESOURCE_ERRORS:
                        log("accept_error", shard=self.shard_index, error=name)
                        await trio.sleep(0.1)  # the kernel keeps the connection queued
                        continue
                    raise
                nursery.start_soon(self._counted, self._route, stream)

    async def _yield_if_busiest(self) -> None:
        """Let siblings take the next connection while this shard is well above the mean."""
        table = self._load_table
        if table is None:
            return
        waited = 0.0
        while waited < balance.MAX_PAUSE and balance.should_yield(self._live, table.loads()):
            await trio.sleep(balance.PAUSE)
            waited += balance.PAUSE

    async def _counted(
        self, serve: Callable[[trio.SocketStream], Any], stream: trio.SocketStream
    ) -> None:
        self._set_live(+1)
        try:
            await serve(stream)
        finally:
            self._set_live(-1)

    def _set_live(self, delta: int) -> None:
        self._live += delta
        if self._load_table is not None and not self._draining:
            self._load_table.set(self.shard_index, self._live)

    async def _signal_loop(self) -> None:
        # Ctrl-C reaches the whole process group: the supervisor conducts the shutdown,
        # so a shard only drains on SIGTERM (or when its supervisor disappears).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self._nursery.start_soon(
                    self.drain,
                    "server shutting down",
                    self.server.reconnect_after_ms,
                    self.server.drain_timeout,
                )

    # ================================================================== drain
    async def drain(
        self,
        reason: str,
        reconnect_after_ms: int,
        timeout: float,
        evacuate: bool = False,
        window_ms: int | None = None,
    ) -> None:
        """Stop accepting; with ``evacuate`` hand every room and session to siblings; tell
        every client when to come back (spread over ``window_ms``); close 1012; finish."""
        if self._draining:
            return
        self._draining = True
        if self._load_table is not None:
            self._load_table.set(self.shard_index, 0)  # the replacement publishes this slot
        started = trio.current_time()
        self._accept_scope.cancel()
        if evacuate and self.host is not None:
            for message in self.host.evacuate():
                self._control(message)
        conns = list(self.connections.values())
        log(
            "drain_start",
            shard=self.shard_index,
            connections=len(conns),
            reason=reason,
            evacuate=evacuate,
        )
        if evacuate and window_ms:
            # A rolling restart: close the clients one by one across the window, each told
            # to come straight back, so only a sliver of this shard's players is ever
            # reconnecting (their sessions already live on a sibling, which buffers their
            # traffic for the replay).
            await self._close_staggered(conns, reason, reconnect_after_ms, window_ms / 1000)
        else:
            window = reconnect_after_ms if window_ms is None else window_ms
            # Spread the reconnects over the window: no thundering herd on the siblings.
            for i, conn in enumerate(conns):
                delay = reconnect_after_ms + (window * i) // max(1, len(conns))
                self._tell_to_leave(conn, reason, delay)
        closed_all = True
        if self.connections:
            self._all_closed = trio.Event()
            with trio.move_on_after(timeout):
                await self._all_closed.wait()
            closed_all = not self.connections
        forced = len(self.connections)
        for conn in list(self.connections.values()):
            conn.abort(How.SERVER_CLOSED, CloseCode.SERVICE_RESTART, "drain timeout")
        if not closed_all:
            with trio.move_on_after(1):
                while self.connections:
                    self._all_closed = trio.Event()
                    await self._all_closed.wait()
        log(
            "drain_done",
            shard=self.shard_index,
            closed=len(conns) - forced,
            forced=forced,
            duration_s=trio.current_time() - started,
        )
        self._control(Drained(shard=self.shard_index, closed=len(conns) - forced, forced=forced))
        # Let the control writer put Drained (and everything before it) on the wire before
        # the process ends: wait for its count of sent frames, not for an empty buffer (an
        # idle writer takes a frame straight from send_nowait, leaving the buffer empty).
        with trio.move_on_after(1):
            while self._control_sent < self._control_queued:
                self._control_flushed = trio.Event()
                await self._control_flushed.wait()
        self._done.set()

    def _tell_to_leave(self, conn: Connection, reason: str, reconnect_after_ms: int) -> None:
        if self.app is not None and conn.session_id is not None:
            conn.send(
                conn.codec.encode(
                    ServerShutdown(reason=reason, reconnect_after_ms=reconnect_after_ms)
                )
            )
        conn.close(CloseCode.SERVICE_RESTART, reason[:60])

    async def _close_staggered(
        self, conns: list[Connection], reason: str, reconnect_after_ms: int, window: float
    ) -> None:
        # Paced by relative sleeps, not deadlines: after a stall (GC, CPU) the next close
        # still waits its turn instead of a burst of overdue closes going out at once.
        pause = window / max(1, len(conns))
        for i, conn in enumerate(conns):
            if i:
                await trio.sleep(pause)
            self._tell_to_leave(conn, reason, reconnect_after_ms)

    # ================================================================== connections
    async def _route(self, raw: trio.SocketStream) -> None:
        """Check the request head, then serve here or pass the socket to the shard owning
        its room or session. Nothing reaches trio-websocket before the whole head is in
        (bounded by --handshake-timeout) and has passed these checks."""
        try:
            head = await peek_request_head(raw.socket, self.server.handshake_timeout)
            if head is None:
                self.stats["handshake_timeouts"] += 1
                log(
                    "handshake_failed",
                    shard=self.shard_index,
                    peer=_peer(raw),
                    reason="no complete request head within the handshake timeout",
                )
                raw.socket.close()
                return
            line, headers = head
            page = static.response(line, headers)
            if page is not None:  # /play, /client.js: plain HTTP, answered here
                await self._send_and_close(raw, page)
                return
            target = parse_target(line)
            check_upgrade(headers, self.server.allowed_origins)
            limit = self.server.max_connections
            if limit is not None and len(self.connections) >= limit:
                raise BadRequest(503, f"over capacity ({limit} connections per shard)")
        except BadRequest as exc:
            await self._reject(raw, exc.status, exc.reason)
            return
        if self.host is None or self._handoff is None:
            await self._serve(raw)
            return
        note = None
        if target.room is not None and not self.host.hosts_room(target.room):
            note = PassConnection(room=target.room, origin=self.shard_index)
        elif target.room is None and target.token is not None and self.server.route_resumes:
            session_id = self.host.session_of_token(target.token)
            if session_id is not None and session_id not in self.host.sessions:
                note = PassConnection(session=session_id, origin=self.shard_index)
        if note is None:
            await self._serve(raw)
            return
        try:
            # One writer at a time: trio refuses a second task waiting on the same fd
            # (BusyResourceError) once the socket's buffer is full, as in a resume storm.
            async with self._handoff_lock:
                await send_connection(self._handoff, raw.socket.fileno(), note)
        except OSError as exc:
            log("route_failed", shard=self.shard_index, error=repr(exc), room=note.room)
            await self._serve(raw)  # the supervisor is gone: serve rather than drop
            return
        log("routed", shard=self.shard_index, room=note.room, session=note.session, peer=_peer(raw))
        raw.socket.close()  # the supervisor holds the connection now

    async def _reject(self, raw: trio.SocketStream, status: int, reason: str) -> None:
        log("request_rejected", shard=self.shard_index, status=status, reason=reason)
        await self._send_and_close(raw, http_error(status, reason))

    async def _send_and_close(self, raw: trio.SocketStream, response: bytes) -> None:
        # Lingering close: unread request bytes at close() would make the kernel send a
        # RST, which can destroy the error response before the client reads it.
        with trio.move_on_after(min(self.server.close_timeout, 2.0)):
            try:
                await raw.send_all(response)
                await raw.send_eof()
                while await raw.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        raw.socket.close()

    async def _handoff_reader(self, nursery: trio.Nursery) -> None:
        """Connections routed here by the supervisor: served without routing them again."""
        assert self._handoff is not None
        while True:
            try:
                received = await receive_connection(self._handoff)
            except OSError as exc:
                log("handoff_socket_error", shard=self.shard_index, error=repr(exc))
                return
            if received is None:
                return
            note, fds = received
            if note is None or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                log("handoff_bad_message", shard=self.shard_index, fds=len(fds))
                continue
            if self._draining:
                os.close(fds[0])  # the client reconnects and lands on a live shard
                continue
            sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fds[0]))
            nursery.start_soon(self._counted, self._serve, trio.SocketStream(sock))

    async def _load_reports(self) -> None:
        def report() -> None:
            self._control(
                Load(
                    shard=self.shard_index,
                    connections=len(self.connections),
                    sessions=len(self.host.sessions) if self.host else 0,
                    rooms=len(self.host.rooms) if self.host else 0,
                    **stats.report(self.host),
                )
            )

        # Counts for the supervisor's /metrics; a drain reports at once (before Drained).
        stats = shard_stats.install(self.host, report)
        while True:
            report()
            await trio.sleep(LOAD_REPORT_INTERVAL)

    async def _serve(self, raw: trio.SocketStream) -> None:
        stream = ActivityStream(raw, self.wheel)
        async with trio.open_nursery() as nursery:
            request = None
            with trio.move_on_after(self.server.handshake_timeout):
                try:
                    request = await wrap_server_stream(
                        nursery,
                        stream,
                        message_queue_size=self.server.message_queue,
                        max_message_size=self.server.max_message_size,
                    )
                    subprotocol = (
                        MSGPACK_SUBPROTOCOL
                        if MSGPACK_SUBPROTOCOL in request.proposed_subprotocols
                        else None
                    )
                    ws = await request.accept(subprotocol=subprotocol)
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    request = None
            if request is None:
                self.stats["handshake_timeouts"] += 1
                log("handshake_failed", shard=self.shard_index, reason="timeout or closed")
                nursery.cancel_scope.cancel()
                stream.abort()
                return
            now = trio.current_time()
            slot = self.wheel.add(now)
            stream.slot = slot
            conn = Connection(
                ws,
                stream,
                Codec.for_subprotocol(subprotocol),
                slot=slot,
                path=request.path,
                max_outbound_queue=self.server.max_outbound_queue,
                close_timeout=self.server.close_timeout,
                accepted_at=now,
            )
            conn.peer = _peer(raw)
            self.connections[slot] = conn
            nursery.start_soon(conn.run_writer)
            try:
                if self.app is None:
                    await self._raw_echo(conn)
                else:
                    await self._session_loop(conn, self.app)
                await conn.wait_closed()
            finally:
                nursery.cancel_scope.cancel()
                # Cancelling may catch trio-websocket's reader between "closed" and closing
                # its stream (a client-initiated close): close the socket ourselves, always.
                stream.abort()
                self._finish(conn)

    async def _raw_echo(self, conn: Connection) -> None:
        while True:
            try:
                frame = await conn.ws.get_message()
            except ConnectionClosed:
                return
            conn.send(frame)

    async def _session_loop(self, conn: Connection, app: App) -> None:
        assert self.host is not None
        # The path passed target_of in _route (or on the shard that routed it here).
        target = target_of(conn.path)
        opened = await self.host.open(target.token, target.last_seq, target.room)
        if conn.closing:
            # The client vanished while its session was being fetched: it stays away.
            conn.session = opened.session
            conn.session_id = opened.session.id
            self.host.attached[opened.session.id] = conn
            return
        self.host.attach(conn, opened)
        session = opened.session
        bucket = TokenBucket(
            self.server.max_message_rate, self.server.message_burst, trio.current_time()
        )
        while not conn.closing:
            try:
                frame = await conn.ws.get_message()
            except ConnectionClosed:
                return
            if not bucket.take(trio.current_time()):
                log(
                    "rate_limited",
                    shard=self.shard_index,
                    session=session.id,
                    rate=self.server.max_message_rate,
                )
                conn.close(CloseCode.POLICY_VIOLATION, "message rate limit")
                return
            shard_stats.count_in()
            try:
                message = conn.codec.decode(frame)
            except ProtocolError as exc:
                log(
                    "bad_message",
                    shard=self.shard_index,
                    session=session.id,
                    code=exc.code,
                    reason=exc.reason,
                )
                conn.close(exc.code, exc.reason)
                return
            if conn.session is not session:
                # Detached (replaced, or evacuated by a rolling restart): discard until the
                # server's close reaches it; the client re-sends what was not acknowledged.
                continue
            if not session.token_confirmed:
                session.confirm_token()  # it read its welcome: older tokens are dead now
            if isinstance(message, Heartbeat):
                conn.send(
                    conn.codec.encode(HeartbeatAck(ts=message.ts, last_cseq=session.last_cseq))
                )
                continue
            if session.is_duplicate(message.cseq):
                continue  # a re-send of something already processed before a reconnect
            if not self._call_app(conn, app.on_message, session, message):
                return
            session.processed(message.cseq)

    def _call_app(self, conn: Connection, fn: Any, *args: Any) -> bool:
        """Run an app callback; a crash closes only this connection, 1011, and is logged."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - an app bug must not take the shard down
            log(
                "app_error",
                shard=self.shard_index,
                callback=getattr(fn, "__name__", "?"),
                error=repr(exc)[:200],
            )
            conn.close(CloseCode.INTERNAL_ERROR, "application error")
            return False
        return True

    def _finish(self, conn: Connection) -> None:
        self.connections.pop(conn.slot, None)
        if conn.slot in self.wheel:
            self.wheel.remove(conn.slot)
        disconnect, reason = conn.outcome()
        log(
            "disconnect",
            kind=disconnect.kind,
            code=disconnect.code,
            reason=reason,
            session=conn.session_id,
            shard=self.shard_index,
            duration_s=duration(conn.accepted_at),
            silent_s=conn.silent_s,
            reconnect=disconnect.reconnect,
            peer=conn.peer,
        )
        if self.host is not None:
            self.host.detach(conn, disconnect)
        if not self.connections:
            self._all_closed.set()

    # ================================================================== AppServer API
    def send(self, session: Session, message: StreamMessage) -> None:
        assert self.host is not None
        self.host.send(session, message)

    def broadcast(self, message: Said | UserLeft) -> None:
        assert self.host is not None
        self.host.broadcast(message)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return self.timers.call_at(when, callback)

    # ================================================================== heartbeat
    async def _heartbeat_loop(self) -> None:
        tick = self.wheel.tick
        deadline = trio.current_time()
        while True:
            deadline += tick
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if now - deadline > tick:
                deadline = now  # the loop stalled: do not fire a burst of catch-up ticks
            pings, closes = self.wheel.advance(now)
            for slot in closes:
                conn = self.connections.get(slot)
                if conn is not None:
                    conn.expire(now - self.wheel.last_activity(slot))
            await spread_pings(pings, now, deadline + tick, self._ping)

    def _ping(self, slots: list[int]) -> None:
        for slot in slots:
            conn = self.connections.get(slot)
            if conn is not None:
                conn.ping()

    # ================================================================== control channel
    def _control(self, message: ControlMessage) -> None:
        if self._control_sock is not None:
            self._control_send.send_nowait(encode_frame(message))
            self._control_queued += 1

    async def _control_writer(self, stream: trio.SocketStream) -> None:
        async for frame in self._control_recv:
            try:
                await stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._control_sent += 1
            self._control_flushed.set()

    async def _control_reader(self, stream: trio.SocketStream) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                for message in reader.feed(data):
                    self._on_control(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ControlFrameError) as exc:
            log("control_error", shard=self.shard_index, error=repr(exc))
        # The supervisor is gone: nobody can respawn or route to us. Leave cleanly.
        log("supervisor_lost", shard=self.shard_index)
        self._nursery.start_soon(
            self.drain, "supervisor lost", self.server.reconnect_after_ms, self.server.drain_timeout
        )

    def _on_control(self, message: ControlMessage) -> None:
        if isinstance(message, Broadcast):
            if self.host is not None:
                self.host.apply_broadcast(message.bseq, message.message)
        elif isinstance(message, Surrender):
            if self.host is not None:
                self._control(self.host.surrender(message))
        elif isinstance(message, Handoff):
            if self.host is not None:
                self.host.install(message)
        elif isinstance(message, Drain):
            self._nursery.start_soon(
                self.drain,
                message.reason,
                message.reconnect_after_ms,
                message.timeout,
                message.evacuate,
                message.window_ms or None,
            )
        elif isinstance(message, Adopt):
            if self.host is not None:
                self.host.adopt(message)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "-"
    return f"{host}:{port}"


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "")
