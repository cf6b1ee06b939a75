"""The default app (``--app demo``): the lobby's echo and say, and Race to 21 in rooms.

The lobby: ``echo`` answers the sender, ``say`` reaches everyone (within the shard's
broadcast budget; over it the sender gets ``error`` ``broadcast_budget``), leaves are
announced. Rooms (``/rooms/<id>``): players are seated for Race to 21
(``shards/race21.py``: the rules and the game's messages); an away player's turns are
played by the AI until they come back; the grace expiry unseats them.
"""

from __future__ import annotations

import time

import msgspec

from core.protocol import (
    ClientMessage,
    Echo,
    EchoReply,
    Error,
    Said,
    Say,
    StreamMessage,
    UserLeft,
)
from core.session import Session
from shards.app import AppServer
from shards.race21 import (
    GameState,
    IllegalMove,
    Joined,
    Move,
    Moved,
    MoveRejected,
    PlayerAway,
    PlayerBack,
    Race21,
    RoomState,
    RoundOver,
    SeatInfo,
    Turn,
)
from shards.timers import TimerHandle


class Room:
    """One room of the demo app: its players' sessions and their game of Race to 21."""

    def __init__(self, room_id: str, turn_seconds: float) -> None:
        self.id = room_id
        self.members: dict[str, Session] = {}
        self.game = Race21(GameState(room=room_id), turn_seconds)
        self.timer: TimerHandle | None = None

    def state_message(self) -> RoomState:
        state = self.game.state
        current = self.game.current
        return RoomState(
            room=self.id,
            seats=[SeatInfo(seat.session, seat.away) for seat in state.seats],
            total=state.total,
            turn=current.session if current else None,
            round=state.round,
            wins=dict(state.wins),
        )


class ExportedGame(msgspec.Struct, kw_only=True):
    """A room's game on its way to another shard or node: ``turn_left_s`` is the time the
    current turn had left (None: no game running)."""

    state: GameState
    turn_left_s: float | None


