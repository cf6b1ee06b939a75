"""How fast is a killed shard back?  ``python -m bench respawn [--kills 5] [--shards 4]``

SIGKILLs one shard at a time (cycling through them) of a ``python -m supervisor`` and
measures, on the machine's wall clock, the time from the kill to the replacement's
``event=shard_ready`` log line.

Defaults: ``--kills 5 --shards 4`` (about 5 s). Each wait for a replacement is bounded
(``--ready-timeout``, 20 s); ``--kills`` is capped at 1000. Writes
``bench/results/respawn-<stamp>.json`` (every kill: shard, old and new pid, seconds) and
``respawn-<stamp>-kill_to_ready.png`` (kill -> ready seconds per kill, by shard).
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from bench._report import Progress, Report, scenario_parser
from lab.server import open_server


async def respawn_times(
    kills: int, shards: int, bar: Progress | None = None, ready_timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Kill shard ``i % shards`` for each i; one record per kill (``seconds``: kill -> ready)."""
    task = bar.add("kills", total=kills) if bar is not None else None
    async with open_server(shards=shards, echo_logs=False) as server:
        for index in range(shards):  # every first generation is up before the first kill
            await server.log.wait_for("shard_ready", shard=index, timeout=60)
        out = []
        for i in range(kills):
            index = i % shards
            mark = len(server.log.lines)
            old_pid = server.shard_pids()[index]
            killed_at = time.time()
            os.kill(old_pid, signal.SIGKILL)
            ready = await server.log.wait_for(
                "shard_ready", shard=index, after=mark, timeout=ready_timeout
            )
            out.append(
                {
                    "kill": i + 1,
                    "shard": index,
                    "old_pid": old_pid,
                    "new_pid": server.shard_pids()[index],
                    "seconds": float(ready["ts"]) - killed_at,
                }
            )
            if bar is not None and task is not None:
                bar.advance(task)
        return out


def kill_to_ready_chart(kills: list[dict[str, Any]]) -> Callable[[Any], Any]:
    """One bar per kill, coloured by shard, with the median as a line."""

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(kills) + 3), 4.5))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        shards = sorted({k["shard"] for k in kills})
        for shard in shards:
            mine = [k for k in kills if k["shard"] == shard]
            ax.bar(
                [k["kill"] for k in mine],
                [k["seconds"] for k in mine],
                color=colours[shard % len(colours)],
                label=f"shard {shard}",
            )
        median = statistics.median(k["seconds"] for k in kills)
        ax.axhline(median, color="black", linestyle="--", label=f"median {median:.3f} s")
        ax.set_xlabel("kill #")
        ax.set_ylabel("SIGKILL -> replacement's shard_ready, s")
        ax.set_title("Respawn time of a SIGKILLed shard")
        ax.set_xticks([k["kill"] for k in kills])
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
        return fig

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("respawn", __doc__, shards=4)
    parser.add_argument("--kills", type=int, default=5, help="kills in all (5)")
    parser.add_argument(
        "--ready-timeout", type=float, default=20.0, help="bound of each wait, s (20)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= 1000:
        parser.error("--kills must be in 1..1000")
    report = Report("respawn", args)
    with report.progress() as bar:
        kills = trio.run(respawn_times, args.kills, args.shards, bar, args.ready_timeout)
    times = [k["seconds"] for k in kills]
    print()
    print("kill -> shard_ready (s):", " ".join(f"{t:.3f}" for t in times))
    print(f"min {min(times):.3f}  median {statistics.median(times):.3f}  max {max(times):.3f}")
    data = {
        "kills": kills,
        "seconds": times,
        "min_s": min(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
    }
    report.finish(data, charts={"kill_to_ready": kill_to_ready_chart(kills)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
