"""The directory: which shard holds which session (and, later, which shard owns which room).

A small interface so a Redis backend can implement it for several machines; the
supervisor uses ``InMemoryDirectory``. Ownership changes only through ``claim``
(a new session), ``move`` (a hand-off) and ``release`` (the session ended).
"""

from __future__ import annotations

from typing import Protocol


class SessionDirectory(Protocol):
    def claim(self, session: str, shard: int) -> None: ...

    def owner_of(self, session: str) -> int | None: ...

    def move(self, session: str, shard: int) -> None: ...

    def release(self, session: str, shard: int) -> bool: ...

    def drop_shard(self, shard: int) -> list[str]: ...

    def count(self, shard: int) -> int: ...

    def claim_room(self, room: str, shard: int) -> None: ...

    def room_owner(self, room: str) -> int | None: ...

    def release_room(self, room: str, shard: int) -> bool: ...

    def rooms_of(self, shard: int) -> list[str]: ...


class InMemoryDirectory:
    """A dict per direction; O(1) lookups, O(sessions of the shard) ``drop_shard``."""

    def __init__(self) -> None:
        self._owner: dict[str, int] = {}
        self._by_shard: dict[int, set[str]] = {}
        self._room_owner: dict[str, int] = {}
        self._rooms_by_shard: dict[int, set[str]] = {}

    def claim(self, session: str, shard: int) -> None:
        self.move(session, shard)

    def owner_of(self, session: str) -> int | None:
        return self._owner.get(session)

    def move(self, session: str, shard: int) -> None:
        old = self._owner.get(session)
        if old is not None:
            self._by_shard.get(old, set()).discard(session)
        self._owner[session] = shard
        self._by_shard.setdefault(shard, set()).add(session)

    def release(self, session: str, shard: int) -> bool:
        """Forget ``session`` if ``shard`` still holds it (a stale release is ignored)."""
        if self._owner.get(session) != shard:
            return False
        del self._owner[session]
        self._by_shard.get(shard, set()).discard(session)
        return True

    def drop_shard(self, shard: int) -> list[str]:
        """A shard died: forget everything it held (rooms too); returns its sessions."""
        for room in self._rooms_by_shard.pop(shard, set()):
            if self._room_owner.get(room) == shard:
                del self._room_owner[room]
        sessions = self._by_shard.pop(shard, set())
        for session in sessions:
            if self._owner.get(session) == shard:
                del self._owner[session]
        return sorted(sessions)

    def count(self, shard: int) -> int:
        return len(self._by_shard.get(shard, ()))

    # ------------------------------------------------------------------ rooms
    def claim_room(self, room: str, shard: int) -> None:
        old = self._room_owner.get(room)
        if old is not None:
            self._rooms_by_shard.get(old, set()).discard(room)
        self._room_owner[room] = shard
        self._rooms_by_shard.setdefault(shard, set()).add(room)

    def room_owner(self, room: str) -> int | None:
        return self._room_owner.get(room)

    def release_room(self, room: str, shard: int) -> bool:
        if self._room_owner.get(room) != shard:
            return False
        del self._room_owner[room]
        self._rooms_by_shard.get(shard, set()).discard(room)
        return True

    def rooms_of(self, shard: int) -> list[str]:
        return sorted(self._rooms_by_shard.get(shard, ()))