class DemoApp:
    """``turn_seconds`` (default 10): time for a move before the AI plays it.
    ``ai_think_seconds`` (default 0.5): how soon the AI moves for an away player.
    """

    messages = (Move,)  # client messages beyond the transport ones (echo, say, heartbeat)

    def __init__(self, turn_seconds: float = 10.0, ai_think_seconds: float = 0.5) -> None:
        self.server: AppServer | None = None
        self.turn_seconds = turn_seconds
        self.ai_think_seconds = ai_think_seconds
        self.rooms: dict[str, Room] = {}

    def start(self, server: AppServer) -> None:
        self.server = server

    # ------------------------------------------------------------------ callbacks
    def on_connect(self, session: Session) -> None:
        if session.room is None:
            return
        room = self.rooms.get(session.room)
        if room is None:
            room = self.rooms[session.room] = Room(session.room, self.turn_seconds)
        room.members[session.id] = session
        seat = room.game.seat(session.id, time.monotonic())
        was_running = room.game.running
        self._to_room(room, Joined(session=session.id, seat=seat, players=list(room.members)))
        self._send(session, room.state_message())
        if was_running:
            self._announce_turn(room)

    def on_message(self, session: Session, message: ClientMessage) -> None:
        if isinstance(message, Echo):
            self._send(session, EchoReply(data=message.data))
        elif isinstance(message, Say):
            assert self.server is not None
            if not self.server.broadcast(Said(from_=session.id, text=message.text), session):
                reason = "the server's broadcast budget is spent; try again shortly"
                self.server.notify(
                    session, Error(code="broadcast_budget", reason=reason, cseq=message.cseq)
                )
        elif isinstance(message, Move):
            room = self.rooms.get(session.room or "")
            if room is None:
                self._send(session, MoveRejected(reason="moves are played in a room"))
                return
            try:
                self._play(room, session.id, message.n, by_ai=False)
            except IllegalMove as exc:
                self._send(session, MoveRejected(reason=str(exc)))

    def on_away(self, session: Session, reason: str) -> None:
        room = self.rooms.get(session.room or "")
        if room is not None and room.game.set_away(session.id, True):
            self._to_room(room, PlayerAway(session=session.id, ai=True))
            self._schedule(room)

    def on_back(self, session: Session, gap: bool) -> None:
        room = self.rooms.get(session.room or "")
        if room is None:
            # The room's game died with a crashed shard (games are not checkpointed):
            # seat the player in a fresh one.
            self.on_connect(session)
            return
        room.members[session.id] = session
        if room.game.set_away(session.id, False):
            self._to_room(room, PlayerBack(session=session.id, ai=False))
        if gap:
            self._send(session, room.state_message())
        self._schedule(room)

    def on_leave(self, session: Session, reason: str) -> None:
        assert self.server is not None
        self.server.broadcast(UserLeft(session=session.id, reason=reason))
        self._forget(session)

    def on_handoff(self, session: Session) -> None:
        self._forget(session)

    # ------------------------------------------------------------------ rolling restarts
    def export_room(self, room_id: str) -> bytes | None:
        """The room's game, serialised for the shard that adopts it (a sibling, or in
        cluster mode one on another machine); forgotten here. The turn's deadline travels
        as the time left: monotonic clocks are not shared between machines."""
        room = self.rooms.pop(room_id, None)
        if room is None:
            return None
        if room.timer is not None:
            room.timer.cancel()
        state = room.game.state
        left = max(0.0, state.turn_deadline - time.monotonic()) if state.turn_deadline else None
        return msgspec.msgpack.encode(ExportedGame(state=state, turn_left_s=left))

    def import_room(self, room_id: str, data: bytes, sessions: list[Session]) -> None:
        """Continue a room's game from ``export_room``: the turn's clock goes on from the
        time it had left."""
        exported = msgspec.msgpack.decode(data, type=ExportedGame)
        state = exported.state
        left = exported.turn_left_s
        state.turn_deadline = 0.0 if left is None else time.monotonic() + left
        room = self.rooms[room_id] = Room(room_id, self.turn_seconds)
        room.game = Race21(state, self.turn_seconds)
        room.members = {session.id: session for session in sessions}
        self._schedule(room)

    # ------------------------------------------------------------------ the game
    def _forget(self, session: Session) -> None:
        room = self.rooms.get(session.room or "")
        if room is None:
            return
        room.members.pop(session.id, None)
        was_turn = room.game.current is not None and room.game.current.session == session.id
        room.game.unseat(session.id, time.monotonic())
        if not room.members:
            if room.timer is not None:
                room.timer.cancel()
            del self.rooms[room.id]
            return
        if was_turn and room.game.running:
            self._announce_turn(room)
        else:
            self._schedule(room)

    def _play(self, room: Room, session_id: str, n: int, *, by_ai: bool) -> None:
        winner = room.game.move(session_id, n, time.monotonic(), by_ai=by_ai)
        state = room.game.state
        total = 21 if winner else state.total
        self._to_room(room, Moved(session=session_id, n=n, total=total, by_ai=by_ai))
        if winner:
            self._to_room(
                room, RoundOver(winner=winner, round=state.round - 1, wins=dict(state.wins))
            )
        self._announce_turn(room)

    def _announce_turn(self, room: Room) -> None:
        current = room.game.current
        if current is not None:
            left = max(0.0, room.game.state.turn_deadline - time.monotonic())
            self._to_room(
                room,
                Turn(
                    session=current.session,
                    total=room.game.state.total,
                    round=room.game.state.round,
                    deadline_ms=round(left * 1000),
                ),
            )
        self._schedule(room)

    def _schedule(self, room: Room) -> None:
        assert self.server is not None
        if room.timer is not None:
            room.timer.cancel()
            room.timer = None
        at = room.game.next_event_at(self.ai_think_seconds)
        if at is not None:
            room.timer = self.server.call_at(at, lambda: self._ai_turn(room))

    def _ai_turn(self, room: Room) -> None:
        if self.rooms.get(room.id) is not room:
            return
        due = room.game.due_ai_move(time.monotonic(), self.ai_think_seconds)
        if due is None:
            self._schedule(room)
            return
        session_id, n = due
        self._play(room, session_id, n, by_ai=True)

    # ------------------------------------------------------------------ sending
    def _send(self, session: Session, message: StreamMessage) -> None:
        assert self.server is not None
        self.server.send(session, message)

    def _to_room(self, room: Room, message: StreamMessage) -> None:
        for member in room.members.values():
            self._send(member, message)
