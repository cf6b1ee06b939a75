"""Broadcast fan-out latency: ``python -m bench broadcast [--clients 1000] [--shards 4]``.

Starts ``python -m supervisor --shards 4`` (default app) and connects N lobby receivers
(default 1000; ``--clients 1000,10000`` runs several sizes) spread over ``--client-procs``
separate processes of this module (``python -m bench broadcast recv ...``: raw sockets, a
hand-rolled frame codec, epoll; never the server's process), each from its own loopback
source address (127.0.0.2, 127.0.0.3, ...). One more raw connection, the sender, sends K
``say`` messages (default 5, 1 s apart). Every session on every shard gets ``said``; each
receiver process stamps the arrival of each ``said`` with ``time.monotonic()`` (one clock
for every process of the machine). Reported per say: the time from just before the
sender's ``sendall`` until the first, median, p99 and last receiver had it, and how many
of the N got it.

The same is then measured against ``bench/peers/websockets_broadcast.py`` (python-websockets,
one asyncio process, ``websockets.broadcast``; skipped with ``--no-peer`` or when
websockets is not installed).

``--url ws://host:port/`` measures the lobby of a running server instead (nothing started,
no peer; give it ``--max-message-rate 1e9 --message-burst 1e9``).

Output: a table; the JSON (per size and server: each say's figures, the percentiles 0..100
of all its receivers' latencies, connect time, the receivers' CPU seconds); ``-cdf.png``:
the latency CDF (time from the send to each receiver, all says pooled) per server and
size. The receivers share the 2 cores with the shards, so the tail includes the time the
receiver processes need to read N frames (their CPU seconds are in the JSON). 10,000
receivers (``--clients 10000``) connected in 5-10 s per server on the 2-core machine; the
whole run then took about 30 s with ``--says 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import select
import socket
import statistics
import sys
import time
from typing import Any

from bench._load import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    JsonProcess,
    Server,
    client_frame,
    open_ws,
    parse_ws_url,
    percentile,
)
from bench._report import Progress, Report
from bench.echo import PeerProcess

NO_RATE_LIMIT = ["--max-message-rate", "1e9", "--message-burst", "1e9"]
TAG = "bcast-"
PROGRESS_S = 0.2
CLOSE_NORMAL = (1000).to_bytes(2, "big")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Conn:
    __slots__ = ("sock", "parser")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser()


def _open(host: str, port: int, source: str | None = None) -> _Conn:
    """Connect (from ``source`` if given), upgrade, and read the welcome (not counted)."""
    sock, parser, _ = open_ws(host, port, source=source)
    conn = _Conn(sock)
    conn.parser = parser
    return conn


# ====================================================================== receiver process
def run_recv(a: argparse.Namespace) -> None:
    """Connect ``--conns`` (welcome each) from ``--source``; stamp every ``said`` until a
    line on stdin or ``--seconds``. JSON lines on stdout: ``progress`` (connected so far)
    every 0.2 s while connecting, ``ready``, then ``result`` ``{"times": {k: [t, ...]}}``."""
    _raise_nofile()
    conns = []
    last = time.monotonic()
    for i in range(a.conns):
        conns.append(_open(a.host, a.port, a.source))
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            _emit({"type": "progress", "connected": i + 1})
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin_fd = sys.stdin.fileno()
    ep.register(stdin_fd, select.EPOLLIN)
    _emit({"type": "progress", "connected": len(conns)})
    _emit({"type": "ready"})
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
    close = client_frame(OP_CLOSE, CLOSE_NORMAL)  # a clean 1000, not a dropped connection
    for c in conns:
        with contextlib.suppress(OSError):
            c.sock.send(close)
            c.sock.close()
    _emit(
        {
            "type": "result",
            "times": times,
            "errors": errors,
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        }
    )


# ====================================================================== the parent's side
class Receivers(JsonProcess):
    """One ``python -m bench broadcast recv`` process and what it has reported."""

    def __init__(self, cmd: list[str]) -> None:
        super().__init__(cmd)
        self.connected = 0
        self.ready = False
        self.result: dict[str, Any] | None = None
        self.eof = False

    def poll(self) -> None:
        for m in self.pending():
            kind = m.get("type")
            if kind == "progress":
                self.connected = m["connected"]
            elif kind == "ready":
                self.ready = True
            elif kind == "result":
                self.result = m
            elif kind == "eof":
                self.eof = True

    def finish(self) -> None:
        """Tell it to stop and print its result (it exits after that)."""
        self.send("stop")


def _wait(
    children: list[Receivers],
    what: str,
    seconds: float,
    bar: Progress | None = None,
    task: int = 0,
) -> bool:
    """Poll until every child is ``ready`` / has a ``result``; False at ``seconds`` or when
    one exited without it."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.05) + 2):
        for c in children:
            c.poll()
        if bar is not None:
            bar.update(task, completed=sum(c.connected for c in children))
        have = [c.ready if what == "ready" else c.result is not None for c in children]
        if all(have):
            return True
        if any(c.eof and not h for c, h in zip(children, have, strict=True)):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return False


