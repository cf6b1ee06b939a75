"""The session journal: a shard's sessions, replicated exactly in their holder (``--durability
stream``), sans-I/O.

A shard appends an entry for every change of a session it holds - created, arrived from
another shard, gone, a stream message recorded (its ``seq`` and JSON body), a broadcast
applied to all of them (by ``bseq``: the holder has the body), a client message processed
(``cseq``), a token epoch issued or confirmed, away or back - and writes the entries to
its supervisor *before* the bytes they describe go to any client (the reactor flushes the
journal first). The holder applies them to a ``SessionMirror``: when the shard dies, the
mirror is exactly what its players could have seen and what it had processed, so a resume
replays without loss or duplicate and ``welcome.last_cseq`` never goes below an
acknowledgement the client received.

Entries are msgpack arrays (a kind letter, then fields); one ``Journal`` control frame
carries a batch of them. Cost: ~20 bytes + the body per stream message, ~20 bytes per
processed ``cseq``, ~10 bytes per broadcast (not per recipient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.session import Session, SessionState

NEW = "n"  # (sid, room, peer, grace, buffer_size, buffer_bytes)
ARRIVE = "a"  # (sid,) the snapshot came through the holder; what follows catches it up
GONE = "g"  # (sid,)
RECORD = "r"  # (sid, seq, body)
BROADCAST = "b"  # (bseq, [sids skipped])
PROCESSED = "c"  # (sid, cseq)
EPOCH = "e"  # (sid, epoch, confirmed)
AWAY = "w"  # (sid, away_since, reason) - or (sid, None, None): back


class JournalWriter:
    """Collects a shard's entries until the reactor flushes them (``take``).
    ``on_first`` runs when an entry arrives in an empty journal (to wake the reactor)."""

    __slots__ = ("entries", "on_first")

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.entries: list[list[Any]] = []
        self.on_first = on_first

    def _add(self, entry: list[Any]) -> None:
        if not self.entries and self.on_first is not None:
            self.on_first()
        self.entries.append(entry)

    def take(self, budget: int = 1 << 20) -> list[list[Any]]:
        """The oldest entries, up to about ``budget`` bytes of bodies (at least one);
        call again until it returns [] (a control frame stays bounded)."""
        entries = self.entries
        if not entries:
            return entries
        size = 0
        for i, entry in enumerate(entries):
            if entry[0] == RECORD:
                size += len(entry[3])
                if size > budget and i:
                    self.entries = entries[i:]
                    return entries[:i]
        self.entries = []
        return entries

    def new(self, session: Session) -> None:
        self._add(
            [
                NEW,
                session.id,
                session.room,
                session.peer,
                session.grace,
                session.buffer_size,
                session.max_buffer_bytes,
            ]
        )

    def arrive(self, session_id: str) -> None:
        self._add([ARRIVE, session_id])

    def gone(self, session_id: str) -> None:
        self._add([GONE, session_id])

    def record(self, session_id: str, seq: int, body: bytes) -> None:
        self._add([RECORD, session_id, seq, body])

    def broadcast(self, bseq: int, skipped: list[str]) -> None:
        self._add([BROADCAST, bseq, skipped])

    def processed(self, session_id: str, cseq: int) -> None:
        self._add([PROCESSED, session_id, cseq])

    def epoch(self, session: Session) -> None:
        self._add([EPOCH, session.id, session.epoch, session.token_confirmed])

    def away(self, session: Session) -> None:
        self._add([AWAY, session.id, session.away_since, session.away_reason])


class SessionMirror:
    """One shard's sessions as its journal describes them (the holder's copy)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.bseq = 0
        self.diverged: set[str] = set()  # a record did not follow: treat as recovered

    def apply(
        self,
        entries: list[list[Any]],
        body_of: Callable[[int], bytes | None],
        arrival: Callable[[str], Session | None],
    ) -> None:
        """Apply a batch in order. ``body_of(bseq)`` gives a broadcast's body (None when
        the holder no longer has it); ``arrival(sid)`` the snapshot the holder forwarded."""
        sessions = self.sessions
        for entry in entries:
            kind = entry[0]
            if kind == RECORD:
                session = sessions.get(entry[1])
                if session is not None:
                    if session.last_seq + 1 != entry[2]:
                        self.diverged.add(session.id)
                        session.last_seq = entry[2] - 1
                    session.record(entry[3])
            elif kind == BROADCAST:
                self.bseq = bseq = entry[1]
                body = body_of(bseq)
                skipped = entry[2]
                for session in sessions.values():
                    if skipped and session.id in skipped:
                        continue
                    if body is None:
                        self.diverged.add(session.id)
                        session.last_seq += 1
                    else:
                        session.record(body)
            elif kind == PROCESSED:
                session = sessions.get(entry[1])
                if session is not None:
                    session.processed(entry[2])
            elif kind == EPOCH:
                session = sessions.get(entry[1])
                if session is not None:
                    session.epoch = entry[2]
                    session.token_confirmed = entry[3]
            elif kind == AWAY:
                session = sessions.get(entry[1])
                if session is not None:
                    if entry[2] is None:
                        session.state = SessionState.CONNECTED
                        session.away_since = session.away_reason = None
                    else:
                        session.state = SessionState.AWAY
                        session.away_since, session.away_reason = entry[2], entry[3]
            elif kind == NEW:
                sid, room, peer, grace, size, size_bytes = entry[1:7]
                sessions[sid] = Session(
                    sid,
                    grace=grace,
                    buffer_size=size,
                    buffer_bytes=size_bytes,
                    room=room,
                    peer=peer,
                )
            elif kind == ARRIVE:
                arrived = arrival(entry[1])
                if arrived is None:
                    self.diverged.add(entry[1])
                    arrived = Session(entry[1])
                sessions[entry[1]] = arrived
            elif kind == GONE:
                sessions.pop(entry[1], None)
                self.diverged.discard(entry[1])
