"""Cluster mode when Redis itself dies (SIGKILL) and comes back on the same port.

With AOF (``appendfsync always``) nothing is lost: claims, fences and leases come back
and the game goes on as it was. Without persistence Redis comes back empty: every node
notices at its next renewal (the epoch key is gone), says so (``cluster_data_lost``),
ends its room sessions (their players are told: ``server_shutdown`` + 1012) before any
room can be claimed afresh, and joins again; lobby players keep playing and says keep
reaching every node."""

from __future__ import annotations

import json

import pytest
import trio

from core.close_codes import CloseCode
from core.cluster import LEASE_TTL_S
from lab.rawws import Closed, RawClient
from lab.redis import open_redis, redis_available
from tests.cluster.test_rooms_across_nodes import open_nodes, redirected, seated_once_claimable

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]


async def test_redis_restarted_without_its_data_is_a_cluster_restart_said_and_safe() -> None:
    async with open_redis(appendonly=False) as redis, open_nodes(redis, "a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        room_player, _ = await RawClient.open(a.port, "/rooms/r1")
        lobby_a, _ = await RawClient.open(a.port, "/")
        lobby_b, _ = await RawClient.open(b.port, "/")
        await a.log.wait_for("room_claimed", room="r1", node="a", fence="1")
        await redis.restart()  # SIGKILL, then an empty Redis on the same port
        lost = await a.log.wait_for("cluster_data_lost", node="a", timeout=LEASE_TTL_S + 5)
        shutdown = await room_player.receive_until("server_shutdown", timeout=10)
        assert shutdown["reason"] == "room_moved"
        with pytest.raises(Closed) as closed:
            while True:
                await room_player.receive(timeout=10)
        assert closed.value.code == CloseCode.SERVICE_RESTART
        await b.log.wait_for("cluster_data_lost", node="b", timeout=LEASE_TTL_S + 5)
        # The room is claimed afresh (fence 1 of a new epoch) by whoever is asked first,
        # and only after a gave it up.
        await seated_once_claimable(b.port, "/rooms/r1", LEASE_TTL_S + 10)
        claims = [e for e in b.log.events("room_claimed") if e["room"] == "r1"]
        assert claims and float(claims[-1]["ts"]) >= float(lost["ts"])
        # Lobby players were not disturbed, and says still cross nodes.
        await lobby_b.send({"type": "say", "text": "after the restart"})
        await lobby_a.receive_until("said", text="after the restart", timeout=10)
        await lobby_a.echo("still here")


async def test_redis_restarted_with_aof_loses_nothing() -> None:
    async with open_redis(appendonly=True) as redis, open_nodes(redis, "a", "b") as nodes:
        a, b = nodes["a"], nodes["b"]
        room_player, _ = await RawClient.open(a.port, "/rooms/r1")
        await a.log.wait_for("room_claimed", room="r1", node="a", fence="1")
        await redis.restart()
        before = json.loads(await a.command("status", "--json"))["cluster"]["renewals"]
        # a renews with the restarted Redis (twice, to be sure one was after the restart)
        # - its lease never ran out - and keeps its room.
        with trio.fail_after(LEASE_TTL_S + 5):
            while True:
                status = json.loads(await a.command("status", "--json"))["cluster"]
                if status["renewals"] >= before + 2 and not status["fenced"]:
                    break
                await trio.sleep(0.2)
        assert not a.log.events("cluster_data_lost") and not a.log.events("lease_lost")
        assert await redirected(b.port, "/rooms/r1") == f"ws://127.0.0.1:{a.port}/rooms/r1"
        assert (await room_player.echo("kept"))["data"] == "kept"
