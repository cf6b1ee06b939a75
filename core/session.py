"""A player's session: connected -> away -> resumed | expired | left, with its replay buffer.

Sans-I/O, like h11's connection state: methods take ``now`` (seconds of a clock shared by
every process on the machine, e.g. ``time.monotonic()``) and return what the caller must
do; illegal transitions raise ``SessionStateError``.

* Outbound: every stream message gets the next ``seq`` and its JSON body (without
  ``seq``, see ``core.protocol.encode_body``) is kept in a replay buffer bounded in count
  (default 1024 messages) and in bytes (default 256 KiB of bodies). A broadcast's body is
  one ``bytes`` object shared by every recipient's buffer, so the real memory is one
  reference per session; the byte budget counts it per session all the same, which keeps
  the worst case (every body distinct) bounded: about ``buffer_bytes`` + 80 bytes per
  entry per session.
* Inbound: ``last_cseq`` is the high-water mark of client messages processed; a message
  at or below it is a duplicate of a re-send and is skipped.
* Tokens: ``epoch`` counts welcomes; a resume must present the current epoch's token,
  then the epoch advances, so a token works once. One exception keeps a player whose
  ``welcome`` was lost in transit (the link died right after the server sent it): until
  the client *confirms* the new token - any data frame on the connection that got it - the
  previous token still resumes. A leaked old token is therefore useless as soon as the
  player has said anything on the new connection.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

DEFAULT_REPLAY_BUFFER = 1024
DEFAULT_REPLAY_BYTES = 256 * 1024
DEFAULT_GRACE = 120.0
# How far a recovering client's last_seq may run ahead of its crashed holder's checkpoint
# (messages the holder sent after the checkpoint). Beyond it the resume is refused.
RECOVER_SLACK = 1 << 20
ENTRY_OVERHEAD = 80  # bytes a replay entry costs besides its body (tuple, deque slot)


class SessionState(enum.StrEnum):
    CONNECTED = "connected"
    AWAY = "away"
    EXPIRED = "expired"
    LEFT = "left"


class SessionStateError(Exception):
    pass


def new_session_id() -> str:
    """A globally unique id (64 random bits): shards need no coordination to mint one."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What a resume must send after ``welcome``: ``replay`` in order; ``gap`` when the
    buffer no longer held everything after the client's ``last_seq``."""

    replay: list[tuple[int, bytes]]  # (seq, JSON body without seq)
    gap: bool


class ReplayEntry(msgspec.Struct, array_like=True):
    seq: int
    body: int  # index into the enclosing SnapshotBatch.bodies


class SessionSnapshot(msgspec.Struct, kw_only=True):
    """Everything needed to continue a session in another process (its replay buffer
    refers to the bodies of the ``SnapshotBatch`` that carries it)."""

    id: str
    state: str
    epoch: int
    last_seq: int
    last_cseq: int
    buffer_size: int
    grace: float
    away_since: float | None
    away_reason: str | None
    buffer: list[ReplayEntry]
    room: str | None = None
    token_confirmed: bool = True
    buffer_bytes: int = DEFAULT_REPLAY_BYTES
    peer: str = ""
    # Restored from a checkpoint: its last_seq then (see Session.from_checkpoint).
    checkpoint_seq: int | None = None


class SnapshotBatch(msgspec.Struct, kw_only=True):
    """Sessions for another process. A body several sessions hold (a broadcast) is in
    ``bodies`` once, whatever the number of sessions that refer to it."""

    bodies: list[bytes]
    sessions: list[SessionSnapshot]

    @property
    def size(self) -> int:
        """Bytes this batch costs on the wire, roughly (bodies + ~120 per session/entry)."""
        return sum(map(len, self.bodies)) + sum(160 + 12 * len(s.buffer) for s in self.sessions)


