"""Cluster mode, lobby sessions: a player whose connection dropped resumes on another node
with exactly-once replay both ways (the server's missed messages in seq order, its own
unprocessed messages told by ``last_cseq``), and its token then works nowhere else."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from core.cluster import LEASE_TTL_S
from lab.netcut import CuttingProxy
from lab.rawws import RawClient
from lab.redis import RedisServer, free_port, open_redis, redis_available
from lab.server import kill_tree, open_server
from tests.cluster.test_rooms_across_nodes import node_args, open_nodes
from tests.support import resume_path

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(redis_available() is not None, reason=str(redis_available())),
]


async def test_a_lobby_session_resumes_on_another_node_with_nothing_lost_or_doubled() -> None:
    async with open_redis() as redis, open_nodes(redis, "a", "b", "c") as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        player, welcome = await RawClient.open(a.port, "/")
        talker, _ = await RawClient.open(c.port, "/")
        assert welcome is not None
        # Messages the player sent and saw answered (cseq 1..3).
        for n in range(1, 4):
            await player.send({"type": "echo", "data": n, "cseq": n})
            await player.receive_until("echo", data=n)
        await talker.send({"type": "say", "text": "seen"})
        seen = await player.receive_until("said", text="seen")
        # A message the server processes (its heartbeat_ack says so) but whose answer the
        # player does not count as read (last_seq stays at the say), then the link dies
        # without a close frame.
        await player.send({"type": "echo", "data": "unread", "cseq": 4})
        await player.send({"type": "heartbeat", "ts": 1})
        ack = await player.receive_until("heartbeat_ack")
        assert ack["last_cseq"] == 4
        player.vanish()
        await a.log.wait_for("disconnect", session=welcome["session"])
        # Said while the player is away, from a third node.
        await talker.send({"type": "say", "text": "while away"})
        await talker.receive_until("said", text="while away")

        again, back = await RawClient.open(b.port, resume_path(welcome, seen["seq"]))
        assert back is not None
        assert back["session"] == welcome["session"] and back["resumed"] is True, back
        assert not back.get("replay_gap") and not back.get("resume_error"), back
        assert back["last_cseq"] == 4  # the unread echo was processed: not to be re-sent
        # Replayed in order, once: the echo it never read, then the say while away.
        first = await again.receive(timeout=10)
        assert first["type"] == "echo" and first["data"] == "unread", first
        assert first["seq"] == seen["seq"] + 1
        second = await again.receive_until("said", timeout=10)
        assert second["text"] == "while away" and second["seq"] == seen["seq"] + 2
        # The session lives on b now: it echoes and hears says there.
        assert (await again.echo("on b"))["seq"] == seen["seq"] + 3
        await b.log.wait_for("cluster_handoff_in", session=welcome["session"], ok="true")
        await a.log.wait_for("cluster_handoff_out", session=welcome["session"], to_node="b")

        # The token was used: on any node it now yields a new session, never this one.
        for node in (a, c, b):
            _, stale = await RawClient.open(node.port, resume_path(welcome, 0))
            assert stale is not None and stale["resumed"] is False, stale
            assert stale["session"] != welcome["session"]
            assert stale.get("resume_error") in ("invalid", "expired"), stale
        # ...and the player on b was not disturbed by those attempts.
        assert (await again.echo("still"))["data"] == "still"


async def test_the_newest_token_resumes_from_a_third_node() -> None:
    """A session that moved a→b moves again b→c with the token b issued."""
    async with open_redis() as redis, open_nodes(redis, "a", "b", "c") as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        player, welcome = await RawClient.open(a.port, "/")
        assert welcome is not None
        assert (await player.echo(1))["seq"] == 1
        player.vanish()
        await a.log.wait_for("disconnect", session=welcome["session"])
        on_b, w_b = await RawClient.open(b.port, resume_path(welcome, 1))
        assert w_b is not None and w_b["resumed"] is True
        assert (await on_b.echo(2))["seq"] == 2
        on_b.vanish()
        await b.log.wait_for("disconnect", session=welcome["session"])
        on_c, w_c = await RawClient.open(c.port, resume_path(w_b, 2))
        assert w_c is not None and w_c["resumed"] is True and w_c["session"] == welcome["session"]
        assert w_c["last_cseq"] == 0 and not w_c.get("replay_gap")
        assert (await on_c.echo(3))["seq"] == 3


async def test_the_players_of_a_node_that_dies_resume_elsewhere_from_its_checkpoint() -> None:
    """SIGKILL of a whole node: its lobby player resumes on another node from the session
    checkpoint the node kept in Redis (``recovered``) and hears every say made after the
    death, once, in order - even though it had seen messages newer than that checkpoint
    (its last_seq is ahead of it)."""
    async with open_redis() as redis:
        args = ("--checkpoint-interval", "0.5")
        async with open_nodes(redis, "a", "b", more=args) as nodes:
            a, b = nodes["a"], nodes["b"]
            player, welcome = await RawClient.open(a.port, "/")
            talker, _ = await RawClient.open(b.port, "/")
            assert welcome is not None
            assert (await player.echo(1))["seq"] == 1
            # Its checkpoint is in Redis (a connection attempt per poll, bounded).
            key = "{ws}:checkpoints:a"
            with trio.fail_after(10):
                while await redis.query("HEXISTS", key, welcome["session"]) != b":1":
                    await trio.sleep(0.05)
            # Messages the player sees after that checkpoint, then the machine dies
            # (before the next checkpoint, 0.5 s later).
            last = 0
            for n in range(2, 5):
                last = (await player.echo(n))["seq"]
            kill_tree(a.pid, a.all_pids())
            for n in range(4):
                await talker.send({"type": "say", "text": f"after-{n}"})
                await talker.receive_until("said", text=f"after-{n}")
            # Right away: b asks a, gets no answer, and takes the checkpoint as soon as a's
            # lease is gone (at most 5 s) - within the one resume, no retry needed.
            started = trio.current_time()
            again, back = await RawClient.open(b.port, resume_path(welcome, last))
            assert back is not None
            assert back["session"] == welcome["session"] and back["recovered"] is True, back
            assert trio.current_time() - started <= LEASE_TTL_S + 2
            said = [await again.receive_until("said", timeout=10) for _ in range(4)]
            assert [m["text"] for m in said] == [f"after-{n}" for n in range(4)]
            assert [m["seq"] for m in said] == list(range(last + 1, last + 5))
            assert (await again.echo(5))["data"] == 5
            await b.log.wait_for("cluster_session_recovered", session=welcome["session"])
            # Taken once: the checkpoint is gone from Redis.
            assert await redis.query("HEXISTS", key, welcome["session"]) == b":0"


async def test_a_node_cut_off_from_redis_drops_its_copy_of_a_session_another_node_took() -> None:
    """Partition: node a's Redis traffic goes through a proxy the test blackholes. a's
    player drops and resumes on b, which takes the session from a's checkpoint once a's
    lease has run out. Healed, a's writes of that session are refused (the registry names
    b): a ends its stale copy, and the player's newest token, used on a, fetches the
    session from b - it is not refused by a's out-of-date copy."""
    async with open_redis() as redis:
        async with trio.open_nursery() as nursery:
            proxy = CuttingProxy("127.0.0.1", redis.port)
            await nursery.start(proxy.run)
            via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
            more = ("--checkpoint-interval", "0.5")
            async with (
                open_server(*node_args(via_proxy, "a", free_port(), *more), shards=2) as a,
                open_server(*node_args(redis.url, "b", free_port(), *more), shards=2) as b,
            ):
                player, welcome = await RawClient.open(a.port, "/")
                assert welcome is not None
                sid = welcome["session"]
                assert (await player.echo(1))["seq"] == 1
                with trio.fail_after(10):
                    while await redis.query("HEXISTS", "{ws}:checkpoints:a", sid) != b":1":
                        await trio.sleep(0.05)
                proxy.blackhole(True)
                player.vanish()
                await a.log.wait_for("disconnect", session=sid)
                await a.log.wait_for("lease_lost", node="a")
                since_lost = len(a.log.lines)
                on_b, w_b = await RawClient.open(b.port, resume_path(welcome, 1))
                assert w_b is not None and w_b["session"] == sid and w_b["recovered"], w_b
                assert (await on_b.echo(2))["seq"] == 2
                assert await holder_is(redis, sid, "b")
                proxy.blackhole(False)
                await a.log.wait_for("lease_held", node="a", after=since_lost)
                await a.log.wait_for("session_stale", session=sid)
                # The registry still names b; a keeps no checkpoint of it.
                assert await holder_is(redis, sid, "b")
                assert await redis.query("HEXISTS", "{ws}:checkpoints:a", sid) == b":0"
                on_b.vanish()
                await b.log.wait_for("disconnect", session=sid)
                on_a, w_a = await RawClient.open(a.port, resume_path(w_b, 2))
                assert w_a is not None and w_a["session"] == sid, w_a
                assert w_a["resumed"] is True and not w_a.get("resume_error"), w_a
                assert (await on_a.echo(3))["seq"] == 3
            nursery.cancel_scope.cancel()


