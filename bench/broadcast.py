"""Broadcast fan-out latency: ``python -m bench broadcast [--clients 1000] [--shards 4]``.

Starts ``python -m supervisor --shards 4`` (default app, the per-client message rate
limit lifted for the bystanders' echoes; the per-shard broadcast budget, 200 says/s, and
the 4 KiB say cap are not reached) and connects N lobby receivers (default 1000;
``--clients 1000,10000`` runs several sizes) spread over ``--client-procs`` separate
processes (``python -m bench.clients recv ...``: raw sockets, the server's own frame
codec, epoll; never the server's process), each from its own loopback
source address (127.0.0.2, 127.0.0.3, ...). One more raw connection, the sender, sends
``--says`` ``say`` messages (default 5, 1 s apart). Every session on every shard gets
``said``; each receiver process stamps the arrival of each ``said`` with
``time.monotonic()`` (one clock for every process of the machine). Reported per say: the
time from just before the sender's ``sendall`` until the first, median, p99 and last
receiver had it, and how many of the N got it.

Bystanders: ``--bystanders`` more connections (default one per shard: the welcome says
which shard, so each shard's share of the fan-out is seen) send ``{"type":"echo"}`` every
``--echo-every-ms`` (default 2, open loop) around ``--echo-says`` further says (default
3), from 0.2 s before each (the baseline) until the next. Reported per such say ('e'):
the round trips of the echoes sent between the say and its last receiver (max, p50), i.e.
how long a client that is not part of the broadcast waits while the server writes it.
The echo traffic runs only around those says, so the plain says' figures are without it.

The same is then measured against ``bench/peers/websockets_broadcast.py`` (python-websockets,
one asyncio process, ``websockets.broadcast``; it answers echoes too; skipped with
``--no-peer`` or when websockets is not installed), and a last line gives ours over the
peer: medians of the plain says' last and first receiver, and of the bystanders' worst
echo.

``--url ws://host:port/`` measures the lobby of a running server instead (nothing started,
no peer; give it ``--max-message-rate 1e9 --message-burst 1e9``).

Output: a table; the JSON (per size and server: each say's figures, the percentiles 0..100
of the plain says' receiver latencies, connect time, the receivers' CPU seconds, the
bystanders' shards); ``-cdf.png``: the latency CDF (time from the send to each receiver,
plain says pooled) per server and size. The receivers share the 2 cores with the server,
so every time includes the time the receiver processes need to read N frames (their CPU
seconds are printed: about 10-25 us per frame; a whole small frame per read is taken
without the general parser and its tag found without a JSON decode). 10,000 receivers
(``--clients 10000``) connect in 10-15 s per server on the 2-core machine.

Why over 300 lines: besides the fan-out it drives the bystanders from this process (an
open-loop echo schedule around each say, ``Bystanders``) and runs everything against the
python-websockets peer too; the receivers are ``bench.clients.recv``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._report import Progress, Report, percentile, scenario_parser
from bench.clients import Child, wait_all
from bench.echo import PeerProcess
from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from lab.rawws import ServerFrames, client_frame, open_ws, parse_ws_url
from lab.server import Server

NO_RATE_LIMIT = ["--max-message-rate", "1e9", "--message-burst", "1e9"]
TAG = "bcast-"  # a said's text is TAG + the say's number (``bench.clients.recv`` finds it)
CLOSE_NORMAL = (1000).to_bytes(2, "big")


# ====================================================================== bystanders
class Bystanders:
    """A few connections that send ``echo`` on a fixed schedule (open loop: every
    ``every_s``, whatever the replies do) around each say, and time each round trip: how
    long an echo from a client that is not part of the broadcast waits while the server
    writes it. For our server one is kept per shard (the welcome names its shard; up to 4
    connections per wanted bystander are tried), since each shard writes its own share.
    The sender's socket is read here too, to drain its own ``said`` copies."""

    def __init__(
        self, host: str, port: int, count: int, every_s: float, sender: socket.socket
    ) -> None:
        self.every_s = every_s
        self.socks: list[socket.socket] = []
        self.parsers: list[ServerFrames] = []
        self.shards: list[Any] = []
        spare: list[socket.socket] = []
        for _ in range(4 * count):
            if len(self.socks) >= count:
                break
            sock, parser, welcome = open_ws(host, port, timeout=10.0)
            shard = (welcome or {}).get("shard")
            if shard is not None and shard in self.shards:
                spare.append(sock)  # a shard that has one already
                continue
            self.socks.append(sock)
            self.parsers.append(parser)
            self.shards.append(shard)
        for sock in spare:
            _close(sock)
        self.ep = select.epoll()
        self.by_fd: dict[int, int] = {}
        for i, sock in enumerate(self.socks):
            sock.setblocking(False)
            self.ep.register(sock.fileno(), select.EPOLLIN)
            self.by_fd[sock.fileno()] = i
        self.sender = sender
        sender.setblocking(False)
        self.ep.register(sender.fileno(), select.EPOLLIN)
        self.sent: dict[int, tuple[int, float]] = {}  # echo number -> (bystander, sent at)
        self.rtts: list[tuple[float, float, int]] = []  # (sent at, round trip ms, bystander)
        self.errors: dict[str, int] = {}
        self.count = 0

    def run(self, until: float, at: float, action: Callable[[], None]) -> None:
        """Echo on schedule until ``until`` (monotonic); call ``action`` once at ``at``."""
        n = len(self.socks) if self.every_s < math.inf else 0  # inf: quiet
        start = time.monotonic()
        due = [start + i * self.every_s / max(1, n) for i in range(n)]
        pending: Callable[[], None] | None = action
        sends = (until - start) / self.every_s * n if n else 0
        for _ in range(int(3 * sends) + 100_000):  # bounded (ends at ``until``)
            now = time.monotonic()
            if pending is not None and now >= at:
                pending()
                pending = None
                now = time.monotonic()
            if now >= until:
                break
            for i in range(n):
                if due[i] <= now:
                    self.count += 1
                    frame = client_frame(OP_TEXT, b'{"type":"echo","data":%d}' % self.count)
                    self.sent[self.count] = (i, time.monotonic())
                    try:
                        self.socks[i].send(frame)
                    except OSError as exc:
                        self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                    # open loop, but no catch-up burst after a stall of this process
                    due[i] = max(due[i] + self.every_s, now)
            wake = min([*due, until] + ([at] if pending is not None else []))
            self._read(max(0.0, wake - time.monotonic()))
        if pending is not None:  # only if the bound was hit first
            pending()

    def _read(self, timeout: float) -> None:
        for fd, _ in self.ep.poll(timeout):
            i = self.by_fd.get(fd)
            sock = self.sender if i is None else self.socks[i]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b""
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            t = time.monotonic()
            if not data:
                self.errors["closed"] = self.errors.get("closed", 0) + 1
                self.ep.unregister(fd)
                continue
            if i is None:
                continue  # the sender's own said copies
            for op, body in self.parsers[i].feed(data):
                if op == OP_TEXT and body.startswith(b'{"type":"echo"'):
                    sent = self.sent.pop(json.loads(body)["data"], None)
                    if sent is not None:
                        self.rtts.append((sent[1], (t - sent[1]) * 1000.0, sent[0]))
                elif op == OP_PING:
                    sock.send(client_frame(OP_PONG, body))

    def during(self, start: float, end: float) -> list[float]:
        """Round trips (ms) of the echoes sent in [start, end], ascending."""
        return sorted(ms for t, ms, _ in self.rtts if start <= t <= end)

    def close(self) -> None:
        self.ep.close()
        for sock in self.socks:
            _close(sock)


