"""Cluster mode: which node holds each session, and moving a session to the node its player
came back to.

* ``held`` / ``ended``: this node's shards started holding a session or ended it. Both are
  queued and written to Redis in batches (one ``SYNC_SESSIONS`` call per batch of up to
  ``SYNC_BATCH``, as soon as the previous one returned), so a connection storm costs a
  few Redis calls, not one per player. A resume with a session's first token that lands
  on another node within that moment finds no holder yet: it looks again for up to
  ``NEW_SESSION_WAIT_S`` before answering ``resume_error``.
* ``fetch``: a player resumes here a session another node holds. The holder is looked up
  (a holder whose lease is gone has lost its sessions: nothing to fetch), asked through
  its inbox stream (``{ws}:inbox:NODE``) to surrender the session if the token's epoch is
  still the current one (so a token works once, across all nodes), and its ``Handoff``
  comes back through this node's inbox. Broadcast positions travel as the stream's
  global entry number and are translated to each node's own ``bseq``
  (``BroadcastBus.offset``), so the session is caught up with every say, once.
* Each node reads its own inbox (``XREAD BLOCK``) and answers surrender requests by asking
  its shard that holds the session, exactly as for a resume on a sibling shard.
* Fencing: a checkpoint is refused when the registry names another node (``SYNC_SESSIONS``)
  - that node took the session while this one was cut off from Redis (its lease ran
  out). ``stale(sessions)`` is then called: this node's copies are out of date and must
  end (their players, if still connected here, are closed 4000 and resume where the
  session is). After an outage (``verify``) every session held here is checked at once
  instead of at its next checkpoint.

Cost: one Redis round trip per batch of session starts/ends, and for a cross-node resume
four (lookup, request, reply read, plus the holder's read), each a few hundred µs on a LAN.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

import msgspec
import trio

from core import cluster
from core.cluster import ClusterUnavailable
from core.control import Fetch, Handoff
from core.session import ReplayEntry, SessionSnapshot, SnapshotBatch
from shards.log import log
from supervisor.cluster import ClusterNode, Outage, text
from supervisor.cluster_bus import BroadcastBus

SYNC_BATCH = 500  # session starts/ends/checkpoints per Redis call...
SYNC_BYTES = 1024 * 1024  # ...and at most about this many bytes of checkpoints
CHECKPOINT_BUDGET = 64 * 1024 * 1024  # checkpoint bytes queued while Redis does not answer
READ_BLOCK_MS = 1000
# A resume with a session's first token that no node has registered yet is looked up
# again every NEW_SESSION_POLL_S for NEW_SESSION_WAIT_S (its node's registry write may be
# in flight): at most 20 more Redis calls, and that much later a resume_error for a first
# token that names no session at all.
NEW_SESSION_WAIT_S = 1.0
NEW_SESSION_POLL_S = 0.05


class StoredCheckpoint(msgspec.Struct, kw_only=True):
    """One session's checkpoint as Redis keeps it: the session with the bodies its
    replay buffer refers to, and the says stream entry it had applied."""

    applied_n: int
    batch: SnapshotBatch


class InboxMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A request to the node holding ``session`` ("surrender"), or its answer
    ("handoff"). ``applied_n``: the stream entry the session had applied."""

    kind: str
    request: int
    sender: str
    session: str
    epoch: int = 0
    handoff: Handoff | None = None
    applied_n: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(InboxMessage).decode
_decode_checkpoint = msgspec.json.Decoder(StoredCheckpoint).decode


def one_session(batch: SnapshotBatch, snap: SessionSnapshot) -> SnapshotBatch:
    """``snap`` alone, with only the bodies its replay buffer refers to (renumbered)."""
    index: dict[int, int] = {}
    bodies: list[bytes] = []
    buffer = []
    for entry in snap.buffer:
        at = index.get(entry.body)
        if at is None:
            at = index[entry.body] = len(bodies)
            bodies.append(batch.bodies[entry.body])
        buffer.append(ReplayEntry(entry.seq, at))
    return SnapshotBatch(bodies=bodies, sessions=[msgspec.structs.replace(snap, buffer=buffer)])


class _Reply:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: InboxMessage | None = None


