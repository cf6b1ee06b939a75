"""Echo throughput and round-trip latency against peer servers: ``python -m bench echo``.

Each *measurement* is a closed loop at C concurrent connections (default 1 and 100): every
connection sends one masked text frame (a ~40-byte JSON ``{"type":"echo","data":...}``),
waits for the reply frame, records the round trip, and sends the next. It stops at
``--count`` messages or ``--seconds`` (whichever comes first). Reported: replies per second
(all replies / the slowest client process's wall time) and round-trip p50/p99/p99.9.

Servers (each on a free port of 127.0.0.1, started and killed by pid in a ``finally``):

* ``ours echo 1sh``  ``python -m supervisor --app echo --shards 1`` (raw frame echo);
* ``ours echo 2sh``  the same with ``--shards 2`` (not pinned: both cores);
* ``ours demo 1sh``  the default app: welcome, then ``{"type":"echo",...,"seq":n}``;
* ``websockets``     python-websockets (asyncio) echo, ``bench/peers/websockets_echo.py``;
* ``aiohttp``        aiohttp echo, ``bench/peers/aiohttp_echo.py`` (skipped if missing);
* ``picows``         picows + uvloop echo, ``bench/peers/picows_echo.py`` (skipped if missing).

Our servers run with the per-client message rate limit lifted (``--max-message-rate``),
otherwise a closed loop is closed 1008 after the burst. On a machine with >= 2 CPUs and
``taskset``, every single-process server (and our 1-shard supervisor with its shard) is
pinned to CPU 0 and the load generator to the other CPUs; the 2-shard run is not pinned.

The load generator is ``--client-procs`` separate processes of this module
(``python -m bench.echo client ...``: raw sockets, a hand-rolled frame codec, epoll), never
the server's process. Its CPU use is reported so a client-bound row can be spotted.

Output: a table (with each row's ratio to the best peer at the same connection count), a
JSON file ``bench/results/echo-<timestamp>.json`` and, with matplotlib, a PNG next to it.

``--url ws://host:port/`` measures a running server instead (only it: no peers, no
pinning, no profile; ``--url-raw-echo`` if it runs ``--app echo``).

Profile: unless ``--no-profile``, one more measurement of ``ours echo 1sh`` at the most
connections runs under ``py-spy record --nonblocking -r 200`` on the shard's pid, and the
self time of the sampled stacks is printed by package (trio, trio-websocket, wsproto,
msgspec, our shards/ and core/, the standard library) with the top functions: where one
shard's time goes. About 10 s more; the raw samples are kept in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._load import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Server,
    client_frame,
    open_ws,
    parse_ws_url,
    percentile,
)
from bench._report import Report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NO_RATE_LIMIT = ["--max-message-rate", "1e9", "--message-burst", "1e9"]


# ====================================================================== client process
class _Conn:
    __slots__ = ("sock", "parser", "t0", "done")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser()
        self.t0 = 0.0
        self.done = False


def _open(host: str, port: int, path: str, welcome: bool) -> _Conn:
    sock, parser, _ = open_ws(host, port, path, welcome=welcome, timeout=10.0)
    conn = _Conn(sock)
    conn.parser = parser
    return conn


def run_client(a: argparse.Namespace) -> None:
    """Connect ``--conns``, print ``ready``, wait for a line on stdin, run, print JSON."""
    conns = [_open(a.host, a.port, a.path, a.welcome) for _ in range(a.conns)]
    payload = json.dumps({"type": "echo", "data": "x" * a.payload}, separators=(",", ":"))
    frame = client_frame(OP_TEXT, payload.encode())
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    sys.stdin.readline()

    rtts: list[float] = []
    errors: dict[str, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    perf = time.perf_counter
    start = perf()
    deadline = start + a.seconds
    sent = 0
    active = len(conns)
    for c in conns:
        c.t0 = perf()
        c.sock.sendall(frame)
        sent += 1
    hard_stop = deadline + 10.0
    while active:
        events = ep.poll(1.0)
        if perf() > hard_stop:
            errors["stuck"] = active
            break
        for fd, _ in events:
            c = by_fd[fd]
            if c.done:
                continue
            try:
                data = c.sock.recv(65536)
            except OSError as exc:
                data = b""
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if not data:
                errors["closed"] = errors.get("closed", 0) + 1
                c.done = True
                active -= 1
                ep.unregister(fd)
                continue
            for op, body in c.parser.feed(data):
                if op == OP_PING:
                    c.sock.sendall(client_frame(OP_PONG, body))
                    continue
                if op == OP_CLOSE:
                    errors["close_frame"] = errors.get("close_frame", 0) + 1
                    c.done = True
                    active -= 1
                    break
                if op not in (OP_TEXT, OP_BINARY):
                    continue
                now = perf()
                rtts.append(now - c.t0)
                if sent >= a.count or now >= deadline:
                    c.done = True
                    active -= 1
                    break
                c.t0 = now
                c.sock.sendall(frame)
                sent += 1
    elapsed = perf() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    for c in conns:
        with contextlib.suppress(OSError):
            c.sock.sendall(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            c.sock.close()
    out = {
        "received": len(rtts),
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "errors": errors,
        "rtt_us": [round(r * 1e6, 1) for r in rtts],
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# ====================================================================== servers
@dataclass
class Target:
    name: str
    kind: str  # "ours" | "peer" | "url"
    args: list[str] = field(default_factory=list)  # ours: supervisor args; peer: module; url
    shards: int = 1
    pin: bool = True
    welcome: bool = False
    skip: str = ""  # reason, if skipped


def _can_pin() -> bool:
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2


def _client_cpus() -> str:
    return f"1-{(os.cpu_count() or 2) - 1}"


class PeerProcess:
    """``python -m bench.peers.<module> --port 0``; the port from its ``ready`` line."""

    def __init__(self, module: str, pin: bool) -> None:
        cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0"]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        self.port = 0
        self.pids = [self.process.pid]

    def start(self, timeout: float = 30.0) -> None:
        assert self.process.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.process.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        line = box[0] if box else ""
        if not line.startswith("ready port="):
            raise RuntimeError(f"peer did not start: {line!r} (exit {self.process.poll()})")
        self.port = int(line.split("=", 1)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def targets(only: list[str] | None) -> list[Target]:
    pin = _can_pin()
    out = [
        Target("ours echo 1sh", "ours", ["--app", "echo"], 1, pin),
        Target("ours echo 2sh", "ours", ["--app", "echo"], 2, False),
        Target("ours demo 1sh", "ours", ["--app", "demo"], 1, pin, welcome=True),
        Target("websockets", "peer", ["bench.peers.websockets_echo"], pin=pin),
        Target("aiohttp", "peer", ["bench.peers.aiohttp_echo"], pin=pin),
        Target("picows", "peer", ["bench.peers.picows_echo"], pin=pin),
    ]
    needs = {"aiohttp": ["aiohttp"], "picows": ["picows", "uvloop"], "websockets": ["websockets"]}
    for t in out:
        missing = [m for m in needs.get(t.name, []) if importlib.util.find_spec(m) is None]
        if missing:
            t.skip = f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"
    if only:
        out = [t for t in out if any(o in t.name for o in only)]
    return out


# ====================================================================== one measurement
def measure(
    port: int,
    t: Target,
    conns: int,
    a: argparse.Namespace,
    pin_clients: bool,
    host: str = "127.0.0.1",
    path: str = "/",
) -> dict[str, Any]:
    procs = max(1, min(a.client_procs, conns))
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    children: list[subprocess.Popen[str]] = []
    try:
        for n in per:
            cmd = [
                sys.executable,
                "-m",
                "bench.echo",
                "client",
                "--host",
                host,
                "--port",
                str(port),
                "--path",
                path,
                "--conns",
                str(n),
                "--count",
                str(max(1, a.count * n // conns)),
                "--seconds",
                str(a.seconds),
                "--payload",
                str(a.payload),
            ]
            if t.welcome:
                cmd.append("--welcome")
            if pin_clients:
                cmd = ["taskset", "-c", _client_cpus(), *cmd]
            children.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"client did not connect (exit {child.wait()})")
        for child in children:  # go: all together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=a.seconds + 30)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    rtts = sorted(r for res in results for r in res["rtt_us"])
    elapsed = max(res["elapsed_s"] for res in results)
    errors: dict[str, int] = {}
    for res in results:
        for k, v in res["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "server": t.name,
        "connections": conns,
        "messages": len(rtts),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(len(rtts) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(rtts, 50) / 1000, 3),
        "p99_ms": round(percentile(rtts, 99) / 1000, 3),
        "p999_ms": round(percentile(rtts, 99.9) / 1000, 3),
        # client CPU as a share of the client cores it had: near 1.0 = client-bound
        "client_cpu": round(
            sum(res["cpu_s"] for res in results)
            / (elapsed * (min(procs, (os.cpu_count() or 2) - 1) if pin_clients else procs)),
            2,
        ),
        "errors": errors,
    }


def our_server(t: Target) -> Server:
    """Our supervisor for ``t`` (not started): rate limit lifted, pinned to CPU 0 if ``t.pin``."""
    server = Server(*t.args, *NO_RATE_LIMIT, shards=t.shards)
    if t.pin:
        server.cmd = ["taskset", "-c", "0", *server.cmd]
    return server


def run_target(t: Target, a: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if t.kind == "url":  # a running server: nothing to start or pin
        host, port, path = parse_ws_url(t.args[0])
        for c in a.connections:
            rows.append(measure(port, t, c, a, pin_clients=False, host=host, path=path))
    elif t.kind == "ours":
        server = our_server(t)
        try:
            server.start()
            for c in a.connections:
                rows.append(measure(server.port, t, c, a, pin_clients=t.pin))
        finally:
            server.kill()
    else:
        peer = PeerProcess(t.args[0], t.pin)
        try:
            peer.start()
            for c in a.connections:
                rows.append(measure(peer.port, t, c, a, pin_clients=t.pin))
        finally:
            peer.stop()
    return rows


# ====================================================================== profile
# Self time of sampled stacks, by where the innermost frame's code lives.
PACKAGES = (
    ("trio_websocket", "/trio_websocket/"),
    ("wsproto", "/wsproto/"),
    ("trio", "/trio/"),
    ("msgspec", "/msgspec/"),
    ("ours: shards/", "/shards/"),
    ("ours: core/", "/core/"),
    ("ours: supervisor/", "/supervisor/"),
    ("h11", "/h11/"),
    ("outcome", "/outcome/"),
    ("sortedcontainers", "/sortedcontainers/"),
)


def package_of(frame: str) -> str:
    """``func (path:line)`` -> the package its code is in."""
    # py-spy names files relative to their sys.path entry: "trio/_socket.py:1050".
    path = "/" + frame.rsplit("(", 1)[-1].rstrip(")")
    for name, needle in PACKAGES:
        if needle in path:
            return name
    top = path[1:].split("/", 1)[0].split(":", 1)[0].removesuffix(".py")
    return "python stdlib" if top in sys.stdlib_module_names else "other"


def leaf_shares(collapsed: str, key: Callable[[str], str] = str) -> list[tuple[str, float]]:
    """Share of the samples (py-spy ``--format raw``) per ``key`` of the innermost frame,
    largest first."""
    counts: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            k = key(stack.rsplit(";", 1)[-1])
            counts[k] = counts.get(k, 0) + int(n)
    total = sum(counts.values()) or 1
    return [(k, round(c / total, 3)) for k, c in sorted(counts.items(), key=lambda kv: -kv[1])]


def self_time_by_package(collapsed: str) -> dict[str, float]:
    """Share of samples whose innermost frame is in each package."""
    return dict(leaf_shares(collapsed, package_of))


def top_functions(collapsed: str, n: int = 12) -> list[tuple[str, float]]:
    return leaf_shares(collapsed)[:n]


def profile_ours(a: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """py-spy on the one shard of ``ours echo 1sh`` during a measurement at the most
    connections: self time by package. Not counted in the table (sampling costs a bit)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (pip install -e '.[bench]')"}
    t = targets(["ours echo 1sh"])[0]
    conns = max(a.connections)
    server = our_server(t)
    raw = out_dir / "echo-profile.txt"
    spy_proc: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        pid = server.shard_pids()[0]
        spy_proc = subprocess.Popen(
            [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(raw)]
            + ["-d", str(int(a.seconds)), "--pid", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        row = measure(server.port, t, conns, a, pin_clients=t.pin)
        _, err = spy_proc.communicate(timeout=a.seconds + 30)
        if spy_proc.returncode != 0 or not raw.exists():
            return {"skipped": f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"}
    finally:
        if spy_proc is not None and spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
        server.kill()
    collapsed = raw.read_text()
    return {
        "server": t.name,
        "connections": conns,
        "msgs_per_s_while_sampled": row["msgs_per_s"],
        "samples": sum(int(x.rpartition(" ")[2]) for x in collapsed.splitlines() if x.strip()),
        "by_package": self_time_by_package(collapsed),
        "top_functions": top_functions(collapsed),
        "raw": str(raw),
    }


def profile_text(p: dict[str, Any]) -> str:
    if "skipped" in p:
        return f"profile: skipped: {p['skipped']}"
    lines = [
        f"Where one shard's time goes: py-spy on '{p['server']}' at {p['connections']}"
        f" connections ({p['samples']:,} samples, {p['msgs_per_s_while_sampled']:.0f} msgs/s"
        " while sampled); self time of the innermost frame, by package:"
    ]
    lines += [f"  {name:18} {share * 100:5.1f} %" for name, share in p["by_package"].items()]
    lines.append("  top functions (self):")
    lines += [f"  {share * 100:5.1f} %  {frame}" for frame, share in p["top_functions"]]
    return "\n".join(lines)


# ====================================================================== report
def add_ratios(rows: list[dict[str, Any]], peer_names: set[str]) -> None:
    """``ratio`` = msgs/s of the row / msgs/s of the best peer at the same connections."""
    for c in {r["connections"] for r in rows}:
        peers = [r for r in rows if r["connections"] == c and r["server"] in peer_names]
        best = max(peers, key=lambda r: r["msgs_per_s"], default=None)
        for r in rows:
            if r["connections"] == c:
                r["best_peer"] = best["server"] if best else None
                r["ratio"] = round(r["msgs_per_s"] / best["msgs_per_s"], 2) if best else None


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'server':15} {'conns':>5} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'vs best':>8} {'cli cpu':>7}"
    )
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["connections"], -r["msgs_per_s"])):
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        err = f"  errors {r['errors']}" if r["errors"] else ""
        if r["client_cpu"] >= 0.9:
            err += "  (client-bound: msgs/s is a lower bound)"
        lines.append(
            f"{r['server']:15} {r['connections']:>5} {r['msgs_per_s']:>9.0f} "
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['p999_ms']:>9.3f} {ratio:>8} "
            f"{r['client_cpu']:>7.2f}{err}"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], plt: Any) -> Any:
    conns = sorted({r["connections"] for r in rows})
    fig, axes = plt.subplots(1, len(conns), figsize=(6 * len(conns), 4), squeeze=False)
    for ax, c in zip(axes[0], conns, strict=True):
        sub = sorted((r for r in rows if r["connections"] == c), key=lambda r: -r["msgs_per_s"])
        names = [r["server"] for r in sub]
        colors = ["tab:orange" if n.startswith("ours") else "tab:blue" for n in names]
        ax.bar(names, [r["msgs_per_s"] for r in sub], color=colors)
        ax.set_title(f"{c} connection{'s' if c > 1 else ''}: echo msgs/s")
        ax.tick_params(axis="x", rotation=30)
    return fig


