"""A rolling restart under load: ``python -m bench rolling [--players 200] [--shards 4]``.

Starts ``python -m supervisor`` (quick reconnect hints and short drains: ``ROLL_ARGS`` of
``lab/crowd.py``), connects N players (half in 10 rooms of 10, the
rest in the lobby) with the reconnecting client, each sending numbered messages and
receiving a numbered broadcast stream, sends SIGHUP after 1 s of traffic, waits for
``roll_done`` (at most ``--timeout`` s), stops the traffic and waits up to 30 s for every
message to arrive.

Printed: minimum connected fraction (sampled every 50 ms), reconnect latency p50/p99,
resumes, sessions lost, messages lost/doubled in each direction, and the roll's duration.

Written (``bench/results/rolling-<stamp>.*``): the JSON (those figures, each roll step
from the supervisor's log, the connected-clients timeline and every reconnect latency)
and ``-timeline.png``: connected clients over time since the SIGHUP, with each shard's
replacement marked from the supervisor's log: ``shard_spawn`` of the new process (step
start), ``drain_start`` of the old one (its players start moving), ``shard_drained`` (the
old one is gone) and ``roll_step`` (its players are back; the next shard starts).
"""

from __future__ import annotations

import signal
import statistics
import time
from typing import Any

import trio

from bench._report import Progress, Report, scenario_parser
from lab.crowd import ROLL_ARGS, Crowd, Player, paths, run_crowd
from lab.server import ServerProcess, open_server

# Supervisor log events that mark a roll's progress (supervisor/arbiter.py, shards/).
ROLL_EVENTS = (
    "signal",
    "roll_start",
    "shard_spawn",
    "shard_ready",
    "drain_start",
    "shard_drained",
    "roll_step",
    "roll_aborted",
    "replacement_failed",
    "drain_timeout",
    "roll_done",
)
TRAFFIC_BEFORE_S = 1.0
SETTLE_S = 30.0


def roll_events(server: ServerProcess, offset: float, hup: float) -> list[dict[str, Any]]:
    """The roll's log lines from the SIGHUP on, each at ``t`` seconds since the SIGHUP.

    ``ts=`` is the shard's/supervisor's ``time.time()`` (ms); ``offset`` turns it into
    trio's clock (``time.time() - trio.current_time()`` taken once by this process).
    """
    out = []
    for f in server.log.lines:
        event = f.get("event", "")
        if event not in ROLL_EVENTS or "ts" not in f:
            continue
        t = float(f["ts"]) - offset - hup
        if t < -0.5:  # the start-up's spawns and readies
            continue
        item: dict[str, Any] = {"t": round(t, 3), "event": event}
        for key in ("shard", "pid", "old_pid", "new_pid", "evacuated", "not_back"):
            if key in f and f[key].isdigit():
                item[key] = int(f[key])
        if "duration_s" in f:
            item["duration_s"] = float(f["duration_s"])
        if "sig" in f:
            item["sig"] = f["sig"]
        out.append(item)
    return out


async def roll(players: int, shards: int, timeout: float, bar: Progress) -> dict[str, Any]:
    async with open_server(*ROLL_ARGS, shards=shards, echo_logs=False) as server:
        offset = time.time() - trio.current_time()
        crowd = Crowd([Player(i, p) for i, p in enumerate(paths(players, rooms=10, per_room=10))])
        before = set(server.shard_pids().values())
        marks: dict[str, float] = {}
        done: dict[str, str] = {}

        async def during() -> None:
            await trio.sleep(TRAFFIC_BEFORE_S)
            mark = len(server.log.lines)
            task = bar.add("rolling: shards replaced", total=shards)
            marks["hup"] = trio.current_time()
            server.signal(signal.SIGHUP)

            async def follow() -> None:
                for _ in range(int(timeout / 0.1) + 1):
                    lines = server.log.lines[mark:]
                    bar.update(task, completed=sum(f.get("event") == "roll_step" for f in lines))
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                done.update(await server.log.wait_for("roll_done", timeout=timeout, after=mark))
                bar.update(task, completed=shards)
                nursery.cancel_scope.cancel()
            marks["roll_done"] = trio.current_time()
            await trio.sleep(0.5)

        await run_crowd(server, crowd, during, settle=SETTLE_S, bar=bar)
        hup = marks["hup"]
        latencies = sorted(x for p in crowd.players for x in p.reconnect_latencies)
        figures: dict[str, Any] = {
            **crowd.totals(),
            "all_shards_replaced": before.isdisjoint(server.shard_pids().values()),
            "min_connected_fraction": round(crowd.min_connected_fraction(hup), 3),
            "reconnect_p50_ms": round(statistics.median(latencies) * 1000) if latencies else None,
            "reconnect_p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000)
            if latencies
            else None,
            "roll_s": float(done["duration_s"]),
        }
        events = roll_events(server, offset, hup)
        return {
            "figures": figures,
            "steps": [e for e in events if e["event"] == "roll_step"],
            "events": events,
            # (seconds since the SIGHUP, players connected), every 50 ms
            "timeline": [(round(t - hup, 3), c) for t, c in crowd.samples],
            "reconnect_latencies_ms": [round(x * 1000, 1) for x in latencies],
        }


