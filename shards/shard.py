"""A shard: one trio process serving WebSocket connections from the shared listening socket.

``Shard`` builds the parts and keeps the nursery tree; each part is its own module:

* ``shards.reactor`` - one task that drives every open connection's frames;
* ``shards.acceptor`` - accepting (load-aware, capped) into one task per connection
  (``shards.connection``: head, routing, upgrade, session, classified end);
* ``shards.routing`` - connections passed to and from sibling shards (fd hand-off);
* ``shards.heartbeat`` - the wheel's task: pings, zombie closes;
* ``shards.session_host`` - sessions, grace, replay, broadcasts, hand-offs;
* ``shards.drain`` - shutdown and rolling-restart evacuation;
* ``shards.control_link`` - the channel to the supervisor.

Task tree: one nursery holds the control link, the reactor, the heartbeat, the session
host's loops and the signal task; a second one holds the acceptor, the hand-off receiver
and one task per connection, so that stopping the acceptor (a drain) leaves the
connections running until they are told to go. ``Shard`` is also the ``AppServer`` an
app is given (``send``, ``broadcast``, ``call_at``).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import trio

from core.config import ShardConfig
from core.control import (
    Adopt,
    Broadcast,
    BroadcastGap,
    ControlMessage,
    Drain,
    Evacuated,
    EvictRooms,
    Handoff,
    Journal,
    Load,
    Ready,
    Surrender,
)
from core.heartbeat import HeartbeatPolicy
from core.heartbeat_wheel import HeartbeatWheel
from core.journal import JournalWriter
from core.protocol import HeartbeatInfo, ServerMessage, StreamMessage
from core.session import Session
from core.tokens import TokenSigner, load_or_create_secret
from shards import stats as shard_stats
from shards.acceptor import Acceptor
from shards.app import App
from shards.connection import Connections
from shards.control_link import ControlLink
from shards.drain import Drainer
from shards.heartbeat import heartbeat_loop, spread_pings
from shards.load_table import LoadTable
from shards.log import log
from shards.reactor import Reactor
from shards.routing import Router
from shards.session_host import SessionHost
from shards.timers import TimerHandle, Timers

LOAD_REPORT_INTERVAL = 1.0  # seconds between Load reports to the supervisor

__all__ = ["Shard", "spread_pings"]


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
        secret: bytes | None = None,
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
        self.timers = Timers(config.index)
        self.control = ControlLink(control_sock, config.index) if control_sock else None
        self.host: SessionHost | None = None
        if app is not None:
            if secret is None:  # in-process tests; a spawned shard gets it via --secret-fd
                secret = load_or_create_secret(self.server.secret_file)
            self.host = SessionHost(
                self.shard_index,
                self.server,
                TokenSigner(secret),
                app,
                self.heartbeat_info,
                self.control.send if self.control is not None else None,
                booted_at=config.booted_at,
            )
        self.reactor = Reactor(self.wheel, self.shard_index)
        if (
            self.host is not None
            and self.control is not None
            and (self.server.durability == "stream")
        ):
            self.host.journal = JournalWriter(on_first=self.reactor.wake)
            self.reactor.deferred = True
            self.reactor.before_flush = self._flush_journal
        self.router = Router(handoff_sock, self.shard_index) if handoff_sock else None
        self.connections = Connections(
            self.shard_index,
            self.server,
            self.reactor,
            self.wheel,
            self.host,
            self.router,
            tuple(getattr(app, "messages", ())),
        )
        table = load_table if self.server.balance_accept else None
        self.acceptor = Acceptor(listen_sock, self.connections, table, self.shard_index)
        self.connections.on_count = self.acceptor.publish_load
        self.drainer = Drainer(
            self.shard_index,
            self.server,
            self.acceptor,
            self.connections,
            self.host,
            self._control,
            self._restart_accepting,
        )
        self._listen_sock = listen_sock

    @property
    def stats(self) -> dict[str, int]:
        return {"handshake_timeouts": self.connections.handshake_timeouts}

    # ================================================================== lifecycle
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.app is not None:
            self.app.start(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.reactor.run)
                nursery.start_soon(
                    heartbeat_loop, self.wheel, self.connections.ping, self.connections.expire
                )
                nursery.start_soon(self._signal_loop)
                if self.host is not None:
                    nursery.start_soon(self.host.grace_loop)
                    nursery.start_soon(self.timers.run)
                if self.control is not None:
                    nursery.start_soon(self.control.writer)
                    nursery.start_soon(self.control.reader, self._on_control, self._lost)
                    nursery.start_soon(self._load_reports)
                    if self.host is not None and self.host.journal is None:
                        nursery.start_soon(
                            self.host.checkpoint_loop, self.server.checkpoint_interval
                        )
                async with trio.open_nursery() as connections:
                    self._connections_nursery = connections
                    connections.start_soon(self.acceptor.run, connections)
                    if self.router is not None:
                        connections.start_soon(
                            self.router.receive,
                            self.connections.serve,
                            self._refusal,
                            self.connections.refuse,
                            connections,
                        )
                    self._control(
                        Ready(
                            shard=self.shard_index,
                            pid=os.getpid(),
                            generation=self.config.generation,
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
                    await self.drainer.done.wait()
                    if self.control is not None:
                        await self.control.flushed(1.0)
                    connections.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            self.reactor.close()

    def _restart_accepting(self) -> None:
        self.acceptor.scope = trio.CancelScope()
        self._connections_nursery.start_soon(self.acceptor.run, self._connections_nursery)

    def _refusal(self) -> str | None:
        if self.drainer.draining:
            return "shard draining"
        return self.connections.admit()

    async def _signal_loop(self) -> None:
        # Ctrl-C reaches the whole process group: the supervisor conducts the shutdown,
        # so a shard only drains on SIGTERM (or when its supervisor disappears).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self._nursery.start_soon(
                    self.drainer.drain,
                    "server shutting down",
                    self.server.reconnect_after_ms,
                    self.server.drain_timeout,
                )

    def _lost(self) -> None:
        """The supervisor is gone: nobody can respawn or route to us. Leave cleanly."""
        self._nursery.start_soon(
            self.drainer.drain,
            "supervisor lost",
            self.server.reconnect_after_ms,
            self.server.drain_timeout,
        )

    # ================================================================== AppServer API
    def send(self, session: Session, message: StreamMessage) -> None:
        """Number ``message`` in ``session``'s stream and send it (kept for replay)."""
        assert self.host is not None
        self.host.send(session, message)

    def broadcast(self, message: StreamMessage, sender: Session | None = None) -> bool:
        """``message`` to every session on every shard. Pass the ``sender`` when a client
        asked for it: the shard's broadcast budget then applies (False = refused)."""
        assert self.host is not None
        return self.host.broadcast(message, sender)

    def notify(self, session: Session, message: ServerMessage) -> None:
        """A message outside ``session``'s stream (an ``error`` answer), if connected."""
        assert self.host is not None
        self.host.notify(session, message)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return self.timers.call_at(when, callback)

    # ================================================================== control channel
    def _flush_journal(self) -> bool:
        """The reactor's gate before it writes to clients (``--durability stream``): the
        session journal so far handed to the kernel's socket buffer towards the supervisor.
        False while it is not all there yet (the reactor retries after a checkpoint)."""
        assert self.host is not None and self.host.journal is not None
        assert self.control is not None
        journal = self.host.journal
        while entries := journal.take():
            self.control.send(Journal(shard=self.shard_index, entries=entries))
        return self.control.drained

    def _control(self, message: ControlMessage) -> None:
        if self.control is not None:
            self.control.send(message)

    async def _load_reports(self) -> None:
        host = self.host

        def report() -> None:
            self._control(
                Load(
                    shard=self.shard_index,
                    connections=len(self.connections.links),
                    sessions=len(host.sessions) if host else 0,
                    rooms=len(host.rooms) if host else 0,
                    **stats.report(host),
                )
            )

        # Counts for the supervisor's /metrics; a drain reports at once (before Drained).
        stats = shard_stats.install(host, report)
        while True:
            report()
            await trio.sleep(LOAD_REPORT_INTERVAL)

    def _on_control(self, message: ControlMessage) -> None:
        host = self.host
        if isinstance(message, Broadcast):
            if host is not None:
                host.apply_broadcast(message.bseq, message.body)
        elif isinstance(message, BroadcastGap):
            if host is not None:
                host.mark_gap(message.first, message.last)
        elif isinstance(message, Surrender):
            if host is not None:
                self._control(host.surrender(message))
        elif isinstance(message, Handoff):
            if host is not None:
                host.install(message)
        elif isinstance(message, Adopt):
            if host is not None:
                adopted = host.adopt(message)
                if adopted is not None:
                    self._control(adopted)
        elif isinstance(message, Evacuated):
            self.drainer.on_evacuated(message)
        elif isinstance(message, EvictRooms):
            if host is not None:
                host.evict_rooms(message.reason, message.reconnect_after_ms)
        elif isinstance(message, Drain):
            self._nursery.start_soon(
                self.drainer.drain,
                message.reason,
                message.reconnect_after_ms,
                message.timeout,
                message.evacuate,
                message.window_ms or None,
                message.hold_s,
            )
