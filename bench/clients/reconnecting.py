"""The ``reconnecting`` mode: library clients through a crash, welcomes timed (``bench storm``).

Runs ``--conns`` clients (``client.open_reconnecting_client``) from ``--source``. JSON
lines: ``progress`` (clients welcomed once / ``--welcomes`` times) every 0.2 s, ``ready``
once each had a welcome, and ``result`` at a line on stdin, when each had ``--welcomes``,
or at ``--seconds``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from typing import Any

from lab.jsonproc import emit, raise_nofile

PROGRESS_S = 0.2  # how often it reports its counts


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--jitter", default="full")
    p.add_argument("--base", type=float, default=1.0)
    p.add_argument("--cap", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--welcomes", type=int, default=2)


def run(a: argparse.Namespace) -> None:
    """Run ``--conns`` reconnecting clients from ``--source``. JSON lines on stdout:
    ``progress`` (clients welcomed once / ``--welcomes`` times) every 0.2 s, ``ready`` once
    each had a welcome, and ``result`` at a line on stdin, when each had ``--welcomes``,
    or at ``--seconds``."""
    import trio

    from client.reconnecting import Away, Connected, GaveUp, Resumed, open_reconnecting_client
    from core.backoff import Backoff

    logging.getLogger("client").setLevel(logging.ERROR)  # one line per lost session
    raise_nofile()
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
