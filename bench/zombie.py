"""Zombie detection time: how long a silent connection stays open, per heartbeat preset.

Run as ``python -m bench zombie [--presets sub,short] [--zombies 20] [--pulled 5]
[--live 10]`` (about 45 s by default).

Presets: ``sub`` = ``--heartbeat-interval 0.5 --heartbeat-timeout 1``; ``short`` =
``--heartbeat short`` (5 s / 15 s); ``medium`` (30 s / 60 s, ~90 s) and ``long``
(300 s / 600 s, ~15 min) run only when listed explicitly.

For each preset a fresh supervisor is started and:

* ``--live`` clients connect and stay idle, answering every ping (they must survive);
* ``--zombies`` clients complete the handshake, read the welcome, send one ``echo`` and
  read its answer, then go silent while TCP stays open, in two ways:
  - ``stopped``: a raw-socket client process that is SIGSTOPped (the kernel still ACKs,
    nothing is answered: a frozen phone, a suspended laptop);
  - ``mute``: a raw-socket client that simply never reads or writes again (no process
    stop: a hung app).
* ``--pulled`` clients (root with ``ip`` and ``iptables`` only; skipped with the reason
  printed otherwise) connect from a network namespace of their own (``bench._cable``: a
  veth link, the server bound to the host end) and behave well, answering every ping,
  until their cable is pulled, one after another spread over one ping interval: each
  sends a last ``echo`` and iptables DROP rules in the namespace then cut that connection
  both ways (no FIN, no RST: TCP still looks open on the server, whose pings and close
  frame are retransmitted into the void). One more client in the namespace is never cut
  and must survive (the rules cut only what they should);
* each zombie must be logged ``event=disconnect kind=heartbeat_timeout code=1006 ...
  silent_s=X``; X is the silence the server measured (last inbound frame -> close). The
  wall-clock time from the zombie's last sent byte (its echo, noted client-side with
  ``time.time()``) to the ``ts=`` of that line is reported too (same machine clock).

The bound is ``interval + timeout + tick``, tick = min(interval, timeout) / 10 clamped to
[0.005, 1.0]. Output: the table, and ``bench/results/zombie-<stamp>.json`` with
``-detection.png`` (every zombie's silent_s and wall time, per preset and kind, against
the bound). Stopped processes are SIGCONTed and killed in a ``finally``, as are every
other client process, the supervisor and its shards (by pid); the namespace, its veth
pair and its rules are deleted in a ``finally`` too (also on Ctrl-C or SIGTERM).

Why over 300 lines: three kinds of zombie (stopped, mute, pulled cable) per preset, each
found in the server's log and checked against the bound, and the signal handling that
removes the namespace even on Ctrl-C; the clients are ``bench.clients`` modes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from bench._cable import Cable, CableClients
from bench._report import Chart, Progress, Report, command_line, scenario_parser, table_head
from bench.clients import Child
from lab.server import SERVER_ROOT, Server

PRESETS: dict[str, tuple[list[str], float, float]] = {
    "sub": (["--heartbeat-interval", "0.5", "--heartbeat-timeout", "1"], 0.5, 1.0),
    "short": (["--heartbeat", "short"], 5.0, 15.0),
    "medium": (["--heartbeat", "medium"], 30.0, 60.0),
    "long": (["--heartbeat", "long"], 300.0, 600.0),
}
KINDS = ("stopped", "mute", "pulled")
COLORS = {"stopped": "tab:blue", "mute": "tab:orange", "pulled": "tab:green"}


def tick_of(interval: float, timeout: float) -> float:
    return max(0.005, min(1.0, min(interval, timeout) / 10.0))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Let a cleanup finish: a Ctrl-C or SIGTERM meanwhile is raised after it, not in it."""
    caught: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt


