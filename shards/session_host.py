"""The sessions a shard holds: open or resume, away and the grace window, expiry, hand-off.

A session outlives its connection. When a connection dies without a goodbye the session
goes *away* (the app hears ``on_away`` and can let its AI play); a client that comes back
within ``grace`` seconds with its token resumes it - on this shard, or on another one that
fetches it from here through the supervisor - and gets every missed stream message once,
in order. Broadcasts are applied in the supervisor's total order (``bseq``) so a session in
transit between shards misses none and gets none twice.

Budgets (``core.config``): each session's replay buffer is bounded in messages and bytes;
away sessions are capped per shard (``max_away_sessions``) and per client address
(``max_away_per_address``) - over a cap the oldest away session ends at once (``user_left``
reason ``evicted``, counted and logged); a shard originates at most ``broadcast_rate``
client-triggered broadcasts per second (the rest are refused: the app answers the sender).
The broadcast log that brings sessions arriving by hand-off up to date holds at most
``BROADCAST_LOG`` entries and ``BROADCAST_LOG_BYTES`` of bodies.
"""

from __future__ import annotations

import heapq
import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from core.close_codes import CloseCode, Disconnect, DisconnectKind
from core.cluster import fetch_wait
from core.control import (
    FRAME_BUDGET,
    Adopt,
    Adopted,
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
from core.journal import JournalWriter
from core.protocol import (
    SHUTDOWN_MESSAGE,
    HeartbeatInfo,
    ServerMessage,
    ServerShutdown,
    StreamMessage,
    Welcome,
    encode_body,
)
from core.rate_limit import TokenBucket
from core.session import (
    ResumePlan,
    Session,
    SessionSnapshot,
    SessionState,
    SessionStateError,
    SnapshotBatch,
    pack,
    unpack,
)
from core.tokens import TokenClaims, TokenError, TokenSigner
from shards import stats
from shards.log import log

if TYPE_CHECKING:
    from core.config import ServerConfig
    from shards.app import App
    from shards.connection import SessionConnection

CHECKPOINT_TAIL = 256  # newest buffered messages kept in a checkpoint
LOBBY_SLICE = 64  # lobby sessions per evacuation unit
BROADCAST_LOG = 4096  # broadcasts remembered to bring a session arriving by hand-off up to date
BROADCAST_LOG_BYTES = 8 * 1024 * 1024  # ...and at most this many bytes of their bodies


@dataclass(slots=True)
class Opened:
    session: Session
    plan: ResumePlan | None  # None for a new session
    resume_error: str | None
    recovered: bool = False  # restored from a crashed shard's checkpoint


@dataclass(slots=True)
class Unit:
    """What a rolling restart moves in one step: a room with its players, or a slice of
    lobby sessions. ``app_state`` is the room's exported game while the unit is in flight."""

    room: str | None
    ids: list[str]
    app_state: bytes | None = None
    conns: list[SessionConnection] = field(default_factory=list)


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
        self._emptied = trio.Event()  # set when the last session leaves (wait_empty)
        self.attached: dict[str, SessionConnection] = {}
        self._grace: list[tuple[float, str]] = []
        self._grace_changed = trio.Event()
        # Away sessions in the order they went away (oldest first), and by client address.
        self._away: dict[str, None] = {}
        self._away_by_peer: dict[str, dict[str, None]] = {}
        self.bseq = 0
        self._blog: deque[tuple[int, bytes]] = deque()
        self._blog_bytes = 0
        self._skip_until: dict[str, int] = {}  # arrived by hand-off: already has these bseqs
        self._gap: set[str] = set()
        self._recovered: set[str] = set()  # restored from a checkpoint, not yet resumed
        self._exact: set[str] = set()  # ...of those, restored from a journal (exact)
        self._checkpointed: dict[str, tuple[object, ...]] = {}
        self._fetches: dict[int, _PendingFetch] = {}
        self._next_request = 0
        self._frozen: set[str] = set()  # in flight to the replacement (rolling restart)
        self._adopting: dict[int, tuple[str | None, bytes | None, list[Session]]] = {}
        self._budget = TokenBucket(config.broadcast_rate, config.broadcast_burst, time.monotonic())
        # --durability stream: every change of a session, for the supervisor's mirror,
        # flushed by the reactor before the bytes it describes reach a client.
        self.journal: JournalWriter | None = None
        self._sending: tuple[str, int] | None = None  # (session, cseq) being processed

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

    async def open(
        self, token: str | None, last_seq: int, room: str | None = None, peer: str = ""
    ) -> Opened:
        """A new session, or the resumed one (fetched from another shard if need be)."""
        if token is None:
            return Opened(self._new_session(room, peer), None, None)
        try:
            claims = self.signer.verify(token, time.time())
        except TokenError as exc:
            return self._failed_resume(exc.reason, str(exc), room, peer)
        session = self.sessions.get(claims.session_id)
        if session is None and self._before_boot(claims):
            return self._failed_resume("expired", "issued before this server started", room, peer)
        if session is None:
            session, error = await self._fetch(claims.session_id, claims.epoch)
            # A racing resume on this shard may have brought the session here meanwhile:
            # then the token epoch decides (the loser's token is used up).
            session = session or self.sessions.get(claims.session_id)
            if session is None:
                return self._failed_resume(error or "expired", "not found", room, peer)
        if session.id in self._frozen:
            return self._failed_resume("expired", "moving to another shard", room, peer)
        recovered = session.id in self._recovered
        try:
            if recovered and session.id in self._exact:
                # Recovered from a crashed shard's journal: exactly as it was.
                plan = session.resume(claims.epoch, last_seq, time.monotonic())
                self._recovered.discard(session.id)
                self._exact.discard(session.id)
            elif recovered:
                plan = session.recover(claims.epoch, last_seq, time.monotonic())
                self._recovered.discard(session.id)
            else:
                plan = session.resume(claims.epoch, last_seq, time.monotonic())
        except ValueError as exc:
            return self._failed_resume("invalid", str(exc), room, peer)
        except SessionStateError as exc:
            return self._failed_resume("expired", str(exc), room, peer)
        self._not_away(session)
        session.peer = peer or session.peer
        if self.journal is not None:
            self.journal.away(session)  # connected again
        if claims.session_id in self._gap:
            self._gap.discard(claims.session_id)
            plan = ResumePlan(plan.replay, True)
        old = self.attached.pop(session.id, None)
        if old is not None:
            # A zombie the heartbeat has not caught yet: one session, one live connection.
            old.session = None
            old.close(CloseCode.SESSION_REPLACED, "session resumed by a newer connection")
        return Opened(session, plan, None, recovered)

    def _new_session(self, room: str | None, peer: str) -> Session:
        session = Session(
            grace=self.config.grace,
            buffer_size=self.config.replay_buffer,
            buffer_bytes=self.config.replay_buffer_bytes,
            room=room,
            peer=peer,
        )
        self._hold(session)
        self._send_control(Claim(shard=self.shard_index, session=session.id))
        if self.journal is not None:
            self.journal.new(session)
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

    async def wait_empty(self) -> None:
        """Return once this shard holds no session (a leaving node's last ones fetched)."""
        while self.sessions:
            self._emptied = trio.Event()
            await self._emptied.wait()

    def _unhold(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None and self.journal is not None:
            self.journal.gone(session.id)
        if not self.sessions:
            self._emptied.set()
        self._skip_until.pop(session.id, None)
        self._gap.discard(session.id)
        self._recovered.discard(session.id)
        self._not_away(session)
        if session.room is not None:
            members = self.rooms.get(session.room)
            if members is not None:
                members.discard(session.id)
                if not members:
                    del self.rooms[session.room]
                    self._send_control(RoomReleased(shard=self.shard_index, room=session.room))

    def _failed_resume(self, reason: str, detail: str, room: str | None, peer: str) -> Opened:
        log("resume_failed", shard=self.shard_index, error=reason, detail=detail)
        return Opened(self._new_session(room, peer), None, reason)

    def attach(self, conn: SessionConnection, opened: Opened) -> None:
        """Send ``welcome`` (+ the replay) on ``conn`` and tell the app."""
        session, plan = opened.session, opened.plan
        conn.session = session
        conn.session_id = session.id
        token = self.signer.issue(session.id, session.next_token_epoch(), time.time())
        if self.journal is not None:
            self.journal.epoch(session)
        conn.send_message(
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
        if plan is not None:
            for seq, body in plan.replay:
                conn.send_body(body, seq)
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
            self._call(conn, "on_connect", session)
        else:
            self._send_control(SessionResumed(shard=self.shard_index, session=session.id))
            self._call(conn, "on_back", session, plan.gap)

    def deliver(self, conn: SessionConnection, session: Session, message: Any) -> bool:
        """A client message for the app, then marked processed; False (and the connection
        closing 1011) if the app's callback raised."""
        cseq = message.cseq
        if cseq is not None:
            self._sending = (session.id, cseq)
        try:
            if not self._call(conn, "on_message", session, message):
                return False
        finally:
            self._sending = None
        if cseq is not None:
            session.processed(cseq)
            if self.journal is not None:
                self.journal.processed(session.id, cseq)
        return True

    def token_confirmed(self, session: Session) -> None:
        """The client confirmed its newest token (its first data frame on a connection)."""
        if self.journal is not None:
            self.journal.epoch(session)

    # ================================================================== connection ended
    def detach(self, conn: SessionConnection, disconnect: Disconnect) -> None:
        """The connection of a session ended: leave, or go away for the grace window."""
        session = conn.session
        if session is None or self.attached.get(session.id) is not conn:
            return  # replaced by a newer connection, moved, or never attached
        del self.attached[session.id]
        if disconnect.kind in (DisconnectKind.GRACEFUL, DisconnectKind.POLICY):
            session.leave()
            self._end(session, str(disconnect.kind))
            return
        deadline = session.away(str(disconnect.kind), time.monotonic())
        if self.journal is not None:
            self.journal.away(session)
        self._schedule_expiry(deadline, session.id)
        self._call(None, "on_away", session, str(disconnect.kind))
        self._now_away(session)

    def _now_away(self, session: Session) -> None:
        """Count ``session`` as away; over a cap, the oldest away session ends now."""
        self._away[session.id] = None
        peer = self._away_by_peer.setdefault(session.peer, {}) if session.peer else None
        if peer is not None:
            peer[session.id] = None
            while len(peer) > self.config.max_away_per_address:
                self._evict(next(iter(peer)), "address_cap")
        while len(self._away) > self.config.max_away_sessions:
            self._evict(next(iter(self._away)), "shard_cap")

    def _not_away(self, session: Session) -> None:
        if session.id not in self._away:
            return
        del self._away[session.id]
        peer = self._away_by_peer.get(session.peer)
        if peer is not None:
            peer.pop(session.id, None)
            if not peer:
                del self._away_by_peer[session.peer]

    def _evict(self, session_id: str, why: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.AWAY:
            self._away.pop(session_id, None)
            for peer in self._away_by_peer.values():
                peer.pop(session_id, None)
            return
        stats.count(f"away_evicted|{why}")
        log(
            "session_evicted",
            shard=self.shard_index,
            session=session_id,
            reason=why,
            peer=session.peer,
            away_s=time.monotonic() - (session.away_since or time.monotonic()),
        )
        session.leave()
        self._end(session, "evicted")

    def _schedule_expiry(self, deadline: float, session_id: str) -> None:
        heapq.heappush(self._grace, (deadline, session_id))
        self._grace_changed.set()

    def _end(self, session: Session, reason: str) -> None:
        self._unhold(session)
        self._send_control(Release(shard=self.shard_index, session=session.id))
        self._call(None, "on_leave", session, reason)

    def _call(self, conn: SessionConnection | None, name: str, *args: object) -> bool:
        """Run an app callback; a crash closes only ``conn`` (1011), is logged with its
        traceback and counted, and never reaches the shard."""
        callback = getattr(self.app, name, None)
        if callback is None:
            return True  # optional callbacks (on_handoff) may be absent
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - an app bug must not take the shard down
            log(
                "app_error",
                shard=self.shard_index,
                callback=name,
                error=repr(exc)[:200],
                traceback="".join(traceback.format_exception(exc))[-2000:],
            )
            if conn is not None:
                conn.close(CloseCode.INTERNAL_ERROR, "application error")
            return False
        return True

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
        """Number ``message`` in ``session``'s stream, keep it for replay, send it."""
        if self.sessions.get(session.id) is not session:
            return
        if session.id in self._frozen:
            stats.count("send_dropped|moving")
            return  # in flight to the replacement: what it holds is what the client gets
        body = encode_body(message)
        seq = session.record(body)
        if self.journal is not None:
            self.journal.record(session.id, seq, body)
        conn = self.attached.get(session.id)
        if conn is not None:
            conn.send_stream(message, body, seq)

    def notify(self, session: Session, message: ServerMessage) -> None:
        """A message outside the stream (not numbered, not replayed), if connected."""
        conn = self.attached.get(session.id)
        if conn is not None and self.sessions.get(session.id) is session:
            conn.send_message(message)

    def broadcast(self, message: StreamMessage, sender: Session | None = None) -> bool:
        """``message`` to every session on every shard. With a ``sender`` (a broadcast a
        client asked for) the shard's budget applies: False when it is spent."""
        if sender is not None and not self._budget.take(time.monotonic()):
            stats.count("broadcast_rejected")
            return False
        body = encode_body(message)
        if self._control is None:
            self.apply_broadcast(self.bseq + 1, body)
        else:
            sending = self._sending if sender is not None else None
            self._control(
                Broadcast(
                    origin=self.shard_index,
                    body=body,
                    sender=sending[0] if sending else None,
                    cseq=sending[1] if sending else None,
                )
            )
        return True

    def apply_broadcast(self, bseq: int, body: bytes) -> None:
        """Record a broadcast in every session here (away ones too) and queue it to the
        attached ones: the body is shared; each copy is stamped with its seq when written
        (the reactor writes them in bounded batches)."""
        if self.bseq and bseq > self.bseq + 1:
            self.mark_gap(self.bseq + 1, bseq - 1)
        self.bseq = bseq
        self._log_broadcast(bseq, body)
        msgpack_body: bytes | None = None
        skip = self._skip_until
        attached = self.attached
        skipped: list[str] = []
        for session in self.sessions.values():
            if skip and skip.get(session.id, 0) >= bseq:
                skipped.append(session.id)
                continue
            if session.state is not SessionState.CONNECTED and session.state is not (
                SessionState.AWAY
            ):
                continue
            seq = session.record(body)
            conn = attached.get(session.id)
            if conn is None or conn.closing:
                continue
            if conn.binary:
                if msgpack_body is None:
                    msgpack_body = conn.codec.body_from_json(body)
                conn.send_body(body, seq, msgpack_body)
            else:
                conn.link.send_stamped(body, seq)
        if self.journal is not None:
            self.journal.broadcast(bseq, skipped)
        if skip:
            for session_id in [s for s, until in skip.items() if until <= bseq]:
                del skip[session_id]

    def _log_broadcast(self, bseq: int, body: bytes) -> None:
        blog = self._blog
        blog.append((bseq, body))
        self._blog_bytes += len(body)
        while len(blog) > BROADCAST_LOG or (self._blog_bytes > BROADCAST_LOG_BYTES and blog):
            self._blog_bytes -= len(blog.popleft()[1])

    def mark_gap(self, first: int, last: int) -> None:
        """Broadcasts ``first``..``last`` will never reach this shard: every session here
        reports ``replay_gap`` on its next resume, and the attached ones are told to
        resume now (close 4003), so the app sends them a full snapshot."""
        stats.count("broadcast_gap", last - first + 1)
        log(
            "broadcast_gap",
            shard=self.shard_index,
            first=first,
            last=last,
            sessions=len(self.sessions),
        )
        self._gap.update(self.sessions)
        for conn in list(self.attached.values()):
            conn.close(CloseCode.RESYNC, "missed broadcasts: resume")
        self.bseq = max(self.bseq, last)

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
            wait = self.config.fetch_timeout
            if self.config.cluster is not None:
                wait = fetch_wait(wait)  # another node's holder may have died: its lease
            with trio.move_on_after(wait):
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
        if session is None or session.id in self._frozen:
            return Handoff(
                request=request.request, session=request.session, batch=None, error="expired"
            )
        if not request.force and not session.accepts_epoch(request.epoch):
            return Handoff(
                request=request.request, session=request.session, batch=None, error="invalid"
            )
        old = self.attached.pop(session.id, None)
        if old is not None:
            old.session = None
            old.close(
                CloseCode.SESSION_REPLACED,
                "session taken over by another node"
                if request.force
                else "session resumed on another shard",
            )
        self._unhold(session)
        log(
            "handoff_out",
            shard=self.shard_index,
            session=session.id,
            buffered=session.buffered,
            last_seq=session.last_seq,
        )
        self._call(None, "on_handoff", session)
        (batch,) = pack([session], FRAME_BUDGET)
        return Handoff(
            request=request.request,
            session=session.id,
            batch=batch,
            applied_bseq=self.bseq,
        )

    def install(self, handoff: Handoff) -> None:
        """A fetched session arrives (runs in the control reader, before any later
        broadcast is applied, so none is missed)."""
        pending = self._fetches.get(handoff.request)
        if handoff.batch is None or not handoff.batch.sessions:
            if pending is not None:
                pending.error = handoff.error or "expired"
                pending.done.set()
            return
        (arrived,) = unpack(handoff.batch)
        session = self._arrive(arrived, handoff.applied_bseq, seen_until=handoff.seen_until_bseq)
        if handoff.recovered:
            # Its shard crashed. From a checkpoint, what that shard sent after it is unknown:
            # the resume continues after the client's last_seq and reports a gap
            # (Session.recover). From a journal it is exact.
            self._recovered.add(session.id)
            if handoff.exact:
                self._exact.add(session.id)
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
        self,
        session: Session,
        applied_bseq: int,
        catch_up: bool = True,
        seen_until: int | None = None,
    ) -> Session:
        """Hold a session that comes from another shard, caught up with the broadcasts this
        shard applied that its old holder had not (or told to skip those it already has).
        ``seen_until``: a crashed holder cannot have delivered broadcasts after this bseq;
        the session is marked there (``Session.from_checkpoint``)."""
        now = time.monotonic()
        journal = self.journal
        if journal is not None:
            journal.arrive(session.id)  # the supervisor forwarded this very snapshot
        if session.state is SessionState.CONNECTED:
            session.away("moved", now)  # no on_away: its client is already on its way here
            if journal is not None:
                journal.away(session)
        deadline = session.grace_deadline
        assert deadline is not None
        self._hold(session)
        self._schedule_expiry(deadline, session.id)
        self._now_away(session)
        if not catch_up:
            return session
        if applied_bseq < self.bseq:
            missing = [(b, body) for b, body in self._blog if b > applied_bseq]
            if not missing or missing[0][0] != applied_bseq + 1:
                self._gap.add(session.id)
            for bseq, body in missing:
                if seen_until is not None and bseq > seen_until:
                    session.from_checkpoint()  # the dead holder had read no further
                seq = session.record(body)
                if journal is not None:
                    journal.record(session.id, seq, body)
        elif applied_bseq > self.bseq:
            self._skip_until[session.id] = applied_bseq
        if seen_until is not None:
            session.from_checkpoint()  # everything recorded from now on is new to its client
        return session

    # ================================================================== crash recovery
    async def checkpoint_loop(self, interval: float) -> None:
        """Every ``interval``: snapshots of the sessions that changed, to the supervisor,
        in frames of about ``FRAME_BUDGET`` bytes."""
        while True:
            await trio.sleep(interval)
            for checkpoint in self.checkpoints():
                self._send_control(checkpoint)

    def checkpoints(self) -> Iterator[Checkpoint]:
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
        for batch in pack(changed, FRAME_BUDGET, keep=CHECKPOINT_TAIL):
            yield Checkpoint(shard=self.shard_index, batch=batch, applied_bseq=self.bseq)

    # ================================================================== rolling restart
    def evacuation_units(self, rooms_only: bool = False) -> list[Unit]:
        """Every room with its players, then (unless ``rooms_only``) the lobby in slices
        of ``LOBBY_SLICE``."""
        rooms: dict[str, list[str]] = {}
        lobby: list[str] = []
        for session in self.sessions.values():
            if session.room is None:
                lobby.append(session.id)
            else:
                rooms.setdefault(session.room, []).append(session.id)
        units = [Unit(room, ids) for room, ids in rooms.items()]
        if rooms_only:
            return units
        units.extend(
            Unit(None, lobby[i : i + LOBBY_SLICE]) for i in range(0, len(lobby), LOBBY_SLICE)
        )
        return units

    def export_unit(self, number: int, unit: Unit) -> list[Evacuate]:
        """Freeze ``unit`` (its connections stop being read: nothing they send is processed
        here any more, it waits in the kernel) and describe it for the replacement."""
        sessions = [self.sessions[sid] for sid in unit.ids if sid in self.sessions]
        unit.ids = [s.id for s in sessions]
        self._frozen.update(unit.ids)
        unit.conns = [c for c in (self.attached.get(sid) for sid in unit.ids) if c is not None]
        for conn in unit.conns:
            conn.link.pause(True)
        if unit.room is not None:
            export = getattr(self.app, "export_room", None)
            if export is not None:
                try:
                    unit.app_state = export(unit.room)
                except Exception as exc:  # noqa: BLE001 - a bad export must not kill the shard
                    log(
                        "app_error",
                        shard=self.shard_index,
                        callback="export_room",
                        error=repr(exc)[:200],
                    )
        batches = list(pack(sessions, FRAME_BUDGET)) or [SnapshotBatch(bodies=[], sessions=[])]
        return [
            Evacuate(
                shard=self.shard_index,
                unit=number,
                room=unit.room,
                app_state=unit.app_state if i == 0 else None,
                batch=batch,
                applied_bseq=self.bseq,
                final=i == len(batches) - 1,
            )
            for i, batch in enumerate(batches)
        ]

    def commit_unit(self, unit: Unit) -> list[SessionConnection]:
        """The replacement holds ``unit`` now: forget it here; its connections (returned)
        are told to come back."""
        for sid in unit.ids:
            self._frozen.discard(sid)
            session = self.sessions.get(sid)
            if session is None:
                continue
            conn = self.attached.pop(sid, None)
            if conn is not None:
                conn.session = None
            self._unhold(session)
            self._checkpointed.pop(sid, None)
            if unit.room is None:
                self._call(None, "on_handoff", session)
        log("evacuated_unit", shard=self.shard_index, room=unit.room, sessions=len(unit.ids))
        return unit.conns

    def abort_unit(self, unit: Unit) -> None:
        """The hand-off failed: serve ``unit`` here again, as if nothing happened."""
        for sid in unit.ids:
            self._frozen.discard(sid)
        if unit.room is not None and unit.app_state is not None:
            importer = getattr(self.app, "import_room", None)
            if importer is not None:
                sessions = [self.sessions[sid] for sid in unit.ids if sid in self.sessions]
                try:
                    importer(unit.room, unit.app_state, sessions)
                except Exception as exc:  # noqa: BLE001
                    log(
                        "app_error",
                        shard=self.shard_index,
                        callback="import_room",
                        error=repr(exc)[:200],
                    )
        for conn in unit.conns:
            conn.link.pause(False)

    def adopt(self, adopt: Adopt) -> Adopted | None:
        """Part of a unit evacuated by a draining sibling; after its final part the room's
        game is imported and ``Adopted`` is the answer."""
        room, state, sessions = self._adopting.pop(adopt.unit, (adopt.room, None, []))
        state = state if adopt.app_state is None else adopt.app_state
        sessions.extend(self._arrive(s, adopt.applied_bseq) for s in unpack(adopt.batch))
        if not adopt.final:
            self._adopting[adopt.unit] = (room, state, sessions)
            return None
        if room is not None and state is not None:
            importer = getattr(self.app, "import_room", None)
            if importer is not None:
                try:
                    importer(room, state, sessions)
                except Exception as exc:  # noqa: BLE001 - a bad import must not kill the shard
                    log(
                        "app_error",
                        shard=self.shard_index,
                        callback="import_room",
                        error=repr(exc)[:200],
                    )
        log("adopted", shard=self.shard_index, room=room, sessions=len(sessions))
        return Adopted(shard=self.shard_index, unit=adopt.unit)

    def evict_rooms(self, reason: str, reconnect_after_ms: int) -> int:
        """Cluster mode, the node's lease is lost: another node may seat these rooms now,
        so none may go on here. Every room session ends (``reason``: its room hears
        ``user_left``), its client is told to come back elsewhere. Returns how many.
        O(room sessions of this shard)."""
        ended = 0
        for members in list(self.rooms.values()):
            for sid in list(members):
                session = self.sessions.get(sid)
                if session is None:
                    continue
                conn = self.attached.pop(sid, None)
                if conn is not None:
                    conn.session = None  # its close is not an away: the seat is gone
                    self.tell_to_leave(conn, reason, reconnect_after_ms)
                session.leave()
                self._end(session, reason)
                ended += 1
        log("rooms_evicted", shard=self.shard_index, reason=reason, sessions=ended)
        return ended

    def tell_to_leave(self, conn: SessionConnection, reason: str, reconnect_after_ms: int) -> None:
        conn.send_message(
            ServerShutdown(
                reason=reason, reconnect_after_ms=reconnect_after_ms, message=SHUTDOWN_MESSAGE
            )
        )
        conn.close(CloseCode.SERVICE_RESTART, reason[:60])

    def _send_control(self, message: ControlMessage) -> None:
        if self._control is not None:
            self._control(message)


__all__ = ["Opened", "SessionHost", "SessionSnapshot", "Unit"]
