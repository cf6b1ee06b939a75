"""Cluster mode, broadcast: a ``say`` on any node reaches every lobby session on every node
exactly once, all in one order (the Redis stream's), including the players of a node that
was cut off from Redis for a few seconds (it catches up from its last entry)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from core.close_codes import CloseCode
from lab.netcut import CuttingProxy
from lab.rawws import RawClient
from lab.redis import free_port, open_redis, redis_available
from lab.server import open_server
from tests.cluster.test_rooms_across_nodes import node_args
from tests.support import resume_path

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]


async def said_texts(client: RawClient, count: int, timeout: float = 20) -> list[str]:
    """The next ``count`` says ``client`` hears, in order (other messages skipped), checking
    that the stream's ``seq`` has no hole."""
    texts: list[str] = []
    last_seq = None
    with trio.fail_after(timeout):
        while len(texts) < count:
            message: dict[str, Any] = await client.receive(timeout)
            seq = message.get("seq")
            if seq is not None:
                assert last_seq is None or seq == last_seq + 1, (last_seq, message)
                last_seq = seq
            if message["type"] == "said":
                texts.append(message["text"])
    return texts


async def test_says_from_every_node_reach_every_player_once_in_one_order() -> None:
    async with open_redis() as redis:
        async with trio.open_nursery() as nursery:
            # Node c reaches Redis through a proxy the test can blackhole.
            proxy = CuttingProxy("127.0.0.1", redis.port)
            await nursery.start(proxy.run)
            via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
            async with (
                open_server(*node_args(redis.url, "a", free_port()), shards=2) as a,
                open_server(*node_args(redis.url, "b", free_port()), shards=2) as b,
                open_server(*node_args(via_proxy, "c", free_port()), shards=2) as c,
            ):
                nodes = (a, b, c)
                players = [
                    (await RawClient.open(node.port, "/"))[0] for node in nodes for _ in range(2)
                ]
                # Interleaved says from players on every node, without waiting for echoes.
                texts = [f"s{n}" for n in range(30)]
                for n, text in enumerate(texts):
                    await players[n % len(players)].send({"type": "say", "text": text})
                heard = [await said_texts(p, len(texts)) for p in players]
                assert sorted(heard[0]) == sorted(texts)  # each once
                assert all(h == heard[0] for h in heard), heard  # one order everywhere
                # Per sender, the order it said them in.
                for sender in range(len(players)):
                    own = [t for t in heard[0] if int(t[1:]) % len(players) == sender]
                    assert own == sorted(own, key=lambda t: int(t[1:]))

                # c is cut off from Redis (shorter than its lease): a and b keep saying.
                proxy.blackhole(True)
                later = [f"cut{n}" for n in range(10)]
                for n, text in enumerate(later):
                    await players[n % 4].send({"type": "say", "text": text})  # on a and b
                on_a = await said_texts(players[0], len(later))
                assert sorted(on_a) == sorted(later)
                # c's blocked read gives up (about 3 s): it must resume from its last id.
                await c.log.wait_for("cluster_read_failed", node="c", timeout=10)
                assert not c.log.events("lease_lost")
                proxy.blackhole(False)
                await c.log.wait_for("cluster_read_recovered", node="c", timeout=10)
                # c's players get every one, once, in a's order, after the heal.
                for player in players[4:]:
                    assert await said_texts(player, len(later)) == on_a
                assert not c.log.events("cluster_broadcast_gap")
            nursery.cancel_scope.cancel()


async def test_a_node_cut_off_for_longer_than_the_stream_keeps_tells_its_players_of_the_gap() -> (
    None
):
    """The says stream keeps about ``--cluster-says-kept`` entries. Node a is cut off while
    far more says than that are made on b: back, a finds the stream's numbers jump, and its
    player - who can never get the trimmed says - is told to resume (4003) and its resume
    reports ``replay_gap`` (as on one machine), instead of silently missing them."""
    more = ("--cluster-says-kept", "10", "--max-message-rate", "2000", "--message-burst", "2000")
    async with open_redis() as redis, trio.open_nursery() as nursery:
        proxy = CuttingProxy("127.0.0.1", redis.port)
        await nursery.start(proxy.run)
        via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            open_server(*node_args(via_proxy, "a", free_port(), *more), shards=1) as a,
            open_server(*node_args(redis.url, "b", free_port(), *more), shards=1) as b,
        ):
            player, welcome = await RawClient.open(a.port, "/")
            talker, _ = await RawClient.open(b.port, "/")
            assert welcome is not None
            await talker.send({"type": "say", "text": "before"})
            last_seq = (await player.receive_until("said", text="before"))["seq"]
            proxy.blackhole(True)
            for i in range(300):
                await talker.send({"type": "say", "text": f"cut-{i}"})
            await talker.receive_until("said", text="cut-299", timeout=20)
            await talker.send({"type": "say", "text": "after"})
            proxy.blackhole(False)
            await a.log.wait_for("cluster_broadcast_gap", node="a", timeout=20)
            code = await player.closed_with(timeout=20)
            assert code == CloseCode.RESYNC
            again, back = await RawClient.open(a.port, resume_path(welcome, last_seq))
            assert back is not None and back["session"] == welcome["session"], back
            assert back["resumed"] is True and back["replay_gap"] is True, back
            await talker.send({"type": "say", "text": "later"})
            await again.receive_until("said", text="later")
            assert b.process.returncode is None
        nursery.cancel_scope.cancel()
