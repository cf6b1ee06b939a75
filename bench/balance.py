"""How evenly do shards share the lobby?  ``python -m bench balance [--connections 2000]``

Opens N lobby connections (16 concurrent openers, ``--concurrency``) against ``--shards 8``
twice - with load-aware accepting off (the kernel alone decides: epoll wakes the latest
waiter) and on - and prints connections per shard and the max/min ratio of each.

Defaults: ``--connections 2000 --shards 8 --concurrency 16`` (about 15-30 s on a 2-core
VM). Writes ``bench/results/balance-<stamp>.json`` (connections per shard of each mode)
and ``balance-<stamp>-per_shard.png`` (connections per shard, kernel only vs load-aware).
Each mode is bounded by 120 s; every server process is killed by pid on the way out.
"""

from __future__ import annotations

import collections
import math
import sys
from collections.abc import Callable
from typing import Any

import trio

from bench._report import Progress, Report, scenario_parser
from core.balance import max_min_ratio
from lab.rawws import RawClient
from lab.server import open_server

MODES: dict[str, list[str]] = {"kernel only": ["--no-accept-balancing"], "load-aware": []}


async def spread(
    extra: list[str],
    connections: int,
    shards: int,
    concurrency: int = 16,
    on_connect: Callable[[int], None] | None = None,
) -> list[int]:
    """Open ``connections`` lobby connections; how many each shard got (index order).

    ``on_connect(total)`` is called after each welcome with the number so far."""
    async with open_server(*extra, shards=shards, echo_logs=False) as server:
        counts: collections.Counter[int] = collections.Counter()
        clients: list[RawClient] = []

        async def opener(count: int) -> None:
            for _ in range(count):
                client = await RawClient.connect(server.port)
                counts[(await client.receive())["shard"]] += 1
                clients.append(client)
                if on_connect is not None:
                    on_connect(len(clients))

        try:
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for i in range(concurrency):
                        share = connections // concurrency + (i < connections % concurrency)
                        nursery.start_soon(opener, share)
        finally:
            for client in clients:
                client.vanish()
        return [counts[i] for i in range(shards)]


async def main_async(
    connections: int, shards: int, concurrency: int, bar: Progress
) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for label, extra in MODES.items():
        task = bar.add(f"{label}: connections", total=connections)
        loads = await spread(
            extra, connections, shards, concurrency, lambda n, t=task: bar.update(t, completed=n)
        )
        bar.done(task)
        out[label] = loads
    return out


def per_shard_chart(loads: dict[str, list[int]]) -> Callable[[Any], Any]:
    """Grouped bars: connections per shard, one bar per mode, the even share as a line."""

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(10, 5))
        width = 0.8 / max(1, len(loads))
        for k, (label, counts) in enumerate(loads.items()):
            xs = [i + (k - (len(loads) - 1) / 2) * width for i in range(len(counts))]
            ratio = max_min_ratio(counts)
            ax.bar(xs, counts, width=width, label=f"{label} (max/min {ratio:.2f})")
        some = next(iter(loads.values()), [])
        if some:
            ax.axhline(sum(some) / len(some), color="black", linestyle="--", label="even share")
            ax.set_xticks(range(len(some)))
        ax.set_xlabel("shard")
        ax.set_ylabel("lobby connections")
        ax.set_title(f"Connections per shard ({sum(some)} lobby connections)")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        return fig

    return draw


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("balance", __doc__, shards=8)
    parser.add_argument("--connections", type=int, default=2000, help="per mode (2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent openers (16)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.concurrency < 1:
        parser.error("connections and concurrency must be positive")
    report = Report("balance", args)
    with report.progress() as bar:
        loads = trio.run(main_async, args.connections, args.shards, args.concurrency, bar)
    print()
    for label, counts in loads.items():
        print(f"{label:12} per shard {counts}  max/min {max_min_ratio(counts):.2f}")
    # max/min is inf when a shard got nothing: null in the JSON
    data = {
        label: {"per_shard": counts, "max_min": _finite(max_min_ratio(counts))}
        for label, counts in loads.items()
    }
    report.finish(data, charts={"per_shard": per_shard_chart(loads)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
