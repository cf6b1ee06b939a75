"""The supervisor's master loop, in the manner of gunicorn's arbiter.

It binds the listening socket once and keeps that fd for the life of the service, so a
replacement shard can always inherit it. Each shard index has a keeper task that spawns
the shard (a fresh interpreter), waits for it to exit and respawns it with backoff unless
the service is stopping. Signals arrive as events in one loop and are handled by named
methods. Shard -> supervisor traffic (ready, broadcasts, drained) arrives over one Unix
socketpair per shard.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from core.cluster import ClusterRefused, ClusterUnavailable
from core.config import ServerConfig, ShardConfig
from core.control import (
    Adopt,
    Adopted,
    Broadcast,
    Checkpoint,
    Claim,
    ControlFrameError,
    ControlMessage,
    Drain,
    Drained,
    Evacuate,
    Evacuated,
    EvictRooms,
    Fetch,
    FrameReader,
    Handoff,
    Journal,
    Load,
    PassConnection,
    Ready,
    Release,
    RoomHosted,
    RoomReleased,
    SessionResumed,
    Surrender,
    encode_frame,
)
from core.directory import (
    PLACEMENT_SLACK,
    InMemoryDirectory,
    PlacementRefused,
    RoomPlacements,
    SessionDirectory,
)
from core.handshake import http_response as http_error
from core.session import SnapshotBatch
from core.tokens import SecretFileError, load_or_create_secret, share_secret
from shards import log as shard_log
from shards.load_table import LoadTable
from shards.log import log
from shards.routing import receive_connection, send_connection
from supervisor import control_socket, metrics
from supervisor.cluster_rooms import RoomExports, StoredRoom, decode_room, encode_room
from supervisor.dashboard_feed import DashboardFeed
from supervisor.handover import Handover, give
from supervisor.key_locks import KeyLocks
from supervisor.relay import BroadcastLog, RelayQueue
from supervisor.session_park import SessionPark

if TYPE_CHECKING:
    from supervisor.cluster import ClusterNode
    from supervisor.cluster_bus import BroadcastBus
    from supervisor.cluster_sessions import ClusterSessions

STARTUP_TIMEOUT = 30.0  # seconds for a new shard to report ready
HEALTHY_AFTER = 10.0  # a shard that lived this long restarts without backoff
KILL_GRACE = 5.0  # seconds after --drain-timeout before stuck shards are killed
RETURN_GRACE = 5.0  # seconds past the reconnect window a roll waits for players to be back
RETURN_QUIET = 1.0  # ...but no longer than this (+ the reconnect hint) once returns stop
CONTROL_DRAIN_S = 1.0  # at most this long reading a dead shard's last control frames
EXPIRY_SWEEP = 0.5  # placements and lingering rooms are released up to this late, in batches


class ShardHandle:
    """One running shard process and its end of the control channel."""

    def __init__(
        self,
        index: int,
        generation: int,
        process: trio.Process,
        control: trio.SocketStream,
        handoff: trio.socket.SocketType,
        relay: RelayQueue,
    ) -> None:
        self.index = index
        self.generation = generation
        self.process = process
        self.control = control
        self.handoff = handoff
        self.handoff_lock = trio.Lock()
        self.load: Load | None = None
        self.placed_since_load = 0  # rooms placed here since its last Load report
        self.draining = False
        self.started_at = trio.current_time()
        self.ready = trio.Event()
        self.exited = trio.Event()
        # Set when the control channel reached EOF: everything the shard wrote is read.
        self.control_read = trio.Event()
        self.drained: Drained | None = None
        self.relay = relay  # frames to the shard: control never dropped, broadcasts bounded

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_frame(self, frame: bytes) -> None:
        """A control frame (not a broadcast): never dropped, never behind a catch-up."""
        self.relay.control(frame)

    async def writer(self) -> None:
        await self.relay.write(self.control)


class Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.shards: dict[int, ShardHandle] = {}  # slot index -> the shard serving it
        self.processes: dict[int, ShardHandle] = {}  # generation -> every live shard process
        self.stopping = False
        self.rolling = False
        self._returning: set[str] = set()  # sessions evacuated by a roll, not yet resumed
        self._stopped = trio.Event()
        self._generation = 0
        self._exit_code = 0
        self.directory: SessionDirectory = InMemoryDirectory()
        self.bseq = 0  # broadcasts numbered in one total order for every shard
        self._session_locks = KeyLocks()  # one fetch or surrender per session at once
        self._room_locks = KeyLocks()  # cluster mode: one claim per room at once
        self._surrenders: dict[int, _Reply] = {}
        self._next_request = 0
        self._returned = trio.Event()
        self._last_return = 0.0  # when a player moved by the current roll step last resumed
        self._handover: Handover | None = None  # the roll step in progress
        self.metrics = metrics.Metrics()  # exited shards' counters: /metrics never go back
        # session -> (generation that checkpointed it, snapshot): what survives a crash
        # Rooms placed and not yet hosted, or released and lingering: one deadline heap.
        timeout = config.placement_timeout
        self.placements = RoomPlacements(
            self.directory,
            timeout=config.handshake_timeout + PLACEMENT_SLACK if timeout is None else timeout,
            max_pending=config.max_pending_rooms_per_address,
            rate=config.room_placement_rate or None,
            burst=config.room_placement_burst,
        )
        self._timer_changed = trio.Event()
        self._timer_at = math.inf  # the deadline the placement timer sleeps until
        self.broadcast_log = BroadcastLog(config.broadcast_log_bytes)
        # Checkpoints of live shards' sessions; a dead shard's sessions parked (recording
        # every broadcast) until their players resume or their grace ends.
        self.park = SessionPark(self.broadcast_log, config.grace)
        self._park_changed = trio.Event()
        self.secret_fd = -1  # sealed memfd with the token key, inherited by every shard
        self.cluster: ClusterNode | None = None  # cluster mode: this node's membership
        self.bus: BroadcastBus | None = None  # cluster mode: says of every node, in order
        self.remote: ClusterSessions | None = None  # cluster mode: sessions on other nodes
        self.feed = DashboardFeed(self, config.history_s)  # /dashboard and `top`
        self.rooms_out = RoomExports()  # cluster mode, leaving: rooms on their way to Redis
        self._adoptions: dict[int, trio.Event] = {}  # cluster rooms being adopted, by unit
        self._next_adoption = 1 << 40  # their unit numbers (a roll's are the old shard's)
        self._roll_done = 0  # of them, replaced so far
        self._roll_shard: int | None = None  # the slot being replaced now
        self._step_handover: Handover | None = None  # its hand-off (kept while players return)

    # ================================================================== main loop
    async def run(self) -> int:
        # The token key is read (or created) here, once; shards get it through an inherited
        # sealed memfd and never open the file, so deleting or replacing the file while the
        # service runs changes nothing until a full restart.
        try:
            secret = load_or_create_secret(self.config.secret_file)
            self.secret_fd = share_secret(secret)
        except SecretFileError as exc:
            log("secret_refused", path=exc.path, problem=exc.problem, fix=exc.fix)
            print(f"python -m supervisor: refusing to start: {exc}", file=sys.stderr)
            return 2
        self.sock = self._bind()
        # One connection counter per slot, shared by the shards for load-aware accepting.
        self.load_table, self.load_fd = LoadTable.create(self.config.shards)
        host, port = self.sock.getsockname()[:2]
        self.port = port
        self.started_at = trio.current_time()
        self.booted_at = time.time()  # tokens issued before name sessions of an earlier run
        control_sock = control_socket.bind(self.config.control_socket)
        shard_log.listeners.append(self.feed.on_log)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.config.cluster is not None and not await self._join(nursery, secret):
                        return 2
                    nursery.start_soon(self._signal_loop, sigs)
                    nursery.start_soon(self._placement_timer)
                    nursery.start_soon(self._park_loop)
                    nursery.start_soon(self.feed.run)
                    nursery.start_soon(
                        control_socket.serve,
                        control_sock,
                        self.status,
                        self.request_reload,
                        self.request_drain,
                        self.feed.history.snapshot,
                    )
                    if self.config.metrics_port is not None:
                        await nursery.start(metrics.serve, self)
                    first_start = []
                    for index in range(self.config.shards):
                        started = trio.Event()
                        first_start.append(started)
                        nursery.start_soon(self._keep_shard, index, started)
                    for started in first_start:
                        await started.wait()
                    if not self.stopping:
                        log(
                            "ready",
                            host=host,
                            port=port,
                            shards=self.config.shards,
                            pid=os.getpid(),
                            pids=",".join(str(h.pid) for h in self.shards.values()),
                        )
                    await self._stopped.wait()
                    nursery.cancel_scope.cancel()
        finally:
            shard_log.listeners.remove(self.feed.on_log)
            self.sock.close()
            control_sock.close()
            os.close(self.secret_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.control_socket)
        log("exit", pid=os.getpid(), code=self._exit_code)
        return self._exit_code

    async def _join(self, nursery: trio.Nursery, secret: bytes) -> bool:
        """Cluster mode: join before any shard starts (claims need the lease). False, said
        on stderr and in the log, when this node must not or cannot join."""
        from supervisor.cluster import ClusterNode  # coredis: only in cluster mode
        from supervisor.cluster_bus import BroadcastBus
        from supervisor.cluster_sessions import ClusterSessions

        config = self.config
        assert config.cluster is not None
        self.cluster = ClusterNode(
            config.cluster,
            config.node,
            config.public_url,
            secret,
            grace=config.grace,
            on_fenced=self._fenced,
            on_unfenced=self._unfenced,
            players=self.players,
            says_kept=config.cluster_says_kept,
        )
        try:
            await nursery.start(self.cluster.run)
        except (ClusterRefused, ClusterUnavailable) as exc:
            log("cluster_refused", node=config.node, reason=str(exc)[:300])
            print(f"python -m supervisor: not joining the cluster: {exc}", file=sys.stderr)
            nursery.cancel_scope.cancel()
            return False
        self.bus = BroadcastBus(self.cluster, self._deliver_broadcast, self.metrics.count)
        await nursery.start(self.bus.run)
        self.remote = ClusterSessions(
            self.cluster,
            self.bus,
            self._surrender_for_node,
            config.fetch_timeout,
            stale=self._drop_stale_sessions,
        )
        await nursery.start(self.remote.run)
        # Tokens issued before the cluster started name sessions of an earlier cluster;
        # later ones may name a session another node holds (fetched from it).
        self.booted_at = self.cluster.epoch
        log(
            "cluster_joined",
            node=config.node,
            public_url=config.public_url,
            epoch=self.cluster.epoch,
            rtt_ms=self.cluster.rtt_ms,
        )
        return True

    def _fenced(self) -> None:
        """The lease ran out: another node may own this node's rooms now, so no shard here
        may serve one any longer. Every shard ends its room sessions (their clients come
        back through the load balancer to the new owner); new rooms are refused (503)
        until the lease is renewed (``ClusterNode.claim_room``)."""
        rooms = 0
        for handle in self.processes.values():  # placed or lingering here: not any more
            for room in self.directory.rooms_of(handle.generation):
                rooms += self.directory.release_room(room, handle.generation)
        log("rooms_fenced", node=self.config.node, rooms=rooms)
        evict = encode_frame(
            EvictRooms(reason="room_moved", reconnect_after_ms=self.config.reconnect_after_ms)
        )
        for handle in self.processes.values():
            if not handle.exited.is_set():
                handle.send_frame(evict)

    async def _store_room(self, handle: ShardHandle, unit: int, stored: StoredRoom) -> None:
        """Leaving the cluster: ``stored`` (a room of ``handle``) goes to Redis for the node
        that claims the room next; then the shard sends its players away (``Evacuated``).
        Not stored (Redis, or this node's claim lost): the shard ends the room here."""
        assert self.cluster is not None
        ok = False
        try:
            ok = await self.cluster.release_room(
                stored.room, encode_room(stored).decode(), keep_s=self.config.grace
            )
        except ClusterUnavailable as exc:
            log("room_store_failed", room=stored.room, error=str(exc)[:200])
        sessions = stored.sessions()
        if ok:
            self.directory.release_room(stored.room, handle.generation)
            for sid in sessions:
                if self.directory.release(sid, handle.generation):
                    self.park.forget(sid)
                    if self.remote is not None:
                        self.remote.ended(sid)  # the room's next owner holds it
        log("room_stored", room=stored.room, sessions=len(sessions), ok=ok)
        handle.send_frame(encode_frame(Evacuated(unit=unit, ok=ok)))

    async def _adopt_room(self, room: str, state: str) -> None:
        """Cluster mode: this node claimed ``room`` and got the state its last owner left
        when it left: a shard adopts it (game and players) before the connection that
        claimed it is routed, so its players' resumes find their sessions. On failure the
        room starts afresh here (logged ``room_adopt_failed``; its players' resumes get
        a new session)."""
        try:
            stored = decode_room(state)
        except msgspec.DecodeError as exc:
            log("room_adopt_failed", room=room, reason=f"unreadable: {exc}"[:200])
            return
        target = self._least_loaded()
        if target is None or self.bus is None:
            log("room_adopt_failed", room=room, reason="no live shard")
            return
        unit = self._next_adoption = self._next_adoption + 1
        adopted = self._adoptions[unit] = trio.Event()
        applied = max(0, stored.applied_n - self.bus.offset)
        batches = stored.batches or [SnapshotBatch(bodies=[], sessions=[])]
        try:
            for i, batch in enumerate(batches):
                part = Adopt(
                    unit=unit,
                    room=room,
                    app_state=stored.app_state if i == 0 else None,
                    batch=batch,
                    applied_bseq=applied,
                    final=i == len(batches) - 1,
                )
                give(target, part, self.park.keep, self.park.expect_arrival)
            with trio.move_on_after(self.config.fetch_timeout):
                await adopted.wait()
        finally:
            self._adoptions.pop(unit, None)
        if not adopted.is_set() or target.exited.is_set():
            log("room_adopt_failed", room=room, reason="not adopted in time", shard=target.index)
            return
        self.directory.claim_room(room, target.generation)
        for sid in stored.sessions():
            self.directory.claim(sid, target.generation)
            if self.remote is not None:
                self.remote.held(sid)
        log("room_adopted", room=room, shard=target.index, sessions=len(stored.sessions()))

    def _unfenced(self) -> None:
        """The lease holds again after an outage: another node may have taken some of this
        node's sessions meanwhile (from their checkpoints); check them all now."""
        if self.remote is not None:
            self.remote.verify(self.directory.sessions())

    def _drop_stale_sessions(self, sessions: list[str]) -> None:
        """Another node holds these sessions now (Redis refused this node's writes): end
        this node's stale copies; a player still connected here is closed 4000 and
        resumes where its session is."""
        for sid in sessions:
            owner = self.directory.owner_of(sid)
            self.park.forget(sid)
            holder = self.processes.get(owner) if owner is not None else None
            if holder is None:
                continue
            self.directory.release(sid, holder.generation)
            holder.send_frame(encode_frame(Surrender(request=0, session=sid, epoch=0, force=True)))
            self.metrics.count("cluster_session_stale")
            log("session_stale", session=sid, shard=holder.index, reason="held by another node")

    async def _release_all_rooms(self) -> None:
        """A leaving node, its shards gone, gives back the rooms it still claims (those
        whose state could not be stored, or whose shard was killed before it evacuated
        them): the next connection for one of them, on any node, claims it there."""
        assert self.cluster is not None
        for handle in self.processes.values():
            for room in self.directory.rooms_of(handle.generation):
                self.directory.release_room(room, handle.generation)
        await self._release_claims()

    async def _release_claims(self) -> None:
        """Give back to the cluster the claims of rooms no local shard has any more (their
        linger ran out, their placement expired, their shard died). O(claimed rooms)."""
        assert self.cluster is not None
        gone = [r for r in self.cluster.fences if self.directory.room_owner(r) is None]
        for room in gone:
            try:
                await self.cluster.release_room(room)
            except ClusterUnavailable as exc:
                log("room_release_failed", room=room, error=str(exc)[:200])
                return

    def _bind(self) -> socket.socket:
        sock = socket.create_server(
            (self.config.host, self.config.port), backlog=4096, reuse_port=False
        )
        return sock

    async def _signal_loop(self, signals: trio.abc.ReceiveChannel[int] | object) -> None:
        async for signum in signals:  # type: ignore[attr-defined]
            name = signal.Signals(signum).name
            log("signal", sig=name, pid=os.getpid())
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    self.handle_second_stop()
                else:
                    self._nursery.start_soon(self.handle_stop)
            elif signum == signal.SIGHUP:
                self.handle_hup()

    # ================================================================== signal handlers
    async def handle_stop(self) -> None:
        """Graceful shutdown: all shards drain in parallel; stragglers are killed."""
        self.stopping = True
        config = self.config
        drain = Drain(
            reason="server shutting down",
            reconnect_after_ms=config.reconnect_after_ms,
            timeout=config.drain_timeout,
        )
        hold_s = 0.0
        if self.cluster is not None:
            # A node leaving its cluster: its players come back to other nodes, spread over
            # the reconnect window, and fetch their sessions from here meanwhile.
            hold_s = (
                config.reconnect_after_ms + config.reconnect_window_ms
            ) / 1000 + config.fetch_timeout
            # Rooms are evacuated: their state goes through Redis to the next owner
            # (supervisor/cluster_rooms.py); what is left is released once shards exit.
            drain = msgspec.structs.replace(
                drain, window_ms=config.reconnect_window_ms, hold_s=hold_s, evacuate=True
            )
        frame = encode_frame(drain)
        handles = list(self.processes.values())
        log(
            "shutdown_start",
            shards=len(handles),
            drain_timeout=config.drain_timeout,
            hold_s=hold_s,
        )
        for handle in handles:
            handle.send_frame(frame)
        with trio.move_on_after(config.drain_timeout + hold_s + KILL_GRACE):
            for handle in handles:
                await handle.exited.wait()
        self._kill_remaining("drain timeout")
        if self.cluster is not None:
            with trio.move_on_after(KILL_GRACE):
                await self._release_all_rooms()
            await self.cluster.leave()  # the name is free for this node's next start
        log("shutdown_done", shards=len(handles))
        self._stopped.set()

    def handle_second_stop(self) -> None:
        log("shutdown_forced")
        self._kill_remaining("second stop signal")
        self._stopped.set()

    def status(self) -> dict[str, object]:
        """What ``python -m supervisor status`` prints."""
        now = trio.current_time()
        shards = []
        for handle in sorted(self.processes.values(), key=lambda h: (h.index, h.generation)):
            state = (
                "draining" if handle.draining else "ready" if handle.ready.is_set() else "starting"
            )
            load = handle.load
            shards.append(
                {
                    "shard": handle.index,
                    "pid": handle.pid,
                    "generation": handle.generation,
                    "state": state,
                    "connections": load.connections if load else 0,
                    "sessions": load.sessions if load else 0,
                    "rooms": load.rooms if load else 0,
                    "relay_queued_bytes": handle.relay.queued_bytes,
                    "relay_catching_up": handle.relay.cursor is not None,
                    "uptime_s": round(now - handle.started_at, 1),
                }
            )
        return {
            "pid": os.getpid(),
            "port": self.port,
            "rolling": self.rolling,
            "stopping": self.stopping,
            "uptime_s": round(now - self.started_at, 1),
            "checkpointed_sessions": len(self.park) - self.park.parked,
            "parked_sessions": self.park.parked,
            "rooms_placed": sum(
                self.directory.room_count(h.generation) for h in self.processes.values()
            ),
            "rooms_pending": self.placements.pending,
            "broadcast_log": {
                "first": self.broadcast_log.first,
                "last": self.broadcast_log.last,
                "bytes": self.broadcast_log.bytes,
            },
            "shards": shards,
            **({"cluster": self._cluster_status()} if self.cluster is not None else {}),
        }

    def players(self) -> int:
        """Connections on this node's shards (as of their last ``Load``)."""
        return sum(h.load.connections for h in self.processes.values() if h.load is not None)

    def roll_progress(self) -> dict[str, object] | None:
        """The roll in progress: steps, steps done, the slot being replaced, how many of
        its players were moved and how many are back. None when no roll runs."""
        if not self.rolling:
            return None
        handover = self._step_handover
        moved = handover.evacuated if handover is not None else 0
        return {
            "steps": len(self.shards),
            "done": self._roll_done,
            "shard": self._roll_shard,
            "moved": moved,
            "back": max(0, moved - len(self._returning)),
        }

    def _cluster_status(self) -> dict[str, object]:
        assert self.cluster is not None
        status = self.cluster.status()
        if self.bus is not None:
            status["broadcast_bus"] = self.bus.status()
        if self.remote is not None:
            status["sessions"] = self.remote.status()
        return status

    def request_reload(self) -> dict[str, object]:
        """``python -m supervisor reload``: the same as SIGHUP."""
        busy = self.rolling or self.stopping
        self.handle_hup()
        return {"reload": "busy" if busy else "started"}

    def request_drain(self) -> dict[str, object]:
        """``python -m supervisor drain``: the same as SIGTERM - in cluster mode the node
        leaves (its players move to other nodes), then exits."""
        busy = self.stopping
        if not busy:
            log("signal", sig="drain", pid=os.getpid())
            self._nursery.start_soon(self.handle_stop)
        return {"drain": "busy" if busy else "started"}

    def handle_hup(self) -> None:
        """Rolling restart: replace every shard, one at a time, with a fresh interpreter."""
        if self.rolling or self.stopping:
            log("hup_ignored", reason="a roll or a shutdown is already running")
            return
        self._nursery.start_soon(self.roll)

    async def roll(self) -> bool:
        """Replace shards 0..N-1 in turn; stop safely (old shard kept) on the first failure."""
        self.rolling = True
        started = trio.current_time()
        self._roll_done = 0
        self._step_handover = None
        log("roll_start", shards=len(self.shards))
        try:
            for index in sorted(self.shards):
                if self.stopping:
                    return False
                self._roll_shard, self._step_handover = index, None
                ok = await self._replace(index)
                self._roll_done += 1
                if not ok:
                    log("roll_aborted", shard=index, reason="see the line above")
                    return False
            log("roll_done", shards=len(self.shards), duration_s=trio.current_time() - started)
            return True
        finally:
            self.rolling = False
            self._roll_shard = None

    async def _replace(self, index: int) -> bool:
        """One step of a roll: a fresh replacement for slot ``index``, the old shard's
        units handed over to it (``supervisor.handover``), its players back. False - with
        the old shard still serving - when the replacement fails or the hand-off cannot
        complete."""
        old = self.shards.get(index)
        step_started = trio.current_time()
        new = await self._spawn(index, install=False)
        await _ready_or_exited(new, STARTUP_TIMEOUT)
        if not new.ready.is_set():
            log("replacement_failed", shard=index, pid=new.pid, returncode=new.process.returncode)
            if new.process.returncode is None:
                new.process.kill()
            return False
        self.shards[index] = new  # the keeper now watches the replacement
        if old is None or old.exited.is_set():
            return True
        old.draining = True
        self._returning.clear()
        handover = self._handover = self._step_handover = Handover(
            old,
            new,
            self.directory,
            self.config.fetch_timeout,
            self.park.keep,
            self.park.expect_arrival,
            self._returning,
        )
        window = self.config.reconnect_window_ms
        old.send_frame(
            encode_frame(
                Drain(
                    reason="rolling restart",
                    reconnect_after_ms=self.config.reconnect_after_ms,
                    timeout=self.config.drain_timeout,
                    evacuate=True,
                    window_ms=window,
                )
            )
        )
        ok = True
        try:
            with trio.move_on_after(self.config.drain_timeout + KILL_GRACE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(handover.watch)
                    nursery.start_soon(_set_when, old.exited, nursery.cancel_scope)
                    nursery.start_soon(_set_when, handover.failed_event, nursery.cancel_scope)
        finally:
            self._handover = None
        if handover.failed is not None:
            # The old shard keeps serving what it still holds; the replacement goes.
            self.shards[index] = old
            old.draining = False
            log("replacement_killed", shard=index, pid=new.pid, reason=handover.failed)
            new.process.kill()
            return False
        if not old.exited.is_set():
            log("drain_timeout", shard=index, pid=old.pid)
            old.process.kill()
            await old.exited.wait()
            ok = False
        ended = await self._await_returns()
        log(
            "roll_step",
            shard=index,
            old_pid=old.pid,
            new_pid=new.pid,
            evacuated=handover.evacuated,
            not_back=len(self._returning),
            ended=ended,
            duration_s=trio.current_time() - step_started,
        )
        return ok

    async def _await_returns(self) -> str:
        """Wait for the players a roll step moved to resume, so that at most one shard's
        players are ever reconnecting at a time. The step ends when they are all back
        (``all_back``), or when none has come back for ``RETURN_QUIET`` seconds plus the
        reconnect hint since the old shard finished or the last one returned
        (``returns_stopped``: clients that do not resume, like the field report's, do not
        hold the roll up), and at most ``--roll-return-timeout`` (``timeout``)."""
        config = self.config
        limit = config.roll_return_timeout
        if limit is None:
            limit = (config.reconnect_after_ms + config.reconnect_window_ms) / 1000 + RETURN_GRACE
        deadline = trio.current_time() + limit
        quiet = RETURN_QUIET + config.reconnect_after_ms / 1000
        self._last_return = max(self._last_return, trio.current_time())
        while self._returning:
            until = min(deadline, self._last_return + quiet)
            if trio.current_time() >= until:
                return "timeout" if until == deadline else "returns_stopped"
            with trio.move_on_at(until):
                self._returned = trio.Event()
                await self._returned.wait()
        return "all_back"

    def _kill_remaining(self, why: str) -> None:
        for handle in list(self.processes.values()):
            if handle.process.returncode is None:
                log("shard_kill", shard=handle.index, pid=handle.pid, reason=why)
                handle.process.kill()

    # ================================================================== shard keeping
    async def _keep_shard(self, index: int, first_started: trio.Event) -> None:
        failures = 0
        while not self.stopping:
            current = self.shards.get(index)
            if current is None or current.exited.is_set():
                handle = await self._spawn(index)
                await _ready_or_exited(handle, STARTUP_TIMEOUT)
                if not handle.ready.is_set() and not first_started.is_set():
                    # A shard that cannot start the first time (bad --app, bad config) will
                    # not start the second time either: stop instead of respawning forever.
                    log(
                        "startup_failed",
                        shard=index,
                        pid=handle.pid,
                        returncode=handle.process.returncode,
                    )
                    self._exit_code = 1
                    first_started.set()
                    if handle.process.returncode is None:
                        handle.process.kill()
                    self.stopping = True
                    self._kill_remaining("startup failed")
                    self._stopped.set()
                    return
                first_started.set()
            else:
                handle = current
            await handle.exited.wait()
            if self.stopping:
                return
            if self.shards.get(index) is not handle:
                continue  # replaced by a rolling restart: watch the replacement
            lived = trio.current_time() - handle.started_at
            failures = 0 if lived > HEALTHY_AFTER else failures + 1
            delay = 0.0 if failures <= 1 else min(5.0, 0.1 * 2 ** (failures - 1))
            code = handle.process.returncode
            log(
                "shard_exit",
                shard=index,
                pid=handle.pid,
                returncode=code,
                signal=signal.Signals(-code).name if code is not None and code < 0 else None,
                lived_s=lived,
                respawn_in_s=delay,
            )
            if delay:
                await trio.sleep(delay)

    async def _spawn(self, index: int, install: bool = True) -> ShardHandle:
        self._generation += 1
        generation = self._generation
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Connections routed between shards travel as fds over a second, message-oriented
        # pair: one datagram = one routing note + one fd.
        handoff_parent, handoff_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        shard_config = ShardConfig(
            index=index, generation=generation, server=self.config, booted_at=self.booted_at
        )
        cmd = [
            sys.executable,
            "-m",
            "shards",
            "--config",
            msgspec.json.encode(shard_config).decode(),
            "--listen-fd",
            str(self.sock.fileno()),
            "--control-fd",
            str(child_end.fileno()),
            "--handoff-fd",
            str(handoff_child.fileno()),
            "--load-fd",
            str(self.load_fd),
            "--secret-fd",
            str(self.secret_fd),
        ]
        try:
            process = await trio.lowlevel.open_process(
                cmd,
                pass_fds=(
                    self.sock.fileno(),
                    child_end.fileno(),
                    handoff_child.fileno(),
                    self.load_fd,
                    self.secret_fd,
                ),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_end.close()
            handoff_child.close()
        control = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        handoff = trio.socket.from_stdlib_socket(handoff_parent)
        relay = RelayQueue(
            self.broadcast_log,
            self.config.relay_budget_bytes,
            index,
            on_gap=lambda first, last: self.metrics.count_gap(index, first, last),
        )
        handle = ShardHandle(index, generation, process, control, handoff, relay)
        self.processes[generation] = handle
        if install:
            self.shards[index] = handle
        log("shard_spawn", shard=index, pid=process.pid, generation=generation)
        self._nursery.start_soon(self._watch, handle)
        self._nursery.start_soon(self._read_control, handle)
        self._nursery.start_soon(handle.writer)
        self._nursery.start_soon(self._route_connections, handle)
        return handle

    async def _watch(self, handle: ShardHandle) -> None:
        await handle.process.wait()
        # What the shard wrote before it died is still in the control socket: a journal
        # entry or a broadcast its client was already acknowledged for. Read it to EOF
        # (the kernel closed the shard's end) before its sessions are parked from the
        # journal mirror, or they would be parked without it.
        with trio.move_on_after(CONTROL_DRAIN_S):
            await handle.control_read.wait()
        self.processes.pop(handle.generation, None)
        self.metrics.retire(handle, crashed=not self.stopping and not handle.draining)
        lost = self.directory.drop_shard(handle.generation)
        parked = self.park.shard_died(handle.generation, lost, trio.current_time())
        if lost and not self.stopping:
            log(
                "sessions_orphaned",
                shard=handle.index,
                pid=handle.pid,
                count=len(lost),
                parked=parked,
            )
            self._park_changed.set()
        handle.exited.set()
        handle.relay.close()
        handle.handoff.close()
        with trio.move_on_after(1):
            await handle.control.aclose()

    async def _read_control(self, handle: ShardHandle) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await handle.control.receive_some(65536)
                if not data:
                    return
                for message in reader.feed(data):
                    self._on_control(handle, message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except ControlFrameError as exc:
            log("control_error", shard=handle.index, pid=handle.pid, error=str(exc))
            handle.process.kill()
        finally:
            handle.control_read.set()

    # ================================================================== routing
    async def _route_connections(self, origin: ShardHandle) -> None:
        """Sockets a shard passes up: forward each to the shard owning its room/session."""
        while True:
            try:
                received = await receive_connection(origin.handoff)
            except OSError:
                return
            if received is None:
                return
            note, fds = received
            for fd in fds[1:]:
                os.close(fd)
            if not fds:
                continue
            fd = fds[0]
            try:
                if note is not None and note.room is not None and self.cluster is not None:
                    try:
                        note = await self._cluster_route(note)
                    except ClusterUnavailable as exc:
                        self.metrics.count("room_refused|cluster_unavailable")
                        log(
                            "room_refused",
                            reason="cluster_unavailable",
                            room=note.room,
                            error=str(exc)[:200],
                        )
                        _refuse(fd, http_error(503, "room owner unknown: cluster unavailable"))
                        continue
                try:
                    target = self._route_target(origin, note, fd) if note is not None else None
                except PlacementRefused as refused:
                    assert note is not None
                    self._refuse_room(fd, note, refused)
                    continue
                if target is None:
                    log("route_dropped", origin=origin.index, reason="no live shard")
                    continue
                assert note is not None
                try:
                    # Each origin's task may forward to the same target: one writer per fd.
                    async with target.handoff_lock:
                        await send_connection(target.handoff, fd, note)
                except OSError as exc:
                    # The owner died mid-pass: the client sees its connection close and
                    # reconnects; the room is placed again on a live shard.
                    log("route_failed", room=note.room, to_shard=target.index, error=repr(exc))
            finally:
                os.close(fd)  # the target has its own copy now (or nobody needs it)

    async def _cluster_route(self, note: PassConnection) -> PassConnection:
        """Cluster mode: ``note`` as it is when this node owns its room (claiming it if
        nobody's lease holds it: one Redis round trip, only for a room no local shard
        has), else with ``redirect`` set to the owner's public URL."""
        assert self.cluster is not None and note.room is not None
        if self.cluster.fenced:
            raise ClusterUnavailable("this node's lease is lost")
        room = note.room
        if self._live(self.directory.room_owner(room)) is not None:
            return note  # hosted or placed here: this node's claim holds it
        # One claim per room at a time on this node: a room that comes with a left node's
        # state is adopted by a shard before its other players' connections are placed
        # (else they would seat a second, fresh copy of the room on another shard).
        async with self._room_locks.hold(room):
            if self._live(self.directory.room_owner(room)) is not None:
                return note  # adopted or placed while this connection waited
            claim = await self.cluster.claim_room(room)
            if claim.owner == self.cluster.node:
                if claim.state is not None:
                    await self._adopt_room(room, claim.state)
                return note
        self.cluster.redirects += 1
        return msgspec.structs.replace(note, redirect=claim.url)

    def _route_target(
        self, origin: ShardHandle, note: PassConnection, fd: int = -1
    ) -> ShardHandle | None:
        """The shard to serve ``note``'s connection; placing a new room costs O(shards +
        log rooms) and raises ``PlacementRefused`` when the client's address is over a cap.
        A redirect is answered by the least loaded shard."""
        if note.redirect:
            return self._least_loaded()
        if note.room is not None:
            owner = self._live(self.directory.room_owner(note.room))
            if owner is None:
                owner = self._least_loaded()
                if owner is None:
                    return None
                peer = note.peer or _peer_host(fd)
                self.placements.place(note.room, owner.generation, peer, trio.current_time())
                self._placements_changed()
                owner.placed_since_load += 1
                log("room_placed", room=note.room, shard=owner.index, peer=peer)
            return owner
        if note.session is not None:
            holder = self._live(self.directory.owner_of(note.session))
            if holder is not None:
                return holder
        return origin if not origin.exited.is_set() else self._least_loaded()

    def _live(self, generation: int | None) -> ShardHandle | None:
        handle = self.processes.get(generation) if generation is not None else None
        if handle is None or handle.exited.is_set() or not handle.ready.is_set():
            return None
        return handle

    def _least_loaded(self, exclude: ShardHandle | None = None) -> ShardHandle | None:
        """Fewest connections (last report), then fewest rooms, counting fresh placements;
        never a draining shard."""
        live = [
            h
            for h in self.shards.values()
            if self._live(h.generation) is h and not h.draining and h is not exclude
        ]
        if not live:
            return None

        def load(h: ShardHandle) -> tuple[int, int, int]:
            rooms = self.directory.room_count(h.generation)  # O(1): never sort on this path
            conns = h.load.connections if h.load else 0
            return (conns + h.placed_since_load, rooms, h.index)

        return min(live, key=load)

    def _refuse_room(self, fd: int, note: PassConnection, refused: PlacementRefused) -> None:
        """Over a per-address cap: answer 503 + Retry-After: 1 on the fd (nonblocking: the
        small answer fits an empty send buffer) and end it with a FIN. Logged for the 1st,
        10th, 100th... refusal of an address, counted always."""
        self.metrics.count(f"room_refused|{refused.reason}")
        if str(refused.refused).rstrip("0") == "1":  # 1st, 10th, 100th...: a flood, few lines
            log(
                "room_refused",
                reason=refused.reason,
                peer=refused.address,
                room=note.room,
                refused=refused.refused,
            )
        _refuse(fd, http_error(503, f"too many new rooms from your address ({refused.reason})"))

    def _placements_changed(self) -> None:
        next_deadline = self.placements.next_deadline()
        if next_deadline is not None and next_deadline < self._timer_at:
            self._timer_changed.set()

    async def _placement_timer(self) -> None:
        """Release placements never confirmed by their owner (the client left before its
        handshake) and rooms whose linger ran out, at their deadlines (one heap), swept at
        most every EXPIRY_SWEEP seconds: a flood is a couple of log lines a second."""
        while True:
            self._timer_changed = trio.Event()
            deadline = self.placements.next_deadline()
            self._timer_at = math.inf if deadline is None else deadline
            with trio.move_on_at(self._timer_at):
                await self._timer_changed.wait()
            if self._timer_at > trio.current_time():
                continue  # woken for an earlier deadline: sleep until that one
            expired = self.placements.expire(trio.current_time())
            if self.cluster is not None:
                self._nursery.start_soon(self._release_claims)
            if expired:
                self.metrics.count("room_placement_expired", len(expired))
                log(
                    "room_placements_expired",
                    count=len(expired),
                    released=sum(e.released for e in expired),
                    pending=self.placements.pending,
                    example_room=expired[0].room,
                    example_peer=expired[0].address,
                )
            await trio.sleep(EXPIRY_SWEEP)

    async def _route_fetch(self, requester: ShardHandle, fetch: Fetch) -> None:
        """A client resumes on ``requester``: take the session from its holder.

        Fetches of one session are serialised, so of two racing resumes the second is
        routed to the winner's shard and refused there (its token epoch is used up).
        """
        async with self._session_locks.hold(fetch.session):
            answer = await self._surrender_from_holder(requester, fetch)
            if answer.batch is not None:
                self.directory.move(fetch.session, requester.generation)
                self.park.expect_arrival(requester.generation, answer.batch)
                if self.remote is not None:
                    self.remote.held(fetch.session)  # it may come from another node
            requester.send_frame(
                encode_frame(msgspec.structs.replace(answer, request=fetch.request))
            )
            log(
                "handoff",
                session=fetch.session,
                to_shard=requester.index,
                ok=answer.batch is not None,
                error=answer.error,
            )

    async def _park_loop(self) -> None:
        """End parked sessions whose grace ran out (one task)."""
        while True:
            deadline = self.park.next_deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._park_changed.wait()
            self._park_changed = trio.Event()
            for sid in self.park.expire(trio.current_time()):
                log("parked_session_expired", session=sid)
                if self.remote is not None:
                    self.remote.ended(sid)

    def _from_checkpoint(self, fetch: Fetch) -> Handoff | None:
        """A session whose shard died: parked since (with every broadcast numbered since
        recorded), marked as recovered."""
        taken = self.park.take(fetch.session, lambda generation: generation in self.processes)
        if taken is None:
            return None
        batch, exact = taken
        snap = batch.sessions[0]
        log("session_recovered", session=fetch.session, last_seq=snap.last_seq, exact=exact)
        # Everything numbered so far is in it: the new holder skips what it applies later.
        return Handoff(
            request=fetch.request,
            session=fetch.session,
            batch=batch,
            applied_bseq=self.bseq,
            recovered=True,
            exact=exact,
        )

    async def _surrender_for_node(self, session: str, epoch: int) -> Handoff:
        """Cluster mode: another node's player resumes ``session``, held here: the holding
        shard surrenders it (if ``epoch`` is the token's current one) and it leaves this
        node's directory and checkpoints."""
        fetch = Fetch(request=0, shard=-1, session=session, epoch=epoch)
        async with self._session_locks.hold(session):
            owner = self.directory.owner_of(session)
            answer = await self._surrender_from_holder(None, fetch, remote=False)
            if answer.batch is not None:
                if owner is not None:
                    self.directory.release(session, owner)
                self.park.forget(session)
                if self.remote is not None:
                    self.remote.ended(session)  # its checkpoint here goes too
            return answer

    async def _surrender_from_holder(
        self, requester: ShardHandle | None, fetch: Fetch, remote: bool = True
    ) -> Handoff:
        """The session from the shard holding it, from a dead shard's checkpoint, or (in
        cluster mode, with ``remote``) from the node holding it; else refused."""
        refused = Handoff(request=fetch.request, session=fetch.session, batch=None, error="expired")
        owner = self.directory.owner_of(fetch.session)
        holder = self.processes.get(owner) if owner is not None else None
        if holder is None or holder.exited.is_set():
            local = self._from_checkpoint(fetch)
            if local is None and remote and self.remote is not None:
                local = await self.remote.fetch(fetch)
            return local or refused
        if holder is requester:
            return refused
        self._next_request += 1
        request = self._next_request
        reply = self._surrenders[request] = _Reply()
        holder.send_frame(
            encode_frame(Surrender(request=request, session=fetch.session, epoch=fetch.epoch))
        )
        try:
            with trio.move_on_after(self.config.fetch_timeout):
                await reply.done.wait()
        finally:
            self._surrenders.pop(request, None)
        if reply.value is None:
            log("surrender_timeout", session=fetch.session, shard=holder.index)
            return refused
        return reply.value

    def _deliver_broadcast(self, message: Broadcast, origin: int | None, missed: int = 0) -> None:
        """Number ``message`` in this node's total order and relay it to every shard (and
        parked session). ``origin``: the shard process that sent it, when it is this
        node's (its sender's ``cseq`` is processed now). ``missed``: cluster mode, this many
        says before it will never reach this node (trimmed from the stream while it was cut
        off): their numbers are skipped, so every shard sees the gap and marks its sessions
        ``replay_gap`` (parked sessions too)."""
        if missed:
            self.bseq += missed
            self.broadcast_log.skip(self.bseq)
            self.park.missed_broadcasts()
        self.bseq += 1
        frame = encode_frame(msgspec.structs.replace(message, bseq=self.bseq))
        self.broadcast_log.append(self.bseq, frame)
        self.park.on_broadcast(self.bseq, message.body)
        if origin is not None and message.sender is not None and message.cseq is not None:
            self.park.processed(origin, message.sender, message.cseq)
        for other in self.processes.values():
            if other.ready.is_set() and not other.exited.is_set():
                other.relay.broadcast(self.bseq, frame)

    def _on_control(self, handle: ShardHandle, message: ControlMessage) -> None:
        if isinstance(message, Ready):
            handle.ready.set()
        elif isinstance(message, Broadcast):
            if self.bus is not None:
                self.bus.publish(message, handle.generation)  # delivered in the stream's order
            else:
                self._deliver_broadcast(message, handle.generation)
        elif isinstance(message, Claim):
            self.directory.claim(message.session, handle.generation)
            if self.remote is not None:
                self.remote.held(message.session)
        elif isinstance(message, Release):
            if self.directory.release(message.session, handle.generation):
                self.park.forget(message.session)
                if self.remote is not None:
                    self.remote.ended(message.session)
        elif isinstance(message, Checkpoint):
            generation = handle.generation

            def owns(sid: str) -> bool:
                return self.directory.owner_of(sid) == generation

            self.park.checkpoint(generation, message.batch, message.applied_bseq, owns)
            if self.remote is not None:
                self.remote.checkpoint(message.batch, message.applied_bseq, owns)
        elif isinstance(message, Journal):
            self.park.on_journal(handle.generation, message.entries)
        elif isinstance(message, Load):
            handle.load = message
            handle.placed_since_load = 0
        elif isinstance(message, RoomHosted):
            owner = self._live(self.directory.room_owner(message.room))
            if owner is None or owner is handle:
                self.directory.claim_room(message.room, handle.generation)
            else:
                log("room_conflict", room=message.room, shard=handle.index, owner_shard=owner.index)
            self.placements.hosted(message.room, handle.generation)
        elif isinstance(message, RoomReleased):
            # Linger before forgetting the owner: a connection for this room may be in
            # flight to that shard, which will host it again (RoomHosted cancels this).
            self.placements.released(message.room, handle.generation, trio.current_time())
            self._placements_changed()
        elif isinstance(message, Evacuate):
            handover = self._handover
            if handover is not None and handle is handover.old:
                handover.on_evacuate(message)
            elif self.stopping and self.bus is not None and message.room is not None:
                stored = self.rooms_out.on_evacuate(handle.generation, message, self.bus.offset)
                if stored is not None:
                    self._nursery.start_soon(self._store_room, handle, message.unit, stored)
            else:
                log("evacuate_unexpected", shard=handle.index, pid=handle.pid, unit=message.unit)
                handle.send_frame(encode_frame(Evacuated(unit=message.unit, ok=False)))
        elif isinstance(message, Adopted):
            handover = self._handover
            adopting = self._adoptions.get(message.unit)
            if adopting is not None:
                adopting.set()
            elif handover is not None and handle is handover.new:
                handover.on_adopted(message)
        elif isinstance(message, SessionResumed):
            if message.session in self._returning:
                self._returning.discard(message.session)
                self._last_return = trio.current_time()
                self._returned.set()
        elif isinstance(message, Fetch):
            self._nursery.start_soon(self._route_fetch, handle, message)
        elif isinstance(message, Handoff):
            reply = self._surrenders.get(message.request)
            if reply is not None:
                reply.set(message)
        elif isinstance(message, Drained):
            handle.drained = message
            log(
                "shard_drained",
                shard=handle.index,
                pid=handle.pid,
                closed=message.closed,
                forced=message.forced,
            )


class _Reply:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Handoff | None = None

    def set(self, value: Handoff) -> None:
        self.value = value
        self.done.set()


def _peer_host(fd: int) -> str:
    """The client's host for a connection fd ("" if unknown, e.g. it already reset)."""
    if fd < 0:
        return ""
    sock = socket.socket(fileno=fd)
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""
    finally:
        sock.detach()


def _refuse(fd: int, answer: bytes) -> None:
    """Answer a passed connection with an HTTP error (nonblocking: the small answer fits an
    empty send buffer) and a FIN; the caller closes ``fd``."""
    sock = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            # Read what the origin only peeked: unread bytes at close() send a RST,
            # which can destroy the answer before the client reads it.
            for _ in range(8):
                if not sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        with contextlib.suppress(OSError):
            sock.send(answer, socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


async def _ready_or_exited(handle: ShardHandle, timeout: float) -> None:
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when, handle.ready, nursery.cancel_scope)
            nursery.start_soon(_set_when, handle.exited, nursery.cancel_scope)


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
