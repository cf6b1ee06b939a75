"""The supervisor's recent past: one sample a second and the events between them.

``/dashboard`` and ``python -m supervisor top`` draw charts that start before the page
(or the terminal) was opened: the supervisor keeps the last ``--history`` seconds
(default 900, 15 minutes) of per-second samples in a ring, and the events that mark
them (a roll started or ended, a shard crashed, a shard respawned or was replaced).

A sample is stored encoded (compact JSON, typically 0.4-1.2 KB with 8 shards; the
cluster part adds ~80 bytes a node), so the ring's memory is its byte count, bounded by
``capacity`` samples: about 1 MB at the default with 8 shards, plus at most
``MAX_MARKERS`` markers of ~100 bytes. Adding a sample is one ``json.dumps`` (~20 µs with
8 shards); answering a history request joins the stored bytes (no re-encoding).

Pure: no I/O, no clock - the caller passes the time.

What a sample holds (see docs/PROTOCOL.md *Dashboard feed*)::

    {"t": unix seconds,
     "shards": {"0": {"players": connections, "sessions": n, "away": n, "rooms": n,
                      "state": "ready"|"starting"|"draining"|"down", "pid": n,
                      "gc_p99_ms": float|null}, ...},
     "players": connections on this node, "away": away sessions (shards) + parked,
     "rates": {"disconnect|KIND": per second, "resume|RESULT": ..., "messages_in": ...,
               "messages_out": ..., "heartbeat_timeout": ..., "rejected|REASON": ...},
     "roll": null | {"steps": n, "done": k, "shard": i, "moved": n, "back": n},
     "cluster": null | {"node": name, "reachable": bool, "rtt_ms": float|null,
                        "lease_s": float, "nodes": [{"node", "alive", "lease_ms",
                        "rooms", "players"}]}}
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_SECONDS = 900  # --history: 15 minutes of one sample a second
MAX_MARKERS = 1000  # the oldest go first; a marker is ~100 bytes
GC_WINDOW_S = 10  # a shard's GC pause p99 is over the last this many seconds

# Counter key prefixes that become per-second rates (``Load.counters`` keys and the
# supervisor's own). ``disconnect|KIND|CODE`` is summed over codes into ``disconnect|KIND``.
RATE_PREFIXES = (
    "disconnect|",
    "resume|",
    "rejected|",
    "messages_in",
    "messages_out",
    "heartbeat_timeout",
    "session_expired",
    "broadcast_rejected",
    "bad_message|",
)

# Readable names for the labels a chart shows (a key not listed is shown as it is).
LABELS: dict[str, str] = {
    "disconnect|graceful": "graceful close",
    "disconnect|abnormal": "abnormal (no close frame)",
    "disconnect|heartbeat_timeout": "heartbeat timeout",
    "disconnect|policy": "policy (rate, size, bytes)",
    "disconnect|shutdown": "server shutdown / roll",
    "disconnect|application": "application close",
    "resume|ok": "resumed",
    "resume|recovered": "recovered after a crash",
    "resume|invalid": "invalid token",
    "resume|expired": "expired",
    "rejected|bad_request": "bad request (400)",
    "rejected|origin_not_allowed": "origin not allowed (403)",
    "rejected|not_found": "unknown path (404)",
    "rejected|method_not_allowed": "not GET (405)",
    "rejected|uri_too_long": "request line too long (414)",
    "rejected|not_websocket": "not a WebSocket upgrade (426)",
    "rejected|too_many_requests": "too many requests (429)",
    "rejected|headers_too_large": "headers too large (431)",
    "rejected|over_capacity": "over capacity (503)",
    "rejected|http_version": "HTTP version (505)",
    "rejected|unsupported_version": "WebSocket version (426)",
    "rejected|handshake_timeout": "handshake too slow",
    "rejected|bad_bytes": "bad bytes before the upgrade",
    "rejected|proxy_header_untrusted": "PROXY header from an untrusted peer (400)",
    "rejected|bad_proxy_header": "malformed PROXY header (400)",
    "messages_in": "messages in",
    "messages_out": "messages out",
    "heartbeat_timeout": "heartbeat timeouts",
}

# Marker kinds, in the order a legend lists them.
MARKER_KINDS = (
    "roll_start",
    "roll_done",
    "roll_aborted",
    "shard_crash",
    "shard_respawn",
    "shard_replaced",
    "node_joined",
    "node_left",
)


def rate_key(key: str) -> str | None:
    """The rate a counter key adds to (None: not charted)."""
    if not key.startswith(RATE_PREFIXES):
        return None
    if key.startswith("disconnect|"):
        parts = key.split("|")
        return f"disconnect|{parts[1]}" if len(parts) >= 2 else None
    return key


def rates(
    before: Mapping[str, float], after: Mapping[str, float], seconds: float
) -> dict[str, float]:
    """Per-second rates of the charted counters between two totals ``seconds`` apart.
    A counter that went down (it should not: retired shards' totals are kept) counts 0."""
    if seconds <= 0:
        return {}
    grouped: dict[str, float] = {}
    for key, value in after.items():
        name = rate_key(key)
        if name is None:
            continue
        delta = value - before.get(key, 0)
        grouped[name] = grouped.get(name, 0.0) + max(0.0, delta)
    return {k: round(v / seconds, 3) for k, v in sorted(grouped.items())}


def pause_quantile(
    before: Sequence[Sequence[int]],
    after: Sequence[Sequence[int]],
    bounds: Sequence[float],
    q: float = 0.99,
) -> float | None:
    """The ``q`` quantile (seconds, a bucket's upper bound; the last bucket reports the
    largest bound) of GC pauses between two cumulative bucket counts, all generations
    together. None when no collection ran in between."""
    counts = [0] * (len(bounds) + 1)
    for generation, buckets in enumerate(after):
        old = before[generation] if generation < len(before) else ()
        for i, count in enumerate(buckets[: len(counts)]):
            counts[i] += max(0, count - (old[i] if i < len(old) else 0))
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return bounds[min(i, len(bounds) - 1)]
    return bounds[-1]


class History:
    """The last ``capacity`` samples (one a second) and up to ``MAX_MARKERS`` markers."""

    def __init__(self, capacity: int = DEFAULT_SECONDS) -> None:
        if capacity < 1:
            raise ValueError("history capacity must be at least 1 sample")
        self.capacity = capacity
        self._samples: deque[tuple[float, bytes]] = deque(maxlen=capacity)
        self._markers: deque[tuple[float, bytes]] = deque(maxlen=MAX_MARKERS)
        self._bytes = 0
        self.added = 0  # samples ever added (a follower's position)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def bytes(self) -> int:
        """Bytes held by the encoded samples and markers."""
        return self._bytes

    def add(self, sample: Mapping[str, Any]) -> bytes:
        """Append one sample (it must have ``t``); the oldest goes when full. Returns it
        encoded (what a live feed sends)."""
        encoded = _encode(sample)
        if len(self._samples) == self.capacity:
            self._bytes -= len(self._samples[0][1])
        self._samples.append((float(sample["t"]), encoded))
        self._bytes += len(encoded)
        self.added += 1
        return encoded

    def mark(self, t: float, kind: str, shard: int | None = None, **detail: object) -> bytes:
        """Record an event at ``t`` (a ``MARKER_KINDS`` value). Returns it encoded."""
        t = round(t, 3)  # ``markers(since)`` compares the t a follower was sent
        marker: dict[str, object] = {"t": t, "kind": kind, "shard": shard}
        marker.update({k: v for k, v in detail.items() if v is not None})
        encoded = _encode(marker)
        if len(self._markers) == MAX_MARKERS:
            self._bytes -= len(self._markers[0][1])
        self._markers.append((t, encoded))
        self._bytes += len(encoded)
        return encoded

    def samples(self, since: float | None = None) -> list[bytes]:
        return _after(self._samples, since)

    def markers(self, since: float | None = None) -> list[bytes]:
        return _after(self._markers, since)

    def snapshot(self, since: float | None = None, **extra: object) -> bytes:
        """Everything held (or after ``since``) as one JSON document:
        ``{"interval_s": 1, "capacity": N, "labels": {...}, "samples": [...],
        "markers": [...], **extra}``."""
        head = _encode({"interval_s": 1, "capacity": self.capacity, "labels": LABELS, **extra})[:-1]
        return b"".join(
            (
                head,
                b',"samples":[',
                b",".join(self.samples(since)),
                b'],"markers":[',
                b",".join(self.markers(since)),
                b"]}",
            )
        )


def parse_since(text: str) -> float:
    """A ``since`` argument (``history SINCE``, ``?since=T``): a finite unix time;
    ValueError otherwise."""
    since = float(text)
    if since != since or abs(since) == float("inf"):
        raise ValueError(f"since must be a finite unix time, not {text!r}")
    return since


def _after(ring: Iterable[tuple[float, bytes]], since: float | None) -> list[bytes]:
    return [encoded for t, encoded in ring if since is None or t > since]


def _encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
