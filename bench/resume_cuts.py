"""Cut a reconnecting client's TCP connection again and again; count what was lost or doubled.

    python -m bench.resume_cuts [--cuts 50] [--shards 4] [--interval 0.2]

A ``python -m supervisor`` is started; client **C** (``client.open_reconnecting_client``)
talks to it through ``bench.netcut.CuttingProxy``, which resets every connection through it
``--cuts`` times, every ``--interval`` seconds. Meanwhile:

* client -> server: C sends ``echo`` with data 1, 2, 3, ... (each gets a cseq); the server
  answers each one it processed, so an echo seen twice was processed twice, one never
  seen was lost;
* server -> client: client **S**, connected directly, sends ``say`` with text 1, 2, 3, ...;
  C must see each ``said`` exactly once.

At the end (all cuts done) both senders stop and C must catch up; then the counts are
printed. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from trio_websocket import open_websocket_url

from bench.netcut import CuttingProxy
from client import Backoff, Connected, Message, Resumed, SessionLost, open_reconnecting_client
from tests.support import open_server


@dataclass
class CutReport:
    cuts: int = 0
    resumed: int = 0
    sessions_lost: int = 0
    echoes_sent: int = 0
    echoes_seen: Counter[int] = field(default_factory=Counter)
    says_sent: int = 0
    saids_seen: Counter[int] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    client_gaps: int = 0
    duplicates_dropped: int = 0
    server_events: list[dict[str, str]] = field(default_factory=list)

    def lost_doubled(self, sent: int, seen: Counter[int]) -> tuple[int, int]:
        lost = sum(1 for i in range(1, sent + 1) if seen[i] == 0)
        doubled = sum(n - 1 for n in seen.values() if n > 1)
        return lost, doubled

    def summary(self) -> dict[str, int | float]:
        c2s_lost, c2s_doubled = self.lost_doubled(self.echoes_sent, self.echoes_seen)
        s2c_lost, s2c_doubled = self.lost_doubled(self.says_sent, self.saids_seen)
        return {
            "cuts": self.cuts,
            "resumed": self.resumed,
            "sessions_lost": self.sessions_lost,
            "client_to_server_sent": self.echoes_sent,
            "client_to_server_lost": c2s_lost,
            "client_to_server_doubled": c2s_doubled,
            "server_to_client_sent": self.says_sent,
            "server_to_client_lost": s2c_lost,
            "server_to_client_doubled": s2c_doubled,
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def run_cuts(
    cuts: int = 50,
    shards: int = 4,
    interval: float = 0.2,
    rate: float = 50.0,
    settle_timeout: float = 60.0,
    echo_logs: bool = False,
) -> CutReport:
    report = CutReport()
    started = time.monotonic()
    limit = str(max(100.0, rate * 4))  # the senders here are not the flood being tested
    async with open_server(
        "--heartbeat-interval",
        "1",
        "--heartbeat-timeout",
        "2",
        "--max-message-rate",
        limit,
        "--message-burst",
        limit,
        shards=shards,
        echo_logs=echo_logs,
    ) as server:
        async with trio.open_nursery() as nursery:
            proxy = CuttingProxy("127.0.0.1", server.port)
            port = await nursery.start(proxy.run)
            backoff = Backoff(base=0.05, cap=0.5, max_retries=50)
            url = f"ws://127.0.0.1:{port}/"
            async with (
                open_reconnecting_client(url, backoff=backoff) as c,
                open_websocket_url(server.url()) as s,
            ):
                json.loads(await s.get_message())  # S's welcome
                events = c.events()
                # A broadcast reaches sessions that exist: start once C has its session.
                with trio.fail_after(30):
                    first = await events.receive()
                assert isinstance(first, Connected), first
                stop_sending = trio.Event()

                async def consume() -> None:
                    async for event in events:
                        if isinstance(event, Resumed):
                            report.resumed += 1
                        elif isinstance(event, SessionLost):
                            report.sessions_lost += 1
                        elif isinstance(event, Message):
                            m = event.message
                            if m.get("type") == "echo":
                                report.echoes_seen[m["data"]] += 1
                            elif m.get("type") == "said" and m.get("from") != c.session:
                                report.saids_seen[int(m["text"])] += 1

                async def send_echoes() -> None:
                    while not stop_sending.is_set():
                        report.echoes_sent += 1
                        await c.send({"type": "echo", "data": report.echoes_sent})
                        await trio.sleep(1 / rate)

                async def send_says() -> None:
                    while not stop_sending.is_set():
                        report.says_sent += 1
                        await s.send_message(
                            json.dumps({"type": "say", "text": str(report.says_sent)})
                        )
                        await trio.sleep(1 / rate)

                async def drain_s() -> None:
                    while True:
                        await s.get_message()

                nursery.start_soon(consume)
                nursery.start_soon(send_echoes)
                nursery.start_soon(send_says)
                nursery.start_soon(drain_s)
                with trio.fail_after(cuts * (interval + 5) + 30):
                    for _ in range(cuts):
                        await trio.sleep(interval)
                        proxy.cut()
                        report.cuts += 1
                stop_sending.set()
                with trio.move_on_after(settle_timeout):
                    while sum(
                        1 for i in range(1, report.echoes_sent + 1) if report.echoes_seen[i] == 0
                    ) or sum(
                        1 for i in range(1, report.says_sent + 1) if report.saids_seen[i] == 0
                    ):
                        await trio.sleep(0.05)
                report.client_gaps = c.gaps
                report.duplicates_dropped = c.duplicates_dropped
                report.server_events = [
                    f
                    for f in server.log.lines
                    if f.get("event")
                    in (
                        "handoff",
                        "fetch_timeout",
                        "resume_failed",
                        "route_failed",
                        "relay_dropped",
                        "app_error",
                    )
                ]
                nursery.cancel_scope.cancel()
    report.elapsed_s = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.resume_cuts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cuts", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s each direction")
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"python {platform.python_version()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    report = trio.run(run_cuts, args.cuts, args.shards, args.interval, args.rate)
    for key, value in report.summary().items():
        print(f"{key:28} {value}")
    s = report.summary()
    bad = (
        s["client_to_server_lost"]
        or s["client_to_server_doubled"]
        or s["server_to_client_lost"]
        or s["server_to_client_doubled"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
