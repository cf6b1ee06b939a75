"""Idle connections: how many a machine holds, what each costs, and the GC stalls they cause.

Run as ``python -m bench idle [--connections 50000] [--shards 4] [--duration 20]
[--gc tuned|default|both]``.

Default (about 1.5 min on 2 cores): 50,000 idle connections over 4 shards (12,500 each,
under the 20,000-open-files cap of a process) from 4 client processes, each bound to its
own loopback source address (127.0.0.2 ...: one address has 28k ephemeral ports). The GC
comparison of the foundation issue is ``--connections 10000 --shards 1 --gc both
--say-rate 0.2 --duration 30`` (about 2 min).

For each variant ('tuned' = the shards' ``tune_gc``; 'default' = ``--no-gc-tuning``,
CPython's thresholds) a fresh supervisor is started with heartbeats on
(``--interval 5 --timeout 15`` by default, ``--max-connections`` raised to fit)
and:

1. ``--connections`` idle WebSocket clients are opened from ``--workers`` processes
   (raw-socket epoll clients, one loopback source address each; they answer every ping
   with a pong and read everything the server sends);
2. shard RSS is read before and after connecting (``/proc/<pid>/status`` VmRSS), and
   each shard's open sockets (how evenly the connections were spread);
3. heartbeat CPU: the shards' utime+stime over ``--idle-window`` seconds with no other
   traffic than pings and pongs, as % of one core, and the pings the clients answered;
4. active phase (``--duration`` s): ``--echo-clients`` clients each send
   ``{"type":"echo","data":n}`` at ``--echo-rate``/s on a fixed (open-loop) schedule and
   time the round trip (a GC stall shows as late replies, not as fewer samples). With
   ``--say-rate`` > 0, from ``--say-after`` (default half-way: a 'quiet' and a 'churn'
   half) one more client also sends a 64-byte ``say`` at that rate, which the demo app
   delivers to every session (the allocation churn of a lobby chat: one frame per
   connection per say), and times the fan-out: its own copy, and the last idle
   session's copy (wall clock).

It checks that no ``event=disconnect`` line appeared during the run (an idle client
closed as a zombie would be ``kind=heartbeat_timeout``), then SIGTERMs the supervisor
(clients answer the 1012 close) and kills every pid it started. It also prints how much
CPU other processes used meanwhile (the machine may be shared). Output: the tables, and
``bench/results/idle-<stamp>.json`` with ``-rtt.png`` (every round trip over time) and
``-shards.png`` (sockets and RSS per shard).

``--url ws://host:port/`` holds the connections against a running server instead: no
server is started, and its RSS, CPU and log are not measured (its heartbeat settings are
its own).

``--no-heartbeat`` is the control run: ``--heartbeat long`` pings after 300 s of silence,
so no ping happens in the run. ``BENCH_SERVER_ROOT=DIR`` runs the server from another tree.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import statistics
import threading
import time
from typing import Any

from bench._load import (
    SERVER_ROOT,
    Child,
    Server,
    cpu_seconds,
    parse_ws_url,
    percentile,
    rss_kib,
)
from bench._report import Progress, Report, TreeCpu

# Control run (--no-heartbeat): the long preset pings after 300 s, i.e. never in a run.
NO_HEARTBEAT = ("--heartbeat", "long")


def run_variant(name: str, index: int, a: argparse.Namespace, bar: Progress) -> dict[str, Any]:
    heartbeat = ("--heartbeat-interval", f"{a.interval:g}", "--heartbeat-timeout", f"{a.timeout:g}")
    args = [*(NO_HEARTBEAT if a.no_heartbeat else heartbeat), "--drain-timeout", "5"]
    # Room for the load-aware balance's spread (1.1-1.2:1), under the 20,000-file cap.
    args += ["--max-connections", str(min(19_000, math.ceil(a.connections / a.shards * 1.3)))]
    if name == "default":
        args.append("--no-gc-tuning")
    server = Server(*args, shards=a.shards) if not a.url else None
    workers: list[Child] = []
    active: Child | None = None
    out: dict[str, Any] = {"variant": name}
    cpu = TreeCpu()
    try:
        if server is not None:
            server.start()
            pids = list(server.shard_pids().values())
            host, port = "127.0.0.1", str(server.port)
            time.sleep(1.0)
        else:  # --url: a running server; its processes are not ours to measure
            pids = []
            url_host, url_port, _ = parse_ws_url(a.url)
            host, port = url_host, str(url_port)
        # One loopback source address per client process (28k ephemeral ports each).
        loopback = host.startswith("127.")
        out["rss_before"] = sum(rss_kib(p) for p in pids)

        # ---- connect: one client process per loopback source address (28k ports each)
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
                    "--max-seconds",
                    "600",
                )
            )
        connected = _await_connected(workers, bar, f"{name}: connecting", a.connections)
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
        out["per_shard"] = [{"pid": p, "sockets": _sockets(p), "rss_kib": rss_kib(p)} for p in pids]

        # ---- idle window: heartbeats only
        pings0 = _pings(workers)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        bar.wait(a.idle_window, f"{name}: idle window")
        cpu1 = sum(cpu_seconds(p) for p in pids)
        t1 = time.monotonic()
        pings1 = _pings(workers)
        out["hb_cpu"] = 100.0 * (cpu1 - cpu0) / (t1 - t0) if pids else float("nan")
        out["pings_per_s"] = (pings1 - pings0) / (t1 - t0)

        # ---- active phase (shard CPU sampled every 0.25 s: CLOCK_MONOTONIC, as the child's)
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
        out["rtts"] = result["rtts"]
        out["lost"] = result["lost"]
        out["say_rtts"] = result["say_rtts"]
        out["say_lost"] = result["say_lost"]
        out["errors"] = result["errors"]

        # ---- nothing may have been closed during the run
        stats = [_stats(w) for w in workers]
        out["open_end"] = sum(s["open"] for s in stats)
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
        lines = server.lines if server is not None else []  # --url: its log is not ours
        raw = server.raw if server is not None else []
        disconnects = [f for f in lines if f.get("event") == "disconnect"]
        out["disconnects"] = collections.Counter(f.get("kind", "?") for f in disconnects)
        out["disconnect_lines"] = [
            line for line in raw if "event=disconnect" in line or "event=shard_exit" in line
        ][:5]
        out["other_events"] = collections.Counter(
            f.get("event")
            for f in lines
            if f.get("event") not in ("shard_spawn", "shard_ready", "ready", "disconnect")
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
            server.stop(timeout=20)
        if active is not None:
            active.stop()
        for w in workers:
            w.stop()
        out["others"] = cpu.close()["cpu_of_other_processes_pct"]
    return out


def _await_connected(
    workers: list[Child], bar: Progress, description: str, total: int
) -> list[dict[str, Any]]:
    """Each worker's ``connected`` report, with a bar fed by their ``progress`` lines."""
    task = bar.add(description, total=total)
    ok = [0] * len(workers)
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 300
    while len(done) < len(workers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers) - len(done)} client processes still connecting")
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


