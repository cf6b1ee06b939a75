"""The sessions a shard holds: open or resume, away and the grace window, expiry, hand-off.

A session outlives its connection. When a connection dies without a goodbye the session
goes *away* (the app hears ``on_away`` and can let its AI play); a client that comes back
within ``grace`` seconds with its token resumes it - on this shard, or on another one that
fetches it from here through the supervisor - and gets every missed stream message once,
in order. Broadcasts are applied in the supervisor's total order (``bseq``) so a session in
transit between shards misses none and gets none twice.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import trio

from core.close_codes import CloseCode, Disconnect, DisconnectKind
from core.control import (
    Adopt,
    Broadcast,
    Checkpoint,
    Claim,
    ControlMessage,
    Evacuate,
    Fetch,
    Handoff,
    Release,
    RoomHosted,
    RoomReleased,
    SessionResumed,
    Surrender,
)
from core.protocol import HeartbeatInfo, Said, StreamMessage, UserLeft, Welcome
from core.session import (
    ResumePlan,
    Session,
    SessionSnapshot,
    SessionState,
    SessionStateError,
)
from core.tokens import TokenClaims, TokenError, TokenSigner
from shards.log import log

if TYPE_CHECKING:
    from core.config import ServerConfig
    from shards.app import App
    from shards.connection import Connection

CHECKPOINT_TAIL = 256  # newest buffered messages kept in a checkpoint
EVACUATE_BATCH = 200  # lobby sessions per Evacuate frame (keeps control frames small)
BROADCAST_LOG = 4096  # broadcasts remembered to bring a session arriving by hand-off up to date


@dataclass(slots=True)
class Opened:
    session: Session
    plan: ResumePlan | None  # None for a new session
    resume_error: str | None
    recovered: bool = False  # restored from a crashed shard's checkpoint


class _PendingFetch:
    __slots__ = ("done", "session", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.session: Session | None = None
        self.error: str | None = None


class SessionHost:
    def __init__(
        self,
        shard_index: int,
        config: ServerConfig,
        signer: TokenSigner,
        app: App,
        heartbeat: HeartbeatInfo,
        control: Callable[[ControlMessage], None] | None,
        booted_at: float = 0.0,
    ) -> None:
        self.shard_index = shard_index
        self.booted_at = booted_at
        self.config = config
        self.signer = signer
        self.app = app
        self.heartbeat = heartbeat
        self._control = control
        self.sessions: dict[str, Session] = {}
        self.rooms: dict[str, set[str]] = {}  # room -> sessions held here that play in it
        self.attached: dict[str, Connection] = {}
        self._grace: list[tuple[float, str]] = []
        self._grace_changed = trio.Event()
        self.bseq = 0
        self._blog: deque[tuple[int, Said | UserLeft]] = deque(maxlen=BROADCAST_LOG)
        self._skip_until: dict[str, int] = {}  # arrived by hand-off: already has these bseqs
        self._gap: set[str] = set()
        self._recovered: set[str] = set()  # restored from a checkpoint, not yet resumed
        self._checkpointed: dict[
            str, tuple[object, ...]
        ] = {}  # arrived by hand-off with broadcasts we no longer know
        self._fetches: dict[int, _PendingFetch] = {}
        self._next_request = 0

    # ================================================================== open / resume
    def hosts_room(self, room: str) -> bool:
        return room in self.rooms

    def session_of_token(self, token: str) -> str | None:
        """The session a genuine token names (for routing; the resume checks the rest).
        None for a token of an earlier run: nobody holds its session, nothing to route."""
        try:
            claims = self.signer.verify(token, time.time())
        except TokenError:
            return None
        return None if self._before_boot(claims) else claims.session_id

    def _before_boot(self, claims: TokenClaims) -> bool:
        """Issued before the supervisor started (with 2 s for the token's whole-second
        expiry and clock steps): its session died with the previous run. Refusing it here
        keeps a reconnect storm after a full restart from queueing 10,000 routes and
        fetches through the supervisor, each answered "expired" in the end."""
        return self.booted_at > 0 and claims.issued_at < self.booted_at - 2.0

    async def open(self, token: str | None, last_seq: int, room: str | None = None) -> Opened:
        """A new session, or the resumed one (fetched from another shard if need be)."""
        if token is None:
            return Opened(self._new_session(room), None, None)
        try:
            claims = self.signer.verify(token, time.time())
        except TokenError as exc:
            return self._failed_resume(exc.reason, str(exc), room)
        session = self.sessions.get(claims.session_id)
        if session is None and self._before_boot(claims):
            return self._failed_resume("expired", "issued before this server started", room)
        if session is None:
            session, error = await self._fetch(claims.session_id, claims.epoch)
            # A racing resume on this shard may have brought the session here meanwhile:
            # then the token epoch decides (the loser's token is used up).
            session = session or self.sessions.get(claims.session_id)
            if session is None:
                return self._failed_resume(error or "expired", "not found", room)
        recovered = session.id in self._recovered
        try:
            if recovered:
                plan = session.recover(claims.epoch, last_seq, time.monotonic())
                self._recovered.discard(session.id)
            else:
                plan = session.resume(claims.epoch, last_seq, time.monotonic())
        except ValueError as exc:
            return self._failed_resume("invalid", str(exc), room)
        except SessionStateError as exc:
            return self._failed_resume("expired", str(exc), room)
        if claims.session_id in self._gap:
            self._gap.discard(claims.session_id)
            plan = ResumePlan(plan.replay, True)
        old = self.attached.pop(session.id, None)
        if old is not None:
            # A zombie the heartbeat has not caught yet: one session, one live connection.
            old.session = None
            old.close(CloseCode.SESSION_REPLACED, "session resumed by a newer connection")
        return Opened(session, plan, None, recovered)

    def _new_session(self, room: str | None) -> Session:
        session = Session(grace=self.config.grace, buffer_size=self.config.replay_buffer, room=room)
        self._hold(session)
        self._send_control(Claim(shard=self.shard_index, session=session.id))
        return session

    def _hold(self, session: Session) -> None:
        self.sessions[session.id] = session
        if session.room is not None:
            members = self.rooms.get(session.room)
            if members is None:
                members = self.rooms[session.room] = set()
                # Claim it: a connection routed here just as the room emptied would
                # otherwise re-create it while the directory lets another shard take it.
                self._send_control(RoomHosted(shard=self.shard_index, room=session.room))
            members.add(session.id)

    def _unhold(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self._skip_until.pop(session.id, None)
        if session.room is not None:
            members = self.rooms.get(session.room)
            if members is not None:
                members.discard(session.id)
                if not members:
                    del self.rooms[session.room]
                    self._send_control(RoomReleased(shard=self.shard_index, room=session.room))

    def _failed_resume(self, reason: str, detail: str, room: str | None) -> Opened:
        log("resume_failed", shard=self.shard_index, error=reason, detail=detail)
        return Opened(self._new_session(room), None, reason)

    def attach(self, conn: Connection, opened: Opened) -> None:
        """Queue ``welcome`` (+ the replay) on ``conn`` and tell the app."""
        session, plan = opened.session, opened.plan
        conn.session = session
        conn.session_id = session.id
        token = self.signer.issue(session.id, session.next_token_epoch(), time.time())
        conn.send(
            conn.codec.encode(
                Welcome(
                    session=session.id,
                    token=token,
                    resumed=plan is not None,
                    shard=self.shard_index,
                    heartbeat=self.heartbeat,
                    last_cseq=session.last_cseq,
                    resume_error=opened.resume_error,
                    replay_gap=bool(plan and plan.gap),
                    recovered=opened.recovered,
                )
            )
        )
        if plan is not None:
            for seq, message in plan.replay:
                conn.send(conn.codec.stamp(conn.codec.encode_body(message), seq))
            log(
                "resume",
                shard=self.shard_index,
                session=session.id,
                replayed=len(plan.replay),
                gap=plan.gap,
                recovered=opened.recovered,
                last_seq=session.last_seq,
                last_cseq=session.last_cseq,
            )
        self.attached[session.id] = conn
        if plan is None:
            self.app.on_connect(session)
        else:
            self._send_control(SessionResumed(shard=self.shard_index, session=session.id))
            self.app.on_back(session, plan.gap)

    # ================================================================== connection ended
    def detach(self, conn: Connection, disconnect: Disconnect) -> None:
        """The connection of a session ended: leave, or go away for the grace window."""
        session = conn.session
        if session is None or self.attached.get(session.id) is not conn:
            return  # replaced by a newer connection, or never attached
        del self.attached[session.id]
        if disconnect.kind in (DisconnectKind.GRACEFUL, DisconnectKind.POLICY):
            session.leave()
            self._end(session, str(disconnect.kind))
            return
        deadline = session.away(str(disconnect.kind), time.monotonic())
        self._schedule_expiry(deadline, session.id)
        self._call("on_away", session, str(disconnect.kind))

    def _schedule_expiry(self, deadline: float, session_id: str) -> None:
        heapq.heappush(self._grace, (deadline, session_id))
        self._grace_changed.set()

    def _end(self, session: Session, reason: str) -> None:
        self._unhold(session)
        self._send_control(Release(shard=self.shard_index, session=session.id))
        self._call("on_leave", session, reason)

    def _call(self, name: str, *args: object) -> None:
        callback = getattr(self.app, name, None)
        if callback is None:
            return  # optional callbacks (on_handoff) may be absent
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - an app bug must not take the shard down
            log("app_error", shard=self.shard_index, callback=name, error=repr(exc)[:200])

    async def grace_loop(self) -> None:
        """Expire away sessions whose grace ran out (one task for the whole shard)."""
        while True:
            now = time.monotonic()
            while self._grace and self._grace[0][0] <= now:
                _, session_id = heapq.heappop(self._grace)
                session = self.sessions.get(session_id)
                if session is not None and session.expired(now):
                    session.expire(now)
                    log(
                        "session_expired",
                        shard=self.shard_index,
                        session=session_id,
                        away_s=now - (session.away_since or now),
                    )
                    self._end(session, "expired")
            wait = self._grace[0][0] - now if self._grace else math.inf
            with trio.move_on_after(wait):
                await self._grace_changed.wait()
            self._grace_changed = trio.Event()

    # ================================================================== stream messages
    def send(self, session: Session, message: StreamMessage) -> None:
        if self.sessions.get(session.id) is not session:
            return
        seq = session.record(message)
        conn = self.attached.get(session.id)
        if conn is not None:
            conn.send(conn.codec.encode(msgspec.structs.replace(message, seq=seq)))

    def broadcast(self, message: Said | UserLeft) -> None:
        if self._control is None:
            self.apply_broadcast(self.bseq + 1, message)
        else:
            self._control(Broadcast(origin=self.shard_index, message=message))

    def apply_broadcast(self, bseq: int, message: Said | UserLeft) -> None:
        """Record a broadcast in every session here (away ones too) and send it to the
        attached ones: one encode per wire format, each copy only gets its seq stamped."""
        self.bseq = bseq
        self._blog.append((bseq, message))
        bodies: list[str | bytes | None] = [None, None]
        skip = self._skip_until
        for session in self.sessions.values():
            if skip and skip.get(session.id, 0) >= bseq:
                continue
            if session.state not in (SessionState.CONNECTED, SessionState.AWAY):
                continue
            seq = session.record(message)
            conn = self.attached.get(session.id)
            if conn is None or conn.closing:
                continue
            codec = conn.codec
            body = bodies[codec.binary]
            if body is None:
                body = bodies[codec.binary] = codec.encode_body(message)
            conn.send(codec.stamp(body, seq))
        if skip:
            for session_id in [s for s, until in skip.items() if until <= bseq]:
                del skip[session_id]

    # ================================================================== hand-off
    async def _fetch(self, session_id: str, epoch: int) -> tuple[Session | None, str | None]:
        if self._control is None:
            return None, "expired"
        self._next_request += 1
        request = self._next_request
        pending = self._fetches[request] = _PendingFetch()
        self._control(
            Fetch(request=request, shard=self.shard_index, session=session_id, epoch=epoch)
        )
        try:
            with trio.move_on_after(self.config.fetch_timeout):
                await pending.done.wait()
        finally:
            self._fetches.pop(request, None)
        if not pending.done.is_set():
            log("fetch_timeout", shard=self.shard_index, session=session_id)
            return None, "expired"
        return pending.session, pending.error

    def surrender(self, request: Surrender) -> Handoff:
        """The supervisor asks for a session a client is resuming on another shard."""
        session = self.sessions.get(request.session)
        if session is None:
            return Handoff(
                request=request.request, session=request.session, snapshot=None, error="expired"
            )
        if not session.accepts_epoch(request.epoch):
            return Handoff(
                request=request.request, session=request.session, snapshot=None, error="invalid"
            )
        old = self.attached.pop(session.id, None)
        if old is not None:
            old.session = None
            old.close(CloseCode.SESSION_REPLACED, "session resumed on another shard")
        self._unhold(session)
        log(
            "handoff_out",
            shard=self.shard_index,
            session=session.id,
            buffered=session.buffered,
            last_seq=session.last_seq,
        )
        self._call("on_handoff", session)
        return Handoff(
            request=request.request,
            session=session.id,
            snapshot=session.snapshot(),
            applied_bseq=self.bseq,
        )

    def install(self, handoff: Handoff) -> None:
        """A fetched session arrives (runs in the control reader, before any later
        broadcast is applied, so none is missed)."""
        pending = self._fetches.get(handoff.request)
        if handoff.snapshot is None:
            if pending is not None:
                pending.error = handoff.error or "expired"
                pending.done.set()
            return
        session = self._arrive(
            handoff.snapshot, handoff.applied_bseq, catch_up=not handoff.recovered
        )
        if handoff.recovered:
            # What its crashed holder sent after the checkpoint is unknown: the resume
            # continues after the client's last_seq and reports a gap (Session.recover).
            self._recovered.add(session.id)
        log(
            "handoff_in",
            shard=self.shard_index,
            session=session.id,
            buffered=session.buffered,
            last_seq=session.last_seq,
        )
        if pending is None:
            # The resuming client gave up meanwhile: the session waits here for its grace.
            return
        pending.session = session
        pending.done.set()

    def _arrive(
        self, snapshot: SessionSnapshot, applied_bseq: int, catch_up: bool = True
    ) -> Session:
        """Hold a session that comes from another shard, caught up with the broadcasts this
        shard applied that its old holder had not (or told to skip those it already has)."""
        session = Session.restore(snapshot)
        now = time.monotonic()
        if session.state is SessionState.CONNECTED:
            session.away("moved", now)  # no on_away: its client is already on its way here
        deadline = session.grace_deadline
        assert deadline is not None
        self._hold(session)
        self._schedule_expiry(deadline, session.id)
        if not catch_up:
            return session
        if applied_bseq < self.bseq:
            missing = [(b, m) for b, m in self._blog if b > applied_bseq]
            if not missing or missing[0][0] != applied_bseq + 1:
                self._gap.add(session.id)
            for _, message in missing:
                session.record(message)
        elif applied_bseq > self.bseq:
            self._skip_until[session.id] = applied_bseq
        return session

    # ================================================================== crash recovery
    async def checkpoint_loop(self, interval: float) -> None:
        """Every ``interval``: snapshots of the sessions that changed, to the supervisor."""
        while True:
            await trio.sleep(interval)
            changed = []
            for session in self.sessions.values():
                mark = (
                    session.state,
                    session.epoch,
                    session.last_seq,
                    session.last_cseq,
                    session.token_confirmed,
                    session.away_since,
                )
                if self._checkpointed.get(session.id) != mark:
                    self._checkpointed[session.id] = mark
                    changed.append(session)
            for gone in [sid for sid in self._checkpointed if sid not in self.sessions]:
                del self._checkpointed[gone]
            for start in range(0, len(changed), EVACUATE_BATCH):
                batch = changed[start : start + EVACUATE_BATCH]
                self._send_control(
                    Checkpoint(
                        shard=self.shard_index,
                        sessions=[s.snapshot_tail(CHECKPOINT_TAIL) for s in batch],
                    )
                )

    # ================================================================== rolling restart
    def evacuate(self) -> list[Evacuate]:
        """Give up every room and session for a sibling to adopt (a rolling restart).

        The connections stay open only to be told to reconnect: they are detached first,
        so nothing they send is processed here any more (the client re-sends it to the new
        holder, which has not seen its cseq)."""
        for conn in self.attached.values():
            conn.session = None
        self.attached.clear()
        out: list[Evacuate] = []
        rooms: dict[str | None, list[Session]] = {}
        for session in self.sessions.values():
            rooms.setdefault(session.room, []).append(session)
        export = getattr(self.app, "export_room", None)
        for room, sessions in rooms.items():
            state = export(room) if room is not None and export is not None else None
            for start in range(0, len(sessions), EVACUATE_BATCH):
                batch = sessions[start : start + EVACUATE_BATCH]
                out.append(
                    Evacuate(
                        shard=self.shard_index,
                        room=room,
                        app_state=state if start == 0 else None,
                        sessions=[s.snapshot() for s in batch],
                        applied_bseq=self.bseq,
                    )
                )
        log(
            "evacuate",
            shard=self.shard_index,
            sessions=len(self.sessions),
            rooms=len([r for r in rooms if r is not None]),
            messages=len(out),
        )
        self.sessions.clear()
        self.rooms.clear()
        self._skip_until.clear()
        return out

    def adopt(self, adopt: Adopt) -> None:
        """Sessions (and a room's app state) evacuated by a draining sibling."""
        arrived = [self._arrive(snap, adopt.applied_bseq) for snap in adopt.sessions]
        if adopt.room is not None and adopt.app_state is not None:
            importer = getattr(self.app, "import_room", None)
            if importer is not None:
                try:
                    importer(adopt.room, adopt.app_state, arrived)
                except Exception as exc:  # noqa: BLE001 - a bad import must not kill the shard
                    log(
                        "app_error",
                        shard=self.shard_index,
                        callback="import_room",
                        error=repr(exc)[:200],
                    )
        log("adopted", shard=self.shard_index, room=adopt.room, sessions=len(arrived))

    def _send_control(self, message: ControlMessage) -> None:
        if self._control is not None:
            self._control(message)
