"""Where sessions survive their shard: the latest checkpoint of every session a live shard
holds (or, with ``--durability stream``, an exact mirror kept from its journal), and -
once that shard dies - the session itself, parked here and still receiving every
broadcast until its player resumes (on any shard) or its grace ends.

A checkpoint carries the ``bseq`` its shard had applied when it was taken. When the shard
dies, each of its checkpointed sessions is restored and caught up with the broadcasts
numbered since (from the supervisor's broadcast log), then records each new broadcast as
it is numbered. So a player who comes back late gets, in order and once, every broadcast
sent while their shard was gone; ``replay_gap`` then covers only what the shard sent in its
last checkpoint interval, which no one but the dead shard knew (and what the broadcast log
no longer held, if the player was gone longer than it reaches back).

Memory: one snapshot per checkpointed session (its replay tail, bounded by the replay
buffer's byte budget) - broadcast bodies a batch shares are shared here too - and, per
parked session, its replay buffer. Parked sessions are dropped when their grace (counted
from the crash) runs out.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

from core.control import FRAME_BUDGET, Broadcast, decode_frame
from core.journal import SessionMirror
from core.session import Session, SessionSnapshot, SessionState, SnapshotBatch, pack, unpack
from supervisor.relay import BroadcastLog

RECENT_BODIES = 4096  # broadcast bodies kept by bseq for the mirrors (the log has the rest)


class _Checkpoint:
    __slots__ = ("generation", "snapshot", "bodies", "applied_bseq")

    def __init__(
        self, generation: int, snapshot: SessionSnapshot, bodies: list[bytes], applied_bseq: int
    ) -> None:
        self.generation = generation
        self.snapshot = snapshot
        self.bodies = bodies
        self.applied_bseq = applied_bseq


class SessionPark:
    """Checkpoints by session, and the parked sessions of dead shards (see the module
    docstring). ``log`` is the supervisor's broadcast log (catch-up after a crash)."""

    def __init__(self, log: BroadcastLog, grace: float) -> None:
        self._log = log
        self.grace = grace
        self._checkpoints: dict[str, _Checkpoint] = {}
        self._parked: dict[str, Session] = {}
        self._gaps: set[str] = set()  # parked sessions that missed broadcasts (log too short)
        self._exact: set[str] = set()  # parked from a journal mirror: resumed as they were
        self._deadlines: list[tuple[float, str]] = []
        self._mirrors: dict[int, SessionMirror] = {}  # generation -> its sessions (stream)
        self._arrivals: dict[tuple[int, str], Session] = {}  # forwarded, not yet journaled
        self._bodies: dict[int, bytes] = {}
        self._body_order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._checkpoints) + len(self._parked)

    @property
    def parked(self) -> int:
        return len(self._parked)

    # ------------------------------------------------------------------ live shards
    def checkpoint(
        self,
        generation: int,
        batch: SnapshotBatch,
        applied_bseq: int,
        owns: Callable[[str], bool],
    ) -> None:
        """A shard's checkpoint frame: keep each session its ``generation`` still owns."""
        for snap in batch.sessions:
            if owns(snap.id):
                self._checkpoints[snap.id] = _Checkpoint(
                    generation, snap, batch.bodies, applied_bseq
                )

    def keep(
        self, generation: int, snap: SessionSnapshot, bodies: list[bytes], applied_bseq: int
    ) -> None:
        """A session just handed to ``generation`` (a roll): its state as handed over."""
        self._checkpoints[snap.id] = _Checkpoint(generation, snap, bodies, applied_bseq)

    def forget(self, session_id: str) -> None:
        """The session ended (left, expired) or is being resumed from here."""
        self._checkpoints.pop(session_id, None)
        self._parked.pop(session_id, None)
        self._gaps.discard(session_id)
        self._exact.discard(session_id)

    # ------------------------------------------------------------------ journals
    def on_journal(self, generation: int, entries: list[list[Any]]) -> None:
        """A shard's journal frame: applied to its mirror, in order."""
        mirror = self._mirrors.get(generation)
        if mirror is None:
            mirror = self._mirrors[generation] = SessionMirror()
        mirror.apply(
            entries, self._body_of, lambda sid: self._arrivals.pop((generation, sid), None)
        )

    def expect_arrival(self, generation: int, batch: SnapshotBatch) -> None:
        """Sessions forwarded to ``generation`` (a hand-off): its journal will say when."""
        for session in unpack(batch):
            self._arrivals[(generation, session.id)] = session

    def processed(self, generation: int, session_id: str, cseq: int) -> None:
        """A broadcast frame named the client message that asked for it."""
        mirror = self._mirrors.get(generation)
        session = mirror.sessions.get(session_id) if mirror is not None else None
        if session is not None:
            session.processed(cseq)

    def _body_of(self, bseq: int) -> bytes | None:
        body = self._bodies.get(bseq)
        if body is None:
            frame = self._log.get(bseq)
            if frame is not None:
                message = decode_frame(frame)
                if isinstance(message, Broadcast):
                    body = message.body
        return body

    # ------------------------------------------------------------------ dead shards
    def shard_died(self, generation: int, held: list[str], now: float) -> int:
        """Park each session of ``held`` (what the directory says ``generation`` held) from
        its journal mirror, or from its checkpoint; what else it had is stale and goes.
        Returns how many were parked."""
        mine = [sid for sid, c in self._checkpoints.items() if c.generation == generation]
        held_here = set(held)
        parked = 0
        mirror = self._mirrors.pop(generation, None)
        for key in [k for k in self._arrivals if k[0] == generation]:
            del self._arrivals[key]
        if mirror is not None:
            for sid, session in mirror.sessions.items():
                if sid not in held_here:
                    continue
                self._catch_up(session, mirror.bseq)
                self._parked[sid] = session
                if sid not in mirror.diverged and sid not in self._gaps:
                    self._exact.add(sid)
                heapq.heappush(self._deadlines, (now + self.grace, sid))
                parked += 1
            held_here -= set(mirror.sessions)
        for sid in mine:
            checkpoint = self._checkpoints.pop(sid)
            if sid not in held_here:
                continue  # moved to another shard after this checkpoint
            session = Session.restore(checkpoint.snapshot, checkpoint.bodies)
            self._catch_up(session, checkpoint.applied_bseq)
            # The dead shard may have delivered what was numbered before its death (its
            # client's last_seq says how much it saw); every broadcast from here on it
            # cannot have: a resume renumbers those after the client's last_seq.
            session.from_checkpoint()
            self._parked[sid] = session
            heapq.heappush(self._deadlines, (now + self.grace, sid))
            parked += 1
        return parked

    def _catch_up(self, session: Session, applied_bseq: int) -> None:
        log = self._log
        if applied_bseq + 1 < log.first and applied_bseq < log.last:
            self._gaps.add(session.id)  # the log no longer reaches back that far
        for bseq in range(max(applied_bseq + 1, log.first), log.last + 1):
            frame = log.get(bseq)
            if frame is None:
                self._gaps.add(session.id)
                continue
            message = decode_frame(frame)
            if isinstance(message, Broadcast):
                _record(session, message.body)

    def missed_broadcasts(self) -> None:
        """Broadcasts that will never be recorded (cluster mode: trimmed before this node
        read them): every parked session resumes with ``replay_gap``."""
        self._gaps.update(self._parked)

    def on_broadcast(self, bseq: int, body: bytes) -> None:
        """A broadcast was just numbered: every parked session records it (and the mirrors
        will, when their shards' journals say they applied it)."""
        for session in self._parked.values():
            _record(session, body)
        if self._mirrors:
            self._bodies[bseq] = body
            self._body_order.append(bseq)
            while len(self._body_order) > RECENT_BODIES:
                self._bodies.pop(self._body_order.popleft(), None)

    def take(
        self, session_id: str, alive: Callable[[int], bool]
    ) -> tuple[SnapshotBatch, bool] | None:
        """The session for a resume on some shard, if it is parked (or only checkpointed
        by a generation that is no longer alive), and whether it is exact (from a journal);
        it leaves the park."""
        exact = session_id in self._exact
        self._exact.discard(session_id)
        session = self._parked.pop(session_id, None)
        if session is None:
            checkpoint = self._checkpoints.get(session_id)
            if checkpoint is None or alive(checkpoint.generation):
                return None
            del self._checkpoints[session_id]
            session = Session.restore(checkpoint.snapshot, checkpoint.bodies)
            self._catch_up(session, checkpoint.applied_bseq)
            session.from_checkpoint()
        exact = exact and session_id not in self._gaps
        self._gaps.discard(session_id)
        (batch,) = pack([session], FRAME_BUDGET)
        return batch, exact

    def owner_of_checkpoint(self, session_id: str) -> int | None:
        checkpoint = self._checkpoints.get(session_id)
        return checkpoint.generation if checkpoint is not None else None

    def expire(self, now: float) -> list[str]:
        """Drop parked sessions whose grace (from the crash) ran out; their ids."""
        gone = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, sid = heapq.heappop(self._deadlines)
            if self._parked.pop(sid, None) is not None:
                self._gaps.discard(sid)
                gone.append(sid)
        return gone

    @property
    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None


def _record(session: Session, body: bytes) -> None:
    if session.state in (SessionState.CONNECTED, SessionState.AWAY):
        session.record(body)
