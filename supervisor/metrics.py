"""The supervisor's metrics: ``/metrics`` (Prometheus text) and ``/status`` (JSON) over HTTP.

Every shard reports totals since it started in its ``Load`` frame each second
(``shards/stats.py``). The supervisor keeps the latest report of each shard process
(``ShardHandle.load``); when a shard exits, its last report is added to a per-slot
*retired* total, so a counter labelled ``shard="3"`` keeps growing across respawns and
rolling restarts and never goes backwards (what a shard counted after its last report,
at most a second's worth, is lost with a crash). The supervisor also counts a few of its
own events (rolling restarts, shard exits, refused and expired room placements, broadcast
gaps).

Label values are bounded: a disconnect's ``code`` outside the documented close codes
(1000-1015 and the project's own 4000-4003; see docs/PROTOCOL.md) is exported as
``other_app``, so clients choosing codes 3000-4999 cannot create thousands of series.
The bucketing happens here, where labels are built, for /metrics and /status alike.

The server binds ``--metrics-host`` (default 127.0.0.1), not ``--host``: it has no
authentication.

The HTTP side is a tiny HTTP/1.1 responder on ``trio.serve_tcp``: one request per
connection (request line and headers at most ``MAX_REQUEST`` bytes, within
``REQUEST_TIMEOUT``), then the answer and a close. ``GET /metrics``, ``GET /status``;
anything else is 404 (405 for another method, 400 for garbage).

``/dashboard`` is a page of live charts (``shards/web/dashboard.html``, drawn with the
uPlot library vendored in ``shards/web/vendor/uplot/``, nothing fetched from elsewhere);
``/dashboard/history`` answers the kept samples and markers as JSON
(``supervisor/dashboard_feed.py``, ``?since=UNIX_TIME`` for the newer ones only), and
``/dashboard/events`` streams each new one as Server-Sent Events (at most
``MAX_FOLLOWERS`` streams at once, 503 beyond; a stream whose reader stalls for
``REQUEST_TIMEOUT`` is closed).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from core.close_codes import CloseCode, DisconnectKind
from core.control import GC_PAUSE_BOUNDS, Load
from core.history import parse_since
from shards import log as shard_log
from shards import static
from shards.log import log

if TYPE_CHECKING:
    from supervisor.arbiter import ShardHandle, Supervisor

from supervisor.dashboard_feed import MAX_FOLLOWERS

MAX_REQUEST = 8192  # bytes of request line + headers
REQUEST_TIMEOUT = 5.0  # seconds to send the request, and again to take the answer
LATE_REPORTS = 5.0  # seconds an exited shard's last frames may still be read after its exit
# Close codes exported as themselves: RFC 6455's 1000-1015 and the project's own
# application codes (4000 session replaced, 4001 client "coming back", 4002 redirect,
# 4003 "missed broadcasts: resume").
DOCUMENTED_CLOSE_CODES = frozenset(
    {str(c) for c in range(1000, 1016)}
    | {str(int(c)) for c in CloseCode}
    | {"4001", "4002", "4003"}
)
OTHER_CODE = "other_app"
_KINDS = frozenset(str(k) for k in DisconnectKind)

# Load.counters key prefix -> (metric name, help, label names after "shard")
COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "disconnect": (
        "ws_disconnects",
        "Closed connections by disconnect kind and close code.",
        ("kind", "code"),
    ),
    "heartbeat_timeout": (
        "ws_heartbeat_timeouts",
        "Connections closed because the client was silent past the heartbeat timeout.",
        (),
    ),
    "resume": (
        "ws_resumes",
        "Resume attempts by result: ok, recovered (from a crashed shard's checkpoint), "
        "invalid, expired.",
        ("result",),
    ),
    "replayed": ("ws_replayed_messages", "Stream messages replayed to resuming clients.", ()),
    "session_expired": (
        "ws_sessions_expired",
        "Away sessions that ended because their grace window ran out.",
        (),
    ),
    "messages_in": ("ws_messages_in", "Data frames received from clients in sessions.", ()),
    "messages_out": ("ws_messages_out", "Data frames queued to clients.", ()),
    "rejected": (
        "ws_rejected",
        "Rejected requests and connections by reason (bad request line, unknown path, "
        "over capacity, handshake timeout, bad bytes...).",
        ("reason",),
    ),
    "drain": ("ws_drains", "Shard drains finished (shutdown, rolling restart).", ()),
    "routed": (
        "ws_routed_connections",
        "Connections passed to the shard owning their room or session.",
        (),
    ),
    "app_error": ("ws_app_errors", "App callbacks that raised.", ()),
    "connection_error": (
        "ws_connection_errors",
        "Bugs caught in one connection's handling (it was closed 1011).",
        (),
    ),
    "bad_message": (
        "ws_bad_messages",
        "Client messages answered with an error message, by code.",
        ("code",),
    ),
    "broadcast_rejected": (
        "ws_broadcasts_rejected",
        "Broadcasts refused by the shard's broadcast budget.",
        (),
    ),
    "away_evicted": (
        "ws_away_evicted",
        "Away sessions ended early by a cap, by cap (shard_cap, address_cap).",
        ("why",),
    ),
    "broadcast_gap": (
        "ws_broadcast_gaps",
        "Broadcasts a shard reports it never received (the supervisor's log no longer held "
        "them when the shard caught up).",
        (),
    ),
}
# the supervisor's own events: key -> (metric name, help, label names)
SUPERVISOR_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "rolling_restart": (
        "ws_rolling_restarts",
        "Rolling restarts by result: done, aborted.",
        ("result",),
    ),
    "shard_exit": (
        "ws_shard_exits",
        "Shard processes that exited on their own (crash, kill) and were respawned.",
        ("shard",),
    ),
    "room_refused": (
        "ws_room_refusals",
        "New rooms refused with HTTP 503 + Retry-After: 1, by reason: pending_cap (the "
        "address has --max-pending-rooms-per-address rooms placed and not yet hosted), "
        "rate (over --room-placement-rate / --room-placement-burst), cluster_unavailable "
        "(cluster mode: Redis did not answer the claim, or this node's lease is lost).",
        ("reason",),
    ),
    "room_placement_expired": (
        "ws_room_placements_expired",
        "Room placements released because the owner did not host the room within the "
        "placement timeout (the client left before its handshake).",
        (),
    ),
    "broadcast_gap_sent": (
        "ws_broadcast_gap_frames",
        "BroadcastGap frames sent to a shard that fell further behind than the broadcast "
        "log (--broadcast-log-bytes) reaches.",
        ("shard",),
    ),
    "broadcast_lost": (
        "ws_broadcasts_lost",
        "Broadcasts a shard never got because the broadcast log no longer held them.",
        ("shard",),
    ),
    "broadcast_dropped": (
        "ws_broadcasts_dropped",
        "Cluster mode: broadcasts dropped before reaching Redis (the publish queue was over "
        "its budget while Redis did not answer), by reason.",
        ("reason",),
    ),
    "cluster_broadcast_gap": (
        "ws_cluster_broadcasts_missed",
        "Cluster mode: says this node never read because the Redis stream had trimmed "
        "them (it was cut off longer than the stream keeps).",
        (),
    ),
    "cluster_session_stale": (
        "ws_cluster_sessions_stale",
        "Cluster mode: session copies this node ended because another node took them over "
        "while this node was cut off from Redis (their players resume there).",
        (),
    ),
}


def bounded_key(key: str) -> str:
    """``key`` with client-chosen label values bucketed: a ``disconnect|KIND|CODE`` whose
    code is not a documented one becomes ``disconnect|KIND|other_app``."""
    if not key.startswith("disconnect|"):
        return key
    parts = key.split("|")
    if len(parts) != 3:
        return key
    kind, code = parts[1], parts[2]
    if code in DOCUMENTED_CLOSE_CODES and kind in _KINDS:
        return key
    return f"disconnect|{kind if kind in _KINDS else 'other'}|{OTHER_CODE}"


class _SlotTotals:
    """Counters and GC histograms of one shard slot (a sum over shard processes)."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gc_buckets: list[list[int]] = []
        self.gc_sum: list[float] = []

    def add(self, load: Load) -> None:
        for key, value in load.counters.items():
            key = bounded_key(key)
            self.counters[key] = self.counters.get(key, 0) + value
        if any(len(b) != len(GC_PAUSE_BOUNDS) + 1 for b in load.gc_pause_buckets):
            return  # other bucket bounds (a shard of other code): not comparable
        for generation, buckets in enumerate(load.gc_pause_buckets):
            while len(self.gc_buckets) <= generation:
                self.gc_buckets.append([0] * (len(GC_PAUSE_BOUNDS) + 1))
                self.gc_sum.append(0.0)
            mine = self.gc_buckets[generation]
            for i, count in enumerate(buckets):
                mine[i] += count
            if generation < len(load.gc_pause_sum):
                self.gc_sum[generation] += load.gc_pause_sum[generation]

    def merged(self, loads: Iterable[Load]) -> _SlotTotals:
        out = _SlotTotals()
        out.counters = dict(self.counters)
        out.gc_buckets = [list(b) for b in self.gc_buckets]
        out.gc_sum = list(self.gc_sum)
        for load in loads:
            out.add(load)
        return out


