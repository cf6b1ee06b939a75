"""Timers for app code (turn clocks, AI think time): ``call_at`` on one task per shard.

Times are ``time.monotonic()`` seconds (shared by every process on the machine, so a game
state handed to another shard keeps meaningful deadlines). Callbacks are synchronous and
must not block; one that raises is logged and the others still run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable

import trio

from shards.log import log


class TimerHandle:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self, shard_index: int) -> None:
        self.shard_index = shard_index
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), handle))
        if self._heap[0][2] is handle:
            self._changed.set()
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(time.monotonic() + delay, callback)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, handle = heapq.heappop(self._heap)
                if handle.cancelled:
                    continue
                try:
                    handle.callback()
                except Exception as exc:  # noqa: BLE001 - one bad timer must not stop the rest
                    log(
                        "app_error", shard=self.shard_index, callback="timer", error=repr(exc)[:200]
                    )
            wait = self._heap[0][0] - time.monotonic() if self._heap else math.inf
            with trio.move_on_after(max(0.0, wait)):
                await self._changed.wait()
            self._changed = trio.Event()
