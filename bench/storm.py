"""Reconnect storm after a crash: ``python -m bench storm [--clients 2000] [--shards 2]``.

N clients connect with the reconnecting client library (``client.open_reconnecting_client``,
``Backoff(base, cap, max_retries=None, jitter)``), spread over client processes of this
module (``python -m bench storm clients ...``), each bound to its own loopback source
address (127.0.0.1, 127.0.0.2, ...). Then the server is killed abruptly: SIGKILL of the
supervisor and of every shard (pids from its ``shard_spawn`` log lines), and at once a
new supervisor is started on the same port. Every client sees its connection die (1006)
and reconnects after its backoff; the session is gone with the old shards, so the answer
is a new session (``SessionLost`` + ``Connected``), counted as a welcome like a resume
would be. This is done once with jitter ``"full"`` and once with ``"none"``.

Measured client-side from the ``welcome`` timestamps (``time.monotonic()``, one clock for
all processes): the peak welcomes per second (most welcomes in one 100 ms bucket x 10),
when it was, and the time from the kill until half / all of the clients were connected
again. Each phase (connecting, the storm) is bounded by ``--seconds`` (default 60).

Size. The default is 2000 clients because of the 2-core machine: the trio clients, the
shards and the supervisor all share the 2 cores. The issue's 10,000 (``--clients 10000``)
runs with ``--client-procs`` processes (default: one per 2500 clients, at least 2: 4, each
far below the 20,000 open-files cap and at about 190 MiB) and one loopback source
address per process (127.0.0.1-4, so no address needs more than its ~28,000 ephemeral
ports for the old connections, the new ones and the TIME_WAITs of the kill). Both servers
run with ``--max-away-per-address`` raised to the client count: a client dropped again
after its welcome must not evict another client's away session (the cap is per client
address, 256 by default). The new server is started once every killed process is gone
(a shard still exiting holds the listening socket); that wait is part of ``restart s``.
The restarted server's HTTP refusals (``event=rejected reason=... status=...``: over
``--max-pending-handshakes`` or ``--max-connections``) are counted under the table.
Each mode takes about 20-40 s at that size.

Output: a table with both rows and the ratio of the peak rates (none/full); the JSON
(every row, the welcome-rate series and each client's time back); ``-reconnects.png``:
reconnects per second over time and the cumulative number of clients back, one line per
jitter mode (dashed: when the restarted server logged ``ready``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import time
from typing import Any

from bench._load import SERVER_ROOT, JsonProcess, Server, pid_alive
from bench._report import RESULTS, Progress, Report

BUCKET_S = 0.1
PER_PROCESS = 2500  # clients per client process by default
PROGRESS_S = 0.2  # how often a client process reports its counts


# ====================================================================== client process
def run_clients(a: argparse.Namespace) -> None:
    """Run ``--conns`` reconnecting clients from ``--source``. JSON lines on stdout:
    ``progress`` (clients welcomed once / ``--welcomes`` times) every 0.2 s, ``ready`` once
    each had a welcome, and ``result`` at a line on stdin, when each had ``--welcomes``,
    or at ``--seconds``."""
    import trio

    from client.reconnecting import Away, Connected, GaveUp, Resumed, open_reconnecting_client
    from core.backoff import Backoff

    logging.getLogger("client").setLevel(logging.ERROR)  # one line per lost session
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.source:
        # trio-websocket calls trio.open_tcp_stream(host, port): give it our source
        # address (trio sets IP_BIND_ADDRESS_NO_PORT, so the port is still picked per
        # destination at connect time).
        plain = trio.open_tcp_stream

        async def from_source(host: str, port: int, **kw: Any) -> trio.SocketStream:
            return await plain(host, port, local_address=a.source, **kw)

        trio.open_tcp_stream = from_source  # type: ignore[assignment]
    backoff = Backoff(base=a.base, cap=a.cap, max_retries=None, jitter=a.jitter)
    url = f"ws://{a.host}:{a.port}/"
    welcomes: list[float] = []
    back: list[float] = []  # when each client had its ``--welcomes``-th welcome
    per_client = [0] * a.conns
    counts = {"first": 0, "back": 0}
    gave_up: list[str] = []
    aways: dict[str, int] = {}
    ready = trio.Event()
    done = trio.Event()

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def welcomed(i: int) -> None:
        now = time.monotonic()
        welcomes.append(now)
        per_client[i] += 1
        if per_client[i] == 1:
            counts["first"] += 1
            if counts["first"] == a.conns:
                ready.set()
        if per_client[i] == a.welcomes:
            back.append(now)
            counts["back"] += 1
            if counts["back"] == a.conns:
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

    async def report_progress() -> None:
        for _ in range(int(a.seconds / PROGRESS_S) + 1):
            emit({"type": "progress", **counts})
            await trio.sleep(PROGRESS_S)

    async def main() -> None:
        with trio.move_on_after(a.seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_progress)
                for i in range(a.conns):
                    nursery.start_soon(one, i)
                await ready.wait()
                emit({"type": "progress", **counts})
                emit({"type": "ready"})
                nursery.start_soon(stdin_stop)
                await done.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
    emit(
        {
            "type": "result",
            "welcomes": welcomes,
            "back": back,
            "reconnected": counts["back"],
            "gave_up": gave_up[:5],
            "away_after_reconnect": aways,
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


# ====================================================================== the parent's side
class ClientProcess(JsonProcess):
    """One ``python -m bench storm clients`` process and what it has reported."""

    def __init__(self, cmd: list[str]) -> None:
        super().__init__(cmd)
        self.first = 0
        self.back = 0
        self.ready = False
        self.result: dict[str, Any] | None = None
        self.eof = False

    def poll(self) -> None:
        """Take in whatever it printed since the last call."""
        for m in self.pending():
            kind = m.get("type")
            if kind == "progress":
                self.first, self.back = m["first"], m["back"]
            elif kind == "ready":
                self.ready = True
            elif kind == "result":
                self.result = m
                self.back = m["reconnected"]
            elif kind == "eof":
                self.eof = True

    def finish(self) -> None:
        """Tell it to stop and print its result (it exits after that)."""
        self.send("stop")


def wait_for(
    children: list[ClientProcess], what: str, seconds: float, bar: Progress, task: int
) -> bool:
    """Poll the children until each is ``ready``/has a ``result`` (``what``), updating the
    bar with their counts; False at ``seconds`` or when one exited without it."""
    deadline = time.monotonic() + seconds
    try:
        for _ in range(int(seconds / 0.05) + 2):
            for c in children:
                c.poll()
            done = sum(c.first if what == "ready" else c.back for c in children)
            bar.update(task, completed=done)
            have = [c.ready if what == "ready" else c.result is not None for c in children]
            if all(have):
                return True
            if any(c.eof and not h for c, h in zip(children, have, strict=True)):
                return False  # exited without it
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    finally:
        bar.stop(task)
    return False


def log_summary(server: Server) -> tuple[dict[str, int], list[str], list[str]]:
    """(count per event, notable lines verbatim, every raw line) of a server's log."""
    with server._cond:
        lines = list(server.lines)
        raw = list(server.raw)
    counts: dict[str, int] = {}
    for f in lines:
        key = f.get("event", "?")
        if key == "disconnect":
            key += f" kind={f.get('kind')} code={f.get('code')}"
        elif key == "rejected":  # HTTP refusals before the upgrade (503 over capacity...)
            key += f" reason={f.get('reason')} status={f.get('status')}"
        counts[key] = counts.get(key, 0) + 1
    notable = [
        line
        for line in raw
        if any(w in line for w in ("shard_exit", "orphaned", "Traceback", "Error"))
    ][:20]
    return counts, notable, raw


