"""Echo throughput and round-trip latency against peer servers: ``python -m bench echo``.

Each *measurement* is a closed loop at C concurrent connections (default 1, 100 and 1000):
every connection sends one masked text frame (a ~40-byte JSON ``{"type":"echo","data":...}``),
waits for the reply frame, records the round trip, and sends the next. After ``--warmup``
seconds of that (not counted) it stops at ``--count`` messages or ``--seconds`` (whichever
comes first; the requests in flight then drain). Reported: replies per second (all replies
/ the slowest client process's time) and round-trip p50/p99/p99.9 from the clients' merged
histograms. Each measurement runs ``--repeat`` times (default 3); the table shows the run
with the median msgs/s and the spread of the runs, the JSON every run.

Servers (each on a free port of 127.0.0.1, started and killed by pid in a ``finally``):

* ``ours echo 1sh``  ``python -m supervisor --app echo --shards 1`` (raw frame echo);
* ``ours echo 2sh``  the same with ``--shards 2`` (not pinned: both cores);
* ``ours demo 1sh``  the default app: welcome, then ``{"type":"echo",...,"seq":n}``;
* ``ours demo stream`` the same with ``--durability stream`` (each reply journaled to the
  supervisor before it is sent): the cost of exactly-once through a crash;
* ``websockets``     python-websockets (asyncio) raw echo, ``bench/peers/websockets_echo.py``;
* ``aiohttp``        aiohttp echo, ``bench/peers/aiohttp_echo.py`` (skipped if missing);
* ``picows``         picows + uvloop echo, ``bench/peers/picows_echo.py`` (skipped if missing).

A line under the table gives the default app's msgs/s over python-websockets' raw echo at
each connection count (``ours demo 1sh`` / ``websockets``).

Our servers run with the per-client message rate limit lifted (``--max-message-rate``),
otherwise a closed loop is closed 1008 after the burst. On a machine with >= 2 CPUs and
``taskset``, every single-process server (and our 1-shard supervisor with its shard) is
pinned to CPU 0 and the load generator to the other CPUs; the 2-shard run is not pinned.

The load generator is native: ``bench/loadgen/echo_client.c`` (raw sockets, epoll, its own
frame parser, a log-linear round-trip histogram), compiled on first use with the machine's
C compiler into ``bench/results/.build/`` and run as ``--client-procs`` processes (default
1), never in the server's process; they sleep in ``epoll_wait`` between replies unless
``--client-spin-us`` says otherwise. Each row shows the client's busy CPU (>= 0.9 means the
row is client-bound), the server's CPU, and notes other processes' or the hypervisor's CPU
use meanwhile: the figures are only as good as the machine is quiet.

Output: a table (with each row's ratio to the best peer at the same connection count), a
JSON file ``bench/results/echo-<timestamp>.json`` and, with matplotlib, a PNG next to it.

``--url ws://host:port/`` measures a running server instead (only it: no peers, no
pinning, no profile; ``--url-raw-echo`` if it runs ``--app echo``).

Profile: unless ``--no-profile``, one more measurement of ``ours echo 1sh`` at the most
connections runs under ``py-spy record --nonblocking -r 200`` on the shard's pid, and the
self time of the sampled stacks is printed by package (trio, trio-websocket, wsproto,
msgspec, our shards/ and core/, the standard library) with the top functions: where one
shard's time goes. About 10 s more; the raw samples are kept in a temporary directory.

Why over 300 lines: six servers (ours three ways, three peers) with CPU pinning, the
native load generator's histograms merged over processes and runs, a py-spy profile of
the shard attributed by package, and the ratios between servers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._report import Report, scenario_parser
from bench.loadgen import NativeBuildError, echo_client
from lab.procfs import CLK_TCK, cpu_seconds
from lab.rawws import parse_ws_url
from lab.server import Server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NO_RATE_LIMIT = ["--max-message-rate", "1e9", "--message-burst", "1e9"]


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
        Target(
            "ours demo stream",
            "ours",
            ["--app", "demo", "--durability", "stream"],
            1,
            pin,
            welcome=True,
        ),
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
PER_SOURCE = 20_000  # connections per loopback source address (ephemeral ports: ~28k)


def write_payload(directory: Path, size: int) -> Path:
    """The request every connection sends: ``{"type":"echo","data":"xxx..."}``."""
    path = directory / "payload.json"
    data = {"type": "echo", "data": "x" * size}
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="ascii")
    return path


def merge_hists(results: list[dict[str, Any]]) -> dict[float, int]:
    """The clients' round-trip histograms added up: {bucket's highest value in us: count}."""
    merged: dict[float, int] = {}
    for res in results:
        for upper, n in res["rtt_us_hist"]["buckets"]:
            merged[upper] = merged.get(upper, 0) + n
    return dict(sorted(merged.items()))


def hist_percentile(hist: dict[float, int], q: float, cap: float = math.inf) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a merged histogram, in us: the highest
    value of the bucket holding that rank (within 0.8 %), at most ``cap`` (the max)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = max(1, math.ceil(total * q / 100))
    seen = 0
    for upper, n in hist.items():
        seen += n
        if seen >= rank:
            return min(upper, cap)
    return min(max(hist), cap)


def _sources(host: str, conns: int) -> list[str]:
    """Loopback source addresses for ``conns`` connections from one process, if it needs more
    than one (each address has ~28k ephemeral ports towards one server port)."""
    if conns <= PER_SOURCE or not host.startswith("127."):
        return []
    return [f"127.0.0.{i + 1}" for i in range(math.ceil(conns / PER_SOURCE))]


def machine_cpu_s() -> tuple[float, float, float]:
    """CPU seconds all CPUs spent since boot (/proc/stat) in tasks (user, nice, system), in
    interrupts (irq, softirq: on loopback mostly the TCP work of both ends, charged to no
    process) and stolen by the hypervisor."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) / CLK_TCK for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2], v[5] + v[6], v[7]


