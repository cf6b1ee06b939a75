"""Cluster mode under load: ``python -m bench cluster [--nodes 3] [--shards 2] [--players 60]``.

One real ``redis-server`` (``lab.redis``: no persistence; ``--aof`` for ``appendfsync
always``) and ``--nodes`` supervisors (``n1``, ``n2``, ...) with ``--shards`` each, every
node on its own port with ``--cluster``. There is no load balancer: players reach "any
node" through a round-robin TCP proxy in this file (``Front``) that skips a node which
refuses the TCP connection (a dead one), as HAProxy's ``option redispatch`` does; each
node's ``--public-url`` (where other nodes redirect a room's players) is a one-node
``Front`` of its own. Every connection goes through a ``Front``, which reads the player's
tag (``?p=N``, a query parameter the server ignores and the client keeps) from the request
line: so the benchmark knows which node every player is on at every moment.

Load: ``--players`` reconnecting clients (``client.open_reconnecting_client``), half in
the lobby, half in rooms of 5 (``/rooms/rN``; every node gets both), each sending ``echo``
with data 1, 2, 3, ... at ``--rate`` per second; one driver in the lobby says ``#1``,
``#2``, ... every ``--say-interval`` s. Phases:

1. warm-up (``--warmup`` s of steady traffic; Redis ``INFO stats`` read at its start and
   end: commands and bytes per player message, echoes and says together);
2. ``kill -9`` of the last node the driver is not on (its supervisor and shards at once,
   ``lab.server.kill_tree``); wait until every player is back (``--back-timeout``), then
   start it again with the same ``--node``/``--port`` once Redis no longer holds its
   lease (with two nodes the roll below would otherwise have nowhere to send players);
3. roll of the driver's node (so the sender moves too): SIGTERM, wait for its exit,
   start it again the same way; wait until every player is back; ``--settle`` s more
   traffic; stop, and wait (at most 15 s) for every answer still due.

Printed per phase (a message counts in the phase it was sent in, a second answer in the
phase it arrived in): players on the node hit, time from the signal until the last of
them had a welcome again, the longest disconnect -> welcome, sessions resumed (and how
many of those with ``replay_gap``) and lost (``SessionLost``: a new session) in the
lobby and in rooms; echoes sent / lost / doubled (by data, per player: each must be
answered once) and, counted apart, echoes gone with a lost session (sent to a session
that was then lost, never answered); says to lobby players (the driver included) lost /
doubled (by text), and counted apart those gone with a lost session or missed across a
``replay_gap`` resume (sent between the last say the player had and that welcome); say
latency p50/p99 from the driver's send to the say's bytes reaching the player's socket
(seen in the proxy: this process' own client work left out), for players on the driver's
node and on others, and to the client's receipt. Then: the one-node baseline, run first
(the same players on one supervisor without ``--cluster``, through the same proxy,
``--warmup`` s): the say latency ratio cluster / one node; Redis per player message; the
nodes' exits and restarts. Writes ``bench/results/cluster-<stamp>.json`` (with every
say's latency and the connected players over time) and ``-timeline.png`` (both, the
kill, roll and restarts marked). Defaults: about 40 s. ``BENCH_SERVER_ROOT=DIR`` runs
the nodes from another tree.

Why over 300 lines: the proxy that stands in for the load balancer (and tells where each
player is and when says reach it), the nodes' kill / stop / restart, the per-phase
accounting of sessions, echoes and says, and the table and chart that show it are all
needed to answer the one question: what a node dying or leaving costs a cluster's players.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from bench._report import Progress, Report, percentile, scenario_parser, table_head
from client import (
    Away,
    Backoff,
    Connected,
    GaveUp,
    Message,
    Resumed,
    SessionLost,
    open_reconnecting_client,
)
from core.cluster import LEASE_TTL_S, lease_key
from lab.crowd import ROLL_ARGS
from lab.netcut import serve_on_a_free_port
from lab.redis import RedisServer, free_port, open_redis
from lab.server import SERVER_ROOT, ServerProcess, kill_tree, open_server

# Every player comes from 127.0.0.1 (the proxy): the per-address room caps are off, as
# docs/CLUSTER.md says to do behind a load balancer.
NODE_ARGS = (*ROLL_ARGS, "--max-pending-rooms-per-address", "0", "--room-placement-rate", "0")
ROOM_SIZE = 5
BACKOFF = Backoff(base=0.05, cap=0.5, max_retries=200)  # at least ~90 s of retries
CONNECT_TIMEOUT_S = 20.0  # one player's first welcome
START_TIMEOUT_S = 60.0  # one node's ``ready``
START_TRIES = 4  # a start refused (its name still leased) is retried 0.5 s later
EXIT_TIMEOUT_S = 40.0  # a SIGTERMed node's exit: drain 10 s + hold ~7 s + margin
DRAIN_S = 15.0  # after the stop: answers still due
POLL_S = 0.05
WELCOMES = ("connected", "resumed", "gap")  # player events that end a disconnect
# Node log events counted in the JSON (every incarnation of every node).
NOTABLE = frozenset(
    "cluster_handoff_in cluster_handoff_out cluster_handoff_lost cluster_fetch_timeout"
    " cluster_fetch_failed cluster_session_recovered cluster_broadcast_gap"
    " cluster_publish_failed room_claimed resume_failed drain_hold_done cluster_refused".split()
)


# ====================================================================== reaching nodes
SAID = re.compile(rb'"text":"#(\d+)"')  # the driver's says, in a server frame's JSON


@dataclass
class Watch:
    """What the proxies saw: each player's node (that of its latest connection), and
    when each say's bytes first passed toward each player, through which node. A frame
    split between two reads is not seen there (its player's receipt still counts)."""

    where: dict[str, int] = field(default_factory=dict)
    said: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)