def run_preset(
    name: str, index: int, a: argparse.Namespace, bar: Progress, cable: Cable | None
) -> dict[str, Any]:
    args, interval, timeout = PRESETS[name]
    tick = tick_of(interval, timeout)
    bound = interval + timeout + tick
    # With a cable the server listens on the host end of the veth pair (a local address:
    # the clients on this host reach it over loopback as before).
    host = cable.server_ip if cable is not None else "127.0.0.1"
    server = Server(*args, "--drain-timeout", "5", shards=a.shards, host=host)
    children: list[Child] = []
    stopped: list[Child] = []
    netns_clients: CableClients | None = None
    n_stopped = a.zombies // 2
    n_mute = a.zombies - n_stopped
    n_pulled = a.pulled if cable is not None else 0
    out: dict[str, Any] = {
        "preset": name,
        "interval": interval,
        "timeout": timeout,
        "tick": tick,
        "bound": bound,
        "host": host,
    }
    life = bound * 2 + 120  # every client process ends by itself after this
    until = ("--max-seconds", str(life))
    try:
        server.start()
        port = str(server.port)
        source = f"127.0.{20 + index}"
        connecting = bar.add(
            f"{name}: connecting", total=a.live + a.zombies + (n_pulled + 1 if n_pulled else 0)
        )

        def spawn(mode: str, source: str, *args: str) -> Child:
            """A load process of ``mode`` from ``source``; it ends by itself after ``life``."""
            started = Child(mode, "--host", host, "--port", port, "--source", source, *args)
            children.append(started)
            return started

        # ---- live clients first: they are silent at least as long as any zombie
        live = spawn("pool", f"{source}.2", "--count", str(a.live), "--sessions", *until)
        live_sessions = set(live.expect("connected", 30)["sessions"])
        bar.advance(connecting, a.live)

        # ---- the clients behind the cable, well-behaved until it is pulled
        cabled: dict[str, Any] = {"clients": [], "control": []}
        if cable is not None and n_pulled:
            netns_clients = cable.clients(server.port, n_pulled, 1, life)
            cabled = netns_clients.expect("connected", 30)
            bar.advance(connecting, n_pulled + 1)

        # ---- zombies
        zombies: list[dict[str, Any]] = []
        for k in range(n_stopped):
            stopped.append(spawn("zombie", f"{source}.{3 + k}", *until))
        for zombie in stopped:
            message = zombie.expect("zombie", 30)
            os.kill(zombie.pid, signal.SIGSTOP)
            zombies.append(message)
            bar.advance(connecting)
        if n_mute:
            mute = spawn("pool", f"{source}.250", "--count", str(n_mute), "--mute", *until)
            zombies.extend(mute.expect("connected", 30).get("zombies", []))
            bar.advance(connecting, n_mute)
        bar.done(connecting)

        # ---- pull the cables, one by one, spread over one ping interval (at most 5 s)
        if cable is not None and netns_clients is not None:
            pulling = bar.add(f"{name}: pulling cables", total=n_pulled)
            spread = min(interval, 5.0)
            t0 = time.monotonic()
            for k, client in enumerate(cabled["clients"]):
                time.sleep(max(0.0, t0 + k * spread / n_pulled - time.monotonic()))
                netns_clients.send(f"pull {client['index']}")
                last = netns_clients.expect("last", 10)
                cable.cut(int(last["port"]))
                zombies.append(
                    {
                        "session": last["session"],
                        "last_send": last["last_send"],
                        "kind": "pulled",
                        # last frame sent -> both DROP rules in place (silent meanwhile)
                        "cut_s": time.time() - last["last_send"],
                    }
                )
                bar.advance(pulling)

        # ---- wait for every zombie's disconnect line
        deadline = max(z["last_send"] for z in zombies) + bound * 1.5 + 5.0
        counts = collections.Counter(z["kind"] for z in zombies)
        tasks = {
            kind: bar.add(f"{name}: {kind} found", total=counts[kind])
            for kind in KINDS
            if counts[kind]
        }
        kind_of = {z["session"]: z["kind"] for z in zombies}
        found: dict[str, dict[str, str]] = {}
        seen = 0
        while len(found) < len(zombies) and time.time() < deadline:
            assert server.process is not None
            if server.process.poll() is not None:
                break
            mark = server.count()
            for line in server.events("disconnect", after=seen):
                session = line.get("session", "")
                if session in kind_of and session not in found:
                    found[session] = line
                    bar.advance(tasks[kind_of[session]])
            seen = mark
            time.sleep(0.05)
        # One more interval (at most 5 s): the live clients get pinged again meanwhile.
        bar.wait(min(interval + tick, 5.0), f"{name}: live still pinged")
        live.send("stats")
        live_stats = live.expect("stats", 10)
        control_stats: dict[str, Any] | None = None
        if netns_clients is not None:
            netns_clients.send("stats")
            control_stats = netns_clients.expect("stats", 10)

        out["zombies"] = []
        for z in zombies:
            line = found.get(z["session"])
            entry: dict[str, Any] = {
                "kind": z["kind"],
                "session": z["session"],
                "detected": line is not None,
            }
            if "cut_s" in z:
                entry["cut_s"] = z["cut_s"]
            if line is not None:
                entry.update(
                    close_kind=line.get("kind"),
                    code=line.get("code"),
                    silent_s=_float(line.get("silent_s")),
                    wall_s=float(line["ts"]) - z["last_send"],
                )
            out["zombies"].append(entry)
        live_lines = [f for f in server.events("disconnect") if f.get("session") in live_sessions]
        out["live"] = {
            "count": a.live,
            "connected": len(live_sessions),
            "open": live_stats["open"],
            "pings": live_stats["pings"],
            "closed": live_stats["closed"],
            "disconnect_lines": len(live_lines),
        }
        control = set(cabled["control"])
        if control_stats is not None:
            out["control"] = {
                "count": control_stats["control"],
                "open": control_stats["open"],
                "pings": control_stats["pings"],
                "closed": control_stats["closed"],
                "disconnect_lines": sum(
                    1 for f in server.events("disconnect") if f.get("session") in control
                ),
            }
        known = live_sessions | control | set(kind_of)
        out["other_kinds"] = collections.Counter(
            f.get("kind") for f in server.events("disconnect") if f.get("session") not in known
        )
    finally:
        with deferred_signals():
            for child in stopped:
                child.kill()  # SIGCONT + SIGKILL
            if netns_clients is not None:
                netns_clients.kill()  # its cut sockets could not say goodbye anyway
            server.stop(timeout=15)
            for child in children:
                child.stop()
            if cable is not None:  # a later preset's connection may get a cut one's port
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    cable.flush()
    return out


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "-") else None
    except ValueError:
        return None


