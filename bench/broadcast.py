"""Broadcast fan-out latency: ``python -m bench broadcast [--clients 1000] [--shards 4]``.

Starts ``python -m supervisor --shards 4`` (default app) and connects N lobby receivers
(default 1000; ``--clients 1000,10000`` runs several sizes) spread over ``--client-procs``
separate processes of this module (``python -m bench.broadcast recv ...``: raw sockets, a
hand-rolled frame codec, epoll; never the server's process). One more raw connection, the
sender, sends K ``say`` messages (default 5, 1 s apart). Every session on every shard gets
``said``; each receiver process stamps the arrival of each ``said`` with
``time.monotonic()`` (one clock for every process of the machine). Reported per say: the
time from just before the sender's ``sendall`` until the first, median, p99 and last
receiver had it, and how many of the N got it.

The same is then measured against ``bench/peers/websockets_broadcast.py`` (python-websockets,
one asyncio process, ``websockets.broadcast``; skipped with ``--no-peer`` or when
websockets is not installed).

Output: a table and ``bench/results/broadcast-<timestamp>.json``. The receivers share the
2 cores with the shards, so the tail includes the time the receiver processes need to read
N frames (their CPU seconds are in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._load import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Server,
    client_frame,
    machine_info,
    percentile,
)
from bench.echo import PeerProcess, _open

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NO_RATE_LIMIT = ["--max-message-rate", "1e9", "--message-burst", "1e9"]
TAG = "bcast-"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ====================================================================== receiver process
def run_recv(a: argparse.Namespace) -> None:
    """Connect ``--conns`` (welcome each), print ``ready``; stamp every ``said`` until a
    line on stdin or ``--seconds``; print JSON ``{"times": {k: [monotonic, ...]}}``."""
    _raise_nofile()
    conns = [_open(a.host, a.port, welcome=True, timeout=30.0) for _ in range(a.conns)]
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin_fd = sys.stdin.fileno()
    ep.register(stdin_fd, select.EPOLLIN)
    print("ready", flush=True)
    times: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + a.seconds
    now = time.monotonic
    running = True
    while running and now() < deadline:
        for fd, _ in ep.poll(0.5):
            if fd == stdin_fd:
                running = False
                break
            c = by_fd[fd]
            try:
                data = c.sock.recv(65536)
            except OSError as exc:
                data = b""
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            t = now()
            if not data:
                errors["closed"] = errors.get("closed", 0) + 1
                ep.unregister(fd)
                continue
            for op, body in c.parser.feed(data):
                if op == OP_PING:
                    c.sock.sendall(client_frame(OP_PONG, body))
                elif op == OP_CLOSE:
                    errors["close_frame"] = errors.get("close_frame", 0) + 1
                elif op == OP_TEXT and b'"said"' in body:
                    text = json.loads(body).get("text", "")
                    if text.startswith(TAG):
                        times.setdefault(text[len(TAG) :], []).append(t)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        with contextlib.suppress(OSError):
            c.sock.close()
    out = {
        "times": times,
        "errors": errors,
        "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# ====================================================================== one size
def measure(port: int, clients: int, a: argparse.Namespace) -> dict[str, Any]:
    procs = max(1, min(a.client_procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children: list[subprocess.Popen[str]] = []
    sender = None
    t_connect = time.monotonic()
    try:
        for n in per:
            cmd = [sys.executable, "-m", "bench.broadcast", "recv", "--port", str(port)]
            cmd += ["--conns", str(n), "--seconds", str(a.says * a.interval + 60)]
            children.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"receiver did not connect (exit {child.wait()})")
        connect_s = time.monotonic() - t_connect
        sender = _open("127.0.0.1", port, welcome=True)
        sender.sock.setblocking(False)
        sent: dict[str, float] = {}
        time.sleep(0.5)
        for k in range(a.says):
            frame = client_frame(OP_TEXT, json.dumps({"type": "say", "text": f"{TAG}{k}"}).encode())
            sent[str(k)] = time.monotonic()
            sender.sock.sendall(frame)
            time.sleep(a.interval)
            with contextlib.suppress(BlockingIOError):
                while sender.sock.recv(65536):  # drain its own ``said`` copies
                    pass
        time.sleep(max(0.0, 2.0 - a.interval))
        results = []
        for child in children:
            out, _ = child.communicate("stop\n", timeout=60)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        if sender is not None:
            sender.sock.close()
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    says = []
    for k, t0 in sent.items():
        lat = sorted((t - t0) * 1000 for res in results for t in res["times"].get(k, []))
        says.append(
            {
                "say": int(k),
                "received": len(lat),
                "first_ms": round(lat[0], 2) if lat else None,
                "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                "p99_ms": round(percentile(lat, 99), 2) if lat else None,
                "last_ms": round(lat[-1], 2) if lat else None,
            }
        )
    errors: dict[str, int] = {}
    for res in results:
        for key, v in res["errors"].items():
            errors[key] = errors.get(key, 0) + v
    return {
        "clients": clients,
        "client_procs": procs,
        "connect_s": round(connect_s, 2),
        "receiver_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "errors": errors,
        "says": says,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'server':16} {'clients':>7} {'say':>4} {'got':>7} {'first ms':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'last ms':>8}"
    ]
    for r in rows:
        for s in r["says"]:
            if s["received"]:
                lines.append(
                    f"{r['server']:16} {r['clients']:>7} {s['say']:>4} {s['received']:>7} "
                    f"{s['first_ms']:>9.2f} "
                    f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['last_ms']:>8.2f}"
                )
            else:
                lines.append(
                    f"{r['server']:16} {r['clients']:>7} {s['say']:>4} {0:>7}  (nobody got it)"
                )
        ok = [s for s in r["says"] if s["received"]]
        if ok:

            def med(key: str, ok: list[dict[str, Any]] = ok) -> float:
                return statistics.median(s[key] for s in ok)

            lines.append(
                f"{r['server']:16} {r['clients']:>7} {'med':>4} {'':>7} {med('first_ms'):>9.2f} "
                f"{med('p50_ms'):>8.2f} {med('p99_ms'):>8.2f} {med('last_ms'):>8.2f}"
            )
        if r["errors"]:
            lines.append(f"        errors {r['errors']}")
    return "\n".join(lines)


def run_bench(a: argparse.Namespace) -> int:
    info = machine_info()
    print("\n".join(info))
    print(
        f"settings: clients {a.clients}, shards {a.shards}, {a.says} says {a.interval:g} s "
        f"apart, {a.client_procs} receiver procs (raw sockets + epoll)",
        flush=True,
    )
    rows = []
    servers = [f"ours {a.shards}sh"]
    if a.peer and importlib.util.find_spec("websockets") is not None:
        servers.append("websockets 1proc")
    elif a.peer:
        print("skip websockets: not installed (pip install -e '.[bench]')", flush=True)
    for name in servers:
        server: Server | PeerProcess
        if name.startswith("ours"):
            server = Server(*NO_RATE_LIMIT, shards=a.shards)
        else:
            server = PeerProcess("bench.peers.websockets_broadcast", pin=False)
        try:
            server.start()
            for n in a.clients:
                t0 = time.monotonic()
                rows.append({"server": name, **measure(server.port, n, a)})
                print(
                    f"done {name} {n} clients: connected in {rows[-1]['connect_s']} s, "
                    f"run {time.monotonic() - t0:.1f} s",
                    flush=True,
                )
                time.sleep(1.0)  # let the server forget the previous receivers
        finally:
            if isinstance(server, Server):
                server.kill()
            else:
                server.stop()
    print()
    print(table(rows))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"broadcast-{stamp}.json"
    settings = {
        "clients": a.clients,
        "shards": a.shards,
        "says": a.says,
        "interval_s": a.interval,
        "client_procs": a.client_procs,
        "servers": servers,
    }
    doc = {"scenario": "broadcast", "info": info, "settings": settings, "rows": rows}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults:  {out.relative_to(ROOT)}")
    return 0


# ====================================================================== CLI
def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["recv"]:
        p = argparse.ArgumentParser(prog="python -m bench.broadcast recv")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--conns", type=int, default=1)
        p.add_argument("--seconds", type=float, default=60.0)
        run_recv(p.parse_args(argv[1:]))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m bench broadcast",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--clients", type=_sizes, default=[1000], help="receivers, comma-separated (default 1000)"
    )
    p.add_argument("--shards", type=int, default=4, help="server shards (default 4)")
    p.add_argument("--says", type=int, default=5, help="say messages per size (default 5)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between says (default 1)")
    p.add_argument("--client-procs", type=int, default=2, help="receiver processes (default 2)")
    p.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="skip the python-websockets peer (bench/peers/websockets_broadcast.py)",
    )
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
