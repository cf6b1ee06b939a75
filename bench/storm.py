"""Reconnect storm after a crash: ``python -m bench storm [--clients 2000] [--shards 2]``.

N clients (default 2000; the issue asks for 10,000, which ``--clients 10000`` runs, but on
this 2-core machine 10,000 trio reconnecting clients in the load processes alone take
more CPU than a 60-s bound allows) connect with the reconnecting client library
(``client.open_reconnecting_client``, ``Backoff(base, cap, max_retries=None, jitter)``),
spread over ``--client-procs`` separate processes of this module
(``python -m bench.storm clients ...``). Then the server is killed abruptly: SIGKILL of the
supervisor and of every shard (pids from its ``shard_spawn`` log lines), and at once a new
supervisor is started on the same port. Every client sees its connection die (1006) and
reconnects after its backoff; the session is gone with the old shards, so the answer is a
new session (``SessionLost`` + ``Connected``), counted as a welcome like a resume would be.

Measured client-side from the ``welcome`` timestamps (``time.monotonic()``, one clock for
all processes): the peak welcomes per second (most welcomes in one 100 ms bucket x 10) and
the time from the kill until the last client was connected again, once with jitter
``"full"`` and once with ``"none"``. Every run is bounded by ``--seconds`` (default 60).

Output: a table with both rows and the ratio of the peak rates (none/full), and
``bench/results/storm-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench._load import Server, machine_info

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BUCKET_S = 0.1


# ====================================================================== client process
def run_clients(a: argparse.Namespace) -> None:
    """Run ``--conns`` reconnecting clients; print ``ready`` once each had a welcome; at
    a line on stdin, or when each had ``--welcomes``, or at ``--seconds``, print JSON."""
    import trio

    from client.reconnecting import Away, Connected, GaveUp, Resumed, open_reconnecting_client
    from core.backoff import Backoff

    logging.getLogger("client").setLevel(logging.ERROR)  # one line per lost session
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backoff = Backoff(base=a.base, cap=a.cap, max_retries=None, jitter=a.jitter)
    url = f"ws://{a.host}:{a.port}/"
    welcomes: list[float] = []
    per_client = [0] * a.conns
    gave_up: list[str] = []
    aways: dict[str, int] = {}
    ready = trio.Event()
    done = trio.Event()

    def welcomed(i: int) -> None:
        welcomes.append(time.monotonic())
        per_client[i] += 1
        if not ready.is_set() and all(per_client):
            ready.set()
        if all(n >= a.welcomes for n in per_client):
            done.set()

    async def one(i: int) -> None:
        async with open_reconnecting_client(url, backoff=backoff) as client:
            async for event in client.events():
                if isinstance(event, Connected | Resumed):
                    welcomed(i)
                elif isinstance(event, Away):
                    if per_client[i] > 1:  # the kill itself is expected; later drops are not
                        key = f"{event.code} {event.reason}"[:80]
                        aways[key] = aways.get(key, 0) + 1
                elif isinstance(event, GaveUp):
                    gave_up.append(event.reason)
                    return

    async def stdin_stop() -> None:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if line.strip():  # EOF (parent gone or stdin closed) is not a stop
            done.set()

    async def main() -> None:
        with trio.move_on_after(a.seconds):
            async with trio.open_nursery() as nursery:
                for i in range(a.conns):
                    nursery.start_soon(one, i)
                await ready.wait()
                print("ready", flush=True)
                nursery.start_soon(stdin_stop)
                await done.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
    out = {
        "welcomes": welcomes,
        "reconnected": sum(1 for n in per_client if n >= a.welcomes),
        "gave_up": gave_up[:5],
        "away_after_reconnect": aways,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# ====================================================================== one run
def _line(child: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    assert child.stdout is not None
    reader = threading.Thread(target=lambda: box.append(child.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def run_one(jitter: str, a: argparse.Namespace) -> dict[str, Any]:
    extra = ["--shards", str(a.shards)]
    first = Server(shards=a.shards)
    second: Server | None = None
    children: list[subprocess.Popen[str]] = []
    t_start = time.monotonic()
    try:
        first.start()
        port = first.port
        procs = max(1, min(a.client_procs, a.clients))
        per = [a.clients // procs + (1 if i < a.clients % procs else 0) for i in range(procs)]
        for n in per:
            cmd = [sys.executable, "-m", "bench.storm", "clients", "--port", str(port)]
            cmd += ["--conns", str(n), "--jitter", jitter, "--base", str(a.base)]
            cmd += ["--cap", str(a.cap), "--seconds", str(a.seconds), "--welcomes", "2"]
            children.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for child in children:
            left = a.seconds - (time.monotonic() - t_start)
            if _line(child, max(1.0, left)).strip() != "ready":
                raise RuntimeError(f"clients did not connect within {a.seconds:g} s")
        connect_s = time.monotonic() - t_start
        time.sleep(1.0)
        killed = first.all_pids()
        t_kill = time.monotonic()
        first.kill()  # SIGKILL: supervisor + every shard_spawn pid
        kill_s = time.monotonic() - t_kill
        second = Server(shards=a.shards)
        second.cmd[second.cmd.index("--port") + 1] = str(port)
        second.start()
        t_up = time.monotonic()
        results = []
        for child in children:
            left = max(1.0, a.seconds - (time.monotonic() - t_kill) + 5)
            line = _line(child, left)
            if not line.strip():
                assert child.stdin is not None
                child.stdin.write("stop\n")
                child.stdin.flush()
                line = _line(child, 15.0)
            results.append(json.loads(line) if line.strip() else {"welcomes": [], "reconnected": 0})
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
        first.kill()
        if second is not None:
            second.kill()
    server_log: dict[str, int] = {}
    notable: list[str] = []  # shard exits and the like on the restarted server, verbatim
    if second is not None:
        with second._cond:
            lines = list(second.lines)
        for f in lines:
            key = f.get("event", "?")
            if key == "disconnect":
                key += f" kind={f.get('kind')} code={f.get('code')}"
            server_log[key] = server_log.get(key, 0) + 1
        notable = [
            raw
            for raw in list(second.raw)
            if any(w in raw for w in ("shard_exit", "orphaned", "Traceback", "Error"))
        ][:20]
        if server_log.get("shard_exit"):  # keep the whole log of a crash for the report
            RESULTS.mkdir(parents=True, exist_ok=True)
            crash = RESULTS / f"storm-{jitter}-{int(time.time())}-restarted-server.log"
            crash.write_text("\n".join(second.raw) + "\n")
            notable.append(f"full log: {crash.relative_to(ROOT)}")
    after = sorted(t for r in results for t in r["welcomes"] if t > t_kill)
    buckets: dict[int, int] = {}
    for t in after:
        b = int((t - t_kill) / BUCKET_S)
        buckets[b] = buckets.get(b, 0) + 1
    peak_bucket = max(buckets, key=lambda b: buckets[b]) if buckets else 0
    reconnected = sum(r["reconnected"] for r in results)
    return {
        "jitter": jitter,
        "clients": a.clients,
        "shards": a.shards,
        "server_args": extra,
        "killed_pids": len(killed),
        "initial_connect_s": round(connect_s, 2),
        "kill_s": round(kill_s, 3),
        "restart_ready_s": round(t_up - t_kill, 2),
        "reconnected": reconnected,
        "welcomes_after_kill": len(after),
        "peak_per_s": buckets.get(peak_bucket, 0) / BUCKET_S,
        "peak_at_s": round(peak_bucket * BUCKET_S, 1),
        "all_back_s": round(after[-1] - t_kill, 2) if reconnected == a.clients else None,
        "p50_back_s": round(after[len(after) // 2] - t_kill, 2) if after else None,
        "gave_up": [g for r in results for g in r.get("gave_up", [])][:5],
        "away_after_reconnect": [r.get("away_after_reconnect", {}) for r in results],
        # dropped again after the reconnect's welcome / shards of the new server that died
        "redrops": sum(sum(r.get("away_after_reconnect", {}).values()) for r in results),
        "shard_exits": server_log.get("shard_exit", 0),
        "restarted_server_log": server_log,
        "restarted_server_notable": notable,
        "per_bucket": [buckets.get(i, 0) for i in range(max(buckets, default=-1) + 1)],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "redrops: clients dropped again after their reconnect welcome; shard exits: shards of "
        "the restarted server that died during the storm (log kept in bench/results/)",
        f"{'jitter':6} {'clients':>7} {'back':>6} {'restart s':>9} {'peak/s':>7} "
        f"{'peak at s':>9} {'p50 back s':>10} {'all back s':>10} {'redrops':>7} "
        f"{'shard exits':>11}",
    ]
    for r in rows:
        allb = f"{r['all_back_s']:.2f}" if r["all_back_s"] is not None else "not all"
        p50 = f"{r['p50_back_s']:.2f}" if r["p50_back_s"] is not None else "-"
        lines.append(
            f"{r['jitter']:6} {r['clients']:>7} {r['reconnected']:>6} "
            f"{r['restart_ready_s']:>9.2f} {r['peak_per_s']:>7.0f} {r['peak_at_s']:>9.1f} "
            f"{p50:>10} {allb:>10} {r['redrops']:>7} {r['shard_exits']:>11}"
        )
    by = {r["jitter"]: r for r in rows}
    if "none" in by and "full" in by and by["full"]["peak_per_s"]:
        ratio = by["none"]["peak_per_s"] / by["full"]["peak_per_s"]
        lines.append(f"peak accept rate none/full: {ratio:.2f}x")
    return "\n".join(lines)


def run_bench(a: argparse.Namespace) -> int:
    info = machine_info()
    print("\n".join(info))
    print(
        f"settings: {a.clients} clients (default 2000, not the issue's 10,000: 2 cores must "
        f"run the shards and the trio clients; --clients 10000 to try), --shards {a.shards}, "
        f"Backoff(base={a.base:g}, cap={a.cap:g}, max_retries=None), {a.client_procs} client "
        f"procs, <= {a.seconds:g} s per run",
        flush=True,
    )
    rows = []
    for jitter in a.jitter:
        t0 = time.monotonic()
        rows.append(run_one(jitter, a))
        print(f"done jitter={jitter} ({time.monotonic() - t0:.1f} s)", flush=True)
    print()
    print(table(rows))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"storm-{stamp}.json"
    settings = {
        "clients": a.clients,
        "shards": a.shards,
        "base": a.base,
        "cap": a.cap,
        "client_procs": a.client_procs,
        "seconds": a.seconds,
    }
    doc = {"scenario": "storm", "info": info, "settings": settings, "rows": rows}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults:  {out.relative_to(ROOT)}")
    return 0


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clients"]:
        p = argparse.ArgumentParser(prog="python -m bench.storm clients")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--conns", type=int, default=1)
        p.add_argument("--jitter", default="full")
        p.add_argument("--base", type=float, default=1.0)
        p.add_argument("--cap", type=float, default=30.0)
        p.add_argument("--seconds", type=float, default=60.0)
        p.add_argument("--welcomes", type=int, default=2)
        run_clients(p.parse_args(argv[1:]))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m bench storm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--clients",
        type=int,
        default=2000,
        help="reconnecting clients (default 2000: a 2-core machine; the issue asks 10000)",
    )
    p.add_argument("--shards", type=int, default=2, help="server shards (default 2)")
    p.add_argument("--base", type=float, default=1.0, help="Backoff base s (default 1)")
    p.add_argument("--cap", type=float, default=30.0, help="Backoff cap s (default 30)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--seconds", type=float, default=60.0, help="bound per run (default 60)")
    p.add_argument("--jitter", nargs="+", default=["full", "none"], help="runs (default full none)")
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
