"""Reconnecting players with numbered traffic both ways through a roll or a crash, counted.

Shared by the rolling-restart tests and ``bench/rolling.py``: N reconnecting clients
(``client.open_reconnecting_client``) spread over the lobby and rooms; each sends numbered
``echo`` messages (client -> server: an echo seen twice was processed twice, one never seen
was lost) and every client receives the numbered ``say`` stream of one driver client
(server -> client). ``connected`` is sampled every 50 ms. An optional ``bar`` (anything
with ``add`` and ``update``, e.g. ``bench._report.Progress``) shows the connecting
and the settling.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from client import Backoff, Connected, Message, Resumed, SessionLost, open_reconnecting_client

# A rolling restart that fits a test: quick reconnect hints, a 2 s close window, short
# drains, sub-second heartbeats.
ROLL_ARGS = (
    "--reconnect-after-ms",
    "100",
    "--reconnect-window-ms",
    "2000",
    "--drain-timeout",
    "10",
    "--heartbeat-interval",
    "1",
    "--heartbeat-timeout",
    "2",
)
SAMPLE_S = 0.05
MAX_SAMPLES = 72_000  # one hour of 50 ms samples: the sampler ends even if nothing stops it


class Reachable(Protocol):
    """Where the players connect: a server (``lab.server.ServerProcess``) or a balancer."""

    def url(self, path: str = "/") -> str: ...


class Bar(Protocol):
    """What ``run_crowd`` needs of a progress display (``bench._report.Progress`` fits)."""

    def add(self, description: str, total: float | None = None) -> int: ...

    def update(
        self, task: int, *, completed: float | None = None, description: str | None = None
    ) -> None: ...


@dataclass
class Player:
    index: int
    path: str
    session: str | None = None
    sent: int = 0
    echoes: Counter[int] = field(default_factory=Counter)
    saids: Counter[int] = field(default_factory=Counter)
    resumed: int = 0
    lost_sessions: int = 0
    away_since: float | None = None
    reconnect_latencies: list[float] = field(default_factory=list)
    ended_in_session: str | None = None
    shard: int | None = None  # of the first welcome
    aways: list[float] = field(default_factory=list)


@dataclass
class Crowd:
    players: list[Player]
    says_sent: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, connected)
    aways: list[tuple[float, int | None, str, str]] = field(default_factory=list)

    def min_connected_fraction(self, since: float = 0.0) -> float:
        counts = [c for t, c in self.samples if t >= since]
        return min(counts) / len(self.players) if counts else 0.0

    def totals(self) -> dict[str, int]:
        c2s_lost = sum(1 for p in self.players for n in range(1, p.sent + 1) if not p.echoes[n])
        c2s_doubled = sum(v - 1 for p in self.players for v in p.echoes.values() if v > 1)
        s2c_lost = sum(
            1 for p in self.players for n in range(1, self.says_sent + 1) if not p.saids[n]
        )
        s2c_doubled = sum(v - 1 for p in self.players for v in p.saids.values() if v > 1)
        return {
            "players": len(self.players),
            "resumes": sum(p.resumed for p in self.players),
            "sessions_lost": sum(p.lost_sessions for p in self.players),
            "not_in_original_session": sum(
                1 for p in self.players if p.ended_in_session != p.session
            ),
            "c2s_sent": sum(p.sent for p in self.players),
            "c2s_lost": c2s_lost,
            "c2s_doubled": c2s_doubled,
            "s2c_sent": self.says_sent * len(self.players),
            "s2c_lost": s2c_lost,
            "s2c_doubled": s2c_doubled,
        }

    def complete(self) -> bool:
        t = self.totals()
        return t["c2s_lost"] == 0 and t["s2c_lost"] == 0

    def delivered(self) -> tuple[int, int]:
        """(messages that arrived at least once, messages sent), both directions together."""
        t = self.totals()
        sent = t["c2s_sent"] + t["s2c_sent"]
        return sent - t["c2s_lost"] - t["s2c_lost"], sent


def paths(count: int, rooms: int, per_room: int) -> list[str]:
    out = [f"/rooms/r{i % rooms}" for i in range(min(count, rooms * per_room))]
    out += ["/"] * (count - len(out))
    return out


async def run_crowd(
    server: Reachable,
    crowd: Crowd,
    during: Any,
    *,
    rate: float = 4.0,
    settle: float = 30.0,
    bar: Bar | None = None,
) -> None:
    """Connect everyone, start traffic, ``await during()``, stop traffic, let it settle
    (until every message arrived, at most ``settle`` seconds)."""
    backoff = Backoff(base=0.05, cap=1.0, max_retries=30)
    stop = trio.Event()
    clients: dict[int, Any] = {}
    connected_now: set[int] = set()

    async def play(player: Player, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        url = server.url(player.path)
        async with open_reconnecting_client(url, backoff=backoff) as client:
            clients[player.index] = client
            events = client.events()
            first = await events.receive()
            assert isinstance(first, Connected), first
            player.session = first.welcome["session"]
            player.shard = first.welcome["shard"]
            connected_now.add(player.index)
            task_status.started()
            async with trio.open_nursery() as inner:
                inner.start_soon(_send_loop, player, client, stop, rate)
                async for event in events:
                    now = trio.current_time()
                    if isinstance(event, Message):
                        m = event.message
                        if m.get("type") == "echo" and isinstance(m.get("data"), int):
                            player.echoes[m["data"]] += 1
                        elif m.get("type") == "said" and m.get("from") == "driver":
                            pass
                        elif m.get("type") == "said" and str(m.get("text", "")).startswith("#"):
                            player.saids[int(m["text"][1:])] += 1
                    elif isinstance(event, Resumed):
                        player.resumed += 1
                        connected_now.add(player.index)
                        if player.away_since is not None:
                            player.reconnect_latencies.append(now - player.away_since)
                            player.away_since = None
                    elif isinstance(event, SessionLost):
                        player.lost_sessions += 1
                    elif isinstance(event, Connected):
                        connected_now.add(player.index)
                    elif type(event).__name__ == "Away":
                        connected_now.discard(player.index)
                        player.away_since = now
                        player.aways.append(now)
                        crowd.aways.append((now, event.code, event.reason, player.path))
                    player.ended_in_session = client.session

    async def sampler() -> None:
        for _ in range(MAX_SAMPLES):
            crowd.samples.append((trio.current_time(), len(connected_now)))
            await trio.sleep(SAMPLE_S)

    async def driver(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_reconnecting_client(server.url("/"), backoff=backoff) as d:
            first = await d.events().receive()
            assert isinstance(first, Connected)
            task_status.started()
            while not stop.is_set():
                crowd.says_sent += 1
                await d.send({"type": "say", "text": f"#{crowd.says_sent}"})
                await trio.sleep(1 / rate)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        connecting = bar.add("connecting players", total=len(crowd.players)) if bar else 0
        for n, player in enumerate(crowd.players, 1):
            await nursery.start(play, player)
            if bar:
                bar.update(connecting, completed=n)
        nursery.start_soon(sampler)
        await nursery.start(driver)
        await during()
        stop.set()
        got, sent = crowd.delivered()  # ``sent`` is final: nothing is sent after ``stop``
        settling = bar.add(f"messages arrived (<= {settle:g} s)", total=sent) if bar else 0
        with trio.move_on_after(settle):
            for _ in range(int(settle / 0.1) + 1):
                got, sent = crowd.delivered()
                if bar:
                    bar.update(settling, completed=got)
                if got == sent:
                    break
                await trio.sleep(0.1)
        for player in crowd.players:
            player.ended_in_session = clients[player.index].session
        nursery.cancel_scope.cancel()


async def _send_loop(player: Player, client: Any, stop: trio.Event, rate: float) -> None:
    while not stop.is_set():
        player.sent += 1
        await client.send({"type": "echo", "data": player.sent})
        await trio.sleep(1 / rate)
