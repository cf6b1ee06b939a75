"""The cost of routing: connection setup rate for lobby vs room connections.

Run as ``python -m bench routing [--connections 2000] [--shards 4] [--tasks 16]``.

A supervisor is started (``lab.server.open_server``, ``--port 0``) with the default app.
A *setup* is: TCP connect + WebSocket handshake + reading the ``welcome``; the client then
closes with 1000 (and reads the server's close frame) before its next connection. Clients
are ``lab.rawws.RawClient`` (the server's own codec on a trio socket) in ``--client-procs`` separate
processes, ``--tasks`` concurrent tasks in all, started together on a barrier.

* ``lobby /``: always served by the shard whose accept won (``direct``).
* ``room /rooms/bench``: an anchor client, connected first and reading all along, keeps
  the room alive (it has one owner shard throughout, checked); a connection accepted by
  another shard is passed through the supervisor to the owner (``event=routed ...
  peer=IP:PORT``, matched to the client by its local port); the rest are ``direct``.

The two paths alternate for ``--rounds`` rounds (``--connections`` per path in all), after
a warm-up of each that is not counted. Then ``--probe`` setups are made one at a time
(one task, nothing queued) for each path: the unloaded latency, split the same way.

Reported per path: connections/s (setups and closes / wall time from the barrier to the
last close; the rate of each round in brackets), p50/p99 setup latency, server CPU per
connection (supervisor + shards, and the supervisor alone: it does the passing), the
routed fraction, and direct/routed ratios. Everything is bounded: each client process
stops at ``--max-seconds``.

Defaults: ``--connections 2000 --shards 4 --tasks 16 --client-procs 2 --rounds 2 --probe
300 --max-seconds 30 --max-outbound-bytes 67108864`` (about 20-40 s on a 2-core VM). Writes
``bench/results/routing-<stamp>.json`` (every figure of the table, and every setup latency
of every path, direct and routed apart) and ``routing-<stamp>-setup_cdf.png`` (the CDF of
the setup latency: lobby vs room direct vs room routed, loaded and one at a time).

Why over 300 lines: two kinds of phase (loaded, one at a time) per path, every setup
matched to the server's ``routed`` line by its local port, the CPU of each server process
per phase, a table, ratios and a chart; the setups run in ``bench.clients.setups``.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bench._report import Progress, Report, percentile, scenario_parser
from lab.procfs import cpu_seconds_each, loadavg, system_busy_s
from lab.rawws import Closed, RawClient
from lab.server import ROOT, ServerProcess, open_server

ROOM = "bench"
READY = b'{"type":"ready"}\n'  # then the process' result, one JSON line (bench.clients.setups)


# ====================================================================== the benchmark
@dataclass
class Phase:
    name: str
    path: str
    tasks: int
    results: list[tuple[int, float]] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    span: float = 0.0
    rounds: list[float] = field(default_factory=list)  # conn/s of each round
    cpu: list[float] = field(default_factory=list)  # CPU s: supervisor, shard 0, 1, ...
    routed_ports: collections.Counter[int] = field(default_factory=collections.Counter)
    routed_from: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def routed(self) -> int:
        return sum(self.routed_ports.values())

    def split(self) -> tuple[list[float], list[float]]:
        """Setup latencies of (direct, routed) connections, matched by client port."""
        left = collections.Counter(self.routed_ports)
        direct, routed = [], []
        for port, setup in self.results:
            if left[port] > 0:
                left[port] -= 1
                routed.append(setup)
            else:
                direct.append(setup)
        return direct, routed


async def _run_clients(
    server: ServerProcess, phase: Phase, count: int, procs: int, max_seconds: float
) -> None:
    """Run ``count`` setups in ``procs`` client processes; add them to ``phase``."""
    procs = max(1, min(procs, phase.tasks))
    log_from = len(server.log.lines)
    pids = [server.pid, *(pid for _, pid in sorted(server.shard_pids().items()))]
    children = []
    outputs: list[bytes] = [b""] * procs

    async def read(i: int, ready: trio.Semaphore) -> None:
        stdout = children[i].stdout
        assert stdout is not None
        signalled = False
        async for chunk in stdout:
            outputs[i] += chunk
            if not signalled and READY in outputs[i]:
                signalled = True
                ready.release()

    try:
        for i in range(procs):
            share = count // procs + (i < count % procs)
            tasks = phase.tasks // procs + (i < phase.tasks % procs)
            args = ["--port", str(server.port), "--path", phase.path, "--count", str(share)]
            args += ["--tasks", str(tasks), "--max-seconds", str(max_seconds)]
            children.append(
                await trio.lowlevel.open_process(
                    [sys.executable, "-m", "bench.clients", "setups", *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                )
            )
        with trio.fail_after(max_seconds + 30):
            ready = trio.Semaphore(0, max_value=procs)
            async with trio.open_nursery() as nursery:
                for i in range(procs):
                    nursery.start_soon(read, i, ready)
                for _ in range(procs):
                    await ready.acquire()
                cpu_before = cpu_seconds_each(pids)
                for child in children:
                    assert child.stdin is not None
                    await child.stdin.send_all(b"go\n")
            for child in children:
                await child.wait()
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await child.wait()
    used = [
        after - before for after, before in zip(cpu_seconds_each(pids), cpu_before, strict=True)
    ]
    phase.cpu = [a + b for a, b in zip(phase.cpu or [0.0] * len(used), used, strict=True)]
    starts, ends, done = [], [], 0
    for i, out in enumerate(outputs):
        if READY not in out:
            raise RuntimeError(f"client process {i} exited {children[i].returncode}: {out!r}")
        report = json.loads(out.split(READY, 1)[1])
        starts.append(report["start"])
        ends.append(report["end"])
        phase.results.extend((port, setup) for port, setup in report["results"])
        phase.errors.update(report["errors"])
        done += len(report["results"])
    span = max(ends) - min(starts)
    phase.span += span
    phase.rounds.append(done / span)
    # Every served connection logs ``disconnect`` (with the same peer): wait, bounded,
    # until they are all in, so every ``routed`` line of this round is too.
    with trio.move_on_after(10):
        while sum(f.get("event") == "disconnect" for f in server.log.lines[log_from:]) < done:
            await trio.sleep(0.05)
    for f in server.log.lines[log_from:]:
        if f.get("event") == "routed" and f.get("room") == ROOM:
            phase.routed_ports[int(f["peer"].rsplit(":", 1)[1])] += 1
            phase.routed_from[int(f["shard"])] += 1


async def _keep_reading(client: RawClient, closed: list[str]) -> None:
    """The anchor: read everything (it gets a few frames per connection of the room)."""
    try:
        while True:
            await client.receive(timeout=3600)
    except Closed as exc:
        closed.append(f"closed {exc.code}")


# ====================================================================== report
def _ms(values: list[float], q: float) -> str:
    return f"{1000 * percentile(sorted(values), q):.1f}" if values else "-"


def _table(phases: list[Phase]) -> list[str]:
    rows = [
        f"{'path':<31} {'tasks':>5} {'conns':>6} {'err':>3} {'conn/s (per round)':>20} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms/conn':>12} {'routed':>11}",
        f"{'':<31} {'':>5} {'':>6} {'':>3} {'':>20} {'':>7} {'':>7} {'all (sup)':>12}",
    ]
    for p in phases:
        n = len(p.results)
        rate = f"{n / p.span:.0f}" if p.span else "-"
        if len(p.rounds) > 1:
            rate += " (" + " ".join(f"{r:.0f}" for r in p.rounds) + ")"
        cpu = f"{1000 * sum(p.cpu) / n:.2f} ({1000 * p.cpu[0] / n:.2f})" if n else "-"
        routed = f"{p.routed} ({100 * p.routed / n:.0f}%)" if p.path != "/" and n else "direct"
        rows.append(
            f"{p.name:<31} {p.tasks:>5} {n:>6} {sum(p.errors.values()):>3} {rate:>20} "
            f"{_ms([s for _, s in p.results], 50):>7} {_ms([s for _, s in p.results], 99):>7} "
            f"{cpu:>12} {routed:>11}"
        )
        if p.path != "/":
            for label, values in zip(("direct (owner)", "routed"), p.split(), strict=True):
                rows.append(
                    f"  {label:<29} {'':>5} {len(values):>6} {'':>3} {'':>20} "
                    f"{_ms(values, 50):>7} {_ms(values, 99):>7}"
                )
    return rows


def _ratios(lobby: Phase, room: Phase, probe_room: Phase) -> list[str]:
    out = []
    if lobby.span and room.span and lobby.results and room.results:
        lobby_rate = len(lobby.results) / lobby.span
        room_rate = len(room.results) / room.span
        lobby_cpu = sum(lobby.cpu) / len(lobby.results)
        room_cpu = sum(room.cpu) / len(room.results)
        out.append(
            f"direct/routed throughput: lobby {lobby_rate:.0f} / room {room_rate:.0f} conn/s ="
            f" {lobby_rate / room_rate:.2f} (room {100 * room.routed / len(room.results):.0f}%"
            f" routed); server CPU per connection room/lobby = {room_cpu / lobby_cpu:.2f}"
        )
    for p in (lobby, room):
        if p.span:
            pct = [f"{100 * c / p.span:.0f}%" for c in p.cpu]
            shards = ", ".join(f"shard {i} {share}" for i, share in enumerate(pct[1:]))
            out.append(f"{p.name}: CPU (% of a core) supervisor {pct[0]}, {shards}")
    for p in (room, probe_room):
        direct, routed = p.split()
        origins = ", ".join(f"shard {k}: {v}" for k, v in sorted(p.routed_from.items()))
        out.append(f"{p.name}: routed from {origins or '-'}")
        if direct and routed:
            d50, r50 = percentile(sorted(direct), 50), percentile(sorted(routed), 50)
            out.append(
                f"  p50 setup routed/direct: {1000 * r50:.2f} / {1000 * d50:.2f} ms ="
                f" {r50 / d50:.2f} ({1000 * (r50 - d50):+.2f} ms per routed setup)"
            )
    return out


class CpuMeter:
    """CPU over the whole run: the server's processes (from /proc, read while they
    live), the client processes (waited for), this process, and everything else."""

    def __init__(self, server_pids: list[int]) -> None:
        self.pids = server_pids
        self.started = time.monotonic()
        self.busy = system_busy_s()
        self.server = sum(cpu_seconds_each(self.pids))
        self.mine = self._mine()

    @staticmethod
    def _mine() -> tuple[float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime

    def done(self) -> str:
        wall = time.monotonic() - self.started
        busy = system_busy_s() - self.busy
        server = sum(cpu_seconds_each(self.pids)) - self.server
        me, kids = (now - then for now, then in zip(self._mine(), self.mine, strict=True))
        other = max(0.0, busy - server - me - kids)

        def pct(x: float) -> str:
            return f"{100 * x / wall:.0f}%"

        return (
            f"CPU:      {pct(busy)} of one core busy over {wall:.0f} s: server {pct(server)},"
            f" clients {pct(kids)}, this process {pct(me)}, other processes {pct(other)};"
            f" loadavg at end {loadavg()}"
        )


def _phase_data(p: Phase) -> dict[str, Any]:
    """One row of the table, raw enough to re-plot (latencies in seconds)."""
    n = len(p.results)
    direct, routed = p.split() if p.path != "/" else ([s for _, s in p.results], [])
    every = sorted(s for _, s in p.results)
    return {
        "name": p.name,
        "path": p.path,
        "tasks": p.tasks,
        "connections": n,
        "errors": dict(p.errors),
        "span_s": p.span,
        "conn_per_s": n / p.span if p.span else None,
        "conn_per_s_rounds": p.rounds,
        "p50_ms": 1000 * percentile(every, 50) if every else None,
        "p99_ms": 1000 * percentile(every, 99) if every else None,
        "cpu_s": {"supervisor": p.cpu[0] if p.cpu else 0.0, "shards": p.cpu[1:]},
        "cpu_ms_per_conn": 1000 * sum(p.cpu) / n if n else None,
        "supervisor_cpu_ms_per_conn": 1000 * p.cpu[0] / n if n and p.cpu else None,
        "routed": p.routed if p.path != "/" else 0,
        "routed_from_shard": {str(k): v for k, v in sorted(p.routed_from.items())},
        "direct": {
            "count": len(direct),
            "p50_ms": 1000 * percentile(sorted(direct), 50) if direct else None,
            "p99_ms": 1000 * percentile(sorted(direct), 99) if direct else None,
            "setup_s": direct,
        },
        "routed_setups": {
            "count": len(routed),
            "p50_ms": 1000 * percentile(sorted(routed), 50) if routed else None,
            "p99_ms": 1000 * percentile(sorted(routed), 99) if routed else None,
            "setup_s": routed,
        },
    }


def setup_cdf_chart(phases: list[dict[str, Any]]) -> Callable[[Any], Any]:
    """CDF of the setup latency, lobby vs room (direct and routed); ``phases`` as in the
    data: lobby and room loaded, then lobby and room one at a time."""

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, pair, title in (
            (axes[0], phases[:2], "loaded"),
            (axes[1], phases[2:], "unloaded: one at a time"),
        ):
            for p in pair:
                if p["path"] == "/":
                    series = [("lobby /", p["direct"]["setup_s"])]
                else:
                    series = [
                        ("room, direct (owner)", p["direct"]["setup_s"]),
                        ("room, routed", p["routed_setups"]["setup_s"]),
                    ]
                for label, values in series:
                    if not values:
                        continue
                    xs = sorted(1000 * v for v in values)
                    ys = [(i + 1) / len(xs) for i in range(len(xs))]
                    ax.step(xs, ys, where="post", label=f"{label} ({len(xs)})")
            tasks = pair[0]["tasks"] if pair else 0
            ax.set_xscale("log")
            ax.set_xlabel("setup latency, ms (connect + upgrade + welcome)")
            ax.set_ylabel("fraction of setups")
            ax.set_ylim(0, 1.01)
            ax.set_title(f"{title} ({tasks} task{'s' if tasks != 1 else ''})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="lower right")
        fig.suptitle("Connection setup latency CDF: lobby (direct) vs room (routed to the owner)")
        return fig

    return draw


# ====================================================================== main
async def run(a: argparse.Namespace, bar: Progress) -> tuple[list[str], dict[str, Any]]:
    """Run the benchmark; the report's lines and its data."""
    lobby = Phase("lobby /", "/", a.tasks)
    room = Phase(f"room /rooms/{ROOM}", f"/rooms/{ROOM}", a.tasks)
    probe_lobby = Phase("lobby /, 1 at a time", "/", 1)
    probe_room = Phase(f"room /rooms/{ROOM}, 1 at a time", f"/rooms/{ROOM}", 1)
    per_round = max(1, a.connections // a.rounds)
    warm = max(1, min(200, per_round // 5))
    # The anchor gets a few frames for every connection of the room; with a small outbox
    # the owner could drop it as a slow consumer under this load, although it reads all
    # the time (see BENCHMARKS.md), and the room would move between shards.
    server_args = ("--max-outbound-bytes", str(a.max_outbound_bytes))
    anchor_closed: list[str] = []
    tasks = {
        "warm-up": bar.add("warm-up setups", total=2 * warm),
        lobby.name: bar.add("lobby / setups", total=a.rounds * per_round),
        room.name: bar.add("room setups", total=a.rounds * per_round),
    }
    if a.probe:
        tasks["probe"] = bar.add("1-at-a-time setups", total=2 * a.probe)
    async with (
        open_server(*server_args, shards=a.shards, echo_logs=False) as server,
        trio.open_nursery() as nursery,
    ):
        meter = CpuMeter([server.pid, *server.shard_pids().values()])
        started = time.monotonic()
        anchor = await RawClient.connect(server.port, f"/rooms/{ROOM}")
        owner = (await anchor.receive())["shard"]
        nursery.start_soon(_keep_reading, anchor, anchor_closed)
        # The anchor's welcome can overtake the supervisor's log line placing the room:
        # wait for that line before counting placements (a later one means it moved).
        if a.shards > 1:  # one shard serves every room itself: nothing is placed
            await server.log.wait_for("room_placed", room=ROOM, timeout=10)
        placed = len(server.log.events("room_placed", room=ROOM))
        for path in ("/", room.path):
            await _run_clients(server, Phase("warm-up", path, a.tasks), warm, a.client_procs, 20)
            bar.advance(tasks["warm-up"], warm)
        for _ in range(a.rounds):
            for phase in (lobby, room):
                await _run_clients(server, phase, per_round, a.client_procs, a.max_seconds)
                bar.update(tasks[phase.name], completed=len(phase.results))
        if a.probe:
            await _run_clients(server, probe_lobby, a.probe, 1, 30)
            bar.advance(tasks["probe"], a.probe)
            await _run_clients(server, probe_room, a.probe, 1, 30)
            bar.advance(tasks["probe"], a.probe)
        elapsed = time.monotonic() - started
        cpu = meter.done()
        moved = len(server.log.events("room_placed", room=ROOM)) - placed  # must stay 0
        nursery.cancel_scope.cancel()
    kept = "kept" if not moved and not anchor_closed else "LOST: the room numbers are void"
    phases = [lobby, room, probe_lobby, probe_room]
    out = [
        cpu,
        f"server:   {a.shards} shards, default app (demo), --max-outbound-bytes"
        f" {a.max_outbound_bytes}; room {ROOM!r} owned by shard {owner} ({kept}; anchor"
        f" {anchor_closed[0] if anchor_closed else 'connected'}, re-placed {moved}x);"
        f" {a.client_procs} client process(es); run {elapsed:.0f} s",
        "",
        *_table(phases),
        "",
        *_ratios(lobby, room, probe_room),
    ]
    errors = lobby.errors + room.errors + probe_lobby.errors + probe_room.errors
    if errors:
        out.append(f"client errors: {dict(errors)}")
    data: dict[str, Any] = {
        "room": ROOM,
        "owner_shard": owner,
        "room_kept": not moved and not anchor_closed,
        "room_re_placed": moved,
        "anchor": anchor_closed[0] if anchor_closed else "connected",
        "run_s": elapsed,
        "cpu_line": cpu,
        "phases": [_phase_data(p) for p in phases],
        "client_errors": dict(errors),
    }
    if lobby.results and room.results and lobby.span and room.span:
        data["throughput_lobby_over_room"] = (len(lobby.results) / lobby.span) / (
            len(room.results) / room.span
        )
        data["cpu_per_conn_room_over_lobby"] = (sum(room.cpu) / len(room.results)) / (
            sum(lobby.cpu) / len(lobby.results)
        )
    return out, data


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("routing", __doc__.split("\n\n")[0], shards=4, raw=False)
    parser.add_argument("--connections", type=int, default=2000, help="per path (2000)")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent client tasks (16)")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (2)")
    parser.add_argument("--rounds", type=int, default=2, help="lobby/room alternations (2)")
    parser.add_argument(
        "--probe", type=int, default=300, help="one-at-a-time setups per path (300; 0 = none)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="bound of each loaded round (30)"
    )
    parser.add_argument(
        "--max-outbound-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="server outbox per connection (64 MiB: the anchor reads a burst of every setup)",
    )
    a = parser.parse_args(argv)
    a.rounds = max(1, a.rounds)
    report = Report("routing", a)
    with report.progress() as bar:
        lines, data = trio.run(run, a, bar)
    print()
    for line in lines:
        print(line)
    report.finish(data, charts={"setup_cdf": setup_cdf_chart(data["phases"])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