class ClusterSessions:
    def __init__(
        self,
        node: ClusterNode,
        bus: BroadcastBus,
        surrender_local: Callable[[str, int], Awaitable[Handoff]],
        fetch_timeout: float,
        stale: Callable[[list[str]], None] = lambda sessions: None,
    ) -> None:
        """``surrender_local(session, epoch)``: this node's answer to another node's
        request (the holding shard surrenders it, or refuses). ``stale(sessions)``: another
        node holds these now; this node's copies must go."""
        self.node = node
        self.stale = stale
        self.refused = 0  # session writes refused: another node held the session
        self.bus = bus
        self.surrender_local = surrender_local
        self.fetch_timeout = fetch_timeout
        self.fetched = 0
        self.surrendered = 0
        self._ops: collections.deque[tuple[str, ...]] = collections.deque()
        self._ops_bytes = 0
        self.recovered = 0
        self.dropped = 0
        self._wakeup = trio.Event()
        self._replies: dict[int, _Reply] = {}
        self._next_request = 0
        self._inbox_id = "0-0"

    # ------------------------------------------------------------------ the registry
    def held(self, session: str) -> None:
        self._queue("+", session)

    def ended(self, session: str) -> None:
        self._queue("-", session)

    def verify(self, sessions: list[str]) -> None:
        """After an outage: check that every session in ``sessions`` (held here) is still
        this node's; those another node took are reported to ``stale``."""
        for session in sessions:
            self._queue("v", session)

    def checkpoint(
        self, batch: SnapshotBatch, applied_bseq: int, owns: Callable[[str], bool]
    ) -> None:
        """A shard's checkpoint: each session this node still holds is stored in Redis
        (the node's checkpoints hash), so the session survives this node's death. Cost:
        each changed session's snapshot and the bodies it refers to, once per interval
        (a broadcast body is stored once per session that holds it)."""
        applied_n = applied_bseq + self.bus.offset
        if self._ops_bytes > CHECKPOINT_BUDGET:
            # Redis has not taken what is queued: keep the budget, say so (these sessions
            # are checkpointed again at their next change).
            self.dropped += len(batch.sessions)
            log("cluster_checkpoint_dropped", sessions=len(batch.sessions), queued=self._ops_bytes)
            return
        for snap in batch.sessions:
            if owns(snap.id):
                blob = _encode(
                    StoredCheckpoint(applied_n=applied_n, batch=one_session(batch, snap))
                )
                self._queue("c", snap.id, blob.decode())

    def _queue(self, op: str, session: str, blob: str = "") -> None:
        self._ops.append((op, session, blob) if blob else (op, session))
        self._ops_bytes += len(blob)
        self._wakeup.set()

    async def _sync(self) -> None:
        outage = Outage("sync", self.node.node)
        while True:
            if not self._ops:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            batch = []
            size = 0
            for op in self._ops:  # up to SYNC_BATCH operations or SYNC_BYTES of checkpoints
                if batch and (len(batch) >= SYNC_BATCH or size >= SYNC_BYTES):
                    break
                batch.append(op)
                size += len(op[2]) if len(op) > 2 else 0
            args: list[str] = [
                self.node.node,
                cluster.SESSION_PREFIX,
                cluster.checkpoints_key(self.node.node),
            ]
            for op in batch:
                args += op
            try:
                refused = await self.node.sync_sessions(args)
            except ClusterUnavailable as exc:
                await outage.failed(exc)
                continue
            outage.ok(queued=len(self._ops))
            for _ in batch:
                self._ops.popleft()
            self._ops_bytes -= size
            if refused:
                self.refused += len(refused)
                log("cluster_sessions_stale", node=self.node.node, sessions=len(refused))
                self.stale(refused)

    # ------------------------------------------------------------------ moving one
    async def fetch(self, fetch: Fetch) -> Handoff | None:
        """The session from the node holding it, or None (nobody holds it, this node does,
        or the holder did not answer in time; logged). A holder that does not answer
        within a second is looked up again every second: once its lease is gone (it died)
        the session comes from its checkpoint. Bounded by ``fetch_timeout`` + the lease
        TTL (``cluster.fetch_wait``), which the requesting shard waits for."""
        try:
            kind, holder, read = await self.node.take_session(fetch.session)
            # A session's first token (epoch 1) may come back here before its node's
            # batched registry write landed (a player switching nodes right after its
            # welcome): look again for a moment before calling it unknown.
            deadline = trio.current_time() + NEW_SESSION_WAIT_S
            if kind == "none" and fetch.epoch == 1:
                log("cluster_fetch_unregistered", session=fetch.session, wait_s=NEW_SESSION_WAIT_S)
            while kind == "none" and fetch.epoch == 1 and trio.current_time() < deadline:
                await trio.sleep(NEW_SESSION_POLL_S)
                kind, holder, read = await self.node.take_session(fetch.session)
        except ClusterUnavailable as exc:
            log("cluster_fetch_failed", session=fetch.session, error=str(exc)[:200])
            return None
        if kind == "checkpoint":
            return self._recover(fetch, holder, read)
        if kind != "live" or holder == self.node.node:
            return None
        self._next_request += 1
        request = self._next_request
        reply = self._replies[request] = _Reply()
        ask = InboxMessage(
            kind="surrender",
            request=request,
            sender=self.node.node,
            session=fetch.session,
            epoch=fetch.epoch,
        )
        # Leave the requesting shard time to hear the answer within its own wait.
        deadline = trio.current_time() + cluster.fetch_wait(self.fetch_timeout) - 0.5
        try:
            await self.node.post(holder, _encode(ask))
            while reply.value is None and trio.current_time() < deadline:
                with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
                    await reply.done.wait()
                if reply.value is not None:
                    break
                # No answer yet: the holder may have died (then its lease runs out).
                kind, value, read = await self.node.take_session(fetch.session)
                if kind == "checkpoint":
                    return self._recover(fetch, value, read)
                if kind != "live":
                    return None  # it ended meanwhile
        except ClusterUnavailable as exc:
            log("cluster_fetch_failed", session=fetch.session, holder=holder, error=str(exc))
            return None
        finally:
            self._replies.pop(request, None)
        answer = reply.value
        if answer is None or answer.handoff is None:
            log("cluster_fetch_timeout", session=fetch.session, holder=holder)
            return None
        handoff = answer.handoff
        log(
            "cluster_handoff_in",
            session=fetch.session,
            holder=holder,
            ok=handoff.batch is not None,
            error=handoff.error,
        )
        if handoff.batch is not None:
            self.fetched += 1
        applied = max(0, answer.applied_n - self.bus.offset)
        return msgspec.structs.replace(handoff, request=fetch.request, applied_bseq=applied)

    def _recover(self, fetch: Fetch, blob: str, read_n: int | None) -> Handoff | None:
        """The session of a node that died, from its last checkpoint (``recovered``: what
        that node sent after it is unknown, the resume reports a gap past it)."""
        try:
            stored = _decode_checkpoint(blob)
        except msgspec.DecodeError as exc:
            log("cluster_checkpoint_unreadable", session=fetch.session, error=str(exc)[:200])
            return None
        self.recovered += 1
        log("cluster_session_recovered", session=fetch.session, applied_n=stored.applied_n)
        # The dead node had read the says stream up to read_n, recorded before it delivered
        # any of it: says after that cannot have reached its players, and the new holder
        # replays them after the client's last_seq (renumbered, never skipped). Unknown
        # (None): a resume skips what the client's last_seq may cover, reporting the gap.
        return Handoff(
            request=fetch.request,
            session=fetch.session,
            batch=stored.batch,
            applied_bseq=max(0, stored.applied_n - self.bus.offset),
            seen_until_bseq=None if read_n is None else read_n - self.bus.offset,
            recovered=True,
        )

    async def _answer(self, ask: InboxMessage) -> None:
        handoff = await self.surrender_local(ask.session, ask.epoch)
        if handoff.batch is not None:
            self.surrendered += 1
        reply = InboxMessage(
            kind="handoff",
            request=ask.request,
            sender=self.node.node,
            session=ask.session,
            handoff=handoff,
            applied_n=handoff.applied_bseq + self.bus.offset,
        )
        log(
            "cluster_handoff_out",
            session=ask.session,
            to_node=ask.sender,
            ok=handoff.batch is not None,
            error=handoff.error,
        )
        try:
            await self.node.post(ask.sender, _encode(reply))
        except ClusterUnavailable as exc:
            # The session left its shard: it is parked nowhere now. Said, not silent.
            log("cluster_handoff_lost", session=ask.session, to_node=ask.sender, error=str(exc))

    # ------------------------------------------------------------------ the inbox
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        newest = await self.node.newest(cluster.inbox_key(self.node.node), "inbox")
        self._inbox_id = "0-0" if newest is None else text(newest.identifier)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync)
            nursery.start_soon(self._read_inbox, nursery)
            task_status.started()

    async def _read_inbox(self, nursery: trio.Nursery) -> None:
        key = cluster.inbox_key(self.node.node)
        outage = Outage("inbox", self.node.node)
        while True:
            try:
                found = await self.node.call(
                    "inbox",
                    lambda r: r.xread({key: self._inbox_id}, count=256, block=READ_BLOCK_MS),
                    timeout=READ_BLOCK_MS / 1000 + 2.0,
                )
            except ClusterUnavailable as exc:
                await outage.failed(exc)
                continue
            outage.ok()
            for entries in (found or {}).values():
                for entry in entries:
                    self._inbox_id = text(entry.identifier)
                    try:
                        message = _decode(text(entry.field_values["m"]))
                    except msgspec.DecodeError as exc:
                        log("cluster_inbox_unreadable", node=self.node.node, error=str(exc))
                        continue
                    if message.kind == "surrender":
                        nursery.start_soon(self._answer, message)
                    elif message.kind == "handoff":
                        waiting = self._replies.get(message.request)
                        if waiting is not None:
                            waiting.value = message
                            waiting.done.set()

    def status(self) -> dict[str, object]:
        return {
            "sessions_sync_queued": len(self._ops),
            "sessions_sync_bytes": self._ops_bytes,
            "fetched": self.fetched,
            "surrendered": self.surrendered,
            "recovered": self.recovered,
            "checkpoints_dropped": self.dropped,
            "stale_dropped": self.refused,
        }
