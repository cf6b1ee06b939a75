"""How fast is a killed shard back?  ``python -m bench respawn [--kills 5] [--shards 4]``

SIGKILLs one shard at a time (cycling through them) of a ``python -m supervisor`` and
measures, on the machine's wall clock, the time from the kill to the replacement's
``event=shard_ready`` log line.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import time

import trio

from tests.support import open_server


async def respawn_times(kills: int, shards: int) -> list[float]:
    async with open_server(shards=shards, echo_logs=False) as server:
        out = []
        for i in range(kills):
            index = i % shards
            mark = len(server.log.lines)
            killed_at = time.time()
            os.kill(server.shard_pids()[index], signal.SIGKILL)
            ready = await server.log.wait_for("shard_ready", shard=index, after=mark)
            out.append(float(ready["ts"]) - killed_at)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench respawn", description=__doc__)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.platform()} | "
        f"{platform.machine()} | python {platform.python_version()} | "
        f"loadavg {os.getloadavg()[0]:.2f}"
    )
    times = trio.run(respawn_times, args.kills, args.shards)
    print("kill -> shard_ready (s):", " ".join(f"{t:.3f}" for t in times))
    print(f"min {min(times):.3f}  median {statistics.median(times):.3f}  max {max(times):.3f}")


if __name__ == "__main__":
    main()