# ====================================================================== one size
def measure(
    name: str,
    port: int,
    clients: int,
    a: argparse.Namespace,
    bar: Progress,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    procs = max(1, min(a.client_procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children: list[Receivers] = []
    sender = None
    t_connect = time.monotonic()
    sent: dict[str, float] = {}
    try:
        for i, n in enumerate(per):
            cmd = [sys.executable, "-m", "bench.broadcast", "recv", "--port", str(port)]
            cmd += ["--conns", str(n), "--seconds", str(a.says * a.interval + 120)]
            cmd += ["--host", host]
            if host.startswith("127."):  # one loopback source address per process
                cmd += ["--source", f"127.0.0.{2 + i % 250}"]
            children.append(Receivers(cmd))
        task = bar.add(f"{name}: connecting", total=clients)
        if not _wait(children, "ready", a.connect_timeout, bar, task):
            got = sum(c.connected for c in children)
            raise RuntimeError(
                f"{got} of {clients} receivers connected within {a.connect_timeout:g} s"
            )
        connect_s = time.monotonic() - t_connect
        sender = _open(host, port)
        sender.sock.setblocking(False)
        time.sleep(0.5)
        task = bar.add(f"{name}: says {a.interval:g} s apart", total=a.says)
        for k in range(a.says):
            frame = client_frame(OP_TEXT, json.dumps({"type": "say", "text": f"{TAG}{k}"}).encode())
            sent[str(k)] = time.monotonic()
            sender.sock.sendall(frame)
            time.sleep(a.interval)
            with contextlib.suppress(BlockingIOError):
                for _ in range(10_000):  # drain its own ``said`` copies
                    if not sender.sock.recv(65536):
                        break
            bar.update(task, completed=k + 1)
        time.sleep(max(0.0, 2.0 - a.interval))
        for c in children:
            c.finish()
        if not _wait(children, "result", 60.0):
            raise RuntimeError("a receiver process did not report within 60 s")
        results = [c.result for c in children if c.result is not None]
    finally:
        if sender is not None:
            with contextlib.suppress(OSError):
                sender.sock.setblocking(True)
                sender.sock.send(client_frame(OP_CLOSE, CLOSE_NORMAL))
            sender.sock.close()
        for c in children:
            c.kill()
    says = []
    pooled: list[float] = []
    for k, t0 in sent.items():
        lat = sorted((t - t0) * 1000 for res in results for t in res["times"].get(k, []))
        pooled += lat
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
    pooled.sort()
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
        # every say's receivers together: percentiles 0, 1, ..., 100 of the latency (ms)
        "cdf_ms": [round(percentile(pooled, q), 3) for q in range(101)] if pooled else [],
        "_pooled_ms": pooled,  # for the chart only; dropped before the JSON
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


def cdf_chart(rows: list[dict[str, Any]], a: argparse.Namespace) -> Any:
    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(10, 5.5))
        servers = list(dict.fromkeys(r["server"] for r in rows))
        colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
        styles = ["-", "--", ":", "-."]
        sizes = sorted({r["clients"] for r in rows})
        for r in rows:
            lat = r["_pooled_ms"]
            if not lat:
                continue
            n = len(lat)
            ys = [(i + 1) / n for i in range(n)]
            ax.step(
                lat,
                ys,
                where="post",
                color=colors[servers.index(r["server"]) % len(colors)],
                ls=styles[sizes.index(r["clients"]) % len(styles)],
                lw=1.5,
                label=f"{r['server']}, {r['clients']} clients: p50 "
                f"{percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(
            plt.FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else "")
        )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("ms from the say's send until this receiver had it (log scale)")
        ax.set_ylabel("fraction of receivers")
        ax.set_title(
            f"Broadcast fan-out: one say to every lobby client, {a.says} says pooled; "
            f"ours on {a.shards} shards",
            fontsize=10,
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        return fig

    return draw


def run_bench(a: argparse.Namespace) -> int:
    servers = [f"ours {a.shards}sh"] if not a.url else [f"url {a.url}"]
    skipped = ""
    if a.url:
        skipped = f"against {a.url}: the lobby at that host and port, no peer"
    elif a.peer and importlib.util.find_spec("websockets") is not None:
        servers.append("websockets 1proc")
    elif a.peer:
        skipped = "skip websockets: not installed (pip install -e '.[bench]')"
    report = Report(
        "broadcast",
        {
            "clients": a.clients,
            "shards": a.shards,
            "says": a.says,
            "interval_s": a.interval,
            "client_procs": a.client_procs,
            "receivers": "raw sockets + epoll",
            "servers": servers,
        },
    )
    if skipped:
        print(skipped, flush=True)
    rows = []
    with report.progress() as bar:
        for name in servers:
            server: Server | PeerProcess
            if a.url:  # a running server: nothing to start
                host, port, _ = parse_ws_url(a.url)
                for n in a.clients:
                    rows.append({"server": name, **measure(name, port, n, a, bar, host)})
                continue
            if name.startswith("ours"):
                server = Server(*NO_RATE_LIMIT, shards=a.shards)
            else:
                server = PeerProcess("bench.peers.websockets_broadcast", pin=False)
            try:
                server.start()
                for n in a.clients:
                    rows.append({"server": name, **measure(f"{name} {n}", server.port, n, a, bar)})
                    time.sleep(1.0)  # let the server forget the previous receivers
            finally:
                if isinstance(server, Server):
                    server.kill()
                else:
                    server.stop()
    print()
    print(table(rows))
    chart = cdf_chart(rows, a)
    data = {"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
    report.finish(data, charts={"cdf": chart})
    return 0


# ====================================================================== CLI
def _sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are positive integers, e.g. 1000,10000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["recv"]:
        p = argparse.ArgumentParser(prog="python -m bench broadcast recv")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--source", default=None, help="local address to connect from")
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
        "--connect-timeout",
        type=float,
        default=120.0,
        help="bound on connecting the receivers, s (default 120)",
    )
    p.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="skip the python-websockets peer (bench/peers/websockets_broadcast.py)",
    )
    p.add_argument(
        "--url",
        help="measure a running server's lobby instead (ws://host:port/): nothing started;"
        " start it with --max-message-rate 1e9 --message-burst 1e9",
    )
    a = p.parse_args(argv)
    if a.shards < 1 or a.says < 1 or a.interval <= 0 or a.client_procs < 1:
        p.error("--shards, --says and --client-procs must be >= 1, --interval > 0")
    return run_bench(a)


if __name__ == "__main__":
    sys.exit(main())
