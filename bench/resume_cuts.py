"""Cut a reconnecting client's TCP connection again and again; count what was lost or doubled.

    python -m bench resume_cuts [--cuts 50] [--shards 4] [--interval 0.2]

A ``python -m supervisor`` is started; client **C** (``client.open_reconnecting_client``)
talks to it through ``lab.netcut.CuttingProxy``, which resets every connection through it
``--cuts`` times, every ``--interval`` seconds. Meanwhile:

* client -> server: C sends ``echo`` with data 1, 2, 3, ... (each gets a cseq); the server
  answers each one it processed, so an echo seen twice was processed twice, one never
  seen was lost;
* server -> client: client **S**, connected directly, sends ``say`` with text 1, 2, 3, ...;
  C must see each ``said`` exactly once.

At the end (all cuts done) both senders stop; C must catch up and resume after the last
cut (for at most 60 s). Then the counts are printed, with the time from each cut to C's
next ``Resumed`` (if it came before the next cut) and each message's delivery latency
(echo: sent by C -> seen by C; said: sent by S -> seen by C). Every loop is bounded in
count and time.

Defaults: ``--cuts 50 --shards 4 --interval 0.2 --rate 50`` (about 10-20 s). Writes
``bench/results/resume_cuts-<stamp>.json`` (the counts, one row per cut, every message's
send time and latency) and two PNGs: ``-cuts`` (resume latency per cut; messages
sent/lost/doubled between one cut and the next) and ``-timeline`` (every message's
delivery latency over time, the cuts as lines). Exits 1 if anything was lost or doubled.

Why over 300 lines: the cutting run (``run_cuts``, also run by the client tests at a tiny
size) and its accounting (``CutReport``: lost and doubled messages per direction,
per-cut timings) are one idea, plus two charts.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import open_websocket_url

from bench._report import Progress, Report, percentile, scenario_parser
from client import (
    Away,
    Backoff,
    Connected,
    Message,
    Resumed,
    SessionLost,
    open_reconnecting_client,
)
from lab.netcut import CuttingProxy
from lab.server import open_server


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
    # Timeline, in seconds since the senders started (C connected).
    cut_at: list[float] = field(default_factory=list)
    cut_connections: list[int] = field(default_factory=list)  # connections each cut reset
    away_at: list[float] = field(default_factory=list)
    resumed_at: list[float] = field(default_factory=list)
    echo_sent_at: list[float] = field(default_factory=list)  # [i - 1]: echo i
    echo_first_seen_at: dict[int, float] = field(default_factory=dict)
    say_sent_at: list[float] = field(default_factory=list)  # [i - 1]: say i
    said_first_seen_at: dict[int, float] = field(default_factory=dict)

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

    def resume_ms(self) -> list[float | None]:
        """Per cut: ms to the first ``Resumed`` after it, None if none came before the next
        cut (the cut hit no live connection, or the resume took longer)."""
        out: list[float | None] = []
        for k, cut in enumerate(self.cut_at):
            until = self.cut_at[k + 1] if k + 1 < len(self.cut_at) else float("inf")
            i = bisect.bisect_left(self.resumed_at, cut)
            ok = i < len(self.resumed_at) and self.resumed_at[i] < until
            out.append(1000 * (self.resumed_at[i] - cut) if ok else None)
        return out

    def latencies(self, direction: str) -> list[tuple[float, float | None, int]]:
        """``(sent at, delivery latency s or None if lost, times seen)`` per message."""
        if direction == "c2s":
            sent, first, seen = self.echo_sent_at, self.echo_first_seen_at, self.echoes_seen
        else:
            sent, first, seen = self.say_sent_at, self.said_first_seen_at, self.saids_seen
        return [
            (t, first[i] - t if i in first else None, seen[i]) for i, t in enumerate(sent, start=1)
        ]

    def per_cut(self) -> list[dict[str, Any]]:
        """Row 0: before the first cut; row k: cut k and what was sent until the next."""
        rows: list[dict[str, Any]] = []
        resume = self.resume_ms()
        for k in range(len(self.cut_at) + 1):
            row: dict[str, Any] = {"cut": k}
            if k:
                row["at_s"] = self.cut_at[k - 1]
                row["connections_cut"] = self.cut_connections[k - 1]
                row["resume_ms"] = resume[k - 1]
            for direction in ("c2s", "s2c"):
                row[f"{direction}_sent"] = row[f"{direction}_lost"] = 0
                row[f"{direction}_doubled"] = 0
            rows.append(row)
        for direction in ("c2s", "s2c"):
            for t, latency, seen in self.latencies(direction):
                row = rows[bisect.bisect_right(self.cut_at, t)]
                row[f"{direction}_sent"] += 1
                row[f"{direction}_lost"] += latency is None
                row[f"{direction}_doubled"] += max(0, seen - 1)
        return rows


async def run_cuts(
    cuts: int = 50,
    shards: int = 4,
    interval: float = 0.2,
    rate: float = 50.0,
    settle_timeout: float = 60.0,
    echo_logs: bool = False,
    bar: Progress | None = None,
) -> CutReport:
    """Run it; ``bar`` (optional) shows the cuts and the catching up."""
    report = CutReport()
    started = time.monotonic()
    t0 = started  # reset when the senders start

    def now() -> float:
        return time.monotonic() - t0

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
                t0 = time.monotonic()

                async def consume() -> None:
                    async for event in events:
                        if isinstance(event, Resumed):
                            report.resumed += 1
                            report.resumed_at.append(now())
                        elif isinstance(event, Away):
                            report.away_at.append(now())
                        elif isinstance(event, SessionLost):
                            report.sessions_lost += 1
                        elif isinstance(event, Message):
                            m = event.message
                            if m.get("type") == "echo":
                                report.echoes_seen[m["data"]] += 1
                                report.echo_first_seen_at.setdefault(m["data"], now())
                            elif m.get("type") == "said" and m.get("from") != c.session:
                                j = int(m["text"])
                                report.saids_seen[j] += 1
                                report.said_first_seen_at.setdefault(j, now())

                async def send_echoes() -> None:
                    while not stop_sending.is_set():
                        report.echoes_sent += 1
                        report.echo_sent_at.append(now())
                        await c.send({"type": "echo", "data": report.echoes_sent})
                        await trio.sleep(1 / rate)

                async def send_says() -> None:
                    while not stop_sending.is_set():
                        report.says_sent += 1
                        report.say_sent_at.append(now())
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
                cut_task = bar.add("cuts", total=cuts) if bar is not None else 0
                with trio.fail_after(cuts * (interval + 5) + 30):
                    for _ in range(cuts):
                        await trio.sleep(interval)
                        report.cut_at.append(now())
                        report.cut_connections.append(proxy.cut())
                        report.cuts += 1
                        if bar is not None:
                            bar.advance(cut_task)
                stop_sending.set()

                def missing() -> int:
                    return sum(
                        1 for i in range(1, report.echoes_sent + 1) if report.echoes_seen[i] == 0
                    ) + sum(1 for i in range(1, report.says_sent + 1) if report.saids_seen[i] == 0)

                def back() -> bool:
                    """C resumed after the last cut (if that cut reset a connection)."""
                    if not report.cut_connections or not report.cut_connections[-1]:
                        return True
                    return bool(report.resumed_at) and report.resumed_at[-1] >= report.cut_at[-1]

                sent = report.echoes_sent + report.says_sent
                catch_up = bar.add("catching up (messages)", total=sent) if bar is not None else 0
                with trio.move_on_after(settle_timeout):
                    while (left := missing()) or not back():
                        if bar is not None:
                            bar.update(catch_up, completed=sent - left)
                        await trio.sleep(0.05)
                if bar is not None:
                    bar.update(catch_up, completed=sent - missing())
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
                        "broadcast_gap",
                        "app_error",
                    )
                ]
                nursery.cancel_scope.cancel()
    report.elapsed_s = time.monotonic() - started
    return report


def _ms(values: list[float], q: float) -> str:
    return f"{1000 * percentile(sorted(values), q):.1f}" if values else "-"


def cuts_chart(rows: list[dict[str, Any]]) -> Callable[[Any], Any]:
    """Top: ms from each cut to the next resume. Bottom: messages sent between one cut and
    the next, each direction, with the lost and doubled ones on top."""

    def draw(plt: Any) -> Any:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
        cuts = [r for r in rows if r["cut"]]
        ok = [r for r in cuts if r["resume_ms"] is not None]
        top.bar([r["cut"] for r in ok], [r["resume_ms"] for r in ok], label="resumed")
        missed = [r["cut"] for r in cuts if r["resume_ms"] is None]
        if missed:
            top.plot(missed, [0] * len(missed), "rx", label="no resume before the next cut")
        top.set_ylabel("cut -> Resumed, ms")
        top.set_title(f"Resume after each cut ({len(ok)} of {len(cuts)} before the next cut)")
        top.grid(True, axis="y", alpha=0.3)
        top.legend()
        xs = [r["cut"] for r in rows]
        width = 0.4
        for shift, direction, label in (
            (-0.2, "c2s", "client->server"),
            (0.2, "s2c", "server->client"),
        ):
            x = [v + shift for v in xs]
            sent = [r[f"{direction}_sent"] for r in rows]
            bottom.bar(x, sent, width=width, label=f"{label} sent")
            bad = [r[f"{direction}_lost"] + r[f"{direction}_doubled"] for r in rows]
            if any(bad):
                bottom.bar(
                    x, bad, width=width, bottom=sent, color="red", label=f"{label} lost+doubled"
                )
        lost = sum(r["c2s_lost"] + r["s2c_lost"] for r in rows)
        doubled = sum(r["c2s_doubled"] + r["s2c_doubled"] for r in rows)
        bottom.set_title(
            f"Messages sent after each cut (0 = before the first): {lost} lost, {doubled} doubled"
        )
        bottom.xaxis.get_major_locator().set_params(integer=True)
        bottom.set_xlabel("cut #")
        bottom.set_ylabel("messages")
        bottom.grid(True, axis="y", alpha=0.3)
        bottom.legend()
        return fig

    return draw


def timeline_chart(report: CutReport) -> Callable[[Any], Any]:
    """Every message's delivery latency against its send time; the cuts as lines."""

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(12, 5))
        for k, t in enumerate(report.cut_at):
            ax.axvline(
                t, color="tab:red", alpha=0.25, linewidth=0.8, label="cut" if k == 0 else None
            )
        top = 1000 * max(
            (lat for d in ("c2s", "s2c") for _, lat, _ in report.latencies(d) if lat),
            default=1.0,
        )
        for direction, label, marker in (
            ("c2s", "echo: C sends -> C sees the answer", "."),
            ("s2c", "said: S sends -> C sees it", "+"),
        ):
            points = report.latencies(direction)
            got = [(t, 1000 * lat) for t, lat, _ in points if lat is not None]
            if got:
                ax.plot(*zip(*got, strict=True), marker, label=label, markersize=4, alpha=0.7)
            lost = [t for t, lat, _ in points if lat is None]
            if lost:
                ax.plot(
                    lost,
                    [2 * top] * len(lost),
                    "kx",
                    label=f"{direction} lost ({len(lost)}, at top)",
                )
        ax.set_yscale("log")
        ax.set_xlabel("seconds since C connected (red lines: cuts)")
        ax.set_ylabel("delivery latency, ms")
        ax.set_title(f"Message delivery through {report.cuts} TCP cuts")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
        return fig

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("resume_cuts", __doc__, shards=4)
    parser.add_argument("--cuts", type=int, default=50, help="cuts (50)")
    parser.add_argument("--interval", type=float, default=0.2, help="s between cuts (0.2)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s each direction (50)")
    args = parser.parse_args(argv)
    if not 1 <= args.cuts <= 10_000 or args.interval <= 0 or args.rate <= 0:
        parser.error("--cuts must be in 1..10000, --interval and --rate positive")
    out = Report(
        "resume_cuts",
        args,
    )
    with out.progress() as bar:
        report = trio.run(
            run_cuts, args.cuts, args.shards, args.interval, args.rate, 60.0, False, bar
        )
    print()
    s = report.summary()
    for key, value in s.items():
        print(f"{key:28} {value}")
    resume = [r for r in report.resume_ms() if r is not None]
    c2s = [lat for _, lat, _ in report.latencies("c2s") if lat is not None]
    s2c = [lat for _, lat, _ in report.latencies("s2c") if lat is not None]
    resume_s = [r / 1000 for r in resume]
    hit = sum(1 for n in report.cut_connections if n)
    print(
        f"\ncut -> Resumed (ms): p50 {_ms(resume_s, 50)}  max {_ms(resume_s, 100)}"
        f"  ({len(resume)} of {report.cuts} cuts resumed before the next cut;"
        f" {hit} cut a live connection)"
    )
    print(
        f"delivery (ms) p50/p99/max: echo {_ms(c2s, 50)}/{_ms(c2s, 99)}/{_ms(c2s, 100)},"
        f" said {_ms(s2c, 50)}/{_ms(s2c, 99)}/{_ms(s2c, 100)}"
    )
    rows = report.per_cut()
    data = {
        "summary": s,
        "client_gaps": report.client_gaps,
        "duplicates_dropped": report.duplicates_dropped,
        "server_events": report.server_events,
        "resume_ms": {
            "p50": percentile(sorted(resume), 50) if resume else None,
            "max": max(resume) if resume else None,
            "resumed_before_next_cut": len(resume),
            "cuts_of_a_live_connection": hit,
        },
        "per_cut": rows,
        "away_at_s": report.away_at,
        "resumed_at_s": report.resumed_at,
        "messages": {
            "columns": ["sent_at_s", "latency_s (null: lost)", "times_seen"],
            "c2s": report.latencies("c2s"),
            "s2c": report.latencies("s2c"),
        },
    }
    out.finish(data, charts={"cuts": cuts_chart(rows), "timeline": timeline_chart(report)})
    bad = (
        s["client_to_server_lost"]
        or s["client_to_server_doubled"]
        or s["server_to_client_lost"]
        or s["server_to_client_doubled"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
