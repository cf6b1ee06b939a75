"""One ``trio.Lock`` per key (a session, a room), kept only while someone holds or waits
for it: memory follows the keys in use, not every key ever seen."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio


class KeyLocks:
    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block; the lock goes when nobody else wants it."""
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._locks.pop(key, None)