def _mmm(values: list[float]) -> tuple[str, str, str]:
    """min, median, max, formatted."""
    if not values:
        return "-", "-", "-"
    return f"{min(values):.3f}", f"{statistics.median(values):.3f}", f"{max(values):.3f}"


def _hits(zombies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        z
        for z in zombies
        if z["detected"]
        and z.get("close_kind") == "heartbeat_timeout"
        and z.get("silent_s") is not None
    ]


def table(results: list[dict[str, Any]]) -> None:
    print()
    table_head(
        f"{'preset':<7} {'interval/timeout/tick s':>23} {'bound s':>8} {'zombies':<8}"
        f" {'found':>7} {'silent_s min':>12} {'median':>7} {'max':>7}"
        f" {'wall s min':>10} {'median':>7} {'max':>7} {'max/bound':>9}"
    )
    for r in results:
        for kind in (*KINDS, "all"):
            zs = [z for z in r["zombies"] if kind == "all" or z["kind"] == kind]
            if not zs:
                continue
            hits = _hits(zs)
            silent = [z["silent_s"] for z in hits]
            wall = [z["wall_s"] for z in hits]
            worst = max(wall, default=float("nan")) / r["bound"]
            policy = f"{r['interval']:g}/{r['timeout']:g}/{r['tick']:g}"
            s_min, s_med, s_max = _mmm(silent)
            w_min, w_med, w_max = _mmm(wall)
            print(
                f"{r['preset']:<7} {policy:>23} {r['bound']:>8.3f} {kind:<8}"
                f" {len(hits):>3}/{len(zs):<3} {s_min:>12} {s_med:>7} {s_max:>7}"
                f" {w_min:>10} {w_med:>7} {w_max:>7} {worst:>9.3f}"
            )
    print()
    for r in results:
        other = [z for z in r["zombies"] if not z["detected"]]
        wrong = [
            z for z in r["zombies"] if z["detected"] and z.get("close_kind") != "heartbeat_timeout"
        ]
        codes = collections.Counter(z.get("code") for z in r["zombies"] if z["detected"])
        over = [z for z in r["zombies"] if (z.get("silent_s") or 0.0) > r["bound"]]
        live = r["live"]
        ok = (
            live["open"] == live["count"]
            and not live["disconnect_lines"]
            and not live["closed"]
            and live["connected"] == live["count"]
        )
        line = (
            f"{r['preset']}: zombie close codes {dict(codes)}; not detected: {len(other)};"
            f" closed as another kind: {len(wrong)}; silent_s over the bound: {len(over)};"
            f" live clients {'all still open' if ok else 'NOT all open'}"
            f" ({live['open']}/{live['count']} open, {live['pings']} pings answered,"
            f" {live['disconnect_lines']} disconnect lines)"
        )
        if "control" in r:
            c = r["control"]
            cuts = [z["cut_s"] * 1000 for z in r["zombies"] if "cut_s" in z]
            fine = c["open"] == c["count"] and not c["closed"] and not c["disconnect_lines"]
            line += (
                f"; pulled cables: DROP rules in place {min(cuts):.0f}-{max(cuts):.0f} ms"
                f" after the last frame, uncut client in the namespace"
                f" {'still open' if fine else 'NOT open'} ({c['open']}/{c['count']} open,"
                f" {c['pings']} pings answered, {c['disconnect_lines']} disconnect lines)"
            )
        if r["other_kinds"]:
            line += f"; other disconnects: {dict(r['other_kinds'])}"
        print(line)


