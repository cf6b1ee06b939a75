"""A rolling restart under load: ``python -m bench.rolling [--players 200] [--shards 4]``

Starts ``python -m supervisor``, connects N players (half in 10 rooms of 10, the rest in
the lobby) with the reconnecting client, each sending numbered messages and receiving a
numbered broadcast stream, sends SIGHUP, and reports: minimum connected fraction (sampled
every 50 ms), reconnect latency p50/p99, resumes, sessions lost, messages lost/doubled in
each direction, and the roll's duration. Bounded: the roll must finish within 120 s.
"""

from __future__ import annotations

import argparse
import platform
import signal
import statistics
import time

import trio

from tests.supervisor.rolling_harness import ROLL_ARGS, Crowd, Player, paths, run_crowd
from tests.support import open_server


async def roll(players: int, shards: int) -> dict[str, object]:
    async with open_server(*ROLL_ARGS, shards=shards, echo_logs=False) as server:
        crowd = Crowd([Player(i, p) for i, p in enumerate(paths(players, rooms=10, per_room=10))])
        before = set(server.shard_pids().values())
        marks: dict[str, float] = {}
        done: dict[str, str] = {}

        async def during() -> None:
            await trio.sleep(1.0)
            marks["hup"] = trio.current_time()
            server.signal(signal.SIGHUP)
            done.update(await server.log.wait_for("roll_done", timeout=120))
            await trio.sleep(0.5)

        await run_crowd(server, crowd, during)
        latencies = sorted(x for p in crowd.players for x in p.reconnect_latencies)
        return {
            **crowd.totals(),
            "all_shards_replaced": before.isdisjoint(server.shard_pids().values()),
            "min_connected_fraction": round(crowd.min_connected_fraction(marks["hup"]), 3),
            "reconnect_p50_ms": round(statistics.median(latencies) * 1000) if latencies else None,
            "reconnect_p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000)
            if latencies
            else None,
            "roll_s": float(done["duration_s"]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rolling", description=__doc__)
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.platform()} | "
        f"{platform.machine()} | python {platform.python_version()}"
    )
    for key, value in trio.run(roll, args.players, args.shards).items():
        print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