def start_on(port: int, server_args: list[str], shards: int, killed: list[int]) -> Server:
    """A new server on ``port`` once the killed one's processes are gone (a shard that is
    still exiting holds the listening socket: EADDRINUSE); one retry if it fails anyway."""
    deadline = time.monotonic() + 5.0
    for _ in range(500):  # bounded by the deadline
        if not any(pid_alive(p) for p in killed) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for attempt in range(2):
        server = Server(*server_args, shards=shards)
        server.cmd[server.cmd.index("--port") + 1] = str(port)
        try:
            server.start()
            return server
        except RuntimeError:
            server.kill()
            if attempt:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def server_supports(flag: str) -> bool:
    """Whether the server under test (``BENCH_SERVER_ROOT``: maybe an older tree) has
    ``flag``."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--help"],
        cwd=SERVER_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return flag in done.stdout


def base_args(a: argparse.Namespace) -> list[str]:
    """Both servers' arguments: a redrop of one client never evicts another's away
    session (the cap is per client address), then ``--server-arg``s."""
    away = ["--max-away-per-address", str(max(256, a.clients))]
    return [*(away if server_supports(away[0]) else []), *a.server_arg]


def run_one(jitter: str, a: argparse.Namespace, bar: Progress) -> dict[str, Any]:
    server_args = a.server_args
    extra = ["--shards", str(a.shards), *server_args]
    first = Server(*server_args, shards=a.shards)
    second: Server | None = None
    children: list[ClientProcess] = []
    t_start = time.monotonic()
    procs = max(1, min(a.client_procs, a.clients))
    per = [a.clients // procs + (1 if i < a.clients % procs else 0) for i in range(procs)]
    sources = [f"127.0.0.{1 + i % a.sources}" for i in range(procs)]
    failed = ""
    results: list[dict[str, Any]] = []
    restarted: tuple[dict[str, int], list[str], list[str]] | None = None
    try:
        first.start()
        port = first.port
        for n, source in zip(per, sources, strict=True):
            cmd = [sys.executable, "-m", "bench.storm", "clients", "--port", str(port)]
            cmd += ["--conns", str(n), "--jitter", jitter, "--base", str(a.base)]
            cmd += ["--cap", str(a.cap), "--seconds", str(2 * a.seconds + 30), "--welcomes", "2"]
            cmd += ["--source", source]
            children.append(ClientProcess(cmd))
        task = bar.add(f"{jitter}: connecting", total=a.clients)
        if not wait_for(children, "ready", a.seconds, bar, task):
            got = sum(c.first for c in children)
            failed = f"only {got} of {a.clients} clients connected within {a.seconds:g} s"
        else:
            connect_s = time.monotonic() - t_start
            time.sleep(1.0)
            killed = first.all_pids()
            t_kill = time.monotonic()
            first.kill()  # SIGKILL: supervisor + every shard_spawn pid
            kill_s = time.monotonic() - t_kill
            second = start_on(port, server_args, a.shards, killed)
            t_up = time.monotonic()
            task = bar.add(f"{jitter}: back after the kill", total=a.clients)
            if not wait_for(children, "result", a.seconds - (t_up - t_kill), bar, task):
                for c in children:
                    c.finish()
                wait_for(children, "result", 15.0, bar, task)
            empty = {"welcomes": [], "back": [], "reconnected": 0}
            results = [c.result or empty for c in children]
            # The restarted server's log as of the end of the storm, not of the teardown.
            restarted = log_summary(second)
    finally:
        for c in children:
            c.kill()
        first.kill()
        if second is not None:
            second.kill()
    if failed:
        counts, first_notable, _ = log_summary(first)
        print(f"jitter {jitter}: {failed}", flush=True)
        return {
            "jitter": jitter,
            "clients": a.clients,
            "error": failed,
            "connected": sum(c.first for c in children),
            "server_log": counts,
            "server_notable": first_notable,
        }
    server_log: dict[str, int] = {}
    notable: list[str] = []  # shard exits and the like on the restarted server, verbatim
    if restarted is not None:
        server_log, notable, raw = restarted
        if server_log.get("shard_exit"):  # keep the whole log of a crash for the report
            RESULTS.mkdir(parents=True, exist_ok=True)
            crash = RESULTS / f"storm-{jitter}-{int(time.time())}-restarted-server.log"
            crash.write_text("\n".join(raw) + "\n")
            notable.append(f"full log: {crash}")
    after = sorted(t for r in results for t in r["welcomes"] if t > t_kill)
    back = sorted(round(t - t_kill, 3) for r in results for t in r["back"] if t > t_kill)
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
        "client_procs": procs,
        "sources": sorted(set(sources)),
        "client_max_rss_mib": [r.get("max_rss_mib") for r in results],
        "killed_pids": len(killed),
        "initial_connect_s": round(connect_s, 2),
        "kill_s": round(kill_s, 3),
        "restart_ready_s": round(t_up - t_kill, 2),
        "reconnected": reconnected,
        "welcomes_after_kill": len(after),
        "peak_per_s": buckets.get(peak_bucket, 0) / BUCKET_S,
        "peak_at_s": round(peak_bucket * BUCKET_S, 1),
        "all_back_s": back[-1] if reconnected == a.clients and back else None,
        "p50_back_s": back[len(back) // 2] if back else None,
        "gave_up": [g for r in results for g in r.get("gave_up", [])][:5],
        "away_after_reconnect": [r.get("away_after_reconnect", {}) for r in results],
        # dropped again after the reconnect's welcome / shards of the new server that died
        "redrops": sum(sum(r.get("away_after_reconnect", {}).values()) for r in results),
        "shard_exits": server_log.get("shard_exit", 0),
        "restarted_server_log": server_log,
        "restarted_server_notable": notable,
        # welcomes per 100 ms bucket since the kill, and each client's time back (s)
        "per_bucket": [buckets.get(i, 0) for i in range(max(buckets, default=-1) + 1)],
        "back_s": back,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "redrops: clients dropped again after their reconnect welcome; shard exits: shards of "
        "the restarted server that died during the storm (their log is kept next to the results)",
        f"{'jitter':6} {'clients':>7} {'back':>6} {'restart s':>9} {'peak/s':>7} "
        f"{'peak at s':>9} {'p50 back s':>10} {'all back s':>10} {'redrops':>7} "
        f"{'shard exits':>11}",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['jitter']:6} {r['clients']:>7}  {r['error']}")
            continue
        allb = f"{r['all_back_s']:.2f}" if r["all_back_s"] is not None else "not all"
        p50 = f"{r['p50_back_s']:.2f}" if r["p50_back_s"] is not None else "-"
        lines.append(
            f"{r['jitter']:6} {r['clients']:>7} {r['reconnected']:>6} "
            f"{r['restart_ready_s']:>9.2f} {r['peak_per_s']:>7.0f} {r['peak_at_s']:>9.1f} "
            f"{p50:>10} {allb:>10} {r['redrops']:>7} {r['shard_exits']:>11}"
        )
    for r in rows:
        refused = {
            k.removeprefix("rejected "): v
            for k, v in r.get("restarted_server_log", {}).items()
            if k.startswith("rejected")
        }
        if "error" not in r:
            lines.append(
                f"{r['jitter']}: HTTP refusals by the restarted server (event=rejected):"
                f" {sum(refused.values()):,}{' ' + str(refused) if refused else ''}"
            )
    by = {r["jitter"]: r for r in rows if "error" not in r}
    if "none" in by and "full" in by and by["full"]["peak_per_s"]:
        ratio = by["none"]["peak_per_s"] / by["full"]["peak_per_s"]
        lines.append(f"peak accept rate none/full: {ratio:.2f}x")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], a: argparse.Namespace) -> Any:
    def draw(plt: Any) -> Any:
        fig, (rate, cum) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        colors = {"full": "tab:blue", "equal": "tab:green", "none": "tab:orange"}
        for r in rows:
            if "error" in r:
                continue
            color = colors.get(r["jitter"], "tab:grey")
            xs = [i * BUCKET_S for i in range(len(r["per_bucket"]) + 1)]
            ys = [n / BUCKET_S for n in r["per_bucket"]] + [0.0]
            rate.step(xs, ys, where="post", color=color, lw=1.3, label=f"jitter {r['jitter']}")
            back = r["back_s"]
            cum.step(
                [0.0, *back],
                list(range(len(back) + 1)),
                where="post",
                color=color,
                lw=1.5,
                label=f"jitter {r['jitter']}: "
                + (
                    f"all back in {r['all_back_s']:.2f} s"
                    if r["all_back_s"] is not None
                    else f"{r['reconnected']} of {r['clients']} back within the bound"
                ),
            )
            for ax in (rate, cum):
                ax.axvline(r["restart_ready_s"], color=color, ls="--", lw=0.9)
        cum.axhline(a.clients, color="grey", ls=":", lw=0.8)
        rate.set_ylabel("welcomes per second (100 ms buckets)")
        rate.set_title(
            f"Reconnect storm: SIGKILL + restart, {a.clients} clients, {a.shards} shards, "
            f"Backoff(base={a.base:g}, cap={a.cap:g}); dashed: restarted server ready",
            fontsize=10,
        )
        rate.legend(fontsize=8)
        cum.set_ylabel("clients back (cumulative)")
        cum.set_xlabel("seconds since the SIGKILL")
        cum.legend(fontsize=8, loc="lower right")
        for ax in (rate, cum):
            ax.grid(alpha=0.3)
            ax.set_xlim(left=0)
        return fig

    return draw


def run_bench(a: argparse.Namespace) -> int:
    report = Report(
        "storm",
        {
            "clients": a.clients,
            "shards": a.shards,
            "backoff": f"Backoff(base={a.base:g}, cap={a.cap:g}, max_retries=None)",
            "jitter": a.jitter,
            "client_procs": a.client_procs,
            "sources": a.sources,
            "seconds": a.seconds,
            "server_args": " ".join(a.server_args),
        },
    )
    rows = []
    with report.progress() as bar:
        for jitter in a.jitter:
            rows.append(run_one(jitter, a, bar))
    print()
    print(table(rows))
    report.finish({"rows": rows}, charts={"reconnects": chart(rows, a)})
    return 0


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clients"]:
        p = argparse.ArgumentParser(prog="python -m bench storm clients")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--source", default=None, help="local address to connect from")
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
    p.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help=f"client processes (default: one per {PER_PROCESS} clients, at least 2)",
    )
    p.add_argument(
        "--sources",
        type=int,
        default=0,
        help="loopback source addresses 127.0.0.1.. (default: one per client process)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="bound per phase (default 60)")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for both servers, repeatable; values that start with --"
        " need the = form: --server-arg=--max-pending-handshakes --server-arg=5000",
    )
    p.add_argument(
        "--jitter",
        nargs="+",
        default=["full", "none"],
        choices=["full", "equal", "none"],
        help="one run per jitter mode (default: full none)",
    )
    a = p.parse_args(argv)
    if a.clients < 1 or a.shards < 1 or a.seconds <= 0:
        p.error("--clients and --shards must be >= 1, --seconds > 0")
    if a.client_procs <= 0:
        a.client_procs = max(2, math.ceil(a.clients / PER_PROCESS))
    if a.sources <= 0:
        a.sources = a.client_procs
    a.sources = min(a.sources, 254)
    a.server_args = base_args(a)
    return run_bench(a)


if __name__ == "__main__":
    sys.exit(main())
