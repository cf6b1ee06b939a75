"""Race to 21, the default app's game: its messages, pure rules and the AI; no I/O, time
passed in.

Players sit in join order and take turns adding 1, 2 or 3 to a shared total; whoever
brings it to 21 wins and a new round starts. A turn lasts ``turn_seconds`` (default 10 s);
when it runs out - or at once, after ``ai_think_seconds``, when the player is away - the
AI moves for them. The AI plays the known strategy: leave the total at 1 modulo 4
(17, 13, 9, 5, 1), otherwise add 1.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from core.protocol import ClientMessage, StreamMessage

TARGET = 21
MOVES = (1, 2, 3)


# ---------------------------------------------------------------- the game's messages
class Move(ClientMessage, tag="move", kw_only=True):
    """Client -> server: add ``n`` (1-3) to the total on your turn."""

    n: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Joined(StreamMessage, tag="joined", kw_only=True):
    session: str
    seat: int
    players: list[str]


class PlayerAway(StreamMessage, tag="player_away", kw_only=True):
    session: str
    ai: bool  # always true: the server's AI plays this seat meanwhile


class PlayerBack(StreamMessage, tag="player_back", kw_only=True):
    session: str
    ai: bool  # always false: the player plays again


class Turn(StreamMessage, tag="turn", kw_only=True):
    session: str
    total: int
    round: int
    deadline_ms: int  # milliseconds left for this move before the AI plays it


class Moved(StreamMessage, tag="moved", kw_only=True):
    session: str
    n: int
    total: int
    by_ai: bool


class RoundOver(StreamMessage, tag="round_over", kw_only=True):
    winner: str
    round: int
    wins: dict[str, int]


class MoveRejected(StreamMessage, tag="move_rejected", kw_only=True):
    reason: str


class SeatInfo(msgspec.Struct):
    session: str
    away: bool


class RoomState(StreamMessage, tag="room_state", kw_only=True):
    """A full snapshot, sent on join and on a resume with ``replay_gap``."""

    room: str
    seats: list[SeatInfo]
    total: int
    turn: str | None
    round: int
    wins: dict[str, int]


# ---------------------------------------------------------------- the game


class Seat(msgspec.Struct, kw_only=True):
    session: str
    away: bool = False  # the AI plays this seat while True


class GameState(msgspec.Struct, kw_only=True):
    """Everything about one room's game; serialisable for a hand-off to another shard."""

    room: str
    seats: list[Seat] = []
    total: int = 0
    turn: int = 0  # index into seats
    round: int = 1
    turn_deadline: float = 0.0  # clock of the shard (monotonic); 0 = no game running
    wins: dict[str, int] = {}


class IllegalMove(Exception):
    pass


def ai_move(total: int) -> int:
    """Leave ``total`` at 1 mod 4 when possible (a losing position for the next player)."""
    if TARGET - total <= 3:
        return TARGET - total
    return (1 - total) % 4 or 1


class Race21:
    """One room's game. Methods return what happened; the caller tells the players."""

    def __init__(self, state: GameState, turn_seconds: float = 10.0) -> None:
        self.state = state
        self.turn_seconds = turn_seconds

    # ------------------------------------------------------------------ seating
    def seat(self, session: str, now: float) -> int:
        """Seat a player (idempotent); returns the seat index. The game starts at two."""
        for i, seat in enumerate(self.state.seats):
            if seat.session == session:
                return i
        self.state.seats.append(Seat(session=session))
        self.state.wins.setdefault(session, 0)
        if len(self.state.seats) == 2 and not self.state.turn_deadline:
            self.state.turn = 0
            self.state.turn_deadline = now + self.turn_seconds
        return len(self.state.seats) - 1

    def set_away(self, session: str, away: bool) -> bool:
        """Mark a seat away/back; True only if that changed something."""
        for seat in self.state.seats:
            if seat.session == session:
                changed = seat.away != away
                seat.away = away
                return changed
        return False

    def unseat(self, session: str, now: float) -> None:
        seats = self.state.seats
        index = next((i for i, seat in enumerate(seats) if seat.session == session), None)
        if index is None:
            return
        was_turn = index == self.state.turn
        del seats[index]
        if index < self.state.turn:
            self.state.turn -= 1
        if self.state.turn >= len(seats):
            self.state.turn = 0
        if len(seats) < 2:
            self.state.turn_deadline = 0.0
        elif was_turn:
            self.state.turn_deadline = now + self.turn_seconds

    @property
    def running(self) -> bool:
        return len(self.state.seats) >= 2 and self.state.turn_deadline > 0

    @property
    def current(self) -> Seat | None:
        return self.state.seats[self.state.turn] if self.running else None

    # ------------------------------------------------------------------ moves
    def move(self, session: str, n: int, now: float, by_ai: bool = False) -> str | None:
        """Apply a move; returns the winner's session when the move reached 21."""
        seat = self.current
        if seat is None:
            raise IllegalMove("the game has not started (it needs two players)")
        if seat.session != session:
            raise IllegalMove("not your turn")
        if n not in MOVES or self.state.total + n > TARGET:
            raise IllegalMove(f"move must be 1, 2 or 3 and not pass {TARGET}")
        self.state.total += n
        if self.state.total == TARGET:
            self.state.wins[session] = self.state.wins.get(session, 0) + 1
            self.state.total = 0
            self.state.round += 1
            # The loser of the round (the next player) starts the new one.
        self.state.turn = (self.state.turn + 1) % len(self.state.seats)
        self.state.turn_deadline = now + self.turn_seconds
        return session if self.state.total == 0 else None

    def due_ai_move(self, now: float, think: float) -> tuple[str, int] | None:
        """The AI's move if the current seat is away (after ``think`` s) or out of time."""
        seat = self.current
        if seat is None:
            return None
        started = self.state.turn_deadline - self.turn_seconds
        if (seat.away and now >= started + think) or now >= self.state.turn_deadline:
            return seat.session, ai_move(self.state.total)
        return None

    def next_event_at(self, think: float) -> float | None:
        """When ``due_ai_move`` may next return a move (for the caller's timer)."""
        seat = self.current
        if seat is None:
            return None
        started = self.state.turn_deadline - self.turn_seconds
        return started + think if seat.away else self.state.turn_deadline