class Front:
    """A TCP proxy on 127.0.0.1: each connection goes to the next backend (round robin)
    that accepts TCP; one that refuses is skipped, the client is dropped when all do.
    Tells ``watch`` where the player tagged ``?p=TAG`` in the request line is, and when
    says reach it. Cost: one extra loopback hop and a copy in this process per chunk (and
    a regex over the chunks toward the player), for every player alike."""

    def __init__(self, backends: list[tuple[int, int]], watch: Watch) -> None:
        self.backends = backends  # (node index, port)
        self.watch = watch
        self.port = 0
        self.skipped = 0  # backends that refused a connection (the next one was tried)
        self.dropped = 0  # clients no backend took
        self._next = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_a_free_port(self, self._handle, task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            async with client:
                head = b""
                with trio.move_on_after(10):  # the request line; the server bounds the rest
                    while b"\r\n" not in head and len(head) < 8192:
                        chunk = await client.receive_some(8192)
                        if not chunk:
                            return
                        head += chunk
                if b"\r\n" not in head:
                    return
                for k in range(len(self.backends)):
                    index, port = self.backends[(self._next + k) % len(self.backends)]
                    try:
                        upstream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        self.skipped += 1
                        continue
                    self._next += k + 1
                    break
                else:
                    self.dropped += 1
                    return
                query = urlsplit(head.split(b" ", 2)[1].decode("latin-1")).query
                tag = parse_qs(query).get("p", [""])[0]
                self.watch.where[tag] = index
                said = self.watch.said

                def seen(data: bytes) -> None:
                    for match in SAID.finditer(data):
                        said.setdefault((tag, int(match[1])), (trio.current_time(), index))

                async with upstream:
                    await upstream.send_all(head)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, upstream, nursery.cancel_scope, None)
                        nursery.start_soon(_pump, upstream, client, nursery.cancel_scope, seen)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, IndexError):
            pass


async def _pump(
    src: trio.SocketStream,
    dst: trio.SocketStream,
    scope: trio.CancelScope,
    seen: Callable[[bytes], None] | None,
) -> None:
    try:
        async for data in src:
            if seen is not None:
                seen(data)
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()


async def redis_stats(port: int) -> dict[str, int]:
    """``INFO stats``' integer fields. One reading to the next holds one INFO command too
    many, the first reading's reply bytes and the second one's request bytes: ``_reply``
    and ``_request`` carry them, to take them out."""
    request = b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while not _whole_bulk(reply):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError(f"redis closed the connection after {reply!r}")
                reply += chunk
    fields = {"_request": len(request), "_reply": len(reply)}
    for line in reply.decode().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.isdigit():
            fields[key] = int(value)
    return fields


