"""Countdown: a minimal room game, written against the public app API only.

Run it from the repository root (the shards import ``examples`` from the working
directory, like any module of your own)::

    python -m supervisor --app examples.countdown:Countdown

then connect to ``ws://127.0.0.1:8080/rooms/<id>`` (an id of letters, digits, ``_`` and
``-``). The players of a room share a counter that starts at 10. ``{"type":"move","n":2}``
(n = 1-3) takes n off it and everyone in the room sees ``moved``; whoever brings it to 0
wins the round (``round_over``) and the counter starts again at 10. No turns, no AI: an away
player's seat is simply held until they resume (``player_back``) or the grace runs out.

The lobby messages (echo, say, user_left) are ``core.protocol``'s transport messages;
the room messages are the demo game's (``shards/race21.py``: ``move`` in, ``moved``,
``room_state``... out), so clients of one game can play the other. ``messages`` tells the
server which client messages beyond the transport ones this app understands.
``server.send`` numbers each message in the recipient's stream, so a player who resumes
gets everything they missed, in order.
"""

from __future__ import annotations

from typing import Any

from core.protocol import Echo, EchoReply, Error, Said, Say, StreamMessage, UserLeft
from core.session import Session
from shards.app import AppServer
from shards.race21 import (
    Move,
    Moved,
    MoveRejected,
    PlayerAway,
    PlayerBack,
    RoomState,
    RoundOver,
    SeatInfo,
)

START = 10


class Room:
    def __init__(self, room_id: str) -> None:
        self.id = room_id
        self.counter = START
        self.round = 1
        self.wins: dict[str, int] = {}
        self.members: dict[str, Session] = {}  # session id -> session, away ones included
        self.away: set[str] = set()


class Countdown:
    """One instance per shard. A room lives on one shard (the server routes every
    connection of ``/rooms/<id>`` there), so a plain dict of rooms is all the state."""

    messages = (Move,)

    def __init__(self) -> None:
        self.server: AppServer | None = None
        self.rooms: dict[str, Room] = {}

    def start(self, server: AppServer) -> None:
        self.server = server

    # ------------------------------------------------------------------ callbacks
    def on_connect(self, session: Session) -> None:
        if session.room is None:
            return  # the lobby: only echo and say
        room = self.rooms.setdefault(session.room, Room(session.room))
        room.members[session.id] = session
        self._send(session, self._snapshot(room))

    def on_message(self, session: Session, message: Any) -> None:
        if isinstance(message, Echo):
            self._send(session, EchoReply(data=message.data))
        elif isinstance(message, Say):
            assert self.server is not None
            if not self.server.broadcast(Said(from_=session.id, text=message.text), session):
                error = Error(code="broadcast_budget", reason="try again", cseq=message.cseq)
                self.server.notify(session, error)
        elif isinstance(message, Move):
            self._move(session, message.n)

    def on_away(self, session: Session, reason: str) -> None:
        room = self.rooms.get(session.room or "")
        if room is not None:
            room.away.add(session.id)
            # The protocol says ai=true for an away seat; here it is only held.
            self._to_room(room, PlayerAway(session=session.id, ai=True))

    def on_back(self, session: Session, gap: bool) -> None:
        room = self.rooms.get(session.room or "")
        if room is None:
            return
        room.members[session.id] = session
        if session.id in room.away:  # (a resume can also replace a still-open connection)
            room.away.discard(session.id)
            self._to_room(room, PlayerBack(session=session.id, ai=False))
        if gap:  # some missed messages were no longer buffered: send the whole state
            self._send(session, self._snapshot(room))

    def on_leave(self, session: Session, reason: str) -> None:
        assert self.server is not None
        self.server.broadcast(UserLeft(session=session.id, reason=reason))
        self.on_handoff(session)

    def on_handoff(self, session: Session) -> None:
        """The session left this shard: forget it (and its room once empty)."""
        room = self.rooms.get(session.room or "")
        if room is None:
            return
        room.members.pop(session.id, None)
        room.away.discard(session.id)
        if not room.members:
            del self.rooms[room.id]

    # ------------------------------------------------------------------ the game
    def _move(self, session: Session, n: int) -> None:
        room = self.rooms.get(session.room or "")
        if room is None:
            self._send(session, MoveRejected(reason="moves are played in a room"))
            return
        if not 1 <= n <= 3:
            self._send(session, MoveRejected(reason="n must be 1, 2 or 3"))
            return
        room.counter = max(0, room.counter - n)
        self._to_room(room, Moved(session=session.id, n=n, total=room.counter, by_ai=False))
        if room.counter == 0:
            room.wins[session.id] = room.wins.get(session.id, 0) + 1
            self._to_room(
                room, RoundOver(winner=session.id, round=room.round, wins=dict(room.wins))
            )
            room.round += 1
            room.counter = START

    def _snapshot(self, room: Room) -> RoomState:
        return RoomState(
            room=room.id,
            seats=[SeatInfo(sid, sid in room.away) for sid in room.members],
            total=room.counter,
            turn=None,  # no turns: anyone may move at any time
            round=room.round,
            wins=dict(room.wins),
        )

    # ------------------------------------------------------------------ sending
    def _send(self, session: Session, message: StreamMessage) -> None:
        assert self.server is not None
        self.server.send(session, message)

    def _to_room(self, room: Room, message: StreamMessage) -> None:
        for member in room.members.values():
            self._send(member, message)
