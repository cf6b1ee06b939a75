"""Cluster mode behind a real HAProxy (Debian's): two nodes, players connected through the
balancer, one node leaves (SIGTERM). Its players are told to come back (server_shutdown +
1012), the balancer's health check (``GET /healthz``, 503 while the node drains) takes it
out of rotation, and they resume on the other node: no echo lost or answered twice, no
session lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from typing import Any

import pytest
import trio

from lab.redis import free_port, open_redis, redis_available
from lab.server import ServerProcess, open_server
from tests.cluster.test_rooms_across_nodes import node_args

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
    pytest.mark.skipif(
        not os.access(HAPROXY, os.X_OK), reason="haproxy is not installed (apt-get install haproxy)"
    ),
]

CONFIG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout check 1s
    option redispatch
    retries 2
frontend game
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""


async def test_players_through_haproxy_resume_on_the_other_node_when_one_leaves() -> None:
    window = ("--reconnect-window-ms", "1000", "--reconnect-after-ms", "300")
    async with open_redis() as redis:
        pa, pb, front = free_port(), free_port(), free_port()
        async with (
            open_server(*node_args(redis.url, "a", pa, *window), shards=1) as a,
            open_server(*node_args(redis.url, "b", pb, *window), shards=1) as b,
        ):
            servers = "\n".join(
                f"    server {n} 127.0.0.1:{p} check" for n, p in (("a", pa), ("b", pb))
            )
            workdir = tempfile.mkdtemp(prefix="ws-haproxy-")
            config = os.path.join(workdir, "haproxy.cfg")
            with open(config, "w") as f:
                f.write(CONFIG.format(port=front, servers=servers))
            haproxy = subprocess.Popen(
                [HAPROXY, "-f", config, "-db"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await play_through_a_leaving_node(a, b, f"ws://127.0.0.1:{front}/")
            finally:
                haproxy.kill()
                haproxy.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)


async def play_through_a_leaving_node(a: ServerProcess, b: ServerProcess, url: str) -> None:
    """Six players echo through ``url`` while node ``a`` leaves; check what they saw."""
    from client import Backoff, GaveUp, Message, Resumed, SessionLost, open_reconnecting_client

    players = 6
    backoff = Backoff(base=0.05, cap=0.5, max_retries=100)
    echoes: list[dict[Any, int]] = [{} for _ in range(players)]
    sent = [0] * players
    resumed: list[list[Resumed]] = [[] for _ in range(players)]
    lost: list[Any] = []

    async def player(i: int, task_status: Any) -> None:
        async with open_reconnecting_client(url, backoff=backoff) as client:
            task_status.started(client)
            async for event in client.events():
                if isinstance(event, Resumed):
                    resumed[i].append(event)
                elif isinstance(event, SessionLost | GaveUp):
                    lost.append(event)
                elif isinstance(event, Message) and event.message["type"] == "echo":
                    data = event.message["data"]
                    echoes[i][data] = echoes[i].get(data, 0) + 1

    async with trio.open_nursery() as nursery:
        # The balancer is up once a player gets in (a connection attempt, not a sleep).
        clients = [await nursery.start(player, i) for i in range(players)]
        stop = trio.Event()

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                for i, client in enumerate(clients):
                    await client.send({"type": "echo", "data": n})
                    sent[i] = n
                await trio.sleep(0.02)

        async with trio.open_nursery() as load:
            load.start_soon(traffic)
            with trio.fail_after(20):  # every player in, through the balancer
                while sum(1 for e in echoes if e) < players:
                    await trio.sleep(0.05)
            a.signal(signal.SIGTERM)  # node a leaves the cluster
            await a.log.wait_for("shutdown_start")
            held = await a.log.wait_for("drain_hold_done", timeout=30)
            await b.log.wait_for("cluster_handoff_in", ok="true", timeout=30)
            stop.set()
        with trio.fail_after(30):
            while any(len(e) < s for e, s in zip(echoes, sent, strict=True)):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert await a.process.wait() == 0
    assert not lost, lost
    for i in range(players):
        missing = set(range(1, sent[i] + 1)) - set(echoes[i])
        assert not missing, f"player {i} lost echoes {sorted(missing)}"
        assert set(echoes[i].values()) == {1}, f"player {i}: an echo answered twice"
    moved = [r for rs in resumed for r in rs]
    assert moved, "nobody was on node a"
    assert held["left"] == "0", held  # every session a held was fetched by b
    assert all(not r.replay_gap for r in moved)