class Metrics:
    """Totals of exited shards (per slot) and the supervisor's own event counts."""

    def __init__(self) -> None:
        self.retired: dict[int, _SlotTotals] = {}
        self.events: dict[str, float] = {}
        # exited handles whose last frames may still be read: (exit time, handle, crashed)
        self._exited: list[tuple[float, ShardHandle, bool]] = []

    def retire(self, handle: ShardHandle, crashed: bool = False) -> None:
        """``handle``'s process exited: its counters now belong to the slot's past. A
        ``crashed`` shard could not count its own connections' end: the ones its last
        report carried are counted as ``disconnect|abnormal|1006`` (their clients saw the
        TCP connection reset, no close frame)."""
        self._fold()
        self._exited.append((trio.current_time(), handle, crashed))

    def on_log(self, event: str, fields: dict[str, Any]) -> None:
        """A ``shards.log`` listener in the supervisor process."""
        if event == "roll_done":
            self._count("rolling_restart|done")
        elif event == "roll_aborted":
            self._count("rolling_restart|aborted")
        elif event == "shard_exit":
            self._count(f"shard_exit|{fields.get('shard')}")

    def _count(self, key: str) -> None:
        self.events[key] = self.events.get(key, 0) + 1

    def count(self, key: str, amount: float = 1) -> None:
        """Count one of the supervisor's own events (a key of ``SUPERVISOR_COUNTERS``)."""
        self.events[key] = self.events.get(key, 0) + amount

    def count_gap(self, shard: int, first: int, last: int) -> None:
        """A BroadcastGap was sent to slot ``shard``: broadcasts ``first``..``last`` lost."""
        self.count(f"broadcast_gap_sent|{shard}")
        self.count(f"broadcast_lost|{shard}", last - first + 1)

    def _fold(self) -> None:
        now = trio.current_time()
        while self._exited and now - self._exited[0][0] > LATE_REPORTS:
            _, handle, crashed = self._exited.pop(0)
            if handle.load is not None:
                self.retired.setdefault(handle.index, _SlotTotals()).add(
                    _ended(handle.load, crashed)
                )

    def slots(self, supervisor: Supervisor) -> dict[int, _SlotTotals]:
        """Per slot: retired totals plus the latest report of each shard process."""
        self._fold()
        loads: dict[int, list[Load]] = {i: [] for i in range(supervisor.config.shards)}
        for handle in supervisor.processes.values():
            if handle.load is not None:
                loads.setdefault(handle.index, []).append(handle.load)
        for _, handle, crashed in self._exited:
            if handle.load is not None:
                loads.setdefault(handle.index, []).append(_ended(handle.load, crashed))
        empty = _SlotTotals()
        return {
            slot: self.retired.get(slot, empty).merged(slot_loads)
            for slot, slot_loads in sorted(loads.items())
        }

    def totals(
        self, supervisor: Supervisor, slots: dict[int, _SlotTotals] | None = None
    ) -> dict[str, float]:
        """Every counter summed over shards: what ``/status`` adds to the status.
        ``slots``: ``slots(supervisor)`` when the caller has it already."""
        out: dict[str, float] = {}
        for totals in (self.slots(supervisor) if slots is None else slots).values():
            for key, value in totals.counters.items():
                out[key] = out.get(key, 0) + value
        for key, value in self.events.items():
            out[key] = out.get(key, 0) + value
        return {k: int(v) if float(v).is_integer() else v for k, v in sorted(out.items())}


