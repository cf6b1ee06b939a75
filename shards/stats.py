"""What a shard counts for the supervisor's ``/metrics``, taken from the events it logs.

``install(host, report)`` (called once by the shard's Load reporter) registers one
``ShardStats`` as a listener of ``shards.log`` and as a ``gc.callbacks`` hook; every
``Load`` report then carries ``ShardStats.report(host)``: totals since this process
started, which the supervisor sums over shards and keeps after a shard exits
(``supervisor/metrics.py``).
Messages in and out are two module-level integers the reactor increments
(``messages_in``, ``messages_out``), and ``count(key)`` adds to a counter directly where a
log line per event would be too many (bad messages, rejected broadcasts).

Counter keys in ``Load.counters`` ("name" or "name|label value|..."):

- ``disconnect|KIND|CODE`` — every classified close (the ``disconnect`` line);
- ``heartbeat_timeout`` — of those, the heartbeat timeouts;
- ``resume|RESULT`` — ``ok``, ``recovered`` (from a crashed shard's checkpoint),
  ``invalid``, ``expired``;
- ``replayed`` — stream messages replayed by resumes;
- ``session_expired`` — away sessions whose grace ran out;
- ``drain`` and ``drain_seconds`` — drains finished, and their total duration;
- ``messages_in`` / ``messages_out`` — data frames read in sessions / queued to clients;
- ``rejected|REASON`` — requests refused before the upgrade, by readable reason
  (``bad_request``, ``not_found``, ``not_websocket``, ``over_capacity``, ...: the ``rejected``
  line), ``handshake_timeout``, and ``bad_bytes`` (connections closed 1002/1003/1007);
- ``routed`` — connections passed to the shard owning their room or session;
- ``app_error`` — app callbacks that raised;
- ``connection_error`` — bugs caught in one connection's handling (it closed 1011);
- ``bad_message|CODE`` — messages answered with ``error`` (``unknown_type``,
  ``invalid_message``, ``too_long``, ``broadcast_budget``);
- ``broadcast_rejected`` — broadcasts refused by the shard's broadcast budget;
- ``away_evicted|WHY`` — away sessions ended early by a cap (``shard_cap``, ``address_cap``);
- ``broadcast_gap`` — broadcasts the supervisor could not deliver to this shard.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable
from typing import Any

from core.control import GC_PAUSE_BOUNDS
from shards import log as shard_log

messages_in = 0  # data frames read from clients (the reactor adds)
messages_out = 0  # data frames queued to clients (the reactor adds)
_direct: dict[str, float] = {}


def count(key: str, amount: float = 1) -> None:
    """Add to a counter without a log line (the key format of ``Load.counters``)."""
    _direct[key] = _direct.get(key, 0) + amount


class ShardStats:
    """Counts from log events, and the GC pause histogram (per generation)."""

    def __init__(self, host: Any = None, report: Callable[[], None] | None = None) -> None:
        self.host = host  # the SessionHost, to tell recovered resumes from ordinary ones
        self.report_now = report  # sends a Load at once: the last one before a shard exits
        self.counters: dict[str, float] = {}
        width = len(GC_PAUSE_BOUNDS) + 1
        self.gc_buckets: list[list[int]] = [[0] * width for _ in gc.get_count()]
        self.gc_sum: list[float] = [0.0] * len(self.gc_buckets)
        self._gc_started: float | None = None

    # ------------------------------------------------------------------ counting
    def add(self, key: str, amount: float = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        """A ``shards.log`` listener."""
        if event == "disconnect":
            self.add(f"disconnect|{fields.get('kind')}|{fields.get('code')}")
            if fields.get("kind") == "heartbeat_timeout":
                self.add("heartbeat_timeout")
        elif event == "resume":
            self.add("resume|recovered" if fields.get("recovered") else "resume|ok")
            self.add("replayed", fields.get("replayed") or 0)
        elif event == "resume_failed":
            self.add(f"resume|{fields.get('error')}")
        elif event == "session_expired":
            self.add("session_expired")
        elif event == "rejected":
            self.add(f"rejected|{fields.get('reason')}")
        elif event == "handshake_failed":
            self.add("rejected|handshake_timeout")
        elif event == "bad_message":
            self.add("rejected|bad_bytes")
        elif event == "drain_done":
            self.add("drain")
            self.add("drain_seconds", fields.get("duration_s") or 0.0)
            if self.report_now is not None:
                self.report_now()  # the shard exits soon: queue the totals before Drained
        elif event == "routed":
            self.add("routed")
        elif event == "app_error":
            self.add("app_error")

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` hook: time each collection, by generation."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        started, self._gc_started = self._gc_started, None
        if started is None:
            return
        pause = time.perf_counter() - started
        generation = min(max(int(info.get("generation", 0)), 0), len(self.gc_buckets) - 1)
        self.gc_buckets[generation][bisect.bisect_left(GC_PAUSE_BOUNDS, pause)] += 1
        self.gc_sum[generation] += pause

    # ------------------------------------------------------------------ reporting
    def report(self, host: Any) -> dict[str, Any]:
        """The optional fields of a ``Load`` report (copies: the frame is encoded later)."""
        counters = dict(self.counters)
        for key, value in _direct.items():
            counters[key] = counters.get(key, 0) + value
        counters["messages_in"] = messages_in
        counters["messages_out"] = messages_out
        away = 0
        if host is not None:
            away = max(0, len(host.sessions) - len(host.attached))
        return {
            "sessions_away": away,
            "counters": counters,
            "gc_pause_buckets": [list(b) for b in self.gc_buckets],
            "gc_pause_sum": list(self.gc_sum),
        }


_installed: ShardStats | None = None


def install(host: Any = None, report: Callable[[], None] | None = None) -> ShardStats:
    """The process's ``ShardStats``, listening to the log and to the GC from now on.

    ``report`` sends a ``Load`` report; it is called when a drain is done, so what the
    shard counted reaches the supervisor before it exits."""
    global _installed
    if _installed is None:
        _installed = ShardStats(host, report)
        shard_log.listeners.append(_installed)
        gc.callbacks.append(_installed.gc_callback)
    else:
        _installed.host, _installed.report_now = host, report
    return _installed
