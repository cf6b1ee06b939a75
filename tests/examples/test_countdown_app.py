"""The ``examples.countdown`` app, loaded with ``--app`` exactly as a user would, through
real processes: a shared counter per room, away/back announcements, a bad module path."""

from __future__ import annotations

import pytest
import trio

from lab.server import open_server
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(120)

APP = ("--app", "examples.countdown:Countdown")


async def test_players_share_the_counter_and_see_away_and_back() -> None:
    async with open_server(*APP, "--grace", "60", shards=2) as server:
        alice, wa = await welcomed(server, "/rooms/count")
        bob, wb = await welcomed(server, "/rooms/count")
        a, b = wa["session"], wb["session"]
        assert wa["shard"] == wb["shard"]  # one room, one owner shard
        assert (await bob.receive_until("room_state"))["total"] == 10

        await alice.send({"type": "move", "n": 3})
        seen = {}
        for name, client in (("alice", alice), ("bob", bob)):
            moved = seen[name] = await client.receive_until("moved")
            assert moved == {**moved, "session": a, "n": 3, "total": 7, "by_ai": False}
        await bob.send({"type": "move", "n": 9})
        assert (await bob.receive_until("move_rejected"))["reason"]

        # Alice's link dies without a close frame: Bob sees her seat held.
        alice_last_seq = seen["alice"]["seq"]
        alice.vanish()
        away = await bob.receive_until("player_away", session=a)
        assert away["ai"] is True
        # Bob plays on to the end of the round while she is away.
        for n in (3, 3, 1):
            await bob.send({"type": "move", "n": n})
        assert (await bob.receive_until("moved", session=b, n=1))["total"] == 0
        over = await bob.receive_until("round_over")
        assert over == {**over, "winner": b, "round": 1, "wins": {b: 1}}

        # She resumes: Bob sees player_back; she gets what she missed, in order.
        path = resume_path(wa, alice_last_seq, "/rooms/count")
        alice, again = await welcomed(server, path)
        assert again["resumed"] is True and again["session"] == a
        back = await bob.receive_until("player_back", session=a)
        assert back["ai"] is False
        replayed = [await alice.receive() for _ in range(6)]
        assert [(m["type"], m.get("total")) for m in replayed] == [
            ("player_away", None),
            ("moved", 4),
            ("moved", 1),
            ("moved", 0),
            ("round_over", None),
            ("player_back", None),
        ]
        assert [m["seq"] for m in replayed] == list(range(alice_last_seq + 1, alice_last_seq + 7))

        # The counter restarted at 10 for the next round.
        await alice.send({"type": "move", "n": 2})
        assert (await bob.receive_until("moved", session=a))["total"] == 8

        # Bob leaves for good: everyone is told.
        await bob.close()
        left = await alice.receive_until("user_left", session=b)
        assert left["reason"] == "graceful"


async def test_a_missing_app_module_stops_the_supervisor_with_exit_1() -> None:
    async with open_server(
        "--app", "examples.nope:X", shards=2, ready=False, echo_logs=False
    ) as server:
        with trio.fail_after(30):
            code = await server.process.wait()
        assert code == 1
        failed = server.log.events("app_load_failed")
        assert failed and "examples.nope" in failed[0]["error"]
        assert server.log.events("startup_failed")