def _ended(load: Load, crashed: bool) -> Load:
    """A dead shard's last report; a crashed one's connections counted as abnormal ends."""
    if not crashed or not load.connections:
        return load
    key = f"disconnect|{DisconnectKind.ABNORMAL}|1006"
    counters = dict(load.counters)
    counters[key] = counters.get(key, 0) + load.connections
    return msgspec.structs.replace(load, counters=counters)


class ShardCollector(Collector):
    """A prometheus_client collector reading the supervisor's state at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        metrics: Metrics = sup.metrics
        slots = metrics.slots(sup)
        yield from self._gauges(sup)
        for prefix, (name, doc, labels) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=("shard", *labels))
            for slot, totals in slots.items():
                if not labels:
                    family.add_metric([str(slot)], totals.counters.get(prefix, 0))
                    continue
                for key, value in sorted(totals.counters.items()):
                    parts = key.split("|")
                    if parts[0] == prefix and len(parts) == len(labels) + 1:
                        family.add_metric([str(slot), *parts[1:]], value)
            yield family
        drains = SummaryMetricFamily(
            "ws_drain_duration_seconds",
            "How long shard drains took (shutdown, rolling restart).",
            labels=("shard",),
        )
        for slot, totals in slots.items():
            drains.add_metric(
                [str(slot)],
                count_value=int(totals.counters.get("drain", 0)),
                sum_value=totals.counters.get("drain_seconds", 0.0),
            )
        yield drains
        for prefix, (name, doc, labels) in SUPERVISOR_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(metrics.events.items()):
                parts = key.split("|")
                if parts[0] == prefix and len(parts) == len(labels) + 1:
                    family.add_metric(parts[1:], value)
            yield family
        gc_pauses = HistogramMetricFamily(
            "ws_gc_pause_seconds",
            "Garbage collector pauses in the shards, by GC generation.",
            labels=("shard", "generation"),
        )
        for slot, totals in slots.items():
            for generation, buckets in enumerate(totals.gc_buckets):
                cumulative, samples = 0, []
                for bound, count in zip((*GC_PAUSE_BOUNDS, float("inf")), buckets, strict=True):
                    cumulative += count
                    samples.append((floatToGoString(bound), cumulative))
                gc_pauses.add_metric(
                    [str(slot), str(generation)], samples, sum_value=totals.gc_sum[generation]
                )
        yield gc_pauses

    @staticmethod
    def _gauges(sup: Supervisor) -> Iterator[Metric]:
        per_slot: dict[int, list[int]] = {i: [0, 0, 0, 0] for i in range(sup.config.shards)}
        for handle in sup.processes.values():
            load = handle.load
            if load is None or handle.exited.is_set():
                continue
            row = per_slot.setdefault(handle.index, [0, 0, 0, 0])
            away = min(load.sessions_away, load.sessions)
            for i, value in enumerate((load.connections, load.sessions - away, away, load.rooms)):
                row[i] += value
        connections = GaugeMetricFamily(
            "ws_connections", "Open WebSocket connections.", labels=("shard",)
        )
        sessions = GaugeMetricFamily(
            "ws_sessions",
            "Sessions held, by state: connected, or away (grace window running).",
            labels=("shard", "state"),
        )
        rooms = GaugeMetricFamily("ws_rooms", "Rooms hosted.", labels=("shard",))
        for slot, (conns, connected, away, room_count) in sorted(per_slot.items()):
            connections.add_metric([str(slot)], conns)
            sessions.add_metric([str(slot), "connected"], connected)
            sessions.add_metric([str(slot), "away"], away)
            rooms.add_metric([str(slot)], room_count)
        yield from (connections, sessions, rooms)
        if sup.cluster is not None:
            yield from _cluster_gauges(sup.cluster.status())


def _cluster_gauges(status: dict[str, Any]) -> Iterator[Metric]:
    """Cluster mode: this node's view of Redis and its lease, and every node's rooms."""
    for name, help_text, key in (
        ("ws_cluster_redis_reachable", "1 when the last Redis call succeeded.", "reachable"),
        ("ws_cluster_fenced", "1 while this node's lease is lost (no rooms served).", "fenced"),
        ("ws_cluster_lease_seconds", "Seconds this node's lease has left.", "lease_s"),
        ("ws_cluster_redis_rtt_ms", "Round trip of the last lease renewal, ms.", "rtt_ms"),
        ("ws_cluster_rooms_claimed", "Rooms this node holds a claim on.", "rooms_claimed"),
    ):
        value = status.get(key)
        if value is not None:
            yield GaugeMetricFamily(name, help_text, value=float(value))
    nodes = GaugeMetricFamily(
        "ws_cluster_node_rooms",
        "Rooms owned per node (alive: its lease holds).",
        labels=("node", "alive"),
    )
    for member in status.get("members", []):
        nodes.add_metric([str(member["node"]), str(member["alive"]).lower()], member["rooms"])
    yield nodes
    yield CounterMetricFamily(
        "ws_cluster_redirects",
        "Room connections redirected to their owner node.",
        value=status.get("redirects", 0),
    )


# ====================================================================== HTTP
async def serve(
    supervisor: Supervisor, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` and ``/status`` on ``--metrics-host:--metrics-port`` until
    cancelled (not on ``--host``: these endpoints have no authentication)."""
    config = supervisor.config
    assert config.metrics_port is not None
    listeners = await trio.open_tcp_listeners(config.metrics_port, host=config.metrics_host)
    if config.metrics_port == 0:
        for extra in listeners[1:]:  # each family would get its own random port
            await extra.aclose()
        listeners = listeners[:1]
    bound_host, port = listeners[0].socket.getsockname()[:2]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardCollector(supervisor))
    shard_log.listeners.append(supervisor.metrics.on_log)
    try:
        log("metrics_ready", host=bound_host, port=port, listeners=len(listeners))
        task_status.started(port)

        async def handler(stream: trio.SocketStream) -> None:
            await _answer(stream, supervisor, registry)

        await trio.serve_listeners(handler, listeners)
    finally:
        shard_log.listeners.remove(supervisor.metrics.on_log)