def _sockets(pid: int) -> int:
    """Open sockets of ``pid`` (its connections, plus a few of its own)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


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
    print("Memory and heartbeat cost (idle: only pings and pongs)")
    header = (
        f"{'variant':<8} {'held':>7} {'connect s':>9} {'RSS before':>10} {'RSS after':>10}"
        f" {'KiB/conn':>8} {'RSS end':>8} {'hb CPU %':>8} {'pings/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        per_conn = (r["rss_after"] - r["rss_before"]) / max(1, r["held"])
        print(
            f"{r['variant']:<8} {r['held']:>7,} {r['connect_s']:>9.1f}"
            f" {r['rss_before'] / 1024:>7.1f} MiB {r['rss_after'] / 1024:>6.1f} MiB"
            f" {per_conn:>8.1f} {r['rss_end'] / 1024:>4.0f} MiB {r['hb_cpu']:>8.1f}"
            f" {r['pings_per_s']:>8,.0f}"
        )
    print()
    quiet = "no other traffic" if a.no_heartbeat else "heartbeats only"
    churn = (
        f", 'churn' = plus a say to all {a.connections:,} sessions every {1 / a.say_rate:g} s"
        if a.say_rate and a.say_after < a.duration
        else ""
    )
    print(
        f"Echo round trip, ms: {a.echo_clients} clients x {a.echo_rate:g}/s for {a.duration:g} s;"
        f" 'quiet' = {quiet} (first {a.say_after:g} s){churn}"
    )
    header = (
        f"{'variant':<8} {'phase':<6} {'samples':>7} {'lost':>4} {'p50':>7} {'p99':>7}"
        f" {'p99.9':>7} {'max':>8} {'shard CPU %':>11}"
    )
    print(header)
    print("-" * len(header))
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
        header = (
            f"{'variant':<8} {'says':>4} {'copies/say':>10} {'own p50':>8} {'own max':>8}"
            f" {'all p50':>8} {'all max':>8}"
        )
        print(header)
        print("-" * len(header))
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
        worst = sorted(r["rtts"], key=lambda x: -x[1])[:5]
        text = ", ".join(f"{ms:,.0f} ms at {t:.1f} s" for t, ms in worst)
        print(f"{r['variant']}: slowest round trips (send time since start): {text}")
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
    parser = argparse.ArgumentParser(
        prog="python -m bench idle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--connections", type=int, default=50_000, help="(default 50000)")
    parser.add_argument("--shards", type=int, default=4, help="(default 4)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="active phase, seconds (default 20)"
    )
    parser.add_argument(
        "--gc", choices=["both", "tuned", "default"], default="tuned", help="(default tuned)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="client processes (default: 15,000 each)"
    )
    parser.add_argument("--idle-window", type=float, default=10.0)
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
        "--interval", type=float, default=5.0, help="heartbeat interval, s (default 5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="heartbeat timeout, s (default 15)"
    )
    parser.add_argument(
        "--no-heartbeat",
        action="store_true",
        help="control run: --heartbeat long (no ping within the run) instead of"
        " --interval/--timeout",
    )
    a = parser.parse_args(argv)
    if a.workers is None:
        a.workers = max(1, math.ceil(a.connections / 15_000))
    if not 1 <= a.connections <= 100_000:
        parser.error("--connections must be in 1..100000")
    if not 1 <= a.shards <= 16 or a.connections / a.shards > 15_000:
        parser.error("--shards must be in 1..16, with at most 15,000 connections each")
    if not 1 <= a.workers <= 16 or a.connections / a.workers > 15_000:
        parser.error("--workers must be in 1..16, with at most 15,000 connections each")
    if not 0 < a.duration <= 600 or not 0 < a.idle_window <= 120:
        parser.error("--duration must be in (0, 600] and --idle-window in (0, 120]")
    if not 1 <= a.echo_clients <= 64 or not 0 < a.echo_rate <= 1000 or a.say_rate < 0:
        parser.error("bad --echo-clients/--echo-rate/--say-rate")
    if a.say_after is None:
        a.say_after = a.duration / 2 if a.say_rate > 0 else a.duration
    a.say_after = min(max(0.0, a.say_after), a.duration)
    variants = ["tuned", "default"] if a.gc == "both" else [a.gc]
    if a.url:
        variants = ["url"]

    settings = {
        "connections": a.connections,
        "shards": a.shards,
        "client_processes": a.workers,
        "heartbeat": "the server's own"
        if a.url
        else "off (long preset)"
        if a.no_heartbeat
        else f"{a.interval:g} s/{a.timeout:g} s",
        "gc": a.gc,
        "idle_window_s": a.idle_window,
        "active_s": a.duration,
        "echo_clients": a.echo_clients,
        "echo_rate": a.echo_rate,
        "say_rate": a.say_rate,
        "server": a.url or str(SERVER_ROOT),
    }
    run = Report("idle", settings, "Idle connections (python -m bench idle)")
    print(
        "'tuned' = shards.__main__.tune_gc (gc.freeze + thresholds 50000/20/100); "
        "'default' = --no-gc-tuning (700/10/10)",
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
                "hb_cpu_pct": round(r["hb_cpu"], 1),
                "pings_per_s": round(r["pings_per_s"]),
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
