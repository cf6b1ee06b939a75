"""Cluster mode: a node that leaves hands its rooms - the game and the seated players -
to the node that claims each room next, through Redis, fenced: the players resume their
sessions there and the game goes on from where it was, nothing replayed twice or lost."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from core.close_codes import CloseCode
from core.cluster import LEASE_TTL_S
from lab.rawws import Closed, RawClient
from lab.redis import open_redis, redis_available
from lab.server import kill_tree
from tests.cluster.test_rooms_across_nodes import open_nodes
from tests.support import resume_path

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]

GAME = ("--turn-seconds", "30", "--ai-think-seconds", "30", "--grace", "60")


async def told_to_leave(player: RawClient) -> int:
    """Read up to ``server_shutdown`` and the close; the last stream ``seq`` seen."""
    last = 0
    while True:
        message = await player.receive(timeout=20)
        last = message.get("seq", last)
        if message["type"] == "server_shutdown":
            break
    with pytest.raises(Closed) as closed:
        while True:
            await player.receive(timeout=20)
    assert closed.value.code == CloseCode.SERVICE_RESTART
    return last


async def test_a_leaving_nodes_room_moves_with_its_game_and_players_to_another_node() -> None:
    async with open_redis() as redis, open_nodes(redis, "a", "b", more=GAME) as nodes:
        a, b = nodes["a"], nodes["b"]
        alice, wa = await RawClient.open(a.port, "/rooms/duel")
        bob, wb = await RawClient.open(a.port, "/rooms/duel")
        assert wa is not None and wb is not None
        await a.log.wait_for("room_claimed", room="duel", node="a", fence="1")
        await bob.receive_until("turn", session=wa["session"])
        await alice.send({"type": "move", "n": 2})
        moved = await bob.receive_until("moved", session=wa["session"])
        assert moved["total"] == 2
        await alice.receive_until("turn", session=wb["session"])

        a.process.send_signal(signal.SIGTERM)  # node a leaves the cluster
        last_a, last_b = await told_to_leave(alice), await told_to_leave(bob)
        stored = await a.log.wait_for("room_stored", room="duel")
        assert stored["ok"] == "true" and stored["sessions"] == "2"

        # Both come back through node b at once (one claims the room and gets its state;
        # the other must wait for the adoption, not seat a fresh copy of the room), each
        # resuming its session in the same room, on the same shard.
        players: dict[str, tuple[RawClient, dict[str, Any]]] = {}

        async def resume(name: str, welcome: dict[str, Any], last: int) -> None:
            client, back = await RawClient.open(b.port, resume_path(welcome, last, "/rooms/duel"))
            assert back is not None and back["session"] == welcome["session"], back
            assert back["resumed"] is True and not back.get("resume_error"), back
            assert not back.get("replay_gap") and not back.get("recovered"), back
            players[name] = (client, back)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume, "alice", wa, last_a)
            nursery.start_soon(resume, "bob", wb, last_b)
        assert players["alice"][1]["shard"] == players["bob"][1]["shard"]
        adopted = await b.log.wait_for("room_adopted", room="duel")
        assert adopted["sessions"] == "2"
        claimed = await b.log.wait_for("room_claimed", room="duel", node="b")
        assert claimed["fence"] == "2"

        # The game goes on from total 2 with Bob to move: not a fresh room.
        alice, bob = players["alice"][0], players["bob"][0]
        await bob.send({"type": "move", "n": 3})
        seen = await alice.receive_until("moved", session=wb["session"])
        assert seen["total"] == 5 and seen["by_ai"] is False
        assert seen["seq"] > last_a
        await bob.receive_until("moved", session=wb["session"], total=5)
        await alice.receive_until("turn", session=wa["session"])
        await alice.send({"type": "move", "n": 1})
        assert (await bob.receive_until("moved", session=wa["session"]))["total"] == 6
        # Nothing of a's room is left in Redis for anyone else to claim.
        assert await redis.query("EXISTS", "{ws}:roomstate:duel") == b":0"


async def test_a_dead_nodes_room_players_resume_on_another_node_from_their_checkpoints() -> None:
    """A node SIGKILLed: nothing could be handed over. Once its lease is gone, its room's
    players resume their sessions on another node from the checkpoints it kept in Redis
    (``recovered: true``, as after a shard crash) and are seated in the room afresh there
    (games are not checkpointed)."""
    async with open_redis() as redis:
        more = (*GAME, "--checkpoint-interval", "0.5")
        async with open_nodes(redis, "a", "b", more=more) as nodes:
            a, b = nodes["a"], nodes["b"]
            alice, wa = await RawClient.open(a.port, "/rooms/duel")
            assert wa is not None
            last = (await alice.echo("hello"))["seq"]
            with trio.fail_after(10):
                while await redis.query("HEXISTS", "{ws}:checkpoints:a", wa["session"]) != b":1":
                    await trio.sleep(0.05)
            kill_tree(a.pid, a.all_pids())
            # Until a's lease runs out (5 s) b redirects to a, as a client would be told.
            with trio.fail_after(LEASE_TTL_S + 10):
                while True:
                    path = resume_path(wa, last, "/rooms/duel")
                    again, _ = await RawClient.open(b.port, path, welcome=False)
                    back = await again.receive(timeout=10)
                    if back["type"] == "welcome":
                        break
                    assert back["type"] == "redirect", back
                    await again.aclose()
                    await trio.sleep(0.2)
            assert back["session"] == wa["session"], back
            assert back["resumed"] is True and back["recovered"] is True, back
            state = await again.receive_until("room_state")
            assert state["room"] == "duel" and wa["session"] in [
                s["session"] for s in state["seats"]
            ]
            claimed = await b.log.wait_for("room_claimed", room="duel", node="b")
            assert claimed["fence"] == "2"