async def _answer(
    stream: trio.SocketStream, supervisor: Supervisor, registry: CollectorRegistry
) -> None:
    async with stream:
        head = b""
        complete = ended = False
        with trio.move_on_after(REQUEST_TIMEOUT):
            while len(head) <= MAX_REQUEST:
                chunk = await _receive(stream)
                if not chunk:
                    ended = True
                    break
                head += chunk
                if b"\r\n\r\n" in head or b"\n\n" in head:
                    complete = True
                    break
        if len(head) > MAX_REQUEST:
            status, content_type, body, head_only = 431, "text/plain", b"too large\n", False
        elif complete and _target(head) == "/dashboard/events":
            await _stream_events(stream, supervisor)
            return
        elif complete:
            try:
                status, content_type, body, head_only = respond(head, supervisor, registry)
            except Exception as exc:  # noqa: BLE001 - a metrics bug must not stop the service
                log("metrics_error", error=repr(exc)[:200])
                status, content_type, body, head_only = 500, "text/plain", b"error\n", False
        elif not head:
            return  # connected and left (or said nothing): nobody to answer
        elif ended:
            status, content_type, body, head_only = 400, "text/plain", b"bad request\n", False
        else:
            status, content_type, body, head_only = 408, "text/plain", b"timeout\n", False
        response = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + (b"" if head_only else body)
        with trio.move_on_after(REQUEST_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(response)


def _target(head: bytes) -> str:
    """The path of a ``GET`` request head ("" for anything else)."""
    line = head.split(b"\n", 1)[0].decode("latin-1").strip().split(" ")
    if len(line) != 3 or line[0] != "GET":
        return ""
    return line[1].split("?", 1)[0]


async def _stream_events(stream: trio.SocketStream, supervisor: Supervisor) -> None:
    """``/dashboard/events``: every new sample and marker as an SSE event, until the
    reader leaves, stalls ``REQUEST_TIMEOUT`` on one event, or falls ``FOLLOWER_QUEUE``
    behind (then it reconnects; EventSource does that by itself)."""
    feed = supervisor.feed
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        if feed.followers >= MAX_FOLLOWERS:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await stream.send_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    b"Retry-After: 5\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
                    b"too many dashboards\n"
                )
            return
        with feed.follow() as events:
            with trio.move_on_after(REQUEST_TIMEOUT) as sending:
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                    b"retry: 1000\n\n"
                )
            if sending.cancelled_caught:
                return
            async for event in events:
                with trio.move_on_after(REQUEST_TIMEOUT) as sending:
                    await stream.send_all(event + b"\n\n")
                if sending.cancelled_caught:
                    return


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(4096)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def respond(
    head: bytes, supervisor: Supervisor, registry: CollectorRegistry
) -> tuple[int, str, bytes, bool]:
    """(status, content type, body, HEAD request) for one request head."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, "text/plain", b"bad request\n", False
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"GET only\n", False
    head_only = method == "HEAD"
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    path = target.split("?", 1)[0]
    if path == "/metrics":
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return 200, content_type, encoder(registry), head_only
    if path == "/status":
        status = supervisor.status()
        status["counters"] = supervisor.metrics.totals(supervisor)
        body = json.dumps(status).encode() + b"\n"
        return 200, "application/json", body, head_only
    if path == "/dashboard":
        page = static.read("dashboard.html")
        if page is not None:
            return 200, "text/html; charset=utf-8", page, head_only
    if path == "/dashboard/history":
        try:
            value = _query_value(target, "since")
            since = None if value is None else parse_since(value)
        except ValueError:
            return 400, "text/plain", b"since must be a unix time\n", head_only
        body = supervisor.feed.history.snapshot(since)
        return 200, "application/json", body, head_only
    asset = DASHBOARD_ASSETS.get(path)
    if asset is not None:
        body = static.read(asset[0])
        if body is not None:
            return 200, asset[1], body, head_only
    return 404, "text/plain", b"not found: try /metrics, /status or /dashboard\n", head_only


# What /dashboard loads besides itself: the vendored charting library (and its licence).
DASHBOARD_ASSETS = {
    "/dashboard/uPlot.iife.min.js": (
        "vendor/uplot/uPlot.iife.min.js",
        "application/javascript; charset=utf-8",
    ),
    "/dashboard/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    "/dashboard/uPlot.LICENSE": ("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
}


def _query_value(target: str, wanted: str) -> str | None:
    """The value of query parameter ``wanted`` in a request target (None when absent)."""
    _, _, query = target.partition("?")
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == wanted:
            return value
    return None