def run_bench(a: argparse.Namespace) -> int:
    settings = {
        "connections": a.connections,
        "count": a.count,
        "seconds": a.seconds,
        "client_procs": a.client_procs,
        "payload": a.payload,
        "pinning": "server CPU 0 / clients CPU " + _client_cpus()
        if _can_pin() and not a.url
        else "off",
        "profile": a.profile and not a.url,
        "url": a.url,
    }
    run = Report("echo", settings, "Echo vs peers (python -m bench echo)")
    if a.url:
        ts = [Target(f"url {'raw' if a.url_raw_echo else 'demo'}", "url", [a.url], pin=False)]
        ts[0].welcome = not a.url_raw_echo
        a.profile = False  # not our process to sample
        print(f"against {a.url}: no peers, no pinning, no profile", flush=True)
    else:
        ts = targets(a.only)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    profile: dict[str, Any] = {}
    with run.progress() as bar:
        task = bar.add("servers", total=len(ts) + (1 if a.profile else 0))
        for t in ts:
            bar.update(task, description=t.name)
            if t.skip:
                skipped[t.name] = t.skip
                print(f"skip {t.name}: {t.skip}", flush=True)
                bar.advance(task)
                continue
            t0 = time.monotonic()
            try:
                got = run_target(t, a)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                skipped[t.name] = f"failed: {exc!r}"
                print(f"skip {t.name}: failed: {exc!r}", flush=True)
                bar.advance(task)
                continue
            rows.extend(got)
            summary = ", ".join(f"{r['connections']}c {r['msgs_per_s']:.0f}/s" for r in got)
            print(f"done {t.name:15} {summary} ({time.monotonic() - t0:.1f} s)", flush=True)
            bar.advance(task)
        if a.profile:
            bar.update(task, description="profile (py-spy)")
            profile = profile_ours(a, Path(tempfile.mkdtemp(prefix="bench-echo-")))
            bar.advance(task)
    add_ratios(rows, {t.name for t in ts if t.kind == "peer"})
    print()
    print(table(rows))
    if a.profile:
        print()
        print(profile_text(profile))
    for name, why in skipped.items():
        print(f"skipped:  {name}: {why}")
    data = {"rows": rows, "skipped": skipped, "profile": profile}
    run.finish(data, {"msgs": lambda plt: chart(rows, plt)} if rows else {})
    return 0


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        p = argparse.ArgumentParser(prog="python -m bench.echo client")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--path", default="/")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--conns", type=int, default=1)
        p.add_argument("--count", type=int, default=100_000)
        p.add_argument("--seconds", type=float, default=8.0)
        p.add_argument("--payload", type=int, default=16)
        p.add_argument("--welcome", action="store_true")
        run_client(p.parse_args(argv[1:]))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m bench echo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--connections", type=int, nargs="+", default=[1, 100], help="(default 1 100)")
    p.add_argument(
        "--seconds", type=float, default=8.0, help="time bound per measurement (default 8)"
    )
    p.add_argument(
        "--count",
        type=int,
        default=400_000,
        help="message bound per measurement (default 400000)",
    )
    p.add_argument("--client-procs", type=int, default=2, help="load processes (default 2)")
    p.add_argument("--payload", type=int, default=16, help="bytes of 'data' (default 16)")
    p.add_argument(
        "--only", nargs="+", help="servers whose name contains any of these (e.g. ours picows)"
    )
    p.add_argument(
        "--url",
        help="measure a running server instead (ws://host:port/): only it, nothing pinned;"
        " start it with --max-message-rate 1e9 --message-burst 1e9 or the closed loop is"
        " closed 1008 by the rate limit",
    )
    p.add_argument(
        "--url-raw-echo",
        action="store_true",
        help="the server at --url runs --app echo (no welcome frame; default: the demo app)",
    )
    p.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the py-spy profile of our 1-shard echo (done by default when py-spy is"
        " installed: one more measurement at the most connections)",
    )
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
