"""Sessions that outlive connections, through real processes: away, resume on the same and
on another shard with exactly-once replay, cseq dedup, grace expiry, tokens, races."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from lab.rawws import Closed, RawClient
from lab.server import ServerProcess, open_server
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(120)


async def _said_texts(client: RawClient, count: int) -> list[tuple[int, str]]:
    out = []
    while len(out) < count:
        message = await client.receive()
        if message["type"] == "said":
            out.append((message["seq"], message["text"]))
    return out


async def _gone(server: ServerProcess, session: str, kind: str = "abnormal") -> None:
    await server.log.wait_for("disconnect", session=session, kind=kind)


async def test_abrupt_close_then_resume_replays_missed_messages_once_in_order() -> None:
    async with open_server(shards=2) as server:
        player, welcome = await welcomed(server)
        other, _ = await welcomed(server)
        await other.send({"type": "say", "text": "before"})
        seen = await _said_texts(player, 1)
        last_seq = seen[-1][0]
        player.vanish()
        await _gone(server, welcome["session"])
        for i in range(5):
            await other.send({"type": "say", "text": f"missed {i}"})
        await _said_texts(other, 6)  # the five were delivered (and recorded) everywhere
        back, again = await welcomed(server, resume_path(welcome, last_seq))
        assert again["resumed"] is True and again["session"] == welcome["session"]
        assert "resume_error" not in again and again["token"] != welcome["token"]
        replayed = await _said_texts(back, 5)
        assert replayed == [(last_seq + 1 + i, f"missed {i}") for i in range(5)]
        # Nothing twice: the next stream message continues the sequence.
        await back.send({"type": "echo", "data": "after"})
        echo = await back.receive_until("echo")
        assert echo["seq"] == last_seq + 6
        await server.log.wait_for("resume", session=welcome["session"], replayed=5)


async def test_resume_accepted_by_another_shard_is_routed_to_the_holder() -> None:
    async with open_server(shards=2) as server:
        player, welcome = await welcomed(server)
        holder, last_seq = welcome["shard"], 0
        other, _ = await welcomed(server)
        # The kernel picks the accepting shard; keep resuming until another one accepted
        # (it logs "routed"): the holder still serves it, with the replay.
        for attempt in range(40):
            await other.send({"type": "say", "text": f"while away {attempt}"})
            player.vanish()
            await _gone(server, welcome["session"])
            mark = len(server.log.lines)
            player, welcome = await welcomed(server, resume_path(welcome, last_seq))
            assert welcome["resumed"] is True and welcome["shard"] == holder
            (seq, text), *_ = await _said_texts(player, 1)
            assert (seq, text) == (last_seq + 1, f"while away {attempt}")
            last_seq = seq
            if any(f.get("event") == "routed" for f in server.log.lines[mark:]):
                break
        else:
            pytest.fail("40 resumes were all accepted by the holding shard")


async def test_resume_on_another_shard_fetches_the_session_with_its_buffer() -> None:
    # Without fd routing (as across machines) the accepting shard fetches the session.
    async with open_server("--no-resume-routing", shards=2) as server:
        player, welcome = await welcomed(server)
        other, _ = await welcomed(server)
        holder, last_seq, count = welcome["shard"], 0, 0
        # The kernel picks the accepting shard; resume until a different one took it.
        for attempt in range(40):
            await other.send({"type": "say", "text": f"while away {attempt}"})
            player.vanish()
            await _gone(server, welcome["session"])
            player, welcome2 = await welcomed(server, resume_path(welcome, last_seq))
            assert welcome2["resumed"] is True, welcome2
            said = await _said_texts(player, 1 + attempt - count)
            assert [seq for seq, _ in said] == list(range(last_seq + 1, last_seq + 1 + len(said)))
            count += len(said)
            last_seq = said[-1][0]
            if welcome2["shard"] != holder:
                break
            welcome = welcome2
        else:
            pytest.fail("40 resumes all landed on the holding shard")
        # (the supervisor's line may come after the welcome that needed it)
        await server.log.wait_for("handoff", session=welcome["session"], ok="true")
        # The moved session keeps working and keeps receiving broadcasts, once each.
        await other.send({"type": "say", "text": "after move"})
        ((seq, text),) = await _said_texts(player, 1)
        assert (seq, text) == (last_seq + 1, "after move")


async def test_client_messages_are_neither_lost_nor_doubled_across_a_reconnect() -> None:
    async with open_server(shards=2) as server:
        player, welcome = await welcomed(server)
        for cseq in (1, 2, 3):
            await player.send({"type": "echo", "data": cseq, "cseq": cseq})
        echoes = [(await player.receive_until("echo"))["data"] for _ in range(3)]
        assert echoes == [1, 2, 3]
        player.vanish()
        await _gone(server, welcome["session"])
        player, again = await welcomed(server, resume_path(welcome, 3))
        assert again["last_cseq"] == 3
        # A client unsure whether 3 arrived re-sends it; the server skips it.
        for cseq in (3, 4):
            await player.send({"type": "echo", "data": cseq, "cseq": cseq})
        await player.send({"type": "heartbeat", "ts": 1})
        got = []
        while True:
            message = await player.receive()
            if message["type"] == "heartbeat_ack":
                assert message["last_cseq"] == 4
                break
            got.append(message["data"])
        assert got == [4]


async def test_expired_grace_announces_user_left_to_the_others() -> None:
    async with open_server("--grace", "0.5", shards=2) as server:
        player, welcome = await welcomed(server)
        other, _ = await welcomed(server)
        player.vanish()
        left = await other.receive_until("user_left", timeout=15)
        assert left == {**left, "session": welcome["session"], "reason": "expired"}
        expired = await server.log.wait_for("session_expired", session=welcome["session"])
        assert float(expired["away_s"]) >= 0.5
        # Its token now yields a new session that says why.
        _, late = await welcomed(server, resume_path(welcome, 0))
        assert late["resumed"] is False and late["resume_error"] == "expired"
        assert late["session"] != welcome["session"]


async def test_used_and_forged_tokens_give_a_new_session_with_resume_error() -> None:
    async with open_server(shards=2) as server:
        player, welcome = await welcomed(server)
        player.vanish()
        await _gone(server, welcome["session"])
        back, resumed = await welcomed(server, resume_path(welcome, 0))
        assert resumed["resumed"] is True
        # The client speaks on the new connection: it has the new token, the old one dies.
        await back.send({"type": "echo", "data": 1})
        await back.receive_until("echo")
        _, reused = await welcomed(server, resume_path(welcome, 0))
        assert reused["resumed"] is False and reused["resume_error"] == "invalid"
        assert reused["session"] != welcome["session"]
        forged = {
            "token": welcome["token"][:-4] + ("AAAA" if welcome["token"][-4:] != "AAAA" else "BBBB")
        }
        _, refused = await welcomed(server, resume_path(forged, 0))
        assert refused["resumed"] is False and refused["resume_error"] == "invalid"
        _, junk = await welcomed(server, "/?resume=not-a-token&last_seq=0")
        assert junk["resume_error"] == "invalid"


async def test_two_connections_racing_to_resume_one_session_exactly_one_wins() -> None:
    async with open_server(shards=2) as server:
        for _ in range(5):
            player, welcome = await welcomed(server)
            player.vanish()
            await _gone(server, welcome["session"])
            results: list[tuple[RawClient, dict[str, Any]]] = []

            async def resume(
                welcome: dict[str, Any] = welcome,
                results: list[tuple[RawClient, dict[str, Any]]] = results,
            ) -> None:
                results.append(await welcomed(server, resume_path(welcome, 0)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                nursery.start_soon(resume)
            # Exactly one connection ends up holding the session: the other one was
            # refused (new session, "invalid"), or - if it resumed first and had not yet
            # confirmed its token - it was replaced with 4000.
            holders = []
            for client, w in results:
                if not w["resumed"]:
                    assert w["resume_error"] == "invalid"
                    assert w["session"] != welcome["session"]
                    continue
                try:
                    await client.send({"type": "echo", "data": "who"})
                    await client.receive_until("echo", timeout=5)
                    holders.append(client)
                except Closed as closed:
                    assert closed.code == 4000
            assert len(holders) == 1


async def test_a_welcome_lost_in_transit_does_not_lose_the_session() -> None:
    async with open_server(shards=2) as server:
        player, welcome = await welcomed(server)
        player.vanish()
        await _gone(server, welcome["session"])
        # The resume succeeds, but the link dies before the client reads the new token...
        back = await RawClient.connect(server.port, resume_path(welcome, 0))
        back.vanish()
        await server.log.wait_for("resume", session=welcome["session"])
        # ...so it comes back with the token it has: the previous one still works.
        _, again = await welcomed(server, resume_path(welcome, 0))
        assert again["resumed"] is True and again["session"] == welcome["session"]


async def test_resume_while_the_old_connection_looks_alive_closes_it_with_4000() -> None:
    async with open_server(shards=2) as server:
        zombie, welcome = await welcomed(server)
        # The old connection is still open (its owner has not noticed it is dead).
        _, again = await welcomed(server, resume_path(welcome, 0))
        assert again["resumed"] is True
        with pytest.raises(Closed) as info:
            while True:
                await zombie.receive()
        assert info.value.code == 4000
        line = await server.log.wait_for(
            "disconnect", session=welcome["session"], kind="application"
        )
        assert line["code"] == "4000"


async def test_graceful_close_leaves_at_once() -> None:
    async with open_server("--grace", "60", shards=2) as server:
        player, welcome = await welcomed(server)
        other, _ = await welcomed(server)
        await player.close(1000)
        left = await other.receive_until("user_left")
        assert left["session"] == welcome["session"] and left["reason"] == "graceful"
        _, late = await welcomed(server, resume_path(welcome, 0))
        assert late["resume_error"] == "expired"