def measure(
    port: int,
    t: Target,
    conns: int,
    a: argparse.Namespace,
    pin_clients: bool,
    host: str = "127.0.0.1",
    path: str = "/",
    server_pids: list[int] | None = None,
    on_go: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One closed-loop run of ``conns`` connections from ``--client-procs`` C clients;
    ``on_go`` is called once they are all connected, just before they start."""
    procs = max(1, min(a.client_procs, conns))
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    children: list[subprocess.Popen[str]] = []
    server_pids = server_pids or []
    try:
        for n in per:
            cmd = [str(a.client_binary), "--host", host, "--port", str(port), "--path", path]
            cmd += ["--conns", str(n), "--count", str(max(1, a.count * n // conns))]
            cmd += ["--seconds", str(a.seconds), "--warmup", str(a.warmup)]
            cmd += ["--payload-file", str(a.payload_file)]
            if t.welcome:
                cmd.append("--welcome")
            if sources := _sources(host, n):
                cmd += ["--source-addrs", ",".join(sources)]
            if pin_clients:  # a core of their own: may poll without sleeping (--client-spin-us)
                cmd = ["taskset", "-c", _client_cpus(), *cmd, "--spin-us", str(a.client_spin_us)]
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
        if on_go is not None:
            on_go()
        server0 = sum(cpu_seconds(pid) for pid in server_pids)
        machine0, wall0 = machine_cpu_s(), time.monotonic()
        for child in children:  # go: all together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=a.warmup + a.seconds + 30)
            results.append(json.loads(out.strip().splitlines()[-1]))
        server_s = sum(cpu_seconds(pid) for pid in server_pids) - server0
        wall = time.monotonic() - wall0
        tasks_s, irq_s, steal_s = (y - x for x, y in zip(machine0, machine_cpu_s(), strict=True))
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    hist = merge_hists(results)
    received = sum(res["received"] for res in results)
    elapsed = max(res["elapsed_s"] for res in results)
    errors: dict[str, int] = {}
    for res in results:
        for k, v in res["errors"].items():
            errors[k] = errors.get(k, 0) + v
    opened = sum(res["opened"] for res in results)
    if opened < conns:
        errors["not_opened"] = conns - opened
    cores = min(procs, (os.cpu_count() or 2) - 1) if pin_clients else procs
    top = max(res["max_us"] for res in results)
    client_cpu_s = sum(res["cpu_s"] for res in results)
    return {
        "messages": received,
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed, 1) if elapsed > 0 else 0.0,
        **{
            f"{name}_ms": round(hist_percentile(hist, q, top) / 1000, 3)
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
        },
        "max_ms": round(top / 1000, 3),
        "mean_ms": round(
            sum(res["mean_us"] * res["received"] for res in results) / max(1, received) / 1000, 3
        ),
        # the load generator's busy CPU (polls that found nothing left out) as a share of
        # the client cores it had: near 1.0 = client-bound
        "client_cpu": round(sum(res["busy_s"] for res in results) / (elapsed * cores), 2)
        if elapsed > 0
        else 0.0,
        "client_cpu_s": round(client_cpu_s, 3),
        # the server's processes, in cores (ours: supervisor + shards); None for --url
        "server_cpu": round(server_s / wall, 2) if server_pids else None,
        # other processes on the machine meanwhile, in cores: the machine is not ours alone
        "other_cpu": round(max(0.0, tasks_s - server_s - client_cpu_s) / wall, 2)
        if server_pids
        else None,
        "irq_cpu": round(irq_s / wall, 2),  # interrupts, in cores (loopback TCP)
        "steal_cpu": round(steal_s / wall, 2),  # taken by the hypervisor, in cores
        "errors": errors,
        "rtt_us_hist": {f"{upper:.3f}": n for upper, n in hist.items()},
    }


def measure_repeated(
    port: int,
    t: Target,
    conns: int,
    a: argparse.Namespace,
    pin_clients: bool,
    server_pids: list[int],
    host: str = "127.0.0.1",
    path: str = "/",
) -> dict[str, Any]:
    """``--repeat`` runs; the row is the run with the median msgs/s (its latencies too),
    with every run's figures under ``runs`` and the errors of all of them."""
    runs = [
        measure(port, t, conns, a, pin_clients, host, path, server_pids) for _ in range(a.repeat)
    ]
    ranked = sorted(runs, key=lambda r: r["msgs_per_s"])
    median = ranked[(len(ranked) - 1) // 2]
    rates = [r["msgs_per_s"] for r in runs]
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "server": t.name,
        "connections": conns,
        **median,
        "errors": errors,
        "runs_msgs_per_s": rates,
        # (max - min) / median of the runs' msgs/s
        "spread": round((max(rates) - min(rates)) / statistics.median(rates), 3)
        if statistics.median(rates) > 0
        else None,
        "runs": [{k: v for k, v in r.items() if k != "rtt_us_hist"} for r in runs],
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
            rows.append(measure_repeated(port, t, c, a, False, [], host=host, path=path))
    elif t.kind == "ours":
        server = our_server(t)
        try:
            server.start()
            pids = [server.pid, *server.shard_pids().values()]
            for c in a.connections:
                rows.append(measure_repeated(server.port, t, c, a, t.pin, pids))
        finally:
            server.kill()
    else:
        peer = PeerProcess(t.args[0], t.pin)
        try:
            peer.start()
            for c in a.connections:
                rows.append(measure_repeated(peer.port, t, c, a, t.pin, peer.pids))
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
    spies: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        pid = server.shard_pids()[0]

        def start_spy() -> None:  # once connected: the handshakes are not sampled
            spies.append(
                subprocess.Popen(
                    [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(raw)]
                    + ["-d", str(max(1, int(a.seconds))), "--pid", str(pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )

        row = measure(server.port, t, conns, a, t.pin, server_pids=[pid], on_go=start_spy)
        _, err = spies[0].communicate(timeout=a.seconds + 30)
        if spies[0].returncode != 0 or not raw.exists():
            return {"skipped": f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"}
    finally:
        for spy_proc in spies:
            if spy_proc.poll() is None:
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
        f"{'server':15} {'conns':>5} {'msgs/s':>9} {'±':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'vs best':>8} {'cli cpu':>7} {'srv cpu':>7}"
    )
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["connections"], -r["msgs_per_s"])):
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        spread = f"{r['spread'] * 100:.0f}%" if r.get("spread") is not None else "-"
        srv = f"{r['server_cpu']:.2f}" if r.get("server_cpu") is not None else "-"
        err = f"  errors {r['errors']}" if r["errors"] else ""
        if r["client_cpu"] >= 0.9:
            err += "  (client-bound: msgs/s is a lower bound)"
        if (r.get("other_cpu") or 0) >= 0.1:
            err += f"  (other processes used {r['other_cpu']:.2f} cores meanwhile)"
        if r.get("steal_cpu", 0) >= 0.1:
            err += f"  (the hypervisor stole {r['steal_cpu']:.2f} cores meanwhile)"
        lines.append(
            f"{r['server']:15} {r['connections']:>5} {r['msgs_per_s']:>9.0f} {spread:>5} "
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['p999_ms']:>9.3f} {ratio:>8} "
            f"{r['client_cpu']:>7.2f} {srv:>7}{err}"
        )
    return "\n".join(lines)


def throughput_ratio(rows: list[dict[str, Any]], top: str, bottom: str) -> dict[int, float]:
    """msgs/s of server ``top`` over server ``bottom``, per connection count: the default
    app (``ours demo 1sh``: JSON decode, ``seq``, encode) over python-websockets' raw echo,
    or ``ours demo stream`` over ``ours demo 1sh`` (what the journal costs)."""
    by = {(r["server"], r["connections"]): r["msgs_per_s"] for r in rows}
    out = {}
    for c in sorted({r["connections"] for r in rows}):
        mine, theirs = by.get((top, c)), by.get((bottom, c))
        if mine is not None and theirs:
            out[c] = round(mine / theirs, 2)
    return out


def legend(a: argparse.Namespace) -> str:
    return (
        f"msgs/s: the median of {a.repeat} runs (its latencies too); ±: (max - min) / median"
        " of the runs' msgs/s. cli cpu: the load generator's busy share of its core(s), empty"
        " polls left out (>= 0.9: client-bound); srv cpu: the server's processes, in cores."
    )


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


def raise_fd_limit(conns: int) -> str:
    """Lift this process's soft RLIMIT_NOFILE to the hard cap if ``conns`` connections (at
    both ends: the servers and clients started later inherit it) need more; "" or a warning."""
    need = 2 * conns + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        return f"open files limit {soft} < {need}: connections may fail with EMFILE"
    return ""


def run_bench(a: argparse.Namespace) -> int:
    try:
        a.client_binary = echo_client()
    except NativeBuildError as exc:
        print(f"python -m bench echo: {exc}", file=sys.stderr)
        return 2
    run = Report(
        "echo",
        a,
        "Echo vs peers (python -m bench echo)",
        pinning="server CPU 0 / clients CPU " + _client_cpus()
        if _can_pin() and not a.url
        else "off",
        profile=a.profile and not a.url,
    )
    if warning := raise_fd_limit(max(a.connections)):
        print(f"warning: {warning}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-echo-"))
    a.payload_file = write_payload(work, a.payload)
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
            profile = profile_ours(a, work)
            bar.advance(task)
    add_ratios(rows, {t.name for t in ts if t.kind == "peer"})
    ratios = throughput_ratio(rows, "ours demo 1sh", "websockets")
    stream = throughput_ratio(rows, "ours demo stream", "ours demo 1sh")
    print()
    print(table(rows))
    print(legend(a))
    if ratios:
        print(
            "default app (ours demo 1sh) vs websockets raw echo: "
            + ", ".join(f"{r:.2f}x at {c}" for c, r in ratios.items())
            + " connections"
        )
    if stream:
        print(
            "--durability stream vs checkpoint (ours demo stream / ours demo 1sh): "
            + ", ".join(f"{r:.2f}x at {c}" for c, r in stream.items())
            + " connections"
        )
    if a.profile:
        print()
        print(profile_text(profile))
    for name, why in skipped.items():
        print(f"skipped:  {name}: {why}")
    data = {
        "rows": rows,
        "skipped": skipped,
        "profile": profile,
        "demo_vs_websockets": ratios,
        "stream_vs_checkpoint": stream,
    }
    run.finish(data, {"msgs": lambda plt: chart(rows, plt)} if rows else {})
    return 0


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = scenario_parser("echo", __doc__)
    p.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 100, 1000],
        help="(default 1 100 1000)",
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="time bound per measurement (default 5)"
    )
    p.add_argument(
        "--count",
        type=int,
        default=400_000,
        help="message bound per measurement (default 400000)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="seconds of closed loop before each measurement, not counted (default 0.5)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measurements per server and connection count; the median is shown (default 3)",
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="load processes (C, bench/loadgen/echo_client.c) sharing the client CPU(s)"
        " (default 1)",
    )
    p.add_argument(
        "--client-spin-us",
        type=float,
        default=0,
        help="pinned clients poll without sleeping until this long without a reply (default 0:"
        " they sleep in epoll_wait like any client). Spinning spares each round trip the"
        " client core's wake-up, which helps some servers and hurts others (smaller batches"
        " per server wake-up), so it changes the ratios: on a 2-core VM, 1000 us gave picows"
        " about +30 %% and our shard about -25 %% msgs/s at 100 connections",
    )
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
    a = p.parse_args(argv)
    if a.repeat < 1 or a.client_procs < 1:
        p.error("--repeat and --client-procs must be at least 1")
    return run_bench(a)


if __name__ == "__main__":
    sys.exit(main())
