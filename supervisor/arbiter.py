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
import os
import signal
import socket
import subprocess
import sys
import time

import msgspec
import trio

from core.config import ServerConfig, ShardConfig
from core.control import (
    Adopt,
    Broadcast,
    Checkpoint,
    Claim,
    ControlFrameError,
    ControlMessage,
    Drain,
    Drained,
    Evacuate,
    Fetch,
    FrameReader,
    Handoff,
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
from core.directory import InMemoryDirectory, SessionDirectory
from core.session import SessionSnapshot
from core.tokens import load_or_create_secret
from shards.load_table import LoadTable
from shards.log import log
from shards.routing import receive_connection, send_connection
from supervisor import control_socket, metrics

RELAY_QUEUE = 10_000  # control frames queued per shard before relays to it are dropped
STARTUP_TIMEOUT = 30.0  # seconds for a new shard to report ready
HEALTHY_AFTER = 10.0  # a shard that lived this long restarts without backoff
KILL_GRACE = 5.0  # seconds after --drain-timeout before stuck shards are killed
ROOM_LINGER = 5.0  # seconds an emptied room stays with its shard before it may move
RETURN_GRACE = 5.0  # seconds past the reconnect window a roll waits for players to be back


class ShardHandle:
    """One running shard process and its end of the control channel."""

    def __init__(
        self,
        index: int,
        generation: int,
        process: trio.Process,
        control: trio.SocketStream,
        handoff: trio.socket.SocketType,
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
        self.drained: Drained | None = None
        self.dropped_relays = 0
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](RELAY_QUEUE)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_frame(self, frame: bytes) -> None:
        try:
            self._out_send.send_nowait(frame)
        except trio.WouldBlock:
            self.dropped_relays += 1
            if self.dropped_relays == 1 or self.dropped_relays % 1000 == 0:
                log("relay_dropped", shard=self.index, pid=self.pid, total=self.dropped_relays)
        except trio.ClosedResourceError:
            pass

    async def writer(self) -> None:
        async for frame in self._out_recv:
            try:
                await self.control.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


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
        self._session_locks: dict[str, trio.Lock] = {}
        self._surrenders: dict[int, _Reply] = {}
        self._next_request = 0
        self._returned = trio.Event()
        self._evacuated = 0
        self._released: dict[str, int] = {}
        self.metrics = metrics.Metrics()  # exited shards' counters: /metrics never go back
        # session -> (generation that checkpointed it, snapshot): what survives a crash
        self.checkpoints: dict[
            str, tuple[int, SessionSnapshot]
        ] = {}  # room -> generation that released it, lingering

    # ================================================================== main loop
    async def run(self) -> int:
        # Create the shared token secret before any shard races to do it.
        load_or_create_secret(self.config.secret_file)
        self.sock = self._bind()
        # One connection counter per slot, shared by the shards for load-aware accepting.
        self.load_table, self.load_fd = LoadTable.create(self.config.shards)
        host, port = self.sock.getsockname()[:2]
        self.port = port
        self.started_at = trio.current_time()
        self.booted_at = time.time()  # tokens issued before name sessions of an earlier run
        control_sock = control_socket.bind(self.config.control_socket)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._signal_loop, sigs)
                    nursery.start_soon(
                        control_socket.serve, control_sock, self.status, self.request_reload
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
            self.sock.close()
            control_sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.control_socket)
        log("exit", pid=os.getpid(), code=self._exit_code)
        return self._exit_code

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
        drain = Drain(
            reason="server shutting down",
            reconnect_after_ms=self.config.reconnect_after_ms,
            timeout=self.config.drain_timeout,
        )
        frame = encode_frame(drain)
        handles = list(self.processes.values())
        log("shutdown_start", shards=len(handles), drain_timeout=self.config.drain_timeout)
        for handle in handles:
            handle.send_frame(frame)
        with trio.move_on_after(self.config.drain_timeout + KILL_GRACE):
            for handle in handles:
                await handle.exited.wait()
        self._kill_remaining("drain timeout")
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
                    "uptime_s": round(now - handle.started_at, 1),
                }
            )
        return {
            "pid": os.getpid(),
            "port": self.port,
            "rolling": self.rolling,
            "stopping": self.stopping,
            "uptime_s": round(now - self.started_at, 1),
            "checkpointed_sessions": len(self.checkpoints),
            "shards": shards,
        }

    def request_reload(self) -> dict[str, object]:
        """``python -m supervisor reload``: the same as SIGHUP."""
        busy = self.rolling or self.stopping
        self.handle_hup()
        return {"reload": "busy" if busy else "started"}

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
        log("roll_start", shards=len(self.shards))
        try:
            for index in sorted(self.shards):
                if self.stopping:
                    return False
                if not await self._replace(index):
                    log("roll_aborted", shard=index, reason="see the line above")
                    return False
            log("roll_done", shards=len(self.shards), duration_s=trio.current_time() - started)
            return True
        finally:
            self.rolling = False

    async def _replace(self, index: int) -> bool:
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
        self._evacuated = 0
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
        with trio.move_on_after(self.config.drain_timeout + KILL_GRACE):
            await old.exited.wait()
        if not old.exited.is_set():
            log("drain_timeout", shard=index, pid=old.pid)
            old.process.kill()
            await old.exited.wait()
            ok = False
        # Wait for the moved players to be back before touching the next shard, so at
        # most one shard's players are ever reconnecting at a time.
        with trio.move_on_after((self.config.reconnect_after_ms + window) / 1000 + RETURN_GRACE):
            while self._returning:
                self._returned = trio.Event()
                await self._returned.wait()
        log(
            "roll_step",
            shard=index,
            old_pid=old.pid,
            new_pid=new.pid,
            evacuated=self._evacuated,
            not_back=len(self._returning),
            duration_s=trio.current_time() - step_started,
        )
        return ok

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
        ]
        try:
            process = await trio.lowlevel.open_process(
                cmd,
                pass_fds=(
                    self.sock.fileno(),
                    child_end.fileno(),
                    handoff_child.fileno(),
                    self.load_fd,
                ),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_end.close()
            handoff_child.close()
        control = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        handoff = trio.socket.from_stdlib_socket(handoff_parent)
        handle = ShardHandle(index, generation, process, control, handoff)
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
        self.processes.pop(handle.generation, None)
        self.metrics.retire(handle)
        lost = self.directory.drop_shard(handle.generation)
        if lost and not self.stopping:
            kept = sum(1 for sid in lost if sid in self.checkpoints)
            log(
                "sessions_orphaned",
                shard=handle.index,
                pid=handle.pid,
                count=len(lost),
                checkpointed=kept,
            )
            self._nursery.start_soon(self._forget_orphans, handle.generation)
        handle.exited.set()
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
                target = self._route_target(origin, note) if note is not None else None
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

    def _route_target(self, origin: ShardHandle, note: PassConnection) -> ShardHandle | None:
        if note.room is not None:
            owner = self._live(self.directory.room_owner(note.room))
            if owner is None:
                owner = self._least_loaded()
                if owner is None:
                    return None
                self.directory.claim_room(note.room, owner.generation)
                owner.placed_since_load += 1
                log("room_placed", room=note.room, shard=owner.index)
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
            rooms = len(self.directory.rooms_of(h.generation))
            conns = h.load.connections if h.load else 0
            return (conns + h.placed_since_load, rooms, h.index)

        return min(live, key=load)

    async def _release_room_later(self, room: str, generation: int) -> None:
        await trio.sleep(ROOM_LINGER)
        if self._released.get(room) == generation:
            del self._released[room]
            self.directory.release_room(room, generation)

    def _adopt_elsewhere(self, origin: ShardHandle, evacuate: Evacuate) -> None:
        """A draining shard gives up a room or a batch of lobby sessions: pick a sibling,
        update the directory, and send it everything (it arrives before any resume does:
        the resume's fetch or fd follows on the same control channel or after it)."""
        # The shard's own replacement is fresh and empty: everything goes there, nothing
        # moves twice in one roll, and the balance between slots is kept.
        target = self.shards.get(origin.index)
        if target is origin or target is None or self._live(target.generation) is not target:
            target = self._least_loaded(exclude=origin)
        if target is None:
            log(
                "evacuate_failed",
                shard=origin.index,
                room=evacuate.room,
                sessions=len(evacuate.sessions),
                reason="no live sibling",
            )
            return
        if evacuate.room is not None:
            self.directory.claim_room(evacuate.room, target.generation)
            target.placed_since_load += 1
        for snap in evacuate.sessions:
            self.directory.move(snap.id, target.generation)
            self._returning.add(snap.id)
        self._evacuated += len(evacuate.sessions)
        target.send_frame(
            encode_frame(
                Adopt(
                    room=evacuate.room,
                    app_state=evacuate.app_state,
                    sessions=evacuate.sessions,
                    applied_bseq=evacuate.applied_bseq,
                )
            )
        )
        log(
            "evacuated",
            room=evacuate.room,
            sessions=len(evacuate.sessions),
            from_shard=origin.index,
            to_shard=target.index,
            to_pid=target.pid,
        )

    async def _route_fetch(self, requester: ShardHandle, fetch: Fetch) -> None:
        """A client resumes on ``requester``: take the session from its holder.

        Fetches of one session are serialised, so of two racing resumes the second is
        routed to the winner's shard and refused there (its token epoch is used up).
        """
        lock = self._session_locks.setdefault(fetch.session, trio.Lock())
        try:
            async with lock:
                answer = await self._surrender_from_holder(requester, fetch)
                if answer.snapshot is not None:
                    self.directory.move(fetch.session, requester.generation)
                requester.send_frame(
                    encode_frame(msgspec.structs.replace(answer, request=fetch.request))
                )
                log(
                    "handoff",
                    session=fetch.session,
                    to_shard=requester.index,
                    ok=answer.snapshot is not None,
                    error=answer.error,
                )
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._session_locks.pop(fetch.session, None)

    async def _forget_orphans(self, generation: int) -> None:
        """Checkpoints of a dead shard are worth keeping for one grace window."""
        await trio.sleep(self.config.grace)
        for sid in [s for s, (gen, _) in self.checkpoints.items() if gen == generation]:
            del self.checkpoints[sid]

    def _from_checkpoint(self, fetch: Fetch) -> Handoff | None:
        """A session whose shard died: its last checkpoint, marked as recovered."""
        entry = self.checkpoints.get(fetch.session)
        if entry is None or entry[0] in self.processes:
            return None
        del self.checkpoints[fetch.session]
        log(
            "session_recovered",
            session=fetch.session,
            from_generation=entry[0],
            last_seq=entry[1].last_seq,
        )
        return Handoff(
            request=fetch.request, session=fetch.session, snapshot=entry[1], recovered=True
        )

    async def _surrender_from_holder(self, requester: ShardHandle, fetch: Fetch) -> Handoff:
        refused = Handoff(
            request=fetch.request, session=fetch.session, snapshot=None, error="expired"
        )
        owner = self.directory.owner_of(fetch.session)
        holder = self.processes.get(owner) if owner is not None else None
        if holder is None or holder.exited.is_set():
            return self._from_checkpoint(fetch) or refused
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

    def _on_control(self, handle: ShardHandle, message: ControlMessage) -> None:
        if isinstance(message, Ready):
            handle.ready.set()
        elif isinstance(message, Broadcast):
            self.bseq += 1
            frame = encode_frame(
                Broadcast(origin=message.origin, message=message.message, bseq=self.bseq)
            )
            for other in self.processes.values():
                if other.ready.is_set() and not other.exited.is_set():
                    other.send_frame(frame)
        elif isinstance(message, Claim):
            self.directory.claim(message.session, handle.generation)
        elif isinstance(message, Release):
            self.directory.release(message.session, handle.generation)
            self.checkpoints.pop(message.session, None)
        elif isinstance(message, Checkpoint):
            for snap in message.sessions:
                if self.directory.owner_of(snap.id) == handle.generation:
                    self.checkpoints[snap.id] = (handle.generation, snap)
        elif isinstance(message, Load):
            handle.load = message
            handle.placed_since_load = 0
        elif isinstance(message, RoomHosted):
            owner = self._live(self.directory.room_owner(message.room))
            if owner is None or owner is handle:
                self.directory.claim_room(message.room, handle.generation)
            else:
                log("room_conflict", room=message.room, shard=handle.index, owner_shard=owner.index)
            self._released.pop(message.room, None)
        elif isinstance(message, RoomReleased):
            # Linger before forgetting the owner: a connection for this room may be in
            # flight to that shard, which will host it again (RoomHosted cancels this).
            self._released[message.room] = handle.generation
            self._nursery.start_soon(self._release_room_later, message.room, handle.generation)
        elif isinstance(message, Evacuate):
            self._adopt_elsewhere(handle, message)
        elif isinstance(message, SessionResumed):
            if message.session in self._returning:
                self._returning.discard(message.session)
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


async def _ready_or_exited(handle: ShardHandle, timeout: float) -> None:
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when, handle.ready, nursery.cancel_scope)
            nursery.start_soon(_set_when, handle.exited, nursery.cancel_scope)


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
