"""Cluster mode behind a real HAProxy (Debian's): players connected through the balancer
while nodes leave (SIGTERM) or the whole cluster is rolled node by node. A leaving node's
players are told to come back (server_shutdown + 1012), the balancer's health check
(``GET /healthz``, 503 while the node drains) takes it out of rotation, and they resume
on another node: no echo lost or answered twice, no say missed or doubled, no session
lost."""

from __future__ import annotations

import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from lab.crowd import Crowd as LoadCrowd
from lab.crowd import Player, paths, run_crowd
from lab.haproxy import HAPROXY, open_haproxy
from lab.redis import free_port, open_redis, redis_available
from lab.server import ServerProcess, open_server
from tests.cluster.test_rooms_across_nodes import node_args

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
    pytest.mark.skipif(
        not os.access(HAPROXY, os.X_OK), reason="haproxy is not installed (apt-get install haproxy)"
    ),
]

WINDOW = ("--reconnect-window-ms", "1000", "--reconnect-after-ms", "300")


class Crowd:
    """Reconnecting players through one URL: each echoes a counter every 20 ms, player 0
    also says something every 100 ms once every player is in (an echo came back to each);
    everything each one receives is counted."""

    def __init__(self, url: str, players: int) -> None:
        self.url = url
        self.players = players
        self.echoes: list[dict[Any, int]] = [{} for _ in range(players)]
        self.said: list[list[str]] = [[] for _ in range(players)]
        self.sent = [0] * players
        self.says = 0
        self.resumed: list[Any] = []
        self.lost: list[Any] = []
        self.aways: list[tuple[int, str, int | None]] = []
        self.longest_away = 0.0  # seconds from an Away to the Resumed after it

    async def play(self, task_status: Any) -> None:
        """Run until cancelled; started once every player has had an echo back."""
        from client import Away, Backoff, GaveUp, Message, Resumed, SessionLost
        from client import open_reconnecting_client as connect

        backoff = Backoff(base=0.05, cap=0.5, max_retries=100)

        async def player(i: int, task_status: Any) -> None:
            async with connect(self.url, backoff=backoff) as client:
                task_status.started(client)
                away_since = None
                async for event in client.events():
                    if isinstance(event, Away):
                        away_since = trio.current_time()
                        self.aways.append((i, event.reason, event.code))
                    if isinstance(event, Resumed):
                        self.resumed.append(event)
                        if away_since is not None:
                            self.longest_away = max(
                                self.longest_away, trio.current_time() - away_since
                            )
                    elif isinstance(event, SessionLost | GaveUp):
                        self.lost.append(event)
                    elif isinstance(event, Message):
                        m = event.message
                        if m["type"] == "echo":
                            self.echoes[i][m["data"]] = self.echoes[i].get(m["data"], 0) + 1
                        elif m["type"] == "said":
                            self.said[i].append(m["text"])

        async with trio.open_nursery() as nursery:
            clients = [await nursery.start(player, i) for i in range(self.players)]
            self.stop = trio.Event()
            self.traffic_done = trio.Event()
            everyone_in = trio.Event()

            async def traffic() -> None:
                n = 0
                try:
                    while not self.stop.is_set():
                        n += 1
                        for i, client in enumerate(clients):
                            await client.send({"type": "echo", "data": n})
                            self.sent[i] = n
                        if n % 5 == 0 and everyone_in.is_set():  # a say is for who is there
                            self.says += 1
                            await clients[0].send({"type": "say", "text": f"say-{self.says}"})
                        await trio.sleep(0.02)
                finally:
                    self.traffic_done.set()

            nursery.start_soon(traffic)
            with trio.fail_after(20):  # every player in, through the balancer
                while sum(1 for e in self.echoes if e) < self.players:
                    await trio.sleep(0.05)
            everyone_in.set()
            task_status.started()

    async def settle(self) -> None:
        """Stop sending (and wait until the sender is done: nothing is sent after this);
        wait (bounded) until every echo and say sent has arrived."""
        self.stop.set()
        with trio.fail_after(10):
            await self.traffic_done.wait()
        with trio.move_on_after(30):
            while any(len(e) < s for e, s in zip(self.echoes, self.sent, strict=True)) or any(
                len(s) < self.says for s in self.said
            ):
                await trio.sleep(0.05)

    def check(self) -> None:
        print(f"{len(self.aways)} moves, longest away {self.longest_away:.2f} s")
        assert not self.lost, self.lost
        says = [f"say-{n}" for n in range(1, self.says + 1)]
        for i in range(self.players):
            missing = set(range(1, self.sent[i] + 1)) - set(self.echoes[i])
            assert not missing, f"player {i} lost echoes {sorted(missing)}"
            assert set(self.echoes[i].values()) == {1}, f"player {i}: an echo answered twice"
            assert self.said[i] == says, f"player {i} heard {self.said[i]}"
        assert self.resumed, "nobody moved"
        assert all(not r.replay_gap for r in self.resumed)


