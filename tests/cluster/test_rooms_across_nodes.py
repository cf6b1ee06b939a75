"""Cluster mode, rooms: two or three nodes (each a supervisor with its shards) on one real
redis-server. A room is owned by one node (a fenced claim in Redis); a room connection
that lands on another node gets a ``redirect`` to the owner and close 4002; a dead
node's rooms are claimed by another node with a higher fence once its lease is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from core.close_codes import CloseCode
from core.cluster import LEASE_TTL_S
from lab.netcut import CuttingProxy
from lab.rawws import Closed, RawClient, first_line, handshake_request
from lab.redis import RedisServer, free_port, open_redis, redis_available
from lab.server import ROOT, ServerProcess, kill_tree, open_server

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]


def node_args(redis_url: str, name: str, port: int, *more: str) -> tuple[str, ...]:
    url = f"ws://127.0.0.1:{port}"
    return ("--cluster", redis_url, "--node", name, "--public-url", url, "--port", str(port), *more)


@asynccontextmanager
async def open_nodes(
    redis: RedisServer, *names: str, more: tuple[str, ...] = ()
) -> AsyncIterator[dict[str, ServerProcess]]:
    """One supervisor (2 shards) per name, on its own free port, with ``more`` arguments;
    all killed at the end."""
    async with AsyncExitStack() as stack:
        nodes = {}
        for name in names:
            args = node_args(redis.url, name, free_port(), *more)
            nodes[name] = await stack.enter_async_context(open_server(*args, shards=2))
            await nodes[name].log.wait_for("cluster_joined", node=name)
        yield nodes


async def redirected(port: int, path: str) -> str:
    """Connect to ``port`` expecting a redirect: the URL it names, after close 4002."""
    client, _ = await RawClient.open(port, path, welcome=False)
    first = await client.receive(timeout=10)
    assert first == {"type": "redirect", "url": first.get("url")}, first
    with pytest.raises(Closed) as closed:
        await client.receive(timeout=10)
    assert closed.value.code == CloseCode.REDIRECT
    return str(first["url"])


async def seated_once_claimable(port: int, path: str, within: float) -> int:
    """Ask ``port`` for ``path`` until it seats us (a welcome) instead of redirecting to
    the old owner or answering 503 (it cannot claim rooms right now); how many tries."""
    tries = 0
    with trio.fail_after(within):
        while True:
            tries += 1
            if (await upgrade_status(port, path)).startswith(b"HTTP/1.1 101"):
                client, _ = await RawClient.open(port, path, welcome=False)
                message = await client.receive(timeout=10)
                await client.aclose()
                if message["type"] == "welcome":
                    return tries
                assert message["type"] == "redirect", message
            await trio.sleep(0.2)  # the old owner's lease has seconds to run: poll gently


async def follow(url: str) -> tuple[RawClient, dict[str, Any] | None]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return await RawClient.open(parts.port, path, host=parts.hostname)


async def test_a_room_connection_on_another_node_is_redirected_to_its_owner() -> None:
    async with open_redis() as redis, open_nodes(redis, "a", "b", "c") as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        first, welcome = await RawClient.open(a.port, "/rooms/r1")
        assert welcome is not None
        await a.log.wait_for("room_claimed", room="r1", node="a", fence="1")
        # On b and c: redirected to a, keeping the client's own path and query.
        for other in (b, c):
            url = await redirected(other.port, "/rooms/r1?resume=abc&last_seq=7")
            assert url == f"ws://127.0.0.1:{a.port}/rooms/r1?resume=abc&last_seq=7"
        # Following a redirect lands in the same room, on the shard the first player has.
        joined = []
        for other in (b, c):
            url = await redirected(other.port, "/rooms/r1")
            client, w = await follow(url)
            assert w is not None and w["shard"] == welcome["shard"] and not w.get("resume_error")
            joined.append(client)
            # ...the room the first player is in: it hears them join.
            await first.receive_until("joined", session=w["session"], timeout=10)
        # A room first asked for on b belongs to b; a is redirected there.
        _, on_b = await RawClient.open(b.port, "/rooms/r2")
        assert on_b is not None
        assert await redirected(a.port, "/rooms/r2") == f"ws://127.0.0.1:{b.port}/rooms/r2"
        # Only the claims of the owners were made: one per room, fence 1.
        claims = [e for n in nodes.values() for e in n.log.events("room_claimed")]
        assert sorted((e["room"], e["node"], e["fence"]) for e in claims) == [
            ("r1", "a", "1"),
            ("r2", "b", "1"),
        ]
        status = json.loads(await a.command("status", "--json"))["cluster"]
        assert status["node"] == "a" and status["reachable"] and not status["fenced"], status
        assert 0 < status["lease_s"] <= LEASE_TTL_S
        # Every node as a sees it: alive, rooms owned, players connected (a: the room's
        # three, b: r2's one).
        expected = {"a": (True, 1, 3), "b": (True, 1, 1), "c": (True, 0, 0)}

        def members(status: dict[str, Any]) -> dict[str, tuple[bool, int, int]]:
            return {m["node"]: (m["alive"], m["rooms"], m["players"]) for m in status["members"]}

        with trio.move_on_after(5):  # members are read once per renewal
            while members(status) != expected:
                await trio.sleep(0.2)
                status = json.loads(await a.command("status", "--json"))["cluster"]
        assert members(status) == expected
        text = await a.command("status")
        assert "cluster node a" in text and "node b ws://127.0.0.1:" in text, text


async def test_a_dead_nodes_room_is_claimed_by_another_node_with_a_higher_fence() -> None:
    async with open_redis() as redis, open_nodes(redis, "a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        _, welcome = await RawClient.open(a.port, "/rooms/r1")
        assert welcome is not None
        kill_tree(a.pid, a.all_pids())  # the machine dies: no lease release, no goodbye
        killed = trio.current_time()
        # Until a's lease runs out, b still names a as the owner (it may only be late).
        url = await redirected(b.port, "/rooms/r1")
        assert url.startswith(f"ws://127.0.0.1:{a.port}/")
        await seated_once_claimable(b.port, "/rooms/r1", LEASE_TTL_S + 10)
        claimed = await b.log.wait_for("room_claimed", room="r1", node="b")
        assert claimed["fence"] == "2"
        assert trio.current_time() - killed >= LEASE_TTL_S - 1.5  # not before a's lease ended


async def test_a_node_with_another_token_key_refuses_to_start() -> None:
    async with open_redis() as redis, open_nodes(redis, "a"):
        with tempfile.TemporaryDirectory() as tmp:
            secret = os.path.join(tmp, "other-secret")
            port = free_port()
            args = node_args(redis.url, "b", port, "--secret-file", secret)
            async with open_server(*args, shards=1, ready=False) as b:
                code = await b.process.wait()
                assert code == 2
                refused = await b.log.wait_for("cluster_refused", node="b")
                assert "token key" in refused["reason"]
                assert not b.log.events("shard_spawn")


async def test_a_second_process_with_a_live_nodes_name_refuses_to_start() -> None:
    async with open_redis() as redis, open_nodes(redis, "a") as nodes:
        args = node_args(redis.url, "a", free_port())
        async with open_server(*args, shards=1, ready=False) as twin:
            assert await twin.process.wait() == 2
            refused = await twin.log.wait_for("cluster_refused", node="a")
            assert "held by a live node" in refused["reason"]
        # The first one is untouched.
        _, welcome = await RawClient.open(nodes["a"].port, "/rooms/r1")
        assert welcome is not None


def test_cluster_options_are_checked_before_anything_starts() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "supervisor", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)

    bad_url = run("--cluster", "http://x", "--port", "9")
    assert bad_url.returncode == 2 and "redis://" in bad_url.stderr
    bad_public = run("--cluster", "redis://127.0.0.1:1/0", "--public-url", "http://x:1")
    assert bad_public.returncode == 2 and "--public-url" in bad_public.stderr
    no_cluster = run("--node", "a")
    assert no_cluster.returncode == 2 and "need --cluster" in no_cluster.stderr


async def test_without_redis_a_node_refuses_to_start_saying_why() -> None:
    port = free_port()  # nothing listens there
    args = ("--cluster", f"redis://127.0.0.1:{free_port()}/0", "--port", str(port))
    async with open_server(*args, shards=1, ready=False) as node:
        assert await node.process.wait() == 2
        refused = await node.log.wait_for("cluster_refused")
        assert refused["reason"], refused


async def test_a_node_cut_off_from_redis_stops_serving_its_rooms_before_another_takes_them() -> (
    None
):
    """Partition: node a's Redis traffic goes through a proxy the test blackholes. a stops
    serving its room (its player gets server_shutdown + 1012) within its lease, before b
    can claim the room (fence 2); a refuses new rooms while fenced; healed, a redirects
    the room's players to b: no room is ever served by two nodes at once."""
    async with open_redis() as redis:
        async with trio.open_nursery() as nursery:
            proxy = CuttingProxy("127.0.0.1", redis.port)
            await nursery.start(proxy.run)
            via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
            pa, pb = free_port(), free_port()
            async with (
                open_server(*node_args(via_proxy, "a", pa), shards=2) as a,
                open_server(*node_args(redis.url, "b", pb), shards=2) as b,
            ):
                player, welcome = await RawClient.open(a.port, "/rooms/r1")
                assert welcome is not None
                await a.log.wait_for("room_claimed", room="r1", node="a", fence="1")
                proxy.blackhole(True)
                cut_at = time.time()
                shutdown = await player.receive_until("server_shutdown", timeout=LEASE_TTL_S + 5)
                assert shutdown["reason"] == "room_moved"
                with pytest.raises(Closed) as closed:
                    while True:
                        await player.receive(timeout=10)
                assert closed.value.code == CloseCode.SERVICE_RESTART
                told_at = time.time()
                assert told_at - cut_at <= LEASE_TTL_S + 1
                lost = await a.log.wait_for("lease_lost", node="a")
                since_lost = len(a.log.lines)
                # While fenced, a places no room: a clear 503, not a silent drop.
                head = await upgrade_status(a.port, "/rooms/r2")
                assert head.startswith(b"HTTP/1.1 503"), head
                # b claims r1 only once a's lease has run out in Redis too.
                await seated_once_claimable(b.port, "/rooms/r1", LEASE_TTL_S + 10)
                claimed = await b.log.wait_for("room_claimed", room="r1", node="b")
                assert claimed["fence"] == "2"
                assert float(lost["ts"]) <= told_at <= float(claimed["ts"])
                proxy.blackhole(False)
                await a.log.wait_for("lease_held", node="a", after=since_lost)
                url = await redirected(a.port, "/rooms/r1")
                assert url == f"ws://127.0.0.1:{b.port}/rooms/r1"
            nursery.cancel_scope.cancel()


async def upgrade_status(port: int, path: str) -> bytes:
    """The status line an upgrade request for ``path`` is answered with."""
    return await first_line(port, handshake_request("127.0.0.1", port, path))


async def test_the_reconnecting_client_follows_a_redirect_to_the_rooms_owner_at_once() -> None:
    """The user's path: ``client`` pointed at the wrong node of a room plays in that room on
    its owner, with no backoff wait (its base is 5 s) and no retry spent."""
    from client import Backoff, Connected, open_reconnecting_client

    async with open_redis() as redis, open_nodes(redis, "a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        first, welcome = await RawClient.open(a.port, "/rooms/r1")
        assert welcome is not None
        backoff = Backoff(base=5.0, cap=5.0, max_retries=0)
        with trio.fail_after(3):
            async with open_reconnecting_client(b.url("/rooms/r1"), backoff=backoff) as client:
                event = await client.events().__anext__()
                assert isinstance(event, Connected), event
                assert event.welcome["shard"] == welcome["shard"]
                # The first player hears the newcomer join its room.
                session = event.welcome["session"]
                await first.receive_until("joined", session=session, timeout=10)
                assert client.redirects_followed == 1
        assert b.log.events("redirect") and not a.log.events("redirect")
