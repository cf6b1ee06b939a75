"""Rooms through real processes: one owner shard per room, placement by load, the AI playing
for an away player, expiry, bad requests, and no fd leaked by routing."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio

from lab.rawws import RawClient
from lab.server import ServerProcess, open_server
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(180)


async def test_fifty_clients_of_one_room_all_land_on_one_shard() -> None:
    async with open_server(shards=4, echo_logs=False) as server:
        clients = [await welcomed(server, "/rooms/big") for _ in range(50)]
        shards = {welcome["shard"] for _, welcome in clients}
        assert len(shards) == 1
        # Most were accepted elsewhere and passed along (the kernel spreads accepts).
        assert len(server.log.events("routed", room="big")) > 0
        # Everyone is seated and sees everyone join.
        last, last_welcome = clients[-1]
        joined = await last.receive_until("joined")
        assert joined["session"] == last_welcome["session"] and len(joined["players"]) == 50


async def test_eight_rooms_spread_over_the_shards() -> None:
    async with open_server(shards=4) as server:
        placed: Counter[int] = Counter()
        for i in range(8):
            _, welcome = await welcomed(server, f"/rooms/room{i}")
            placed[welcome["shard"]] += 1
        assert sorted(placed) == [0, 1, 2, 3], placed
        assert max(placed.values()) <= 3


async def test_away_player_is_played_by_the_ai_until_they_resume() -> None:
    async with open_server(
        "--turn-seconds", "30", "--ai-think-seconds", "0.05", "--grace", "60", shards=2
    ) as server:
        alice, wa = await welcomed(server, "/rooms/duel")
        bob, wb = await welcomed(server, "/rooms/duel")
        a, b = wa["session"], wb["session"]
        # Two seated players: the game starts with Alice's turn.
        turn = await bob.receive_until("turn")
        assert turn["session"] == a
        await alice.send({"type": "move", "n": 2})
        moved = await bob.receive_until("moved")
        assert moved == {**moved, "session": a, "n": 2, "total": 2, "by_ai": False}
        await bob.receive_until("turn", session=b)
        # Alice's link dies. Bob is told the AI plays for her.
        alice_last_seq = (await alice.receive_until("turn", session=b))["seq"]
        alice.vanish()
        away = await bob.receive_until("player_away", session=a)
        assert away["ai"] is True
        await bob.send({"type": "move", "n": 1})
        await bob.receive_until("moved", session=b, total=3)
        ai = await bob.receive_until("moved", session=a)
        assert ai["by_ai"] is True and ai["total"] == 5  # the AI leaves 1 mod 4
        await bob.receive_until("turn", session=b)
        # Alice comes back: she gets what she missed, Bob sees player_back.
        alice, again = await welcomed(server, resume_path(wa, alice_last_seq, "/rooms/duel"))
        assert again["resumed"] is True and again["shard"] == wa["shard"]
        back = await bob.receive_until("player_back", session=a)
        assert back["ai"] is False
        replayed = [await alice.receive() for _ in range(6)]
        assert [(m["type"], m.get("session")) for m in replayed] == [
            ("player_away", a),
            ("moved", b),
            ("turn", a),
            ("moved", a),  # by the AI
            ("turn", b),
            ("player_back", a),  # live, right after the replay
        ]
        assert [m["seq"] for m in replayed] == list(range(alice_last_seq + 1, alice_last_seq + 7))
        # Her own move counts again.
        await bob.send({"type": "move", "n": 3})
        await alice.receive_until("turn", session=a)
        await alice.send({"type": "move", "n": 1})
        mine = await bob.receive_until("moved", session=a)
        assert mine == {**mine, "n": 1, "total": 9, "by_ai": False}


async def test_expired_player_is_removed_and_everyone_sees_user_left() -> None:
    async with open_server("--grace", "0.5", "--ai-think-seconds", "0.05", shards=2) as server:
        alice, wa = await welcomed(server, "/rooms/short")
        bob, _ = await welcomed(server, "/rooms/short")
        alice.vanish()
        await bob.receive_until("player_away", session=wa["session"])
        left = await bob.receive_until("user_left", session=wa["session"])
        assert left["reason"] == "expired"


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /nowhere HTTP/1.1", b"404"),
        (b"GET /rooms/bad!id HTTP/1.1", b"404"),
        (b"POST /rooms/x HTTP/1.1", b"405"),
        (b"garbage", b"400"),
    ],
)
async def test_bad_request_lines_get_an_http_error_and_others_are_unaffected(
    request_line: bytes, status: bytes
) -> None:
    async with open_server(shards=2) as server:
        bystander, _ = await welcomed(server, "/rooms/calm")
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(request_line + b"\r\nHost: x\r\n\r\n")
        with trio.fail_after(10):
            reply = b""
            while chunk := await stream.receive_some(4096):
                reply += chunk
        assert reply.split(b" ")[1] == status, reply
        await bystander.send({"type": "echo", "data": "ok"})
        assert (await bystander.receive_until("echo"))["data"] == "ok"


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _connect_and_close(server: ServerProcess, count: int) -> None:
    for _ in range(count):
        client, _ = await welcomed(server, "/rooms/leak")
        await client.close()


async def _keep_reading(client: RawClient) -> None:
    # A member that stops reading is (rightly) dropped as a slow consumer.
    while True:
        await client.receive(timeout=3600)


async def test_routing_a_thousand_connections_leaks_no_fd() -> None:
    async with open_server(shards=4, echo_logs=False) as server, trio.open_nursery() as nursery:
        anchor, welcome = await welcomed(server, "/rooms/leak")  # the room exists and has an owner
        nursery.start_soon(_keep_reading, anchor)
        pids = sorted(server.all_pids())
        await _connect_and_close(server, 100)  # warm-up: one-time lazy allocations
        before = await _settled_fds(pids)
        await _connect_and_close(server, 1000)
        routed = len(server.log.events("routed", room="leak"))
        assert routed >= 100, routed
        # Closes finish asynchronously: wait (bounded) until every count is back.
        with trio.move_on_after(20):
            while {pid: _fds(pid) for pid in pids} != before:
                await trio.sleep(0.05)
        after = {pid: _fds(pid) for pid in pids}
        print(f"routed={routed} of 1100; open fds before={before} after={after}")
        assert after == before
        assert not server.log.events("disconnect", session=welcome["session"])
        nursery.cancel_scope.cancel()


async def _settled_fds(pids: list[int]) -> dict[int, int]:
    """Open-fd counts once they stop changing (closes finish asynchronously)."""
    previous: dict[int, int] = {}
    with trio.fail_after(20):
        while True:
            now = {pid: _fds(pid) for pid in pids}
            if now == previous:
                return now
            previous = now
            await trio.sleep(0.5)


async def test_a_room_that_empties_and_refills_at_once_stays_on_one_shard() -> None:
    # Players leave and join concurrently, so the room keeps emptying while a connection
    # for it is on its way: it must not be re-created on a second shard.
    async with open_server(shards=4, echo_logs=False) as server:
        shards: set[int] = set()

        async def churn() -> None:
            for _ in range(60):
                client, welcome = await welcomed(server, "/rooms/churn")
                shards.add(welcome["shard"])
                await client.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(churn)
            nursery.start_soon(churn)
        assert len(shards) == 1, shards
        assert len(server.log.events("room_placed", room="churn")) == 1
        assert not server.log.events("room_conflict")


async def test_lobby_connections_are_spread_evenly_over_eight_shards() -> None:
    from bench.balance import spread
    from core.balance import max_min_ratio

    loads = await spread([], connections=2000, shards=8)
    print("per shard", loads, "max/min", round(max_min_ratio(loads), 2))
    assert sum(loads) == 2000
    # Measured 1.08-1.19 here (the kernel alone: 4.3); a loose bound for noisy machines.
    assert max_min_ratio(loads) <= 1.5, loads
