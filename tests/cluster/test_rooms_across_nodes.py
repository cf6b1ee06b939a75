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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from core.close_codes import CloseCode
from core.cluster import LEASE_TTL_S
from lab.rawws import Closed, RawClient
from lab.redis import RedisServer, free_port, open_redis, redis_available
from lab.server import ROOT, ServerProcess, kill_tree, open_server

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]


def node_args(redis: RedisServer, name: str, port: int, *more: str) -> tuple[str, ...]:
    url = f"ws://127.0.0.1:{port}"
    return ("--cluster", redis.url, "--node", name, "--public-url", url, "--port", str(port), *more)


@asynccontextmanager
async def open_nodes(redis: RedisServer, *names: str) -> AsyncIterator[dict[str, ServerProcess]]:
    """One supervisor (2 shards) per name, on its own free port; all killed at the end."""
    async with AsyncExitStack() as stack:
        nodes = {}
        for name in names:
            args = node_args(redis, name, free_port())
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
        event = await first.receive_until("joined", timeout=10)
        assert event["type"] == "joined"
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
        with trio.fail_after(5):  # members are read once per renewal
            while len(status["members"]) < 3:
                await trio.sleep(0.2)
                status = json.loads(await a.command("status", "--json"))["cluster"]
        rooms = {m["node"]: (m["alive"], m["rooms"]) for m in status["members"]}
        assert rooms == {"a": (True, 1), "b": (True, 1), "c": (True, 0)}, status
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
        with trio.fail_after(LEASE_TTL_S + 10):
            while True:
                client, first = await RawClient.open(b.port, "/rooms/r1", welcome=False)
                message = await client.receive(timeout=10)
                if message["type"] == "welcome":
                    break
                assert message["type"] == "redirect"
                await client.aclose()
                await trio.sleep(0.2)  # a's lease has seconds to run: poll gently
        claimed = await b.log.wait_for("room_claimed", room="r1", node="b")
        assert claimed["fence"] == "2"
        assert trio.current_time() - killed >= LEASE_TTL_S - 1.5  # not before a's lease ended


async def test_a_node_with_another_token_key_refuses_to_start() -> None:
    async with open_redis() as redis, open_nodes(redis, "a"):
        with tempfile.TemporaryDirectory() as tmp:
            secret = os.path.join(tmp, "other-secret")
            port = free_port()
            args = node_args(redis, "b", port, "--secret-file", secret)
            async with open_server(*args, shards=1, ready=False) as b:
                code = await b.process.wait()
                assert code == 2
                refused = await b.log.wait_for("cluster_refused", node="b")
                assert "token key" in refused["reason"]
                assert not b.log.events("shard_spawn")


async def test_a_second_process_with_a_live_nodes_name_refuses_to_start() -> None:
    async with open_redis() as redis, open_nodes(redis, "a") as nodes:
        args = node_args(redis, "a", free_port())
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
