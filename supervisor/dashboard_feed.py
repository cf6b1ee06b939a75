"""The dashboard's feed: one sample of the supervisor a second, kept and pushed.

Every second the feed reads what ``/status`` shows (shards, their latest ``Load``
reports, the roll in progress, the cluster) and the counters ``/metrics`` exports, turns
the counters into per-second rates, and appends the sample to a ``core.history.History``
(``--history`` seconds, default 900; about 1 MB with 8 shards). Supervisor log events
become markers: ``roll_start``/``roll_done``/``roll_aborted``, ``shard_crash`` (a shard
exited on its own), ``shard_respawn`` (its replacement started), ``shard_replaced`` (a
roll step ended), ``node_joined``/``node_left`` (a cluster member's lease appeared or
ran out).

Followers (``/dashboard/events`` over SSE, ``python -m supervisor top`` polls over the
control socket) get each new sample and marker as it is made. A follower's queue holds
``FOLLOWER_QUEUE`` items; one that falls behind that far is dropped (its page reconnects
and reloads the history), so a stalled browser costs at most that many samples of
memory.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from core.control import GC_PAUSE_BOUNDS
from core.history import GC_WINDOW_S, History, pause_quantile, rates

if TYPE_CHECKING:
    from supervisor.arbiter import Supervisor

FOLLOWER_QUEUE = 32  # samples/markers a live follower may be behind before it is dropped
MAX_FOLLOWERS = 16  # /dashboard/events streams at once; more get 503


def _row(gc_p99_ms: float | None) -> dict[str, Any]:
    """A shard slot's row in a sample, before its processes are counted in."""
    return {
        "players": 0,
        "sessions": 0,
        "away": 0,
        "rooms": 0,
        "state": "down",
        "pid": None,
        "gc_p99_ms": gc_p99_ms,
    }


