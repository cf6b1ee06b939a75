"""This node's membership of a cluster: the Redis connection, the lease, room claims.

Only with ``--cluster redis://HOST:PORT/DB``; single-machine mode never imports coredis.
The keys and scripts are ``core.cluster``'s; this module runs them (coredis 6, which is
anyio-native and runs under trio) and keeps the lease alive:

* ``join`` checks the token key's fingerprint (a node with another key refuses to start),
  reads or sets the cluster epoch and takes the node's lease (a live node of the same
  name refuses the newcomer);
* ``keep_lease`` renews the lease every ``LEASE_RENEW_S``; when no renewal succeeded for
  ``LEASE_TTL_S`` by this node's clock it calls ``on_fenced`` once (the supervisor stops
  serving its rooms), and ``on_unfenced`` when a renewal succeeds again;
* ``claim_room`` / ``release_room`` run the fenced claim and release scripts.

Every Redis call is bounded by ``REDIS_TIMEOUT_S``; a call that fails raises
``ClusterUnavailable`` (the caller answers its client with a clear error) and is logged by
the caller. Cost: one Redis round trip per renewal and per room claim or release; nothing
on the message path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coredis
import trio

from core import cluster
from core.cluster import ClusterRefused, ClusterUnavailable
from shards.log import log

REDIS_TIMEOUT_S = 2.0  # bound of one Redis call (a partition must not hang a claim)
RETRY_FIRST_S = 0.05  # a loop that needs Redis retries after this, doubling...
RETRY_MAX_S = 2.0  # ...up to this


class Outage:
    """The failures of one loop that needs Redis (a reader, a writer): ``failed`` backs
    off (RETRY_FIRST_S doubling to RETRY_MAX_S) and logs ``cluster_<what>_failed`` once
    per outage, ``ok`` logs ``cluster_<what>_recovered`` (with ``away_s``) once after it
    and resets the delay. Retries in between are not logged."""

    def __init__(self, what: str, node: str) -> None:
        self.what = what
        self.node = node
        self.delay = RETRY_FIRST_S
        self.since: float | None = None

    async def failed(self, exc: Exception) -> None:
        if self.since is None:
            self.since = trio.current_time()
            log(f"cluster_{self.what}_failed", node=self.node, error=str(exc)[:200])
        await trio.sleep(self.delay)
        self.delay = min(self.delay * 2, RETRY_MAX_S)

    def ok(self, **fields: object) -> None:
        if self.since is not None:
            away = trio.current_time() - self.since
            log(f"cluster_{self.what}_recovered", node=self.node, away_s=away, **fields)
            self.since = None
        self.delay = RETRY_FIRST_S


@dataclass(frozen=True)
class RoomClaim:
    """Who owns a room after a claim: ``owner`` (a node name), its ``fence`` and the
    owner's public URL."""

    owner: str
    fence: int
    url: str
    state: str | None = None  # the room's state, left by the node that owned it before