def _close(sock: socket.socket) -> None:
    """A clean 1000 (not a dropped connection, which the server would log as abnormal)."""
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.send(client_frame(OP_CLOSE, CLOSE_NORMAL))
    sock.close()


# ====================================================================== one size
def _connected(child: Child) -> int:
    return child.progress.get("connected", 0)


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
    children: list[Child] = []
    sender = None
    bystanders: Bystanders | None = None
    t_connect = time.monotonic()
    sent: dict[str, float] = {}
    try:
        for i, n in enumerate(per):
            args = ["--port", str(port), "--conns", str(n), "--host", host]
            args += ["--seconds", str(a.says * a.interval + 120)]
            if host.startswith("127."):  # one loopback source address per process
                args += ["--source", f"127.0.0.{2 + i % 250}"]
            children.append(Child("recv", *args))
        task = bar.add(f"{name}: connecting", total=clients)
        if not wait_all(children, "ready", a.connect_timeout, _connected, bar, task):
            got = sum(_connected(c) for c in children)
            raise RuntimeError(
                f"{got} of {clients} receivers connected within {a.connect_timeout:g} s"
            )
        connect_s = time.monotonic() - t_connect
        sender, _, _ = open_ws(host, port)
        bystanders = Bystanders(host, port, a.bystanders, a.echo_every_ms / 1000, sender)
        time.sleep(0.5)
        total = a.says + (a.echo_says if a.bystanders else 0)
        task = bar.add(f"{name}: says {a.interval:g} s apart", total=total)
        # First the plain says (the fan-out figures), then the echo says: the bystanders
        # echo from PRE s before each (their baseline) until the next one. Separate, so
        # the echo traffic does not weigh on the fan-out figures.
        pre = min(0.2, a.interval / 4)
        for k in range(total):
            frame = client_frame(OP_TEXT, json.dumps({"type": "say", "text": f"{TAG}{k}"}).encode())
            bystanders.every_s = a.echo_every_ms / 1000 if k >= a.says else math.inf

            def say(k: int = k, frame: bytes = frame) -> None:
                assert sender is not None
                sent[str(k)] = time.monotonic()
                sender.setblocking(True)
                sender.sendall(frame)
                sender.setblocking(False)

            start = time.monotonic()
            bystanders.run(until=start + pre + a.interval, at=start + pre, action=say)
            bar.update(task, completed=k + 1)
        time.sleep(max(0.0, 2.0 - a.interval))
        for c in children:
            c.finish()
        if not wait_all(children, "result", 60.0):
            raise RuntimeError("a receiver process did not report within 60 s")
        results = [c.result for c in children if c.result is not None]
    finally:
        if bystanders is not None:
            bystanders.close()
        if sender is not None:
            _close(sender)
        for c in children:
            c.kill()
    says = []
    pooled: list[float] = []
    pre = min(0.2, a.interval / 4)
    for k, t0 in sent.items():
        lat = sorted((t - t0) * 1000 for res in results for t in res["times"].get(k, []))
        if int(k) < a.says:  # the plain says (no echo traffic) for the CDF
            pooled += lat
        # Echoes sent while the broadcast was being written (say -> last receiver), and
        # before the say (the baseline).
        during = bystanders.during(t0, t0 + lat[-1] / 1000) if bystanders and lat else []
        before = bystanders.during(t0 - pre, t0 - 1e-9) if bystanders else []
        says.append(
            {
                "say": int(k),
                "echoes": int(k) >= a.says,  # an echo say: the bystanders were echoing
                "received": len(lat),
                "first_ms": round(lat[0], 2) if lat else None,
                "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                "p99_ms": round(percentile(lat, 99), 2) if lat else None,
                "last_ms": round(lat[-1], 2) if lat else None,
                "echoes_during": len(during),
                "echo_max_ms": round(during[-1], 2) if during else None,
                "echo_p50_ms": round(percentile(during, 50), 2) if during else None,
                "echo_base_p50_ms": round(percentile(before, 50), 2) if before else None,
            }
        )
    pooled.sort()
    errors: dict[str, int] = {}
    for res in results:
        for key, v in res["errors"].items():
            errors[key] = errors.get(key, 0) + v
    if bystanders is not None:
        for key, v in bystanders.errors.items():
            errors[f"bystander {key}"] = errors.get(f"bystander {key}", 0) + v
    return {
        "clients": clients,
        "client_procs": procs,
        "connect_s": round(connect_s, 2),
        "receiver_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "bystanders": len(bystanders.socks) if bystanders else 0,
        "bystander_shards": bystanders.shards if bystanders else [],
        "bystander_echoes": len(bystanders.rtts) if bystanders else 0,
        "errors": errors,
        "says": says,
        # every say's receivers together: percentiles 0, 1, ..., 100 of the latency (ms)
        "cdf_ms": [round(percentile(pooled, q), 3) for q in range(101)] if pooled else [],
        "_pooled_ms": pooled,  # for the chart only; dropped before the JSON
    }


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _median(says: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in says if s.get(key) is not None]
    return statistics.median(values) if values else None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "first/p50/p99/last: ms from the say's send until that receiver had it. Says marked"
        " 'e' were sent while the bystanders echoed; echo max/p50: round trips of the echoes"
        " sent between such a say and its last receiver, base: in the 0.2 s before it."
        " recv cpu: the receiver processes' CPU seconds (they share the cores with the"
        " server). med: the plain says; med e: the echo says",
        f"{'server':16} {'clients':>7} {'say':>5} {'got':>7} {'first ms':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'last ms':>8} {'echo max':>8} {'echo p50':>8} {'echo base':>9}",
    ]
    for r in rows:
        for s in r["says"]:
            label = f"{s['say']}{'e' if s.get('echoes') else ''}"
            if s["received"]:
                lines.append(
                    f"{r['server']:16} {r['clients']:>7} {label:>5} {s['received']:>7} "
                    f"{s['first_ms']:>9.2f} "
                    f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['last_ms']:>8.2f}"
                    f" {_f(s['echo_max_ms']):>8} {_f(s['echo_p50_ms']):>8}"
                    f" {_f(s['echo_base_p50_ms']):>9}"
                )
            else:
                lines.append(
                    f"{r['server']:16} {r['clients']:>7} {label:>5} {0:>7}  (nobody got it)"
                )
        for label, echoes in (("med", False), ("med e", True)):
            ok = [s for s in r["says"] if s["received"] and bool(s.get("echoes")) is echoes]
            if not ok:
                continue

            def med(key: str, ok: list[dict[str, Any]] = ok) -> str:
                return _f(_median(ok, key))

            lines.append(
                f"{r['server']:16} {r['clients']:>7} {label:>5} {'':>7} {med('first_ms'):>9} "
                f"{med('p50_ms'):>8} {med('p99_ms'):>8} {med('last_ms'):>8}"
                f" {med('echo_max_ms'):>8} {med('echo_p50_ms'):>8} {med('echo_base_p50_ms'):>9}"
            )
        lines.append(
            f"{'':16} {'':>7} receivers connected in {r['connect_s']:.1f} s, recv cpu"
            f" {r['receiver_cpu_s']:.2f} s; {r['bystanders']} bystanders (shards"
            f" {r['bystander_shards']}), {r['bystander_echoes']:,} echoes"
        )
        if r["errors"]:
            lines.append(f"        errors {r['errors']}")
    lines += ratios(rows)
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Ours over the peer at each size, medians over the plain says of the last and the
    first receiver's time (below 1: ours is faster), and the bystanders' worst wait."""
    out = []
    for n in sorted({r["clients"] for r in rows}):
        ours = [r for r in rows if r["clients"] == n and r["server"].startswith("ours")]
        peer = [r for r in rows if r["clients"] == n and r["server"].startswith("websockets")]
        if not ours or not peer:
            continue
        plain_o = [s for s in ours[0]["says"] if not s.get("echoes")]
        plain_w = [s for s in peer[0]["says"] if not s.get("echoes")]
        echo_o = [s for s in ours[0]["says"] if s.get("echoes")]
        echo_w = [s for s in peer[0]["says"] if s.get("echoes")]
        parts = []
        for o, w, key, label in (
            (plain_o, plain_w, "last_ms", "last receiver"),
            (plain_o, plain_w, "first_ms", "first receiver"),
            (echo_o, echo_w, "echo_max_ms", "bystander echo max"),
        ):
            mo, mw = _median(o, key), _median(w, key)
            if mo is not None and mw:
                parts.append(f"{label} {mo:.1f} / {mw:.1f} ms = {mo / mw:.2f}x")
        if parts:
            out.append(f"ours / websockets at {n:,} clients (medians): " + "; ".join(parts))
    return out


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
        a,
        receivers="raw sockets + epoll",
        servers=servers,
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
    p = scenario_parser("broadcast", __doc__, shards=4)
    p.add_argument(
        "--clients", type=_sizes, default=[1000], help="receivers, comma-separated (default 1000)"
    )
    p.add_argument("--says", type=int, default=5, help="say messages per size (default 5)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between says (default 1)")
    p.add_argument("--client-procs", type=int, default=2, help="receiver processes (default 2)")
    p.add_argument(
        "--bystanders",
        type=int,
        default=None,
        help="connections that echo around each say, one per shard (default: --shards)",
    )
    p.add_argument(
        "--echo-says",
        type=int,
        default=3,
        help="more says after --says, with the bystanders echoing (default 3)",
    )
    p.add_argument(
        "--echo-every-ms",
        type=float,
        default=2.0,
        help="each bystander sends an echo this often, open loop (default 2)",
    )
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
    if a.says < 1 or a.interval <= 0 or a.client_procs < 1:
        p.error("--says and --client-procs must be >= 1, --interval > 0")
    if a.bystanders is None:
        a.bystanders = a.shards
    if not 0 <= a.bystanders <= 64 or not 0.1 <= a.echo_every_ms <= 1000:
        p.error("--bystanders must be in 0..64 and --echo-every-ms in [0.1, 1000]")
    if not 0 <= a.echo_says <= 100:
        p.error("--echo-says must be in 0..100")
    return run_bench(a)


if __name__ == "__main__":
    sys.exit(main())
