"""A player's session: connected -> away -> resumed | expired | left, with its replay buffer.

Sans-I/O, like h11's connection state: methods take ``now`` (seconds of a clock shared by
every process on the machine, e.g. ``time.monotonic()``) and return what the caller must
do; illegal transitions raise ``SessionStateError``.

* Outbound: every stream message gets the next ``seq`` and is kept in a bounded replay
  buffer (default 1024 messages; memory = that many references per session, the
  messages themselves are shared between recipients of a broadcast).
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
from dataclasses import dataclass
from typing import Any

import msgspec

from core.protocol import StreamMessage

DEFAULT_REPLAY_BUFFER = 1024
DEFAULT_GRACE = 120.0


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

    replay: list[tuple[int, Any]]
    gap: bool


class ReplayEntry(msgspec.Struct, array_like=True):
    seq: int
    message: StreamMessage


class SessionSnapshot(msgspec.Struct, kw_only=True):
    """Everything needed to continue a session in another process."""

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
        "_buffer",
    )

    def __init__(
        self,
        session_id: str | None = None,
        *,
        grace: float = DEFAULT_GRACE,
        buffer_size: int = DEFAULT_REPLAY_BUFFER,
        room: str | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("replay buffer must hold at least one message")
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
        self._buffer: deque[tuple[int, Any]] = deque(maxlen=buffer_size)

    # ----------------------------------------------------------------- stream
    def record(self, message: Any) -> int:
        """Number an outbound stream message and keep it for replay; returns its seq."""
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        self.last_seq += 1
        self._buffer.append((self.last_seq, message))
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
        self.epoch = max(self.epoch, epoch)
        self.state = SessionState.CONNECTED
        self.away_since = None
        self.away_reason = None
        replay = [entry for entry in self._buffer if entry[0] > last_seq]
        if last_seq > self.last_seq:
            self.last_seq = last_seq
        return ResumePlan(replay=replay, gap=True)

    def snapshot_tail(self, keep: int) -> SessionSnapshot:
        """A snapshot with only the newest ``keep`` buffered messages (for checkpoints)."""
        snap = self.snapshot()
        if len(snap.buffer) > keep:
            snap.buffer = snap.buffer[-keep:]
        return snap

    def expire(self, now: float) -> None:
        if not self.expired(now):
            raise SessionStateError(f"session {self.id} is not past its grace window")
        self.state = SessionState.EXPIRED
        self._buffer.clear()

    def leave(self) -> None:
        """The player left on purpose (close 1000/1001)."""
        if self.state in (SessionState.EXPIRED, SessionState.LEFT):
            raise SessionStateError(f"session {self.id} is {self.state}")
        self.state = SessionState.LEFT
        self._buffer.clear()

    # ----------------------------------------------------------------- hand-off
    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(
            id=self.id,
            state=str(self.state),
            epoch=self.epoch,
            last_seq=self.last_seq,
            last_cseq=self.last_cseq,
            buffer_size=self._buffer.maxlen or DEFAULT_REPLAY_BUFFER,
            grace=self.grace,
            away_since=self.away_since,
            away_reason=self.away_reason,
            buffer=[ReplayEntry(seq, msg) for seq, msg in self._buffer],
            room=self.room,
            token_confirmed=self.token_confirmed,
        )

    @classmethod
    def restore(cls, snap: SessionSnapshot) -> Session:
        s = cls(snap.id, grace=snap.grace, buffer_size=snap.buffer_size, room=snap.room)
        s.state = SessionState(snap.state)
        s.epoch = snap.epoch
        s.last_seq = snap.last_seq
        s.last_cseq = snap.last_cseq
        s.away_since = snap.away_since
        s.away_reason = snap.away_reason
        s.token_confirmed = snap.token_confirmed
        s._buffer.extend((e.seq, e.message) for e in snap.buffer)
        return s