def detection_chart(results: list[dict[str, Any]]) -> Chart:
    """One panel per preset: every zombie's silent_s and wall time by kind, and the bound."""

    def draw(plt: Any) -> Any:
        from matplotlib.lines import Line2D

        fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 5.4), squeeze=False)
        for ax, r in zip(axes[0], results, strict=True):
            x = 0
            ticks: list[float] = []
            labels: list[str] = []
            for kind in KINDS:
                zs = [z for z in r["zombies"] if z["kind"] == kind]
                if not zs:
                    continue
                xs = [x + i for i, z in enumerate(zs) if z.get("silent_s") is not None]
                hits = [z for z in zs if z.get("silent_s") is not None]
                ax.scatter(xs, [z["silent_s"] for z in hits], marker="o", s=22, color=COLORS[kind])
                ax.scatter(xs, [z["wall_s"] for z in hits], marker="x", s=22, color=COLORS[kind])
                ticks.append(x + (len(zs) - 1) / 2)
                labels.append(f"{kind}\n{len(_hits(zs))}/{len(zs)} found")
                x += len(zs) + 2
            ax.axhline(r["bound"], color="tab:red", lw=1.2)
            ax.axhline(r["interval"] + r["timeout"], color="gray", lw=1, ls="--")
            ax.set_xticks(ticks, labels)
            ax.set_xlim(-1.5, max(x - 0.5, 1))
            ax.set_title(
                f"{r['preset']}: interval {r['interval']:g} s, timeout {r['timeout']:g} s,"
                f" tick {r['tick']:g} s",
                fontsize=10,
            )
            ax.set_ylabel("last frame -> closed as a zombie (s)")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(
                handles=[
                    Line2D([], [], marker="o", ls="", color="k", label="silent_s (server)"),
                    Line2D([], [], marker="x", ls="", color="k", label="wall (last byte -> log)"),
                    Line2D(
                        [],
                        [],
                        color="tab:red",
                        label=f"bound interval+timeout+tick {r['bound']:.3f} s",
                    ),
                    Line2D([], [], color="gray", ls="--", label="interval + timeout"),
                ],
                fontsize=7,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncol=2,
                frameon=False,
            )
        fig.suptitle("Zombie detection time per heartbeat preset and zombie kind")
        return fig

    return draw


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # unwind through every finally, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("zombie", __doc__.split("\n")[0], shards=2, raw=False)
    parser.add_argument(
        "--presets",
        default="sub,short",
        help="comma-separated: sub, short, medium (~90 s), long (~15 min)",
    )
    parser.add_argument("--zombies", type=int, default=20, help="half stopped, half mute")
    parser.add_argument(
        "--pulled",
        type=int,
        default=5,
        help="pulled-cable zombies (network namespace + iptables DROP; root only)",
    )
    parser.add_argument("--live", type=int, default=10, help="idle clients that must survive")
    a = parser.parse_args(argv)
    presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    if (
        not 0 <= a.zombies <= 200
        or not 0 <= a.pulled <= 50
        or not 0 <= a.live <= 1000
        or not 1 <= a.shards <= 16
    ):
        parser.error(
            "--zombies must be in 0..200, --pulled in 0..50, --live in 0..1000, --shards in 1..16"
        )
    skip = Cable.unavailable() if a.pulled else None
    if not a.zombies and (not a.pulled or skip):
        parser.error("no zombies to measure (--zombies 0 and no --pulled)")

    old_term = signal.signal(signal.SIGTERM, _terminate)
    report = Report(
        "zombie",
        a,
        f"Zombie detection time ({command_line()})",
        stopped=a.zombies // 2,
        mute=a.zombies - a.zombies // 2,
        server_root=str(SERVER_ROOT),
    )
    print(
        "silent_s: the server's measure (last inbound frame -> close, from the log line);"
        " wall: zombie's last sent byte -> ts= of that line"
    )
    cable: Cable | None = None
    results: list[dict[str, Any]] = []
    teardown: list[str] = []
    try:
        if a.pulled and skip is None:
            cable = Cable()
            skip = cable.setup()
            if skip is not None:
                cable = None
        if cable is not None:
            print(
                f"pulled:   {a.pulled} per preset from network namespace {cable.netns}"
                f" ({cable.client_ip} -> server on {cable.server_ip}), cut by iptables DROP"
                " rules in that namespace"
            )
        elif a.pulled:
            print(f"pulled:   SKIPPED: {skip}")
        with report.progress() as bar:
            for index, name in enumerate(presets):
                results.append(run_preset(name, index, a, bar, cable))
    finally:
        if cable is not None:
            with deferred_signals():
                teardown = cable.teardown()
            for problem in teardown:
                print(f"cleanup: {problem}")
        signal.signal(signal.SIGTERM, old_term)
    table(results)
    report.finish(
        {
            "presets": results,
            "pulled_skipped": skip,
            "netns": cable.netns if cable is not None else None,
            "cleanup_problems": teardown,
        },
        charts={"detection": detection_chart(results)},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