async def holder_is(redis: RedisServer, session: str, node: str) -> bool:
    """Whether the cluster's session registry names ``node`` as ``session``'s holder."""
    script = "return redis.call('GET', KEYS[1]) == ARGV[1] and 1 or 0"
    return await redis.query("EVAL", script, "1", f"{{ws}}:session:{session}", node) == b":1"


async def test_a_player_switching_nodes_right_after_its_welcome_keeps_its_session() -> None:
    """Node a's registry write of a new session is held up (its Redis traffic goes through
    a proxy the test stalls for 0.3 s): the player, switching networks right after its
    welcome, resumes on b before any node knows where the session is. b looks again for a
    moment instead of answering resume_error, and the session moves from a once a's write
    lands."""
    async with open_redis() as redis, trio.open_nursery() as nursery:
        proxy = CuttingProxy("127.0.0.1", redis.port)
        await nursery.start(proxy.run)
        via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            open_server(*node_args(via_proxy, "a", free_port()), shards=1) as a,
            open_server(*node_args(redis.url, "b", free_port()), shards=1) as b,
        ):
            proxy.blackhole(True)  # a's writes wait in the proxy (not lost)
            player, welcome = await RawClient.open(a.port, "/")
            assert welcome is not None
            assert (await player.echo("first"))["seq"] == 1
            player.vanish()
            back: dict[str, Any] = {}

            async def resume() -> None:
                _, w = await RawClient.open(b.port, resume_path(welcome, 1))
                assert w is not None
                back.update(w)

            async with trio.open_nursery() as resuming:
                resuming.start_soon(resume)
                # b has asked Redis and found nobody; a's write is still in the proxy.
                await b.log.wait_for(
                    "cluster_fetch_unregistered", session=welcome["session"], timeout=10
                )
                await trio.sleep(0.3)
                proxy.blackhole(False)
            assert back["session"] == welcome["session"], back
            assert back["resumed"] is True and not back.get("resume_error"), back
        nursery.cancel_scope.cancel()