def timeline_chart(data: dict[str, Any], players: int, shards: int) -> Any:
    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(11, 5))
        ts = [t for t, _ in data["timeline"]]
        cs = [c for _, c in data["timeline"]]
        ax.step(ts, cs, where="post", color="tab:blue", lw=1.4, label="connected players")
        ax.axhline(players, color="grey", lw=0.8, ls=":")
        ax.axvline(0, color="tab:red", lw=1.6, label="SIGHUP")
        low = min(cs) if cs else 0
        ax.set_ylim(max(0, low - 0.15 * players), players * 1.08)
        colors = ["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
        by_shard: dict[int, dict[str, float]] = {}
        for e in data["events"]:
            if "shard" in e and e["event"] != "signal":
                by_shard.setdefault(int(e["shard"]), {}).setdefault(e["event"], e["t"])
        styles = {
            "drain_start": ("--", "new shard ready, old one drains"),
            "shard_drained": (":", "old shard gone"),
        }
        labelled: set[str] = set()
        top = players * 1.04
        for index, marks in sorted(by_shard.items()):
            color = colors[index % len(colors)]
            start, end = marks.get("shard_spawn"), marks.get("roll_step")
            if start is not None and end is not None:
                ax.axvspan(start, end, color=color, alpha=0.12)
                ax.text(
                    (start + end) / 2,
                    top,
                    f"shard {index}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=color,
                )
            for event, (style, text) in styles.items():
                if event in marks:
                    label = text if text not in labelled else None
                    labelled.add(text)
                    ax.axvline(marks[event], color=color, ls=style, lw=1.0, label=label)
        if "roll_done" not in {e["event"] for e in data["events"]}:
            ax.text(0.5, 0.5, "roll did not finish", transform=ax.transAxes, color="tab:red")
        f = data["figures"]
        ax.set_title(
            f"Rolling restart, {players} players on {shards} shards: min connected "
            f"{f['min_connected_fraction']:.1%}, roll {f['roll_s']:.1f} s, "
            f"sessions lost {f['sessions_lost']}, messages lost "
            f"{f['c2s_lost'] + f['s2c_lost']}",
            fontsize=10,
        )
        ax.set_xlabel("seconds since SIGHUP (shaded: one shard's replacement step)")
        ax.set_ylabel("players connected")
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
        return fig

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("rolling", __doc__, shards=4)
    parser.add_argument("--players", type=int, default=200, help="players (default 200)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="bound on the roll, s (default 120)"
    )
    args = parser.parse_args(argv)
    if args.players < 1 or args.timeout <= 0:
        parser.error("--players must be >= 1, --timeout > 0")
    report = Report(
        "rolling",
        args,
        rooms="10 x 10, the rest in the lobby",
        traffic="4 echo/s per player + 4 say/s from one driver",
        server_args=" ".join(ROLL_ARGS),
    )
    with report.progress() as bar:
        data = trio.run(roll, args.players, args.shards, args.timeout, bar)
    print()
    for key, value in data["figures"].items():
        print(f"{key:24} {value}")
    report.finish(data, charts={"timeline": timeline_chart(data, args.players, args.shards)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