class Session:
    """One player's session. ``grace``: seconds an away session keeps its seat."""

    __slots__ = (
        "id",
        "state",
        "epoch",
        "last_seq",
        "last_cseq",
        "grace",
        "away_since",
        "away_reason",
        "room",
        "token_confirmed",
        "peer",
        "checkpoint_seq",
        "_buffer",
        "_buffer_bytes",
        "max_buffer_bytes",
        "_maxlen",
    )

    def __init__(
        self,
        session_id: str | None = None,
        *,
        grace: float = DEFAULT_GRACE,
        buffer_size: int = DEFAULT_REPLAY_BUFFER,
        buffer_bytes: int = DEFAULT_REPLAY_BYTES,
        room: str | None = None,
        peer: str = "",
    ) -> None:
        if buffer_size < 1:
            raise ValueError("replay buffer must hold at least one message")
        if buffer_bytes < 1:
            raise ValueError("replay buffer must hold at least one byte")
        self.id = session_id or new_session_id()
        self.state = SessionState.CONNECTED
        self.epoch = 0
        self.last_seq = 0
        self.last_cseq = 0
        self.grace = grace
        self.away_since: float | None = None
        self.away_reason: str | None = None
        self.room = room  # the room this session plays in (None = lobby)
        self.token_confirmed = True  # the client has shown it holds the current token
        self.peer = peer  # the client's address when it connected (per-address caps)
        self._buffer: deque[tuple[int, bytes]] = deque()
        # Set when restored from a crashed holder's checkpoint: the last seq the checkpoint
        # had. Messages numbered after it were recorded since the crash (its client has
        # not seen them, whatever their seq says); see ``recover``.
        self.checkpoint_seq: int | None = None
        self._buffer_bytes = 0
        self.max_buffer_bytes = buffer_bytes
        self._maxlen = buffer_size

    # ----------------------------------------------------------------- stream
    def record(self, body: bytes) -> int:
        """Number an outbound stream message (its JSON body without ``seq``) and keep it
        for replay, dropping the oldest past the count or byte budget; returns its seq."""
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        self.last_seq += 1
        buffer = self._buffer
        buffer.append((self.last_seq, body))
        self._buffer_bytes += len(body) + ENTRY_OVERHEAD
        while len(buffer) > self._maxlen or (
            self._buffer_bytes > self.max_buffer_bytes and len(buffer) > 1
        ):
            self._buffer_bytes -= len(buffer.popleft()[1]) + ENTRY_OVERHEAD
        return self.last_seq

    def is_duplicate(self, cseq: int | None) -> bool:
        """True for a client message already processed (a re-send after a reconnect)."""
        return cseq is not None and cseq <= self.last_cseq

    def processed(self, cseq: int | None) -> None:
        if cseq is not None and cseq > self.last_cseq:
            self.last_cseq = cseq

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def buffer_size(self) -> int:
        """Most stream messages kept for replay."""
        return self._maxlen

    @property
    def buffered_bytes(self) -> int:
        """What the replay buffer costs by its budget (bodies + ``ENTRY_OVERHEAD`` each)."""
        return self._buffer_bytes

    # ----------------------------------------------------------------- lifecycle
    def next_token_epoch(self) -> int:
        """Advance the token epoch for a new ``welcome``; older tokens stop working once
        the client confirms the new one (``confirm_token``)."""
        self.epoch += 1
        self.token_confirmed = False
        return self.epoch

    def confirm_token(self) -> None:
        """The client spoke on the connection that got the current token: it has it."""
        self.token_confirmed = True

    def accepts_epoch(self, epoch: int) -> bool:
        """The current token, or the previous one while the current is unconfirmed."""
        return epoch == self.epoch or (epoch == self.epoch - 1 and not self.token_confirmed)

    def away(self, reason: str, now: float) -> float:
        """The connection died without a goodbye; returns the grace deadline."""
        if self.state is not SessionState.CONNECTED:
            raise SessionStateError(f"away from {self.state}")
        self.state = SessionState.AWAY
        self.away_since = now
        self.away_reason = reason
        return now + self.grace

    @property
    def grace_deadline(self) -> float | None:
        return None if self.away_since is None else self.away_since + self.grace

    def expired(self, now: float) -> bool:
        """True when an away session's grace window has run out at ``now``."""
        deadline = self.grace_deadline
        return self.state is SessionState.AWAY and deadline is not None and now >= deadline

    def resume(self, epoch: int, last_seq: int, now: float) -> ResumePlan:
        """A client came back with the token of ``epoch`` having seen up to ``last_seq``.

        Allowed from CONNECTED too (the old connection is a zombie the server has not
        detected yet; the caller closes it). Raises ``SessionStateError`` if the session
        ended, ``ValueError`` for a stale epoch or a ``last_seq`` from the future.
        """
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        if self.expired(now):
            raise SessionStateError(f"session {self.id} grace ran out")
        if not self.accepts_epoch(epoch):
            raise ValueError("token already used")
        if last_seq < 0 or last_seq > self.last_seq:
            raise ValueError(f"last_seq {last_seq} is beyond the session's {self.last_seq}")
        self.state = SessionState.CONNECTED
        self.away_since = None
        self.away_reason = None
        oldest = self._buffer[0][0] if self._buffer else self.last_seq + 1
        gap = last_seq + 1 < oldest
        replay = [entry for entry in self._buffer if entry[0] > last_seq]
        return ResumePlan(replay=replay, gap=gap)

    def recover(self, epoch: int, last_seq: int, now: float) -> ResumePlan:
        """Resume a session restored from a crashed shard's checkpoint.

        The checkpoint may be up to one interval old: the client may hold a newer token
        (epoch) and have seen messages beyond ``last_seq``. Its genuine token is accepted
        if not older than the checkpoint's previous one; ``seq`` continues after the
        client's ``last_seq``; the plan always reports a gap (what happened after the
        checkpoint is unknown), so the app sends a full snapshot.
        """
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        if epoch < self.epoch - 1:
            raise ValueError("token older than the checkpoint")
        if last_seq < 0 or last_seq > self.last_seq + RECOVER_SLACK:
            raise ValueError(f"last_seq {last_seq} is beyond what the session could have sent")
        self.epoch = max(self.epoch, epoch)
        self.state = SessionState.CONNECTED
        self.away_since = None
        self.away_reason = None
        boundary = self.checkpoint_seq
        if boundary is not None and last_seq > boundary:
            # The client saw messages the dead holder sent after its checkpoint; what was
            # recorded here since the crash reused those numbers but is new to the client:
            # renumber it after the client's last_seq instead of skipping it.
            old = [e for e in self._buffer if e[0] <= boundary]
            since = [e for e in self._buffer if e[0] > boundary]
            renumbered = [(last_seq + i, body) for i, (_, body) in enumerate(since, 1)]
            self._buffer = deque(old + renumbered)
            self.last_seq = last_seq + len(since)
            replay = renumbered
        else:
            replay = [entry for entry in self._buffer if entry[0] > last_seq]
            if last_seq > self.last_seq:
                self.last_seq = last_seq
        self.checkpoint_seq = None
        return ResumePlan(replay=replay, gap=True)

    def from_checkpoint(self) -> None:
        """Mark this session, restored from a crashed holder's checkpoint, at the moment
        of that holder's death: what it records from now on the dead holder cannot have
        sent, so ``recover`` renumbers it after the client's last_seq instead of skipping
        what the client's seq seems to cover."""
        if self.checkpoint_seq is None:
            self.checkpoint_seq = self.last_seq

    def expire(self, now: float) -> None:
        if not self.expired(now):
            raise SessionStateError(f"session {self.id} is not past its grace window")
        self.state = SessionState.EXPIRED
        self._clear()

    def leave(self) -> None:
        """The player left on purpose (close 1000/1001)."""
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        self.state = SessionState.LEFT
        self._clear()

    def _clear(self) -> None:
        self._buffer.clear()
        self._buffer_bytes = 0

    # ----------------------------------------------------------------- hand-off
    def snapshot(
        self, bodies: dict[int, int], table: list[bytes], keep: int = 0
    ) -> SessionSnapshot:
        """This session for another process; its bodies go into ``table`` (once each,
        ``bodies`` maps ``id(body)`` to its index). ``keep`` > 0 keeps only that many of
        the newest buffered messages."""
        entries = (
            self._buffer if keep <= 0 or keep >= len(self._buffer) else list(self._buffer)[-keep:]
        )
        buffer = []
        for seq, body in entries:
            index = bodies.get(id(body))
            if index is None:
                index = bodies[id(body)] = len(table)
                table.append(body)
            buffer.append(ReplayEntry(seq, index))
        return SessionSnapshot(
            id=self.id,
            state=str(self.state),
            epoch=self.epoch,
            last_seq=self.last_seq,
            last_cseq=self.last_cseq,
            buffer_size=self._maxlen,
            buffer_bytes=self.max_buffer_bytes,
            grace=self.grace,
            away_since=self.away_since,
            away_reason=self.away_reason,
            buffer=buffer,
            room=self.room,
            token_confirmed=self.token_confirmed,
            peer=self.peer,
            checkpoint_seq=self.checkpoint_seq,
        )

    @classmethod
    def restore(cls, snap: SessionSnapshot, bodies: list[bytes]) -> Session:
        """A session from ``snapshot`` (``bodies``: its batch's table)."""
        s = cls(
            snap.id,
            grace=snap.grace,
            buffer_size=max(1, snap.buffer_size),
            buffer_bytes=max(1, snap.buffer_bytes),
            room=snap.room,
            peer=snap.peer,
        )
        s.state = SessionState(snap.state)
        s.epoch = snap.epoch
        s.last_seq = snap.last_seq
        s.last_cseq = snap.last_cseq
        s.away_since = snap.away_since
        s.away_reason = snap.away_reason
        s.token_confirmed = snap.token_confirmed
        s.checkpoint_seq = snap.checkpoint_seq
        for entry in snap.buffer:
            body = bodies[entry.body]
            s._buffer.append((entry.seq, body))
            s._buffer_bytes += len(body) + ENTRY_OVERHEAD
        return s


