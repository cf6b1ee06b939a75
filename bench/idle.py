"""Idle connections: how many a machine holds, what each costs, and the GC stalls they cause.

Run as ``python -m bench idle [--connections 50000] [--shards N] [--heartbeat short|medium]
[--duration 20] [--gc tuned|default|both]``.

Default (about 1.5 min on 2 cores): 50,000 idle connections over 4 shards from 3 client
processes, heartbeats 5 s/15 s (``--heartbeat short``). The GC comparison of the foundation
issue is ``--connections 10000 --shards 1 --gc both --say-rate 0.2 --duration 30``.

**200,000 connections** (the native-speed issue; about 5 min on 2 cores, 24 GiB)::

    python -m bench idle --connections 200000 --heartbeat medium --idle-window 30 \\
        --duration 30 --echo-clients 8

``--shards`` and ``--workers`` follow from ``--connections``: 12 shards (one per 17,000
connections: a process may open at most 20,000 files, and ``--max-connections`` is raised
to fit, at most 19,000) and 12 client processes, each from its own loopback source
address (127.0.0.2 ...: one address has the 28,232 ephemeral ports 32768-60999 towards
one server port). Connections are started at ``--connect-rate`` per second (default
3,000, all client processes together, each at most ``--concurrency`` 64 upgrades in
flight), with a progress bar. Loopback connections count in the kernel's conntrack table
where conntrack hooks are active (``nf_conntrack_max``: 262,144 here), hence the cap of
250,000; the count is read before, with everything connected, and at the end.

For each variant ('tuned' = the shards' ``tune_gc``; 'default' = ``--no-gc-tuning``,
CPython's thresholds) a fresh supervisor is started with heartbeats on (``--heartbeat``
preset, or ``--interval``/``--timeout``) and:

1. ``--connections`` idle WebSocket clients are opened from ``--workers`` processes
   (``python -m bench.clients pool``: raw sockets and epoll; they answer every ping with a
   pong, read everything the server sends and send nothing else);
2. each shard's RSS is read before and after connecting (``/proc/<pid>/status`` VmRSS),
   with its open sockets: RSS growth per connection, per shard and in all (the default
   app: a session per connection is part of it);
3. heartbeat CPU: the shards' utime+stime over ``--idle-window`` seconds with no other
   traffic than pings and pongs, as % of one core and **per ping/pong** (CPU seconds /
   the pongs the clients answered in the window; fixed costs such as the session
   checkpoints are included, ``--no-heartbeat`` measures them alone);
4. active phase (``--duration`` s): ``--echo-clients`` clients each send
   ``{"type":"echo","data":n}`` at ``--echo-rate``/s on a fixed (open-loop) schedule and
   time the round trip (a stall shows as late replies, not as fewer samples): p50, p99,
   p99.9 and max. With ``--say-rate`` > 0, from ``--say-after`` (default half-way: a
   'quiet' and a 'churn' half) one more client also sends a 64-byte ``say`` at that rate,
   which the demo app delivers to every session, and times the fan-out.

It checks that no ``event=disconnect`` line appeared during the run and that every client
is still open at the end (an idle client closed as a zombie would be
``kind=heartbeat_timeout``), then SIGTERMs the supervisor (clients answer the 1012 close)
and kills every pid it started. It also prints how much CPU other processes used
meanwhile (the machine may be shared). Output: the tables, one headline line per variant,
and ``bench/results/idle-<stamp>.json`` with ``-rtt.png`` (every round trip over time) and
``-shards.png`` (sockets and RSS per shard).

``--url ws://host:port/`` holds the connections against a running server instead: no
server is started, and its RSS, CPU and log are not measured (its heartbeat settings are
its own).

``--no-heartbeat`` is the control run: ``--heartbeat long`` pings after 300 s of silence,
so no ping happens in the run. ``BENCH_SERVER_ROOT=DIR`` runs the server from another tree.

Why over 300 lines: the report is most of it (per variant, per shard, echo by phase, say
fan-out, GC pauses by generation, conntrack, two charts), and ``--connections`` sizes the
shards, client processes and source addresses by itself; the clients are
``bench.clients`` (``pool``, ``active``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import re
import statistics
import threading
import time
import urllib.request
from typing import Any

from bench._report import (
    Progress,
    Report,
    add_server_arg,
    percentile,
    scenario_parser,
    table_head,
)
from bench.clients import Child
from lab.procfs import TreeCpu, cpu_seconds, open_sockets, rss_kib
from lab.rawws import parse_ws_url
from lab.server import SERVER_ROOT, Server

# Control run (--no-heartbeat): the long preset pings after 300 s, i.e. never in a run.
NO_HEARTBEAT = ("--heartbeat", "long")
# The server's presets (core.heartbeat), interval/timeout in seconds.
PRESETS = {"short": (5.0, 15.0), "medium": (30.0, 60.0), "long": (300.0, 600.0)}
FILE_CAP = 20_000  # open files per process on the reference machine (hard limit)
PER_SHARD = 17_000  # --shards auto: connections per shard (under FILE_CAP, with spread)
PER_WORKER = 17_000  # --workers auto: connections per client process / source address
MAX_PER_PROCESS = 19_000  # either kind of process: FILE_CAP less its own files
MAX_CONNECTIONS = 250_000  # the conntrack table (262,144 here) tracks loopback connections
CONNTRACK = "/proc/sys/net/netfilter/nf_conntrack_count"


def run_variant(name: str, index: int, a: argparse.Namespace, bar: Progress) -> dict[str, Any]:
    heartbeat = ("--heartbeat-interval", f"{a.interval:g}", "--heartbeat-timeout", f"{a.timeout:g}")
    quiet = a.no_heartbeat or name == "control"
    # Metrics on a free port: the shards' GC pause histogram (ws_gc_pause_seconds).
    args = [*(NO_HEARTBEAT if quiet else heartbeat), "--drain-timeout", "5", "--metrics-port", "0"]
    # Room for the load-aware balance's spread (1.02:1 + the accept batches), under the
    # 20,000-file cap: a shard past --max-connections would answer 503.
    per_shard = math.ceil(a.connections / a.shards)
    args += ["--max-connections", str(min(MAX_PER_PROCESS, math.ceil(per_shard * 1.3) + 64))]
    if name == "default":
        args.append("--no-gc-tuning")
    args += a.server_arg
    server = Server(*args, shards=a.shards) if not a.url else None
    workers: list[Child] = []
    active: Child | None = None
    out: dict[str, Any] = {"variant": name, "server_args": args}
    cpu = TreeCpu()
    try:
        if server is not None:
            server.start(timeout=60 + 5 * a.shards)
            pids = [pid for _, pid in sorted(server.shard_pids().items())]
            host, port = "127.0.0.1", str(server.port)
            time.sleep(1.0)
        else:  # --url: a running server; its processes are not ours to measure
            pids = []
            url_host, url_port, _ = parse_ws_url(a.url)
            host, port = url_host, str(url_port)
        # One loopback source address per client process (28k ephemeral ports each).
        loopback = host.startswith("127.")
        rss_before = {p: rss_kib(p) for p in pids}
        out["rss_before"] = sum(rss_before.values())
        out["conntrack_before"] = _conntrack()

        # ---- connect: one client process per loopback source address, paced
        started = time.monotonic()
        base, extra = divmod(a.connections, a.workers)
        for w in range(a.workers):
            count = base + (1 if w < extra else 0)
            workers.append(
                Child(
                    "pool",
                    "--host",
                    host,
                    "--port",
                    port,
                    "--count",
                    str(count),
                    *(["--source", f"127.0.{index}.{w + 2}"] if loopback else []),
                    "--connect-rate",
                    f"{a.connect_rate / a.workers:g}",
                    "--concurrency",
                    str(a.concurrency),
                    "--max-seconds",
                    f"{a.bound_s:g}",
                )
            )
        connected = _await_connected(
            workers, bar, f"{name}: connecting", a.connections, a.connect_bound_s
        )
        failed: collections.Counter[str] = collections.Counter()
        held = 0
        for message in connected:
            held += message["ok"]
            failed.update(message["failed"])
        out["connect_s"] = time.monotonic() - started
        out["held"] = held
        out["failed"] = dict(failed)
        time.sleep(2.0)
        out["rss_after"] = sum(rss_kib(p) for p in pids)
        out["per_shard"] = []
        for p in pids:
            after = rss_kib(p)
            sockets = open_sockets(p)
            out["per_shard"].append(
                {"pid": p, "sockets": sockets, "rss_before_kib": rss_before[p], "rss_kib": after}
            )
        out["conntrack"] = _conntrack()

        # ---- idle window: heartbeats only (CPU per ping/pong: shard CPU / pongs answered)
        pings0 = _pings(workers)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        bar.wait(a.idle_window, f"{name}: idle window")
        cpu1 = sum(cpu_seconds(p) for p in pids)
        t1 = time.monotonic()
        pings1 = _pings(workers)
        out["idle_window_s"] = t1 - t0
        out["hb_cpu_s"] = cpu1 - cpu0 if pids else float("nan")
        out["pongs"] = pings1 - pings0
        out["hb_cpu"] = 100.0 * (cpu1 - cpu0) / (t1 - t0) if pids else float("nan")
        out["pings_per_s"] = (pings1 - pings0) / (t1 - t0)
        out["us_per_ping"] = (
            1e6 * out["hb_cpu_s"] / out["pongs"] if pids and out["pongs"] else float("nan")
        )

        # ---- active phase (shard CPU sampled every 0.25 s: CLOCK_MONOTONIC, as the child's)
        gc_before = _gc_pauses(server)
        samples: list[tuple[float, float]] = []
        sampling = threading.Event()
        sampler = threading.Thread(target=_sample_cpu, args=(pids, samples, sampling), daemon=True)
        sampler.start()
        active = Child(
            "active",
            "--host",
            host,
            "--port",
            port,
            *(["--source", f"127.0.{index}.200"] if loopback else []),
            "--echo-clients",
            str(a.echo_clients),
            "--echo-rate",
            str(a.echo_rate),
            "--say-rate",
            str(a.say_rate),
            "--say-after",
            str(a.say_after),
            "--duration",
            str(a.duration),
            "--max-seconds",
            str(a.duration + 60),
        )
        active.expect("connected", 30)
        task = bar.add(f"{name}: active clients ({a.duration:g} s)", total=math.ceil(a.duration))
        t_active = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                result = active.expect("result", 0.5)
                break
            if time.monotonic() - t_active > a.duration + 60:
                raise TimeoutError("the active clients sent no result")
            bar.update(task, completed=min(a.duration, int(time.monotonic() - t_active)))
        bar.done(task)
        sampling.set()
        sampler.join()
        t0 = result["t0"]
        out["say_after"] = result["say_after"]
        out["cpu"] = {
            "quiet": _cpu_between(samples, t0, t0 + result["say_after"]),
            "churn": _cpu_between(samples, t0 + result["say_after"], t0 + a.duration),
            "all": _cpu_between(samples, t0, t0 + a.duration),
        }
        out["rss_end"] = sum(rss_kib(p) for p in pids)
        if gc_before is not None:
            time.sleep(1.2)  # the shards report their GC histogram once a second
            after = _gc_pauses(server)
            if after is not None:
                out["gc_active"] = _gc_diff(gc_before, after)
        out["rtts"] = result["rtts"]
        out["client_shards"] = result.get("client_shards", [])
        out["lost"] = result["lost"]
        out["say_rtts"] = result["say_rtts"]
        out["say_lost"] = result["say_lost"]
        out["errors"] = result["errors"]

        # ---- nothing may have been closed during the run
        stats = [_stats(w) for w in workers]
        out["open_end"] = sum(s["open"] for s in stats)
        out["conntrack_end"] = _conntrack()
        # Fan-out of each say: until the last idle session had its copy.
        fanout = []
        for tag, sent in result["say_wall"].items():
            entries = [s["said"][tag] for s in stats if tag in s["said"]]
            delivered = sum(int(e[0]) for e in entries)
            last = max((e[2] for e in entries), default=float("nan"))
            fanout.append((delivered, (last - sent) * 1000.0))
        out["fanout"] = fanout
        out["client_closed"] = dict(
            sum((collections.Counter(s["closed"]) for s in stats), collections.Counter())
        )
        lines, raw = server.snapshot() if server is not None else ([], [])  # --url: not ours
        disconnects = [f for f in lines if f.get("event") == "disconnect"]
        out["disconnects"] = collections.Counter(f.get("kind", "?") for f in disconnects)
        out["disconnect_lines"] = [
            line for line in raw if "event=disconnect" in line or "event=shard_exit" in line
        ][:5]
        out["other_events"] = collections.Counter(
            f.get("event")
            for f in lines
            if f.get("event")
            not in ("shard_spawn", "shard_ready", "ready", "disconnect", "metrics_ready")
        )
    except BaseException:
        if server is not None:
            server.keep_log = True
            print(f"{name}: failed; server log: {server.log_path}", flush=True)
            for line in server.exits()[:5]:
                print(f"    {line}", flush=True)
        raise
    finally:
        # The server first: a drain (1012, not announced) instead of 10k user_left fan-outs.
        if server is not None:
            server.stop(timeout=20 + a.connections / 10_000)
        if active is not None:
            active.stop()
        for w in workers:
            w.stop()
        out["others"] = cpu.close()["cpu_of_other_processes_pct"]
    return out


def _await_connected(
    workers: list[Child], bar: Progress, description: str, total: int, bound_s: float
) -> list[dict[str, Any]]:
    """Each worker's ``connected`` report, with a bar fed by their ``progress`` lines."""
    task = bar.add(description, total=total)
    ok = [0] * len(workers)
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + bound_s
    while len(done) < len(workers):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{sum(ok):,} of {total:,} connected within {bound_s:g} s:"
                f" {len(workers) - len(done)} client processes still connecting"
            )
        for i, w in enumerate(workers):
            for message in w.pending():
                if message.get("type") in ("progress", "connected"):
                    ok[i] = message["ok"]
                if message.get("type") == "connected":
                    done[i] = message
                elif message.get("type") == "eof":
                    raise RuntimeError(f"client process {w.pid} exited while connecting")
        bar.update(task, completed=sum(ok))
        time.sleep(0.2)
    return [done[i] for i in range(len(workers))]


