"""Zombie detection time: how long a silent connection stays open, per heartbeat preset.

Run as ``python -m bench.zombie [--presets sub,short] [--zombies 20] [--live 10]``.

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
* each zombie must be logged ``event=disconnect kind=heartbeat_timeout code=1006 ...
  silent_s=X``; X is the silence the server measured (last inbound frame -> close). The
  wall-clock time from the zombie's last sent byte (its echo, noted client-side with
  ``time.time()``) to the ``ts=`` of that line is reported too (same machine clock).

The bound is ``interval + timeout + tick``, tick = min(interval, timeout) / 10 clamped to
[0.005, 1.0]. Stopped processes are SIGCONTed and killed in a ``finally``, as are the
supervisor and its shards.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import time
from typing import Any

from bench._load import SERVER_ROOT, Child, Interference, Server, machine_info

PRESETS: dict[str, tuple[list[str], float, float]] = {
    "sub": (["--heartbeat-interval", "0.5", "--heartbeat-timeout", "1"], 0.5, 1.0),
    "short": (["--heartbeat", "short"], 5.0, 15.0),
    "medium": (["--heartbeat", "medium"], 30.0, 60.0),
    "long": (["--heartbeat", "long"], 300.0, 600.0),
}


def tick_of(interval: float, timeout: float) -> float:
    return max(0.005, min(1.0, min(interval, timeout) / 10.0))


def run_preset(name: str, index: int, a: argparse.Namespace) -> dict[str, Any]:
    args, interval, timeout = PRESETS[name]
    tick = tick_of(interval, timeout)
    bound = interval + timeout + tick
    server = Server(*args, "--drain-timeout", "5", shards=a.shards)
    children: list[Child] = []
    stopped: list[Child] = []
    out: dict[str, Any] = {
        "preset": name,
        "interval": interval,
        "timeout": timeout,
        "tick": tick,
        "bound": bound,
    }
    life = str(bound * 2 + 120)  # every client process ends by itself after this
    try:
        server.start()
        port = str(server.port)
        source = f"127.0.{20 + index}"

        # ---- live clients first: they are silent at least as long as any zombie
        live = Child(
            "pool",
            "--port",
            port,
            "--count",
            str(a.live),
            "--sessions",
            "--source",
            f"{source}.2",
            "--max-seconds",
            life,
        )
        children.append(live)
        live_sessions = set(live.expect("connected", 30)["sessions"])

        # ---- zombies
        n_stopped = a.zombies // 2
        n_mute = a.zombies - n_stopped
        for k in range(n_stopped):
            child = Child(
                "zombie", "--port", port, "--source", f"{source}.{3 + k}", "--max-seconds", life
            )
            children.append(child)
        zombies: list[dict[str, Any]] = []
        for child in children[1:]:
            message = child.expect("zombie", 30)
            os.kill(child.pid, signal.SIGSTOP)
            stopped.append(child)
            zombies.append(message)
        if n_mute:
            mute = Child(
                "pool",
                "--port",
                port,
                "--count",
                str(n_mute),
                "--mute",
                "--source",
                f"{source}.250",
                "--max-seconds",
                life,
            )
            children.append(mute)
            zombies.extend(mute.expect("connected", 30).get("zombies", []))

        # ---- wait for every zombie's disconnect line
        deadline = max(z["last_send"] for z in zombies) + bound * 1.5 + 5.0
        found: dict[str, dict[str, str]] = {}
        for z in zombies:
            left = max(0.1, deadline - time.time())
            try:
                found[z["session"]] = server.wait_for(
                    "disconnect", timeout=left, session=z["session"]
                )
            except TimeoutError:
                pass
        # One more interval (at most 5 s): the live clients get pinged again meanwhile.
        time.sleep(min(interval + tick, 5.0))
        live.send("stats")
        live_stats = live.expect("stats", 10)

        out["zombies"] = []
        for z in zombies:
            line = found.get(z["session"])
            entry = {"kind": z["kind"], "detected": line is not None}
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
        out["other_kinds"] = collections.Counter(
            f.get("kind")
            for f in server.events("disconnect")
            if f.get("session") not in live_sessions
            and f.get("session") not in {z["session"] for z in zombies}
        )
    finally:
        for child in stopped:
            child.kill()  # SIGCONT + SIGKILL
        server.stop(timeout=15)
        for child in children:
            child.stop()
    return out


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "-") else float("nan")
    except ValueError:
        return float("nan")


def _mmm(values: list[float]) -> tuple[str, str, str]:
    """min, median, max, formatted."""
    if not values:
        return "-", "-", "-"
    return f"{min(values):.3f}", f"{statistics.median(values):.3f}", f"{max(values):.3f}"


def report(results: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'preset':<7} {'interval/timeout/tick s':>23} {'bound s':>8} {'zombies':<8}"
        f" {'found':>7} {'silent_s min':>12} {'median':>7} {'max':>7}"
        f" {'wall s min':>10} {'median':>7} {'max':>7} {'max/bound':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for kind in ("stopped", "mute", "all"):
            zs = [z for z in r["zombies"] if kind == "all" or z["kind"] == kind]
            if not zs:
                continue
            hits = [z for z in zs if z["detected"] and z.get("close_kind") == "heartbeat_timeout"]
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
        over = [z for z in r["zombies"] if z.get("silent_s", 0) > r["bound"]]
        live = r["live"]
        ok = (
            live["open"] == live["count"]
            and not live["disconnect_lines"]
            and not live["closed"]
            and live["connected"] == live["count"]
        )
        print(
            f"{r['preset']}: zombie close codes {dict(codes)}; not detected: {len(other)};"
            f" closed as another kind: {len(wrong)}; silent_s over the bound: {len(over)};"
            f" live clients {'all still open' if ok else 'NOT all open'}"
            f" ({live['open']}/{live['count']} open, {live['pings']} pings answered,"
            f" {live['disconnect_lines']} disconnect lines)"
            + (f"; other disconnects: {dict(r['other_kinds'])}" if r["other_kinds"] else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.zombie", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--presets",
        default="sub,short",
        help="comma-separated: sub, short, medium (~90 s), long (~15 min)",
    )
    parser.add_argument("--zombies", type=int, default=20, help="half stopped, half mute")
    parser.add_argument("--live", type=int, default=10, help="idle clients that must survive")
    parser.add_argument("--shards", type=int, default=2)
    a = parser.parse_args(argv)
    presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    if not 1 <= a.zombies <= 200 or not 0 <= a.live <= 1000 or not 1 <= a.shards <= 16:
        parser.error("--zombies must be in 1..200, --live in 0..1000, --shards in 1..16")

    started = time.monotonic()
    cpu = Interference()
    print("Zombie detection time (python -m bench.zombie)")
    for line in machine_info():
        print(line)
    print(
        f"settings: {a.zombies} zombies per preset ({a.zombies // 2} stopped with SIGSTOP,"
        f" {a.zombies - a.zombies // 2} mute), {a.live} live idle clients,"
        f" --shards {a.shards}; server from {SERVER_ROOT}"
    )
    print(
        "silent_s: the server's measure (last inbound frame -> close, from the log line);"
        " wall: zombie's last sent byte -> ts= of that line"
    )
    results = []
    for index, name in enumerate(presets):
        print(f"... {name}", flush=True)
        results.append(run_preset(name, index, a))
    report(results)
    print(f"\n{cpu.done()}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