def pack(sessions: Iterable[Session], budget: int, keep: int = 0) -> Iterator[SnapshotBatch]:
    """``sessions`` as batches of at most about ``budget`` bytes each (a batch always
    holds at least one session: one session's buffer is bounded by its own byte budget).
    A body shared by sessions of one batch is carried once. ``keep``: see ``snapshot``."""
    bodies: dict[int, int] = {}
    table: list[bytes] = []
    snaps: list[SessionSnapshot] = []
    size = 0
    for session in sessions:
        before = len(table)
        snap = session.snapshot(bodies, table, keep)
        grown = sum(len(b) for b in table[before:]) + 160 + 12 * len(snap.buffer)
        if snaps and size + grown > budget:
            # Start a new batch with this session (its bodies re-registered there).
            del table[before:]
            for key in [k for k, i in bodies.items() if i >= before]:
                del bodies[key]
            yield SnapshotBatch(bodies=table, sessions=snaps)
            bodies, table, snaps = {}, [], []
            snap = session.snapshot(bodies, table, keep)
            grown = sum(map(len, table)) + 160 + 12 * len(snap.buffer)
            size = 0
        snaps.append(snap)
        size += grown
    if snaps:
        yield SnapshotBatch(bodies=table, sessions=snaps)


def unpack(batch: SnapshotBatch) -> list[Session]:
    return [Session.restore(snap, batch.bodies) for snap in batch.sessions]