_BUCKET = re.compile(
    r"^ws_gc_pause_seconds_bucket\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$", re.MULTILINE
)


def _gc_pauses(server: Server | None) -> dict[tuple[str, str, float], float] | None:
    """The shards' GC pause histogram from the supervisor's /metrics: cumulative count per
    (shard, generation, upper bound in s); None when there is no metrics server."""
    if server is None:
        return None
    try:
        ready = server.wait_for("metrics_ready", timeout=0.1)
        url = f"http://127.0.0.1:{ready['port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (OSError, TimeoutError, RuntimeError, KeyError):
        return None
    out: dict[tuple[str, str, float], float] = {}
    for m in _BUCKET.finditer(text):
        labels = dict(part.split("=", 1) for part in m["labels"].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        out[(labels["shard"], labels["generation"], float(labels["le"]))] = float(m["value"])
    return out


def _gc_diff(
    before: dict[tuple[str, str, float], float], after: dict[tuple[str, str, float], float]
) -> dict[str, Any]:
    """Collections between two snapshots, per generation: how many, and the longest (the
    upper bound of its bucket) with its shard."""
    out: dict[str, Any] = {}
    for (shard, generation, bound), count in after.items():
        new = count - before.get((shard, generation, bound), 0.0)
        entry = out.setdefault(generation, {"count": 0, "max_le_s": 0.0, "max_shard": None})
        if bound == math.inf:
            entry["count"] += int(new)
    for generation, entry in out.items():
        # the longest pause: the smallest bound whose cumulative count covers every new one
        for shard in {k[0] for k in after if k[1] == generation}:
            keys = sorted(
                (k for k in after if k[0] == shard and k[1] == generation), key=lambda k: k[2]
            )
            total = after[keys[-1]] - before.get(keys[-1], 0.0)
            if not total:
                continue
            previous = 0.0
            for k in keys:
                covered = after[k] - before.get(k, 0.0)
                if covered >= total:
                    if k[2] > entry["max_le_s"]:
                        entry["max_le_s"], entry["max_shard"] = k[2], shard
                        entry["above_s"] = previous
                    break
                previous = k[2]
    return out


def _conntrack() -> int | None:
    """Connections in the kernel's conntrack table (None: no conntrack here)."""
    try:
        with open(CONNTRACK, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _conntrack_max() -> int | None:
    try:
        with open(CONNTRACK.replace("count", "max"), encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _sample_cpu(pids: list[int], out: list[tuple[float, float]], stop: threading.Event) -> None:
    while True:
        out.append((time.perf_counter(), sum(cpu_seconds(p) for p in pids)))
        if stop.wait(0.25):
            out.append((time.perf_counter(), sum(cpu_seconds(p) for p in pids)))
            return


def _cpu_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Shard CPU in % of one core between two CLOCK_MONOTONIC times (nearest samples)."""
    inside = [s for s in samples if start - 0.125 <= s[0] <= end + 0.125]
    if len(inside) < 2 or not any(c for _, c in inside):  # --url: no pids sampled
        return float("nan")
    (ta, ca), (tb, cb) = inside[0], inside[-1]
    return 100.0 * (cb - ca) / (tb - ta)


def _stats(worker: Child) -> dict[str, Any]:
    worker.send("stats")
    return worker.expect("stats", 10)


def _pings(workers: list[Child]) -> int:
    return sum(_stats(w)["pings"] for w in workers)


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def report(results: list[dict[str, Any]], a: argparse.Namespace) -> None:
    print()
    print(
        f"Memory and heartbeat cost (idle: only pings and pongs; heartbeat {a.heartbeat_text})."
        " us/ping = the shards' CPU seconds over the idle window / the pongs the clients"
        " answered in it"
    )
    table_head(
        f"{'variant':<8} {'held':>7} {'connect s':>9} {'conn/s':>6} {'RSS before':>10}"
        f" {'RSS after':>10} {'KiB/conn':>8} {'RSS end':>8} {'hb CPU %':>8} {'pings/s':>8}"
        f" {'us/ping':>7}"
    )
    for r in results:
        per_conn = (r["rss_after"] - r["rss_before"]) / max(1, r["held"])
        print(
            f"{r['variant']:<8} {r['held']:>7,} {r['connect_s']:>9.1f}"
            f" {r['held'] / max(r['connect_s'], 1e-9):>6,.0f}"
            f" {r['rss_before'] / 1024:>7.1f} MiB {r['rss_after'] / 1024:>6.1f} MiB"
            f" {per_conn:>8.1f} {r['rss_end'] / 1024:>4.0f} MiB {r['hb_cpu']:>8.1f}"
            f" {r['pings_per_s']:>8,.0f} {r['us_per_ping']:>7.1f}"
        )
    for r in results:
        if not r["per_shard"]:
            continue
        print()
        print(f"{r['variant']}: per shard (RSS growth / its sockets)")
        table_head(
            f"{'shard':>5} {'pid':>8} {'sockets':>8} {'RSS before':>10} {'RSS after':>10}"
            f" {'KiB/conn':>8}"
        )
        for i, sh in enumerate(r["per_shard"]):
            kib = (sh["rss_kib"] - sh["rss_before_kib"]) / max(1, sh["sockets"])
            sh["kib_per_connection"] = round(kib, 2)
            print(
                f"{i:>5} {sh['pid']:>8} {sh['sockets']:>8,} {sh['rss_before_kib'] / 1024:>6.1f} MiB"
                f" {sh['rss_kib'] / 1024:>6.1f} MiB {kib:>8.2f}"
            )
    for r in results:
        track = [r.get(k) for k in ("conntrack_before", "conntrack", "conntrack_end")]
        text = (
            f"{track[0]:,} before, {track[1]:,} with all connected, {track[2]:,} at the end"
            f" (nf_conntrack_max {_conntrack_max() or '?':,})"
            if None not in track
            else "not available (no nf_conntrack)"
        )
        print(f"{r['variant']}: conntrack entries: {text}")
    print()
    quiet = "no other traffic" if a.no_heartbeat else "heartbeats only"
    if any(r["variant"] == "control" for r in results):
        quiet += " (control: no other traffic)"
    churn = (
        f", 'churn' = plus a say to all {a.connections:,} sessions every {1 / a.say_rate:g} s"
        if a.say_rate and a.say_after < a.duration
        else ""
    )
    print(
        f"Echo round trip, ms: {a.echo_clients} clients x {a.echo_rate:g}/s for {a.duration:g} s;"
        f" 'quiet' = {quiet} (first {a.say_after:g} s){churn}"
    )
    table_head(
        f"{'variant':<8} {'phase':<6} {'samples':>7} {'lost':>4} {'p50':>7} {'p99':>7}"
        f" {'p99.9':>7} {'max':>8} {'shard CPU %':>11}"
    )
    for r in results:
        r["phases"] = {}
        phases = [
            ("quiet", [x[1] for x in r["rtts"] if x[0] < r["say_after"]]),
            ("churn", [x[1] for x in r["rtts"] if x[0] >= r["say_after"]]),
            ("all", [x[1] for x in r["rtts"]]),
        ]
        for phase, values in phases:
            if not values or (phase == "all" and len(values) == len(phases[0][1])):
                continue
            rtt = sorted(values)
            r["phases"][phase] = (percentile(rtt, 99.9), rtt[-1])
            lost = str(r["lost"]) if phase == "all" else ""
            print(
                f"{r['variant']:<8} {phase:<6} {len(rtt):>7,} {lost:>4}"
                f" {_ms(percentile(rtt, 50)):>7} {_ms(percentile(rtt, 99)):>7}"
                f" {_ms(percentile(rtt, 99.9)):>7} {_ms(rtt[-1]):>8} {r['cpu'][phase]:>11.0f}"
            )
    if any(r["say_rtts"] for r in results):
        print()
        print(
            "Say fan-out, ms: from the say to the sender's own copy, and to the last of the"
            " idle sessions' copies"
        )
        table_head(
            f"{'variant':<8} {'says':>4} {'copies/say':>10} {'own p50':>8} {'own max':>8}"
            f" {'all p50':>8} {'all max':>8}"
        )
        for r in results:
            own = sorted(x[1] for x in r["say_rtts"])
            whole = sorted(x[1] for x in r["fanout"])
            copies = min((x[0] for x in r["fanout"]), default=0)
            print(
                f"{r['variant']:<8} {len(r['fanout']):>4} {copies:>10,}"
                f" {_ms(statistics.median(own)) if own else '-':>8}"
                f" {_ms(own[-1]) if own else '-':>8}"
                f" {_ms(statistics.median(whole)) if whole else '-':>8}"
                f" {_ms(whole[-1]) if whole else '-':>8}"
            )
    by_name = {r["variant"]: r for r in results}
    if "tuned" in by_name and "default" in by_name:
        t, d = by_name["tuned"]["phases"], by_name["default"]["phases"]
        print()
        for phase in ("quiet", "churn", "all"):
            if phase in t and phase in d:
                print(
                    f"default/tuned, {phase:<5}: p99.9 {d[phase][0] / t[phase][0]:.2f}x,"
                    f" max {d[phase][1] / t[phase][1]:.2f}x"
                )
    print()
    for r in results:
        shards = r.get("client_shards") or []

        def where(x: list[Any], shards: list[Any] = shards) -> str:
            if len(x) > 2 and x[2] < len(shards) and shards[x[2]] is not None:
                return f" (shard {shards[x[2]]})"
            return ""

        worst = sorted(r["rtts"], key=lambda x: -x[1])[:5]
        text = ", ".join(f"{x[1]:,.0f} ms at {x[0]:.1f} s{where(x)}" for x in worst)
        print(f"{r['variant']}: slowest round trips (send time since start): {text}")
        by_shard: dict[Any, list[float]] = collections.defaultdict(list)
        for x in r["rtts"]:
            if len(x) > 2 and x[2] < len(shards):
                by_shard[shards[x[2]]].append(x[1])
        if len(by_shard) > 1:
            parts = []
            for shard in sorted(by_shard, key=lambda k: (k is None, k)):
                values = sorted(by_shard[shard])
                parts.append(
                    f"{shard}: {_ms(percentile(values, 99.9))}/{_ms(values[-1])} ({len(values):,})"
                )
            print(f"{r['variant']}: echo p99.9/max ms by shard (samples): " + ", ".join(parts))
        gc_active = r.get("gc_active")
        if gc_active:
            parts = []
            for generation in sorted(gc_active):
                g = gc_active[generation]
                longest = (
                    f", longest {g['above_s'] * 1000:g}-{g['max_le_s'] * 1000:g} ms"
                    f" (shard {g['max_shard']})"
                    if g["count"] and g.get("max_shard") is not None
                    else ""
                )
                parts.append(f"gen{generation} {g['count']:,}{longest}")
            print(
                f"{r['variant']}: GC collections in the shards during the active phase: "
                + "; ".join(parts)
            )
    for r in results:
        kinds = dict(r["disconnects"])
        server_side = (
            "server log not ours (--url)"
            if a.url
            else f"disconnect lines during the run: {kinds or 'none'}"
            f" (heartbeat_timeout: {kinds.get('heartbeat_timeout', 0)})"
        )
        print(
            f"{r['variant']}: {server_side};"
            f" clients still open: {r['open_end']:,}/{r['held']:,};"
            f" other processes' CPU meanwhile: {r.get('others', float('nan')):.0f}% of a core"
            f"{'; failed to connect: ' + str(r['failed']) if r['failed'] else ''}"
            f"{'; client errors: ' + str(r['errors']) if r['errors'] else ''}"
        )
        if kinds:
            for line in r["disconnect_lines"]:
                print(f"    {line}")
        others = {k: v for k, v in r["other_events"].items() if k}
        if others:
            print(f"    other server events: {others}")
    control = next((r for r in results if r["variant"] == "control"), None)
    if control is not None:
        print()
        for r in results:
            if r is control or not r["pongs"]:
                continue
            extra = r["hb_cpu"] - control["hb_cpu"]
            per = 1e4 * extra / r["pings_per_s"] if r["pings_per_s"] else float("nan")
            print(
                f"{r['variant']}: the heartbeat alone: ({r['hb_cpu']:.1f} % -"
                f" {control['hb_cpu']:.1f} % of a core without pings) /"
                f" {r['pings_per_s']:,.0f} pings/s = {per:.1f} us of"
                " shard CPU per ping/pong"
            )
            r["us_per_ping_over_control"] = per
    print()
    for r in results:
        print(headline(r, a))


def headline(r: dict[str, Any], a: argparse.Namespace) -> str:
    """One line with every figure the issue asks for."""
    rtt = sorted(x[1] for x in r["rtts"])
    per_shard = [s.get("kib_per_connection", float("nan")) for s in r["per_shard"]]
    memory = (
        f"{(r['rss_after'] - r['rss_before']) / max(1, r['held']):.1f} KiB/conn"
        f" (per shard {min(per_shard):.1f}-{max(per_shard):.1f})"
        if per_shard
        else "server RSS not ours (--url)"
    )
    closed = r["held"] - r["open_end"]
    return (
        f"{r['variant']}: held {r['open_end']:,} of {a.connections:,} to the end"
        f" ({closed:,} closed, {sum(r['failed'].values()):,} failed to connect) on"
        f" {a.shards} shards, connected in {r['connect_s']:.0f} s; {memory};"
        + (
            " no pings (control);"
            if r["variant"] == "control"
            else f" heartbeat {a.heartbeat_text}: {r['us_per_ping']:.1f} us of shard CPU per"
            f" ping/pong ({r['pongs']:,} pongs in {r['idle_window_s']:.0f} s"
            + (
                f"; {r['us_per_ping_over_control']:.1f} over the control"
                if "us_per_ping_over_control" in r
                else ""
            )
            + ");"
        )
        + " echo p50/p99/p99.9"
        f" {_ms(percentile(rtt, 50))}/{_ms(percentile(rtt, 99))}/{_ms(percentile(rtt, 99.9))}"
        f" ms ({len(rtt):,} round trips); conntrack {r.get('conntrack')}"
        + (f"; with {' '.join(a.server_arg)}" if a.server_arg else "")
    )


def charts(results: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    def rtt(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(9, 4))
        for r in results:
            xs = [x[0] for x in r["rtts"]]
            ys = [max(x[1], 0.01) for x in r["rtts"]]
            ax.scatter(xs, ys, s=3, label=f"{r['variant']} (p99.9 {_p999(r):,.1f} ms)")
        if a.say_rate and a.say_after < a.duration:
            ax.axvline(a.say_after, color="grey", linestyle="--", label="says start")
        ax.set_yscale("log")
        ax.set_xlabel("send time since the active phase began, s")
        ax.set_ylabel("echo round trip, ms")
        ax.set_title(
            f"Echo round trips of {a.echo_clients} active clients beside"
            f" {results[0]['held']:,} idle connections on {a.shards} shard(s)"
        )
        ax.legend(loc="upper left", markerscale=4)
        return fig

    def shards(plt: Any) -> Any:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        for k, r in enumerate(results):
            xs = [i + k * 0.4 for i in range(len(r["per_shard"]))]
            left.bar(xs, [s["sockets"] for s in r["per_shard"]], width=0.4, label=r["variant"])
            right.bar(
                xs,
                [s["rss_kib"] / 1024 for s in r["per_shard"]],
                width=0.4,
                label=r["variant"],
            )
        left.set_title("sockets per shard")
        right.set_title("RSS per shard, MiB")
        for ax in (left, right):
            ax.set_xlabel("shard")
            ax.legend()
        return fig

    if not any(r["per_shard"] for r in results):  # --url
        return {"rtt": rtt}
    return {"rtt": rtt, "shards": shards}


def _p999(r: dict[str, Any]) -> float:
    return percentile(sorted(x[1] for x in r["rtts"]), 99.9)


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("idle", __doc__)
    parser.add_argument(
        "--connections",
        type=int,
        default=50_000,
        help=f"idle connections (default 50000, at most {MAX_CONNECTIONS:,})",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help=f"(default: 4, or one per {PER_SHARD:,} connections if more: 12 for 200000)",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=3000.0,
        help="connections started per second, all client processes together (default 3000)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="upgrades in flight per client process (default 64)",
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="active phase, seconds (default 20)"
    )
    parser.add_argument(
        "--gc", choices=["both", "tuned", "default"], default="tuned", help="(default tuned)"
    )
    add_server_arg(parser, "--server-arg=--durability --server-arg=stream")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"client processes, one loopback source address each (default: one per"
        f" {PER_WORKER:,} connections)",
    )
    parser.add_argument(
        "--idle-window", type=float, default=10.0, help="heartbeat-only window, s (default 10)"
    )
    parser.add_argument("--echo-clients", type=int, default=4)
    parser.add_argument("--echo-rate", type=float, default=50.0, help="per echo client, 1/s")
    parser.add_argument(
        "--say-rate",
        type=float,
        default=0.0,
        help="says per second in the churn half (default 0: none)",
    )
    parser.add_argument(
        "--say-after", type=float, default=None, help="start of the churn (default: half-way)"
    )
    parser.add_argument(
        "--url",
        help="hold the connections against a running server instead (ws://host:port/):"
        " nothing started; server RSS, CPU and log checks are then not available",
    )
    parser.add_argument(
        "--heartbeat",
        choices=sorted(PRESETS),
        default="short",
        help="the server's heartbeat preset: short 5 s/15 s (default), medium 30 s/60 s"
        " (the server's own default), long 300 s/600 s",
    )
    parser.add_argument(
        "--interval", type=float, default=None, help="heartbeat interval, s (default: preset)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="heartbeat timeout, s (default: preset)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="one more run with the tuned GC and no ping (the long preset): the shards' idle"
        " CPU without heartbeats, so the heartbeat's own cost per ping/pong can be told"
        " from the fixed per-session costs",
    )
    parser.add_argument(
        "--no-heartbeat",
        action="store_true",
        help="control run: --heartbeat long (no ping within the run) instead of"
        " --interval/--timeout",
    )
    a = parser.parse_args(argv)
    if not 1 <= a.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be in 1..{MAX_CONNECTIONS}")
    if a.shards is None:
        a.shards = max(4, math.ceil(a.connections / PER_SHARD))
    if a.workers is None:
        a.workers = max(1, math.ceil(a.connections / PER_WORKER))
    per_shard_cap = MAX_PER_PROCESS - 1_000  # the balance spreads a little
    if not 1 <= a.shards <= 32 or a.connections / a.shards > per_shard_cap:
        parser.error(
            f"--shards must be in 1..32, with at most {per_shard_cap:,} connections each"
            f" ({FILE_CAP:,} open files per process)"
        )
    if not 1 <= a.workers <= 64 or a.connections / a.workers > MAX_PER_PROCESS:
        parser.error(
            f"--workers must be in 1..64, with at most {MAX_PER_PROCESS:,} connections each"
            " (open files per process, and 28,232 ephemeral ports per source address)"
        )
    if not 0 < a.connect_rate <= 100_000 or not 1 <= a.concurrency <= 4096:
        parser.error("--connect-rate must be in (0, 100000] and --concurrency in 1..4096")
    if not 0 < a.duration <= 600 or not 0 < a.idle_window <= 120:
        parser.error("--duration must be in (0, 600] and --idle-window in (0, 120]")
    preset = PRESETS[a.heartbeat]
    a.interval = preset[0] if a.interval is None else a.interval
    a.timeout = preset[1] if a.timeout is None else a.timeout
    if not 0 < a.interval <= 3600 or not 0 < a.timeout <= 3600:
        parser.error("--interval and --timeout must be in (0, 3600]")
    # Every wait is bounded: connecting at the pace plus slack, then the whole run.
    a.connect_bound_s = min(3600.0, 4 * a.connections / a.connect_rate + 120)
    a.bound_s = a.connect_bound_s + a.idle_window + a.duration + 300
    a.heartbeat_text = (
        "the server's own"
        if a.url
        else "off (long preset)"
        if a.no_heartbeat
        else f"{a.interval:g} s/{a.timeout:g} s"
    )
    if not 1 <= a.echo_clients <= 64 or not 0 < a.echo_rate <= 1000 or a.say_rate < 0:
        parser.error("bad --echo-clients/--echo-rate/--say-rate")
    if a.say_after is None:
        a.say_after = a.duration / 2 if a.say_rate > 0 else a.duration
    a.say_after = min(max(0.0, a.say_after), a.duration)
    variants = ["tuned", "default"] if a.gc == "both" else [a.gc]
    if a.control and not a.no_heartbeat:
        variants.append("control")
    if a.url:
        variants = ["url"]

    run = Report(
        "idle", a, "Idle connections (python -m bench idle)", server=a.url or str(SERVER_ROOT)
    )
    print(
        "'tuned' = shards.__main__.tune_gc (gc.freeze + thresholds 50000/20/100); "
        "'default' = --no-gc-tuning (700/10/10)"
        + ("; 'control' = tuned, no ping (--heartbeat long)" if "control" in variants else ""),
        flush=True,
    )
    results = []
    with run.progress() as bar:
        for index, name in enumerate(variants):
            results.append(run_variant(name, index, a, bar))
    report(results, a)
    data = {
        "variants": [
            {k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in r.items()}
            for r in results
        ],
        "summary": [
            {
                "variant": r["variant"],
                "held": r["held"],
                "kib_per_connection": round(
                    (r["rss_after"] - r["rss_before"]) / max(1, r["held"]), 1
                ),
                "kib_per_connection_per_shard": [
                    round((sh["rss_kib"] - sh["rss_before_kib"]) / max(1, sh["sockets"]), 2)
                    for sh in r["per_shard"]
                ],
                "hb_cpu_pct": round(r["hb_cpu"], 1),
                "pings_per_s": round(r["pings_per_s"]),
                "hb_us_per_ping": round(r["us_per_ping"], 2),
                "hb_us_per_ping_over_control": (
                    round(r["us_per_ping_over_control"], 2)
                    if "us_per_ping_over_control" in r
                    else None
                ),
                "heartbeat": a.heartbeat_text,
                "p50_ms": round(percentile(sorted(x[1] for x in r["rtts"]), 50), 3),
                "p99_ms": round(percentile(sorted(x[1] for x in r["rtts"]), 99), 3),
                "conntrack": r.get("conntrack"),
                "closed": r["held"] - r["open_end"],
                "p99_9_ms": round(_p999(r), 2),
                "max_ms": round(max((x[1] for x in r["rtts"]), default=float("nan")), 2),
            }
            for r in results
        ],
    }
    run.finish(data, charts(results, a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