def _whole_bulk(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole RESP bulk string: ``$<length>\\r\\n<payload>\\r\\n``."""
    head, sep, rest = reply.partition(b"\r\n")
    return bool(sep) and len(rest) >= int(head[1:]) + 2


# ====================================================================== nodes
@dataclass
class Node:
    """One cluster node (``--node NAME --port PORT``) across its kills and restarts."""

    index: int
    name: str
    port: int
    redis: RedisServer
    shards: int
    front: Front
    nursery: trio.Nursery
    server: ServerProcess | None = None
    incarnations: list[ServerProcess] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why a start did not get ready
    running: int = 0  # supervisors of this node not reaped yet

    async def start(self) -> None:
        """Start this node, waiting first until Redis no longer holds its lease (a node
        whose name is leased is refused); a refused start is retried 0.5 s later."""
        for _ in range(int((LEASE_TTL_S + 5) / 0.1)):
            if await self.lease_ms() < 0:
                break
            await trio.sleep(0.1)
        for _ in range(START_TRIES):
            server = await self.nursery.start(self._serve)
            if server is not None:
                self.server = server
                self.incarnations.append(server)
                return
            await trio.sleep(0.5)
        raise RuntimeError(f"node {self.name} did not start: {self.refused}")

    async def _serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        args = ("--cluster", self.redis.url, "--node", self.name, "--port", str(self.port))
        args += ("--public-url", f"ws://127.0.0.1:{self.front.port}", *NODE_ARGS)
        self.running += 1
        try:
            async with open_server(
                *args, shards=self.shards, ready=False, echo_logs=False, root=SERVER_ROOT
            ) as server:
                server.port = self.port
                if not await _ready_or_exit(server):
                    self.refused.append(" | ".join(server.log.raw[-3:])[:400])
                    task_status.started(None)
                    return
                task_status.started(server)
                await server.process.wait()  # killed, or exited after SIGTERM
        finally:
            self.running -= 1

    async def lease_ms(self) -> int:
        """What is left of this node's lease in Redis, ms (negative: none)."""
        return int((await self.redis.query("PTTL", lease_key(self.name)))[1:])

    def kill(self) -> None:
        """SIGKILL the supervisor and its shards at once (a machine dying)."""
        if self.server is not None:
            kill_tree(self.server.pid, self.server.all_pids())
            self.server = None

    async def leave(self) -> dict[str, Any]:
        """SIGTERM; its exit code, how long it took and the lease it left in Redis."""
        assert self.server is not None
        server, self.server = self.server, None
        began = trio.current_time()
        server.signal(signal.SIGTERM)
        with trio.move_on_after(EXIT_TIMEOUT_S):
            await server.process.wait()
        if server.process.returncode is None:  # reported as exit code None
            kill_tree(server.pid, server.all_pids())
        pttl = await self.lease_ms()
        return {
            "exit_code": server.process.returncode,
            "exit_s": round(trio.current_time() - began, 3),
            "lease_left_at_exit_s": max(0, pttl) / 1000,
        }


async def _ready_or_exit(server: ServerProcess) -> bool:
    """True on the ``ready`` line; False if the supervisor exits first."""
    ready = False
    with trio.fail_after(START_TIMEOUT_S):
        async with trio.open_nursery() as nursery:

            async def wait_ready() -> None:
                nonlocal ready
                await server.log.wait_for("ready", timeout=START_TIMEOUT_S)
                ready = True
                nursery.cancel_scope.cancel()

            async def wait_exit() -> None:
                await server.process.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_ready)
            nursery.start_soon(wait_exit)
    return ready


# ====================================================================== players
@dataclass
class Player:
    tag: str
    path: str
    session: str | None = None
    connected: bool = False
    sent: int = 0
    echo_session: list[str | None] = field(default_factory=list)  # [d - 1]: echo d's session
    echo_at: list[float] = field(default_factory=list)  # [d - 1]: when echo d was sent
    echoes: Counter[int] = field(default_factory=Counter)
    saids: Counter[int] = field(default_factory=Counter)
    said_at: dict[int, float] = field(default_factory=dict)  # say k -> first receipt
    again: list[tuple[str, float]] = field(default_factory=list)  # ("echoes"/"says", when)
    lost: set[str] = field(default_factory=set)  # sessions a SessionLost named
    losses: list[tuple[int, float]] = field(default_factory=list)  # (top say seen, when)
    gaps: list[tuple[int, float]] = field(default_factory=list)  # same, replay_gap resumes
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def lobby(self) -> bool:
        return self.path == "/"