async def test_players_through_haproxy_resume_on_the_other_node_when_one_leaves() -> None:
    async with open_redis() as redis:
        pa, pb = free_port(), free_port()
        async with (
            open_server(*node_args(redis.url, "a", pa, *WINDOW), shards=1) as a,
            open_server(*node_args(redis.url, "b", pb, *WINDOW), shards=1) as b,
            open_haproxy({"a": pa, "b": pb}) as url,
            trio.open_nursery() as nursery,
        ):
            crowd = Crowd(url, 6)
            await nursery.start(crowd.play)
            a.signal(signal.SIGTERM)  # node a leaves the cluster
            held = await a.log.wait_for("drain_hold_done", timeout=30)
            await b.log.wait_for("cluster_handoff_in", ok="true", timeout=30)
            await crowd.settle()
            nursery.cancel_scope.cancel()
            assert await a.process.wait() == 0
        assert held["left"] == "0", held  # every session a held was fetched by b
        crowd.check()


@dataclass
class Balancer:
    """The players' way in: HAProxy's URL."""

    base: str

    def url(self, path: str = "/") -> str:
        return self.base.rstrip("/") + path


async def test_rolling_a_three_node_cluster_node_by_node_loses_nothing() -> None:
    """Each node in turn: ``python -m supervisor drain``, its exit, a new process with the
    same name and port - under the ``bench rolling`` load (lab.crowd): players in three
    rooms and in the lobby echo numbered messages and hear a numbered say stream all along.
    A leaving node's rooms move (game and players) through Redis to the node that claims
    each next; its lobby players' sessions are fetched by the nodes they come back to.
    Every player ends in the session it started with: 0 sessions lost, 0 messages lost or
    doubled either way."""
    async with open_redis() as redis, AsyncExitStack() as stack:
        ports = {name: free_port() for name in ("a", "b", "c")}
        nodes: dict[str, ServerProcess] = {}
        every: list[ServerProcess] = []  # each node process, the replaced ones too
        for name, port in ports.items():
            args = node_args(redis.url, name, port, *WINDOW)
            nodes[name] = await stack.enter_async_context(open_server(*args, shards=1))
            every.append(nodes[name])
        balancer = Balancer(await stack.enter_async_context(open_haproxy(ports)))
        crowd = LoadCrowd([Player(i, p) for i, p in enumerate(paths(24, rooms=3, per_room=5))])
        loaded, rolled, settled = trio.Event(), trio.Event(), trio.Event()

        async def during() -> None:
            loaded.set()
            await rolled.wait()

        async def load() -> None:
            await run_crowd(balancer, crowd, during, settle=20)
            settled.set()

        # The replacements are entered in this task, inside the load's nursery and left
        # before it (the scopes nest).
        async with trio.open_nursery() as nursery, AsyncExitStack() as restarted:
            nursery.start_soon(load)
            await loaded.wait()
            for name, port in ports.items():
                old = nodes[name]
                assert '"drain": "started"' in await old.command("drain")
                assert await old.process.wait() == 0
                await old.log.wait_for("cluster_left", node=name)
                args = node_args(redis.url, name, port, *WINDOW)
                nodes[name] = await restarted.enter_async_context(open_server(*args, shards=1))
                every.append(nodes[name])
                await nodes[name].log.wait_for("cluster_joined", node=name)
            rolled.set()
            await settled.wait()
        totals = crowd.totals()
        print(totals)
        assert totals["sessions_lost"] == 0 and totals["not_in_original_session"] == 0, totals
        assert totals["c2s_lost"] == 0 and totals["c2s_doubled"] == 0, totals
        assert totals["s2c_lost"] == 0 and totals["s2c_doubled"] == 0, totals
        assert totals["resumes"] >= len(crowd.players)  # everyone moved at least once
        adopted = sum(len(n.log.events("room_adopted")) for n in every)
        assert adopted >= 3  # each room moved with its game at least once
