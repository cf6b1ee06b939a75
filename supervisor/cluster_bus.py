"""Cluster mode's broadcast bus: every ``say`` of every node, in one total order, to every
node, exactly once - through a Redis stream, not pub/sub.

A node's shards send their broadcasts to the supervisor as on one machine; in cluster
mode the supervisor ``publish``es each (one Lua script: number it, ``XADD`` it to
``{ws}:says``, trimmed to about ``SAYS_KEPT`` entries) instead of relaying it itself. One
reader per node (``XREAD BLOCK`` from the last entry id it delivered) hands every entry,
its own node's included, to ``deliver``, which numbers it locally (``bseq``) and relays it
to the node's shards: so every node applies the says in the stream's order, and a node cut
off from Redis for a few seconds resumes from its last id and catches up instead of
losing what was said meanwhile. Entries carry their number ``n``; a reader that finds
``n`` jump (it was away longer than the stream keeps, ``--cluster-says-kept``) logs
``cluster_broadcast_gap`` with how many it missed and hands ``deliver`` the count, so the
node's ``bseq`` jumps by as much: its shards see the gap, tell their players to resume
(4003) and their resumes report ``replay_gap``, as on one machine.

Publishing keeps the order of arrival. When Redis does not answer, broadcasts wait in a
queue of at most ``budget_bytes`` (default 8 MiB) and are retried with backoff (0.05 s
doubling to 2 s); past the budget a broadcast is dropped with a log line
(``broadcast_dropped reason=cluster_unavailable``) and counted - never silently. Cost per
say: one Redis round trip to publish, one entry read by each node; a say reaches its own
node's players one round trip later than on one machine.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from core import cluster
from core.cluster import ClusterUnavailable
from core.control import Broadcast
from shards.log import log
from supervisor.cluster import ClusterNode, Outage, text

READ_BLOCK_MS = 1000  # one XREAD waits this long for new entries
READ_COUNT = 512  # entries per XREAD at most
DEFAULT_BUDGET = 8 * 1024 * 1024


class BusEntry(msgspec.Struct, kw_only=True):
    """One stream entry: the broadcast, and which node and shard process it came from
    (the origin marks its sender's ``cseq`` processed when it delivers it)."""

    node: str
    generation: int
    broadcast: Broadcast


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BusEntry).decode


class BroadcastBus:
    def __init__(
        self,
        node: ClusterNode,
        deliver: Callable[[Broadcast, int | None, int], None],
        count: Callable[[str, int], None],
        budget_bytes: int = DEFAULT_BUDGET,
    ) -> None:
        """``deliver(broadcast, generation)``: in stream order, ``generation`` set when this
        node's shard process ``generation`` published it. ``count(key, n)``: metrics."""
        self.node = node
        self.deliver = deliver
        self.count = count
        self.budget_bytes = budget_bytes
        self.queued_bytes = 0
        self.last_id = ""  # the last entry delivered ("" until the reader starts)
        self.last_n = 0
        # The stream's entry number n of this node's bseq b is b + offset (the entries before
        # the node started, plus any it missed): how sessions moving between nodes carry
        # their broadcast position.
        self.offset = 0
        self.published = 0
        self.delivered = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = trio.Event()

    def publish(self, message: Broadcast, generation: int) -> None:
        """Queue ``message`` for the stream (in order); never blocks."""
        entry = _encode(BusEntry(node=self.node.node, generation=generation, broadcast=message))
        if self.queued_bytes + len(entry) > self.budget_bytes:
            self.count("broadcast_dropped|cluster_unavailable", 1)
            log(
                "broadcast_dropped",
                reason="cluster_unavailable",
                node=self.node.node,
                sender=message.sender,
                cseq=message.cseq,
                queued_bytes=self.queued_bytes,
            )
            return
        self._queue.append(entry)
        self.queued_bytes += len(entry)
        self._wakeup.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader starts at the stream's current end; then publisher and reader run
        until cancelled."""
        self.last_id, self.last_n = await self._end_of_stream()
        self.offset = self.last_n  # nothing delivered yet: bseq 1 will be entry last_n + 1
        await self._record_read(self.last_n)  # read so far: nothing after the start
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._reader)
            task_status.started()

    async def _end_of_stream(self) -> tuple[str, int]:
        entry = await self.node.newest(cluster.SAYS_KEY, "read")
        if entry is None:
            return "0-0", 0
        return text(entry.identifier), int(text(entry.field_values["n"]))

    async def _publisher(self) -> None:
        outage = Outage("publish", self.node.node)
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            entry = self._queue[0]
            try:
                await self.node.publish(entry)
            except ClusterUnavailable as exc:
                await outage.failed(exc)
                continue
            outage.ok(queued=len(self._queue))
            self._queue.popleft()
            self.queued_bytes -= len(entry)
            self.published += 1

    async def _reader(self) -> None:
        outage = Outage("read", self.node.node)
        while True:
            try:
                found = await self.node.call(
                    "says",
                    lambda r: r.xread(
                        {cluster.SAYS_KEY: self.last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                    ),
                    timeout=READ_BLOCK_MS / 1000 + 2.0,
                )
            except ClusterUnavailable as exc:
                await outage.failed(exc)
                continue
            outage.ok(after_id=self.last_id)
            batch = [entry for entries in (found or {}).values() for entry in entries]
            if batch:
                # How far this node has read, recorded before any of it is delivered: if
                # it dies, nothing after this position can have reached its players, so
                # their recovered sessions replay those says instead of skipping them.
                await self._record_read(int(text(batch[-1].field_values["n"])))
            for entry in batch:
                self._deliver(entry)

    async def _record_read(self, n: int) -> None:
        try:
            await self.node.call("read", lambda r: r.set(cluster.read_key(self.node.node), str(n)))
        except ClusterUnavailable:
            # Delivered anyway (says must not wait on this); should the node die before
            # the next record, its players may get a few of these says twice.
            log("cluster_read_unrecorded", node=self.node.node, n=n)

    def _deliver(self, entry: Any) -> None:
        n = int(text(entry.field_values["n"]))
        missed = 0
        if n > self.last_n + 1 and self.last_n:
            missed = n - self.last_n - 1
            self.count("cluster_broadcast_gap", missed)
            log("cluster_broadcast_gap", node=self.node.node, missed=missed, first_n=n)
        elif n <= self.last_n:
            # Redis lost the stream (restarted without persistence): numbering restarts.
            log("cluster_stream_reset", node=self.node.node, last_n=self.last_n, n=n)
        self.last_id = text(entry.identifier)
        self.last_n = n
        try:
            item = _decode(text(entry.field_values["b"]))
        except msgspec.DecodeError as exc:
            log("cluster_broadcast_unreadable", node=self.node.node, n=n, error=str(exc)[:200])
            return
        local = item.generation if item.node == self.node.node else None
        self.delivered += 1 + missed  # the missed ones keep their numbers: a gap in bseq
        self.offset = n - self.delivered  # this node's bseq for entry n is n - offset
        self.deliver(item.broadcast, local, missed)

    def status(self) -> dict[str, object]:
        return {
            "last_id": self.last_id,
            "last_n": self.last_n,
            "published": self.published,
            "delivered": self.delivered,
            "queued": len(self._queue),
            "queued_bytes": self.queued_bytes,
        }