class Load:
    """The players and the driver, their traffic, and what they saw."""

    def __init__(self, args: Any, watch: Watch) -> None:
        # Player i reaches node i % nodes first (the proxy's round robin): every node gets
        # lobby and room players alike, and a room's first member (its owner) varies.
        lobby = [(i // args.nodes) % 2 == 0 for i in range(args.players)]
        rooms = [sum(1 for x in lobby[:i] if not x) // ROOM_SIZE for i in range(args.players)]
        paths = ["/" if lobby[i] else f"/rooms/r{rooms[i]}" for i in range(args.players)]
        self.players = [Player(str(i), path) for i, path in enumerate(paths)]
        self.driver = Player("d", "/")
        self.rate, self.say_every, self.watch = args.rate, args.say_interval, watch
        self.stop = trio.Event()
        self.say_at: list[tuple[float, int | None]] = []  # [k - 1]: say k sent, driver's node
        self.clients: dict[str, Any] = {}

    async def connect(self, nursery: trio.Nursery, base: str, bar: Progress) -> None:
        """Every player (one by one: the proxy spreads them evenly), the driver, traffic."""
        task = bar.add("connecting players", total=len(self.players) + 1)
        for n, player in enumerate([*self.players, self.driver], 1):
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await nursery.start(self._play, player, base)
            bar.update(task, completed=n)
        for player in self.players:
            nursery.start_soon(self._echo_loop, player)
        nursery.start_soon(self._say_loop)

    async def _play(self, p: Player, base: str, *, task_status: Any) -> None:
        async with open_reconnecting_client(f"{base}{p.path}?p={p.tag}", backoff=BACKOFF) as c:
            self.clients[p.tag] = c
            async for event in c.events():
                now = trio.current_time()
                if isinstance(event, Message):
                    self._message(p, event.message, now)
                elif isinstance(event, Connected):
                    p.connected, first = True, p.session is None
                    p.session = event.welcome["session"]
                    if first:
                        task_status.started()
                    else:
                        p.events.append((now, "connected"))
                elif isinstance(event, Resumed):
                    p.connected = True
                    p.events.append((now, "gap" if event.replay_gap else "resumed"))
                    if event.replay_gap:  # the server says older missed messages are gone
                        p.gaps.append((max(p.saids, default=0), now))
                elif isinstance(event, SessionLost):
                    p.lost.add(event.old_session)
                    p.losses.append((max(p.saids, default=0), now))
                    p.events.append((now, "lost"))
                elif isinstance(event, Away | GaveUp):
                    p.connected = False
                    p.events.append((now, "away" if isinstance(event, Away) else "gave_up"))
            if p.session is None:
                raise RuntimeError(f"player {p.tag} gave up before its first welcome")

    def _message(self, p: Player, m: dict[str, Any], now: float) -> None:
        if m.get("type") == "echo" and isinstance(m.get("data"), int):
            p.echoes[m["data"]] += 1
            if p.echoes[m["data"]] > 1:
                p.again.append(("echoes", now))
        elif m.get("type") == "said" and str(m.get("text", "")).startswith("#"):
            k = int(m["text"][1:])
            p.saids[k] += 1
            p.said_at.setdefault(k, now)
            if p.saids[k] > 1:
                p.again.append(("says", now))

    async def _echo_loop(self, p: Player) -> None:
        client = self.clients[p.tag]
        await trio.sleep(random.random() / self.rate)  # spread the players over a period
        while not self.stop.is_set():
            p.sent += 1
            p.echo_session.append(client.session)
            p.echo_at.append(trio.current_time())
            try:
                await client.send({"type": "echo", "data": p.sent})
            except trio.ClosedResourceError:  # the client gave up: counted there
                p.sent -= 1
                del p.echo_session[-1], p.echo_at[-1]
                return
            await trio.sleep(1 / self.rate)

    async def _say_loop(self) -> None:
        client = self.clients["d"]
        while not self.stop.is_set():
            self.say_at.append((trio.current_time(), self.watch.where.get("d")))
            await client.send({"type": "say", "text": f"#{len(self.say_at)}"})
            await trio.sleep(self.say_every)

    # ------------------------------------------------------------------ accounting
    def rows(self, bounds: list[float]) -> list[dict[str, Any]]:
        """One row per phase (``bounds``: the times phases 1, 2, ... began); each message
        in the phase it was sent in, each event in the phase it happened in."""
        keys = ("echoes_sent", "echoes_lost", "echoes_doubled", "echoes_with_lost_session")
        keys += ("says_expected", "says_lost", "says_doubled", "says_with_lost_session")
        keys += ("says_in_replay_gap",)
        rows: list[dict[str, Any]] = [dict.fromkeys(keys, 0) for _ in range(len(bounds) + 1)]
        for row in rows:
            row["latency_s"] = {"same": [], "other": [], "client": []}
            row["say_points"] = []  # (sent, s to the socket, on the driver's node)
            row["sessions"] = Counter()

        def phase(t: float) -> dict[str, Any]:
            return rows[bisect.bisect_right(bounds, t)]

        for p in [*self.players, self.driver]:  # the driver hears its own says too
            for d in range(1, p.sent + 1):
                row, seen = phase(p.echo_at[d - 1]), p.echoes[d]
                row["echoes_sent"] += 1
                if not seen:
                    gone = p.echo_session[d - 1] in p.lost
                    row["echoes_with_lost_session" if gone else "echoes_lost"] += 1
            for t, kind in p.events:
                phase(t)["sessions"][f"{'lobby' if p.lobby else 'room'}_{kind}"] += 1
            for kind, t in p.again:  # in the phase the second answer came in
                phase(t)[f"{kind}_doubled"] += 1
            if not p.lobby:
                continue
            for k, (sent, node) in enumerate(self.say_at, 1):
                row, seen = phase(sent), p.saids[k]
                row["says_expected"] += 1
                if not seen:
                    gone = any(k > top and sent < when for top, when in p.losses)
                    gap = any(k > top and sent < when for top, when in p.gaps)
                    why = "with_lost_session" if gone else "in_replay_gap" if gap else "lost"
                    row[f"says_{why}"] += 1
                else:
                    row["latency_s"]["client"].append(p.said_at[k] - sent)
                    at, where = self.watch.said.get((p.tag, k), (None, None))
                    if at is not None and node is not None:
                        row["latency_s"]["same" if where == node else "other"].append(at - sent)
                        row["say_points"].append((sent, at - sent, where == node))
        return rows

    def outstanding(self) -> int:
        return sum(r["echoes_lost"] + r["says_lost"] for r in self.rows([]))


def back_after(
    hit: list[Player], everyone: list[Player], since: float, until: float
) -> tuple[float | None, float | None]:
    """(s from ``since`` until the last of ``hit`` had a welcome again; the longest
    disconnect -> welcome of any player disconnected in [since, until)); None when one
    of them never came back."""

    def welcomes(p: Player) -> list[float]:
        return [t for t, kind in p.events if kind in WELCOMES]

    last = 0.0
    for p in hit:
        later = [t for t in welcomes(p) if t > since]
        if not later:
            return None, None
        last = max(last, later[0] - since)
    longest = 0.0
    for p in everyone:
        for t, kind in p.events:
            if kind == "away" and since <= t < until:
                after = [w for w in welcomes(p) if w > t]
                if not after:
                    return round(last, 3), None
                longest = max(longest, after[0] - t)
    return round(last, 3), round(longest, 3)


async def wait_back(
    load: Load, players: list[Player], since: float, limit: float, bar: Progress, label: str
) -> None:
    """Until each of ``players`` had a welcome after ``since`` and everyone is connected
    (at most ``limit`` s)."""
    task = bar.add(label, total=len(players))
    everyone = [*load.players, load.driver]
    for _ in range(int(limit / POLL_S) + 1):
        back = sum(1 for p in players if any(t > since for t, k in p.events if k in WELCOMES))
        bar.update(task, completed=back)
        if back == len(players) and all(p.connected for p in everyone):
            return
        await trio.sleep(POLL_S)
    bar.stop(task)


async def steady(seconds: float, bar: Progress, label: str) -> None:
    task = bar.add(f"{label} ({seconds:g} s)", total=max(1, math.ceil(seconds)))
    end = trio.current_time() + seconds
    while (left := end - trio.current_time()) > 0:
        await trio.sleep(min(0.2, left))
        bar.update(task, completed=int(seconds - max(0.0, left)))
    bar.done(task)


async def drain(load: Load, bar: Progress) -> None:
    load.stop.set()
    task = bar.add(f"answers still due (<= {DRAIN_S:g} s)", total=1)
    for _ in range(int(DRAIN_S / 0.2) + 1):
        if load.outstanding() == 0:
            bar.done(task)
            return
        await trio.sleep(0.2)
    bar.stop(task)


# ====================================================================== the runs
async def baseline(args: Any, bar: Progress) -> dict[str, Any]:
    """The same players on one supervisor without ``--cluster``: the say latency."""
    watch = Watch()
    async with open_server(*NODE_ARGS, shards=args.shards, echo_logs=False, root=SERVER_ROOT) as s:
        async with trio.open_nursery() as nursery:
            front = Front([(0, s.port)], watch)
            await nursery.start(front.run)
            load = Load(args, watch)
            await load.connect(nursery, f"ws://127.0.0.1:{front.port}", bar)
            await steady(args.warmup, bar, "one node, no --cluster")
            await drain(load, bar)
            nursery.cancel_scope.cancel()
    (row,) = load.rows([])
    return {
        "socket": _latency(row["latency_s"]["same"]),
        "client": _latency(row["latency_s"]["client"]),
        "says_lost": row["says_lost"],
        "echoes_lost": row["echoes_lost"],
    }


async def cluster(args: Any, bar: Progress) -> dict[str, Any]:
    """The cluster run: warm-up, kill -9, roll (see the module's docstring)."""
    watch = Watch()
    marks: dict[str, float] = {}
    out: dict[str, Any] = {"marks": marks}
    async with open_redis(appendonly=args.aof) as redis, trio.open_nursery() as nodes_nursery:
        nodes = []
        for i in range(args.nodes):
            port = free_port()
            front = Front([(i, port)], watch)
            await nodes_nursery.start(front.run)
            nodes.append(Node(i, f"n{i + 1}", port, redis, args.shards, front, nodes_nursery))
        try:
            async with trio.open_nursery() as starting:
                for node in nodes:
                    starting.start_soon(node.start)
            entry = Front([(n.index, n.port) for n in nodes], watch)
            await nodes_nursery.start(entry.run)
            load = Load(args, watch)
            everyone = [*load.players, load.driver]
            hits: list[list[Player]] = []
            async with trio.open_nursery() as nursery:
                await load.connect(nursery, f"ws://127.0.0.1:{entry.port}", bar)
                marks["start"] = trio.current_time()
                before = await redis_stats(redis.port)
                await steady(args.warmup, bar, "warm-up")
                after = await redis_stats(redis.port)
                marks["kill"] = trio.current_time()
                out["redis"] = _redis_cost(load, before, after, marks["start"], marks["kill"])

                victim = max(
                    (n for n in nodes if n.index != watch.where["d"]), key=lambda n: n.index
                )
                hits.append([p for p in everyone if watch.where.get(p.tag) == victim.index])
                out["killed"] = {"node": victim.name, "players": len(hits[-1])}
                victim.kill()
                label = f"kill -9 {victim.name}: players back"
                await wait_back(load, hits[-1], marks["kill"], args.back_timeout, bar, label)
                marks["kill_back"] = trio.current_time()
                await victim.start()
                marks["revived"] = trio.current_time()

                rolled = nodes[watch.where["d"]]
                hits.append([p for p in everyone if watch.where.get(p.tag) == rolled.index])
                out["rolled"] = {"node": rolled.name, "players": len(hits[-1])}
                marks["roll"] = trio.current_time()

                async def leave_and_return() -> None:
                    out["rolled"].update(await rolled.leave())
                    await rolled.start()
                    marks["restarted"] = trio.current_time()

                label = f"roll {rolled.name}: players back"
                async with trio.open_nursery() as rolling:
                    rolling.start_soon(leave_and_return)
                    rolling.start_soon(
                        wait_back, load, hits[-1], marks["roll"], args.back_timeout, bar, label
                    )
                marks["roll_back"] = trio.current_time()
                await steady(args.settle, bar, "settle")
                marks["stop"] = trio.current_time()
                await drain(load, bar)
                nursery.cancel_scope.cancel()
        finally:
            for node in nodes:
                node.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                while any(node.running for node in nodes):
                    await trio.sleep(POLL_S)
            nodes_nursery.cancel_scope.cancel()
    out["killed"]["started_again_after_s"] = round(marks["revived"] - marks["kill_back"], 3)
    out["rolled"]["started_again_after_s"] = round(marks["restarted"] - marks["roll"], 3)
    out["phases"] = rows = load.rows([marks["kill"], marks["roll"]])
    ends = (marks["kill"], marks["roll"], math.inf)
    names = ("warm-up", f"kill -9 {out['killed']['node']}", f"roll {out['rolled']['node']}")
    t0, points = marks["start"], []
    for n, (row, name) in enumerate(zip(rows, names, strict=True)):
        row["phase"] = name
        if n:
            since = ends[n - 1]
            row["players_hit"] = len(hits[n - 1])
            row["all_back_s"], row["longest_away_s"] = back_after(
                hits[n - 1], everyone, since, ends[n]
            )
        row["sessions"] = dict(row["sessions"])
        lat = row.pop("latency_s")
        row["same_node"], row["other_node"] = _latency(lat["same"]), _latency(lat["other"])
        row["all_nodes"] = _latency(lat["same"] + lat["other"])
        row["in_client"] = _latency(lat["client"])
        points += [
            (round(t - t0, 3), round(s * 1000, 2), same) for t, s, same in row.pop("say_points")
        ]
    out["front"] = {"skipped_dead_node": entry.skipped, "dropped": entry.dropped}
    out["nodes"] = {n.name: {"starts": len(n.incarnations), "refused": n.refused} for n in nodes}
    out["server_events"] = _events(nodes)
    out["marks"] = {k: round(v - t0, 3) for k, v in marks.items()}  # s since the warm-up
    out["say_points"] = points  # (s since the warm-up the say was sent, ms, on the same node)
    out["timeline"] = _timeline(everyone, t0)
    return out


def _timeline(players: list[Player], t0: float) -> list[tuple[float, int]]:
    """(s since ``t0``, players connected) at every change, from the players' events."""
    changes = []
    for p in players:
        up = True  # every player is connected when the warm-up starts
        for t, kind in p.events:
            if (kind in WELCOMES) != up:
                up = not up
                changes.append((t - t0, 1 if up else -1))
    count, out = len(players), [(0.0, len(players))]
    for t, step in sorted(changes):
        count += step
        out.append((round(t, 3), count))
    return out


def chart(data: dict[str, Any]) -> Callable[[Any], Any]:
    """Top: players connected; bottom: each say's latency to each lobby player's socket
    (log scale), by send time; the kills, rolls and restarts as lines on both."""

    def draw(plt: Any) -> Any:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
        ts, counts = zip(*data["timeline"], strict=True)
        top.step(ts, counts, where="post", color="tab:blue", label="players connected")
        top.set_ylabel("players connected")
        for same, label, color in (
            (True, "sender's node", "tab:green"),
            (False, "other node", "tab:orange"),
        ):
            xs = [t for t, _, s in data["say_points"] if s is same]
            ys = [ms for _, ms, s in data["say_points"] if s is same]
            bottom.plot(
                xs, ys, ".", markersize=3, color=color, label=f"say to a player on the {label}"
            )
        bottom.set_yscale("log")
        bottom.set_ylabel("say -> player's socket, ms")
        bottom.set_xlabel("seconds since the warm-up started")
        marks = data["marks"]
        lines = (
            ("kill", f"kill -9 {data['killed']['node']}", "tab:red"),
            ("revived", "started again", "grey"),
            ("roll", f"SIGTERM {data['rolled']['node']}", "tab:purple"),
            ("restarted", "started again", "grey"),
        )
        for key, label, color in lines:
            for ax in (top, bottom):
                ax.axvline(
                    marks[key], color=color, ls="--", lw=1, label=label if ax is top else None
                )
        top.legend(loc="lower left", fontsize=8)
        bottom.legend(loc="upper left", fontsize=8)
        top.set_title(
            f"{counts[0]} players (the driver included) on {len(data['nodes'])} nodes:"
            " one node killed (-9), then another rolled (SIGTERM)"
        )
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        return fig

    return draw


def _latency(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    p50, p99 = (round(percentile(ordered, q) * 1000, 2) for q in (50, 99))
    return {"n": len(ordered), "p50_ms": p50, "p99_ms": p99}


def _redis_cost(
    load: Load, before: dict[str, int], after: dict[str, int], t0: float, t1: float
) -> dict[str, Any]:
    """Redis' work in [t0, t1) per player message (echoes + says sent in it)."""
    echoes = sum(1 for p in load.players for t in p.echo_at if t0 <= t < t1)
    says = sum(1 for t, _ in load.say_at if t0 <= t < t1)
    commands = after["total_commands_processed"] - before["total_commands_processed"] - 1
    bytes_in = after["total_net_input_bytes"] - before["total_net_input_bytes"] - after["_request"]
    bytes_out = after["total_net_output_bytes"] - before["total_net_output_bytes"]
    bytes_out -= before["_reply"]
    messages = max(1, echoes + says)
    return {
        "window_s": round(t1 - t0, 2),
        "echoes": echoes,
        "says": says,
        "commands": commands,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "commands_per_message": round(commands / messages, 3),
        "bytes_in_per_message": round(bytes_in / messages, 1),
        "bytes_out_per_message": round(bytes_out / messages, 1),
        "commands_per_s": round(commands / (t1 - t0), 1),
    }


def _events(nodes: list[Node]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for node in nodes:
        for server in node.incarnations:
            for f in server.log.lines:
                if f.get("event") in NOTABLE:
                    counts[f["event"] + (f" ok={f['ok']}" if "ok" in f else "")] += 1
    return dict(sorted(counts.items()))


def _pair(a: Any, b: Any) -> str:
    return f"{'-' if a is None else a} / {'-' if b is None else b}"


def print_table(data: dict[str, Any]) -> None:
    rows = data["phases"]
    width = 19
    table_head(f"{'':38}" + "".join(f"{r['phase']:>{width}}" for r in rows))

    def line(label: str, cell: Any) -> None:
        print(f"{label:38}" + "".join(f"{cell(r):>{width}}" for r in rows))

    def sessions(r: dict[str, Any], kind: str) -> str:
        s = r["sessions"]
        return _pair(s.get(f"lobby_{kind}", 0), s.get(f"room_{kind}", 0))

    line("players on the node hit", lambda r: r.get("players_hit", "-"))
    for key, label in (
        ("all_back_s", "all of them back after, s"),
        ("longest_away_s", "longest disconnect -> welcome, s"),
    ):
        line(label, lambda r, k=key: "-" if k not in r else "not back" if r[k] is None else r[k])
    line("sessions resumed, lobby / room", lambda r: sessions(r, "resumed"))
    line("  of those with replay_gap", lambda r: sessions(r, "gap"))
    line("sessions lost (new session), l / r", lambda r: sessions(r, "lost"))
    line(
        "clients that gave up",
        lambda r: r["sessions"].get("lobby_gave_up", 0) + r["sessions"].get("room_gave_up", 0),
    )
    line("echoes sent", lambda r: r["echoes_sent"])
    line("echoes lost / doubled", lambda r: _pair(r["echoes_lost"], r["echoes_doubled"]))
    line("echoes gone with a lost session", lambda r: r["echoes_with_lost_session"])
    line("says x lobby players", lambda r: r["says_expected"])
    line("says lost / doubled", lambda r: _pair(r["says_lost"], r["says_doubled"]))
    line("says gone with a lost session", lambda r: r["says_with_lost_session"])
    line("says missed in a replay_gap resume", lambda r: r["says_in_replay_gap"])
    for key, label in (("same_node", "same node"), ("other_node", "other node")):
        line(
            f"say ms p50 / p99 at socket, {label}",
            lambda r, k=key: _pair(r[k]["p50_ms"], r[k]["p99_ms"]),
        )
    line(
        "say ms p50 / p99 in the client",
        lambda r: _pair(r["in_client"]["p50_ms"], r["in_client"]["p99_ms"]),
    )


def print_summary(data: dict[str, Any]) -> None:
    print()
    warm = data["phases"][0]
    base, redis = data["baseline"], data["redis"]
    every = warm["all_nodes"]
    for what, ours, one in (
        ("at the player's socket", every, base["socket"]),
        ("in the client (this process' own queueing included)", warm["in_client"], base["client"]),
    ):
        print(
            f"say latency {what}, warm-up: p50 {ours['p50_ms']} / p99 {ours['p99_ms']} ms;"
            f" one node without --cluster: {one['p50_ms']} / {one['p99_ms']} ms -> cluster /"
            f" one node {_ratio(ours['p50_ms'], one['p50_ms'])} p50,"
            f" {_ratio(ours['p99_ms'], one['p99_ms'])} p99"
        )
    same, other = warm["same_node"], warm["other_node"]
    print(
        f"say latency at the socket, warm-up, other node / sender's node:"
        f" {_ratio(other['p50_ms'], same['p50_ms'])} p50, {_ratio(other['p99_ms'], same['p99_ms'])}"
        " p99"
    )
    print(
        f"redis per player message (warm-up, {redis['window_s']} s, {redis['echoes']} echoes + "
        f"{redis['says']} says): {redis['commands_per_message']} commands, "
        f"{redis['bytes_in_per_message']} B in, {redis['bytes_out_per_message']} B out "
        f"({redis['commands_per_s']} commands/s in all)"
    )
    killed, rolled = data["killed"], data["rolled"]
    print(
        f"kill -9 {killed['node']}: started again {killed['started_again_after_s']} s after"
        f" its players were back; roll {rolled['node']}: exit code {rolled.get('exit_code')}"
        f" {rolled.get('exit_s')} s after SIGTERM, its lease left in Redis at exit"
        f" {rolled.get('lease_left_at_exit_s')} s, started again"
        f" {rolled['started_again_after_s']} s after SIGTERM; starts refused:"
        f" {sum(len(n['refused']) for n in data['nodes'].values())}"
    )
    print(
        "gone with a lost session: sent to a session that was then lost (SessionLost), never"
        " answered; counted apart from lost"
    )
    print(f"server events: {data['server_events']}")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("cluster", __doc__, shards=2)
    parser.add_argument("--nodes", type=int, default=3, help="nodes, at least 2 (3)")
    parser.add_argument("--players", type=int, default=60, help="players, at least 2 (60)")
    parser.add_argument("--rate", type=float, default=5.0, help="echoes/s per player (5)")
    parser.add_argument("--say-interval", type=float, default=0.25, help="s between says (0.25)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up, s (5)")
    parser.add_argument("--settle", type=float, default=3.0, help="traffic after the roll, s (3)")
    parser.add_argument(
        "--back-timeout", type=float, default=40.0, help="bound on each wait for players, s (40)"
    )
    parser.add_argument("--aof", action="store_true", help="Redis AOF, appendfsync always")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.players < 2:
        parser.error("--nodes and --players must be at least 2")
    if min(args.rate, args.say_interval, args.warmup, args.settle, args.back_timeout) <= 0:
        parser.error("--rate, --say-interval, --warmup, --settle, --back-timeout must be > 0")
    report = Report(
        "cluster",
        args,
        reach="round-robin TCP proxy in bench/cluster.py, skips nodes that refuse TCP",
        rooms=f"{ROOM_SIZE} players each; half the players in the lobby",
        server_args=" ".join(NODE_ARGS),
    )
    # The client logs each lost session as a warning: counted here, not printed.
    logging.getLogger("client").setLevel(logging.ERROR)
    with report.progress() as bar:
        base = trio.run(baseline, args, bar)
        data = trio.run(cluster, args, bar)
    data["baseline"] = base
    print()
    print_table(data)
    print_summary(data)
    report.finish(data, charts={"timeline": chart(data)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