class DashboardFeed:
    """Samples ``supervisor`` once a second; see the module docstring."""

    def __init__(self, supervisor: Supervisor, capacity: int) -> None:
        self.supervisor = supervisor
        self.history = History(capacity)
        self._last_totals: dict[str, float] | None = None
        self._last_at = 0.0
        # per slot: cumulative GC buckets of the last GC_WINDOW_S samples
        self._gc: dict[int, deque[list[list[int]]]] = {}
        self._crashed: set[int] = set()  # slots that crashed and have not respawned
        self._nodes_alive: set[str] | None = None
        self._followers: set[trio.MemorySendChannel[bytes]] = set()

    # ------------------------------------------------------------------ markers
    def on_log(self, event: str, fields: dict[str, Any]) -> None:
        """A ``shards.log`` listener in the supervisor process: events become markers."""
        shard = fields.get("shard")
        slot = shard if isinstance(shard, int) else None
        if event in ("roll_start", "roll_done"):
            self._mark(event, None, shards=fields.get("shards"))
        elif event == "roll_aborted":
            self._mark(event, slot, reason=fields.get("reason"))
        elif event == "shard_exit":
            if slot is not None:
                self._crashed.add(slot)
            self._mark(
                "shard_crash", slot, signal=fields.get("signal"), code=fields.get("returncode")
            )
        elif event == "shard_spawn" and slot in self._crashed:
            self._crashed.discard(slot)
            self._mark("shard_respawn", slot, pid=fields.get("pid"))
        elif event == "roll_step":
            self._mark(
                "shard_replaced",
                slot,
                pid=fields.get("new_pid"),
                moved=fields.get("evacuated"),
                ended=fields.get("ended"),
            )

    def _mark(self, kind: str, shard: int | None, **detail: object) -> None:
        self._push(b"event: marker\ndata: " + self.history.mark(time.time(), kind, shard, **detail))

    # ------------------------------------------------------------------ samples
    async def run(self) -> None:
        """Take a sample at every whole second until cancelled."""
        while True:
            await trio.sleep(1.0 - time.time() % 1.0)
            self.sample()

    def sample(self) -> bytes:
        """Take one sample now, keep it, push it to the followers; returns it encoded."""
        sup = self.supervisor
        now = time.time()
        slots = sup.metrics.slots(sup)
        totals = sup.metrics.totals(sup, slots)
        status = sup.status()
        # Per slot: every process of it summed (during a roll step the old shard drains
        # while its replacement fills); "draining" while any of them drains.
        shards: dict[str, dict[str, Any]] = {
            str(slot): _row(self._gc_p99(slot, slots.get(slot)))
            for slot in range(sup.config.shards)
        }
        for entry in status["shards"]:  # type: ignore[union-attr]
            row = shards.setdefault(str(entry["shard"]), _row(None))
            handle = sup.processes.get(entry["generation"])
            load = handle.load if handle is not None else None
            row["players"] += entry["connections"]
            row["sessions"] += entry["sessions"]
            row["away"] += load.sessions_away if load is not None else 0
            row["rooms"] += entry["rooms"]
            if row["state"] != "draining":
                row["state"], row["pid"] = entry["state"], entry["pid"]
        players = sum(row["players"] for row in shards.values())
        away = sum(row["away"] for row in shards.values())
        away += int(status.get("parked_sessions", 0))  # type: ignore[call-overload]
        sample: dict[str, object] = {
            "t": round(now, 3),
            "shards": dict(sorted(shards.items(), key=lambda kv: int(kv[0]))),
            "players": players,
            "away": away,
            "rates": {}
            if self._last_totals is None
            else rates(self._last_totals, totals, now - self._last_at),
            "roll": sup.roll_progress(),
            "cluster": self._cluster(status.get("cluster")),  # type: ignore[arg-type]
        }
        self._last_totals, self._last_at = totals, now
        encoded = self.history.add(sample)
        self._push(b"event: sample\ndata: " + encoded)
        return encoded

    def _gc_p99(self, slot: int, totals: Any) -> float | None:
        window = self._gc.setdefault(slot, deque(maxlen=GC_WINDOW_S + 1))
        buckets = [list(b) for b in totals.gc_buckets] if totals is not None else []
        window.append(buckets)
        p99 = pause_quantile(window[0], buckets, GC_PAUSE_BOUNDS)
        return None if p99 is None else round(p99 * 1000, 3)

    def _cluster(self, status: dict[str, Any] | None) -> dict[str, object] | None:
        if status is None:
            return None
        members = [
            {k: m.get(k) for k in ("node", "alive", "lease_ms", "rooms", "players")}
            for m in status.get("members", [])
        ]
        alive = {str(m["node"]) for m in members if m["alive"]}
        if self._nodes_alive is not None:
            for node in sorted(alive - self._nodes_alive):
                self._mark("node_joined", None, node=node)
            for node in sorted(self._nodes_alive - alive):
                self._mark("node_left", None, node=node)
        self._nodes_alive = alive
        return {
            "node": status.get("node"),
            "reachable": status.get("reachable"),
            "rtt_ms": status.get("rtt_ms"),
            "lease_s": status.get("lease_s"),
            "fenced": status.get("fenced"),
            "nodes": members,
        }

    # ---------------------------------------------------------------- followers
    def _push(self, event: bytes) -> None:
        for follower in list(self._followers):
            try:
                follower.send_nowait(event)
            except trio.WouldBlock:
                self._followers.discard(follower)
                follower.close()  # fell behind: it reconnects and reloads the history
            except trio.ClosedResourceError:
                self._followers.discard(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)

    @contextlib.contextmanager
    def follow(self) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """Each new sample (``event: sample``) and marker (``event: marker``) as an SSE
        event body, until the follower leaves or falls ``FOLLOWER_QUEUE`` behind."""
        send, receive = trio.open_memory_channel[bytes](FOLLOWER_QUEUE)
        self._followers.add(send)
        try:
            yield receive
        finally:
            self._followers.discard(send)
            send.close()
            receive.close()
