"""How evenly do shards share the lobby?  ``python -m bench.balance [--connections 2000]``

Opens N lobby connections (16 concurrent openers) against ``--shards 8`` twice - with
load-aware accepting off (the kernel alone decides: epoll wakes the latest waiter) and on
- and prints connections per shard and the max/min ratio of each.
"""

from __future__ import annotations

import argparse
import collections
import platform
import time

import trio

from core.balance import max_min_ratio
from tests.support import RawClient, open_server


async def spread(
    extra: list[str], connections: int, shards: int, concurrency: int = 16
) -> list[int]:
    async with open_server(*extra, shards=shards, echo_logs=False) as server:
        counts: collections.Counter[int] = collections.Counter()
        clients: list[RawClient] = []

        async def opener(count: int) -> None:
            for _ in range(count):
                client = await RawClient.connect(server.port)
                counts[(await client.receive())["shard"]] += 1
                clients.append(client)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(opener, connections // concurrency)
        for client in clients:
            client.vanish()
        return [counts[i] for i in range(shards)]


async def main_async(connections: int, shards: int) -> None:
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.platform()} | "
        f"{platform.machine()} | python {platform.python_version()}"
    )
    for label, extra in (("kernel only", ["--no-accept-balancing"]), ("load-aware", [])):
        loads = await spread(extra, connections, shards)
        print(f"{label:12} per shard {loads}  max/min {max_min_ratio(loads):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.balance", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    trio.run(main_async, args.connections, args.shards)


if __name__ == "__main__":
    main()
