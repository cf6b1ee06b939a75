"""What the supervisor writes to one shard: control frames, never dropped, and broadcasts,
bounded in bytes and caught up from the supervisor-wide broadcast log.

Every broadcast is numbered (``bseq``) and appended to one ``BroadcastLog`` (the most
recent frames, at most ``--broadcast-log-bytes``, default 32 MiB), then offered to each
shard's ``RelayQueue``. While a shard keeps up, its broadcasts are queued in order. When
its queue holds more than ``--relay-budget-bytes`` (default 16 MiB; a SIGSTOPped or
GC-stalled shard, a slow consumer) the queue stops taking broadcasts and remembers the
first ``bseq`` it did not take; once its writer has drained what was queued, it reads the
rest from the log, in order, each exactly once, and then takes live broadcasts again. If
the log no longer reaches back that far, the shard gets one ``BroadcastGap(first, last)``
(logged ``event=broadcast_gap``; its sessions report replay_gap) and continues from the
oldest frame the log holds.

Control frames (Drain, Adopt, Handoff, Surrender, ...) are never dropped and go out
before any queued or logged broadcast: a shard reconciles the order itself (a session
carries the last ``bseq`` applied to it), so nothing waits behind a catch-up except the
one write already on the wire (at most ``WRITE_CHUNK`` bytes).

Memory: a broadcast frame is encoded once and the log and every queue hold the same bytes
object, so N stuck shards cost their queues' references, not N copies.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import trio

from core.control import BroadcastGap, encode_frame
from shards.log import log

WRITE_CHUNK = 64 * 1024  # bytes joined into one send: what a control frame may wait behind


class BroadcastLog:
    """The most recent broadcast frames by ``bseq`` (contiguous), at most ``budget`` bytes;
    the newest frame is always kept. O(1) append, lookup and eviction."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._frames: dict[int, bytes] = {}
        self.first = 1  # oldest bseq held; first > last means empty
        self.last = 0  # newest bseq appended
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, bseq: int, frame: bytes) -> None:
        if bseq != self.last + 1:
            raise ValueError(f"bseq {bseq} does not follow {self.last}")
        if not self._frames:
            self.first = bseq
        self._frames[bseq] = frame
        self.last = bseq
        self.bytes += len(frame)
        while self.bytes > self.budget and self.first < self.last:
            self.bytes -= len(self._frames.pop(self.first))
            self.first += 1

    def get(self, bseq: int) -> bytes | None:
        return self._frames.get(bseq)

    def skip(self, last: int) -> None:
        """Broadcasts up to ``last`` will never exist here (cluster mode: trimmed from the
        says stream before this node read them): the log starts again after them. A shard
        still catching up from before gets a ``BroadcastGap``; live ones see ``bseq`` jump."""
        if last <= self.last:
            return
        self._frames.clear()
        self.bytes = 0
        self.first = last + 1
        self.last = last


class RelayQueue:
    """One shard's outbound frames (sans-I/O apart from the ``write`` loop).

    ``budget``: bytes of queued frames above which broadcasts are no longer queued but
    read back from ``log`` later. ``on_gap(first, last)`` is called when a ``BroadcastGap``
    is emitted (for counting).
    """

    def __init__(
        self,
        log: BroadcastLog,
        budget: int,
        shard: int,
        on_gap: Callable[[int, int], None] | None = None,
    ) -> None:
        self.log = log
        self.budget = budget
        self.shard = shard
        self.on_gap = on_gap
        self._control: deque[bytes] = deque()
        self._broadcasts: deque[bytes] = deque()
        self.queued_bytes = 0
        self.cursor: int | None = None  # next bseq to read from the log; None = live
        self.behind_since = 0.0
        self.closed = False
        self._wakeup = trio.Event()

    @property
    def idle(self) -> bool:
        """Nothing to write: no frame queued and not catching up."""
        return not self._control and not self._broadcasts and self.cursor is None

    def control(self, frame: bytes) -> None:
        """Queue a control frame: never dropped, written before any broadcast."""
        if self.closed:
            return
        self._control.append(frame)
        self.queued_bytes += len(frame)
        self._wakeup.set()

    def broadcast(self, bseq: int, frame: bytes) -> None:
        """Offer broadcast ``bseq`` (already appended to the log)."""
        if self.closed:
            return
        if self.cursor is None:
            if self.queued_bytes + len(frame) <= self.budget:
                self._broadcasts.append(frame)
                self.queued_bytes += len(frame)
                self._wakeup.set()
                return
            self.cursor = bseq
            self.behind_since = time.monotonic()
            log(
                "relay_behind",
                shard=self.shard,
                first_deferred=bseq,
                queued_bytes=self.queued_bytes,
                budget=self.budget,
            )
        self._wakeup.set()  # in the log: the writer reads it from there

    def take(self, max_bytes: int = WRITE_CHUNK) -> list[bytes]:
        """The next frames to write, in order, about ``max_bytes`` in all (at least one
        frame if there is any): control frames first, then queued broadcasts, then the
        log from the cursor."""
        out: list[bytes] = []
        size = 0
        for queue in (self._control, self._broadcasts):
            while queue and (not out or size + len(queue[0]) <= max_bytes):
                frame = queue.popleft()
                out.append(frame)
                size += len(frame)
                self.queued_bytes -= len(frame)
            if queue:
                return out
        while self.cursor is not None and (not out or size < max_bytes):
            frame = self._from_log()
            if frame is None:
                break
            out.append(frame)
            size += len(frame)
        return out

    def _from_log(self) -> bytes | None:
        assert self.cursor is not None
        log_ = self.log
        if self.cursor > log_.last:
            log(
                "relay_caught_up",
                shard=self.shard,
                bseq=log_.last,
                behind_s=time.monotonic() - self.behind_since,
            )
            self.cursor = None
            return None
        if self.cursor < log_.first:
            first, last = self.cursor, log_.first - 1
            self.cursor = log_.first
            log("broadcast_gap", shard=self.shard, first=first, last=last)
            if self.on_gap is not None:
                self.on_gap(first, last)
            return encode_frame(BroadcastGap(first=first, last=last))
        frame = log_.get(self.cursor)
        assert frame is not None
        self.cursor += 1
        return frame

    def close(self) -> None:
        """The shard's channel is gone: drop everything, accept nothing more."""
        self.closed = True
        self._control.clear()
        self._broadcasts.clear()
        self.queued_bytes = 0
        self.cursor = None
        self._wakeup.set()

    async def write(self, stream: trio.abc.SendStream) -> None:
        """Write frames to ``stream`` as they come, until it breaks or ``close``."""
        while not self.closed:
            frames = self.take()
            if not frames:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            try:
                await stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close()
                return