class ClusterNode:
    def __init__(
        self,
        redis_url: str,
        node: str,
        public_url: str,
        secret: bytes,
        grace: float = 120.0,
        on_fenced: Callable[[], None] = lambda: None,
        on_unfenced: Callable[[], None] = lambda: None,
        players: Callable[[], int] = lambda: 0,
        says_kept: int = cluster.SAYS_KEPT,
    ) -> None:
        self.redis_url = redis_url
        self.players = players  # connected players, published with each renewal
        self.says_kept = says_kept  # the says stream's length (approximately)
        self.node = node
        self.public_url = public_url
        self.incarnation = os.urandom(8).hex()
        self.grace = grace  # seconds this node's checkpoints outlive its lease
        self.lease = cluster.Lease()
        self.epoch = 0.0
        self.epoch_text = ""  # as Redis holds it: what every renewal checks
        self.renewals = 0
        self.left = False  # leave() ran: never renew again
        self.reachable = False
        self.rtt_ms: float | None = None  # last renewal's round trip
        self.fenced = True  # until the first renewal
        self.fences: dict[str, int] = {}  # rooms this node claimed -> their fence
        self.members: list[dict[str, object]] = []  # every node, as of the last renewal
        self.claims = 0
        self.redirects = 0
        self._fingerprint = cluster.secret_fingerprint(secret)
        self._on_fenced = on_fenced
        self._on_unfenced = on_unfenced
        self._redis: Any = None
        self._renew: Any = None
        self._claim: Any = None
        self._release: Any = None
        self._publish: Any = None
        self._sync: Any = None
        self._find: Any = None
        self._leave: Any = None
        self._nodes: Any = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, ``join``, report started, then keep the lease until cancelled."""
        redis = coredis.Redis.from_url(
            self.redis_url, decode_responses=True, connect_timeout=REDIS_TIMEOUT_S
        )
        # coredis' client is a task group (anyio): what escapes it comes out grouped, so
        # a refusal is carried out of it by hand, as the bare exception ``start`` expects.
        refused: Exception | None = None
        try:
            async with redis:
                self._redis = redis
                self._renew = redis.register_script(cluster.RENEW_LEASE)
                self._claim = redis.register_script(cluster.CLAIM_ROOM)
                self._release = redis.register_script(cluster.RELEASE_ROOM)
                self._publish = redis.register_script(cluster.PUBLISH)
                self._sync = redis.register_script(cluster.SYNC_SESSIONS)
                self._find = redis.register_script(cluster.TAKE_SESSION)
                self._leave = redis.register_script(cluster.LEAVE)
                self._nodes = redis.register_script(cluster.NODES_STATUS)
                try:
                    await self.join()
                except (ClusterRefused, ClusterUnavailable) as exc:
                    refused = exc
                else:
                    task_status.started()
                    await self.keep_lease()
        except* (OSError, coredis.exceptions.RedisError) as group:
            refused = ClusterUnavailable(
                f"redis at {cluster.redacted(self.redis_url)}: {group.exceptions[0]!r}"
            )
        if refused is not None:
            raise refused

    async def call(
        self, what: str, command: Callable[[Any], Any], timeout: float = REDIS_TIMEOUT_S
    ) -> Any:
        """``await command(redis)`` within ``timeout``; ``ClusterUnavailable`` on a timeout
        or any Redis or socket error (``what`` names the operation in its text)."""
        try:
            with trio.fail_after(timeout):
                return await command(self._redis)
        except (trio.TooSlowError, OSError, coredis.exceptions.RedisError) as exc:
            self.reachable = False
            raise ClusterUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    async def publish(self, entry: bytes) -> str:
        """Append one broadcast entry to the cluster's stream; its id."""
        return await self.call(
            "publish",
            lambda r: self._publish(
                keys=[cluster.SAYS_KEY, cluster.SAYS_COUNT_KEY], args=[entry, self.says_kept]
            ),
        )

    async def leave(self) -> None:
        """Give this node's name back (its lease), after its shards stopped. Renewals stop
        with the process; a failure here only means the name frees after the TTL."""
        try:
            await self.call(
                "leave",
                lambda r: self._leave(keys=[cluster.lease_key(self.node)], args=[self.incarnation]),
            )
        except ClusterUnavailable as exc:
            log("cluster_leave_failed", node=self.node, error=str(exc)[:200])
            return
        self.lease.valid_until = float("-inf")
        self.fenced = True
        self.left = True
        log("cluster_left", node=self.node)

    async def sync_sessions(self, args: list[str]) -> list[str]:
        """Record a batch of session starts, ends and checkpoints (``SYNC_SESSIONS``'
        ARGV); returns the sessions whose writes were refused (another node holds them)."""
        reply = await self.call("sessions", lambda r: self._sync(keys=[], args=args))
        return [text(sid) for sid in list(reply)[1:]]

    async def take_session(self, session: str) -> tuple[str, str, int | None]:
        """Where ``session`` is: ("live", node, None); ("checkpoint", blob, n) - its holder
        died, its last checkpoint is now this caller's alone, and the holder had read the
        says stream up to entry n (None: unknown); or ("none", "", None)."""
        kind, value, read = await self.call(
            "find",
            lambda r: self._find(
                keys=[cluster.session_key(session)],
                args=[
                    session,
                    cluster.LEASE_PREFIX,
                    cluster.CHECKPOINTS_PREFIX,
                    cluster.read_key(""),
                    self.node,
                ],
            ),
        )
        return str(kind), str(value), int(read) if read else None

    async def post(self, node: str, message: bytes) -> None:
        """Append ``message`` to ``node``'s inbox (trimmed to about ``INBOX_KEPT``)."""
        await self.call(
            "post",
            lambda r: r.xadd(
                cluster.inbox_key(node),
                {"m": message},
                trim_strategy=coredis.PureToken.MAXLEN,
                threshold=cluster.INBOX_KEPT,
                trim_operator=coredis.PureToken.APPROXIMATELY,
            ),
        )

    async def newest(self, stream: str, what: str) -> Any:
        """``stream``'s newest entry (None when empty), retried until Redis answers."""
        outage = Outage(what, self.node)
        while True:
            try:
                newest = await self.call(what, lambda r: r.xrevrange(stream, "+", "-", count=1))
            except ClusterUnavailable as exc:
                await outage.failed(exc)
                continue
            outage.ok()
            return newest[0] if newest else None

    async def join(self) -> None:
        await self.call(
            "secret",
            lambda r: r.set(cluster.SECRET_KEY, self._fingerprint, condition=coredis.PureToken.NX),
        )
        held = await self.call("secret", lambda r: r.get(cluster.SECRET_KEY))
        if held != self._fingerprint:
            raise ClusterRefused(
                "this node's token key (--secret-file) differs from the cluster's: every"
                " node must use the same key file content"
            )
        now = f"{time.time():.3f}"
        await self.call(
            "epoch", lambda r: r.set(cluster.EPOCH_KEY, now, condition=coredis.PureToken.NX)
        )
        self.epoch_text = str(await self.call("epoch", lambda r: r.get(cluster.EPOCH_KEY)))
        self.epoch = float(self.epoch_text)
        if await self.renew() != "ok":
            raise ClusterRefused(f"node name {self.node!r} is held by a live node")

    async def renew(self) -> str:
        """One renewal: "ok", "taken" (another live process holds this node name) or
        "epoch" (Redis lost its data since this node joined)."""
        sent = trio.current_time()
        status, _ = await self.call(
            "lease",
            lambda r: self._renew(
                keys=[
                    cluster.lease_key(self.node),
                    cluster.NODES_KEY,
                    cluster.EPOCH_KEY,
                    cluster.checkpoints_key(self.node),
                ],
                args=[
                    self.node,
                    self.incarnation,
                    self.public_url,
                    int(self.lease.ttl * 1000),
                    self.epoch_text,
                    int(self.grace * 1000),
                    self.players(),
                ],
            ),
        )
        self.reachable = True
        if status != "ok":
            return str(status)
        self.rtt_ms = (trio.current_time() - sent) * 1000
        self.lease.renewed(sent)
        self.renewals += 1
        return "ok"

    def _fence_now(self, why: str) -> None:
        self.lease.valid_until = float("-inf")
        if not self.fenced:
            self.fenced = True
            self.fences.clear()
            log("lease_lost", node=self.node, reason=why)
            self._on_fenced()

    async def keep_lease(self) -> None:
        """Renew every ``LEASE_RENEW_S`` until cancelled; fence and unfence on the way."""
        while not self.left:
            try:
                status = await self.renew()
            except ClusterUnavailable as exc:
                status = "unreachable"
                log("cluster_unreachable", node=self.node, error=str(exc)[:200])
            if status == "taken":
                log("lease_taken", node=self.node, reason="another process uses this name")
                self._fence_now("name taken")
            elif status == "epoch":
                # Redis restarted without its data: claims and fences are gone, another
                # node may claim this node's rooms with a fresh fence. Drop them, join anew.
                log("cluster_data_lost", node=self.node, epoch=self.epoch_text)
                self._fence_now("redis lost its data")
                try:
                    await self.join()
                except (ClusterRefused, ClusterUnavailable) as exc:
                    log("cluster_rejoin_failed", node=self.node, error=str(exc)[:200])
            elif status == "ok":
                try:
                    self.members = await self.nodes()
                except ClusterUnavailable:
                    pass  # the next renewal says whether Redis is gone
            now = trio.current_time()
            fenced = self.lease.fenced(now)
            if fenced and not self.fenced:
                self._fence_now(f"not renewed for {self.lease.ttl:g} s")
            elif not fenced and self.fenced:
                self.fenced = False
                log("lease_held", node=self.node, rtt_ms=self.rtt_ms, epoch=self.epoch)
                self._on_unfenced()
            # Wake in time to notice a lost lease within the TTL, not a renewal later.
            wait = cluster.LEASE_RENEW_S
            if not fenced:
                wait = min(wait, max(0.0, self.lease.valid_until - now))
            await trio.sleep(wait)

    async def claim_room(self, room: str) -> RoomClaim:
        """The room's owner, taking it when nobody's lease holds it. Raises
        ``ClusterUnavailable`` when Redis does not answer or this node is fenced."""
        if self.lease.fenced(trio.current_time()):
            raise ClusterUnavailable("this node's lease is lost")
        reply = await self.call(
            "claim",
            lambda r: self._claim(
                keys=[cluster.room_key(room), cluster.room_state_key(room)],
                args=[
                    self.node,
                    self.incarnation,
                    cluster.LEASE_PREFIX,
                    cluster.ROOMS_OF_PREFIX,
                ],
            ),
        )
        owner, fence, url = reply[0], reply[1], reply[2]
        state = text(reply[3]) if len(reply) > 3 and reply[3] else None
        if not owner:
            raise ClusterUnavailable("this node's lease is lost")
        if owner == self.node:
            if self.fences.get(room) != fence:
                self.claims += 1
                log("room_claimed", room=room, node=self.node, fence=fence)
            self.fences[room] = int(fence)
        return RoomClaim(owner, int(fence), url, state)

    async def release_room(self, room: str, state: str | None = None, keep_s: float = 0) -> bool:
        """Give up ``room`` (its last session left, or this node leaves with ``state``,
        which the next claimer gets, kept ``keep_s``); a stale release changes nothing and
        stores nothing. True when the release (and the state) took."""
        fence = self.fences.pop(room, None)
        if fence is None:
            return False
        extra = [state, int(keep_s * 1000)] if state is not None else []
        done = await self.call(
            "release",
            lambda r: self._release(
                keys=[
                    cluster.room_key(room),
                    cluster.rooms_of_key(self.node),
                    cluster.room_state_key(room),
                ],
                args=[self.node, fence, *extra],
            ),
        )
        return bool(done)

    async def nodes(self) -> list[dict[str, object]]:
        """Every node seen: name, public URL, players, lease time left (0: dead), rooms
        owned. One Redis call (``NODES_STATUS``) whatever the number of nodes."""
        flat = list(
            await self.call(
                "status",
                lambda r: self._nodes(
                    keys=[cluster.NODES_KEY], args=[cluster.LEASE_PREFIX, cluster.ROOMS_OF_PREFIX]
                ),
            )
        )
        out: list[dict[str, object]] = []
        for i in range(0, len(flat) - 4, 5):
            name, url, players, ttl, rooms = flat[i : i + 5]
            out.append(
                {
                    "node": text(name),
                    "url": text(url) if url else None,
                    "lease_ms": max(0, int(ttl)),
                    "alive": int(ttl) > 0,
                    "rooms": int(rooms),
                    "players": int(players or 0),
                }
            )
        return sorted(out, key=lambda m: str(m["node"]))

    def status(self) -> dict[str, object]:
        """This node's view without a Redis call (for /status and the control socket)."""
        now = trio.current_time()
        return {
            "node": self.node,
            "public_url": self.public_url,
            "redis": cluster.redacted(self.redis_url),
            "reachable": self.reachable,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "lease_s": round(self.lease.remaining(now), 3),
            "renewals": self.renewals,
            "fenced": self.fenced,
            "epoch": self.epoch,
            "rooms_claimed": len(self.fences),
            "claims": self.claims,
            "redirects": self.redirects,
            "members": self.members,
        }


def text(value: str | bytes) -> str:
    """A Redis reply as text (coredis hands out bytes or str by the connection's setting)."""
    return value.decode() if isinstance(value, bytes) else value
