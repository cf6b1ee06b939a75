"""The shared table of live connections per shard slot (a memfd mapped by every shard).

One signed 64-bit counter per slot, written only by the shard serving that slot; readers
may see a value a few connections old, which is all load-aware accepting needs.
"""

from __future__ import annotations

import mmap
import os
import struct

SLOT = struct.Struct("q")


class LoadTable:
    def __init__(self, fd: int, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(
            fd, SLOT.size * slots, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._all = struct.Struct(f"{slots}q")

    @classmethod
    def create(cls, slots: int) -> tuple[LoadTable, int]:
        """A new zeroed table and its fd (to pass to shards)."""
        fd = os.memfd_create("ws-load-table")
        os.ftruncate(fd, SLOT.size * slots)
        return cls(fd, slots), fd

    def set(self, slot: int, value: int) -> None:
        SLOT.pack_into(self._map, slot * SLOT.size, value)

    def loads(self) -> tuple[int, ...]:
        return self._all.unpack_from(self._map, 0)
