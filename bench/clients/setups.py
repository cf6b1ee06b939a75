"""The ``setups`` mode: timed connection setups, ``--tasks`` at a time (``bench routing``).

A setup is TCP connect + upgrade + reading the ``welcome`` (``lab.rawws.RawClient``),
then a close 1000 read to its end before the next. Prints ``ready``, waits for a line on
stdin (the parent starts every process together), then prints its ``result``: the
start and end times and each setup's local port (to match the server's ``routed`` lines)
and seconds.
"""

from __future__ import annotations

import argparse
import collections
import time

import trio

from lab.jsonproc import emit
from lab.rawws import RawClient


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--tasks", type=int, default=16)


def run(a: argparse.Namespace) -> None:
    trio.run(setups, a.port, a.path, a.count, a.tasks, a.max_seconds)


async def setups(port: int, path: str, count: int, tasks: int, max_seconds: float) -> None:
    """Wait for ``go`` on stdin, run ``count`` setups over ``tasks`` tasks, print JSON."""
    results: list[tuple[int, float]] = []  # (local port, setup seconds)
    errors: collections.Counter[str] = collections.Counter()
    remaining = count
    emit({"type": "ready"})
    await trio.lowlevel.FdStream(0).receive_some(16)
    start = time.monotonic()
    deadline = start + max_seconds

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            try:
                with trio.fail_after(10):
                    t0 = time.perf_counter()
                    client = await RawClient.connect(port, path)
                    welcome = await client.receive()
                    setup = time.perf_counter() - t0
                    if welcome.get("type") != "welcome":
                        raise RuntimeError(f"first message {welcome.get('type')}")
                    local_port = client.stream.socket.getsockname()[1]
                    await client.close(1000)
            except Exception as exc:  # noqa: BLE001 - count and go on
                errors[type(exc).__name__] += 1
                continue
            results.append((local_port, setup))

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    end = time.monotonic()
    emit({"type": "result", "start": start, "end": end, "results": results, "errors": errors})
