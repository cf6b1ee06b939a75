"""A shard SIGKILLed under its players: what was broadcast while they were gone is not lost.

The dead shard's sessions are parked in the supervisor from their last checkpoint and
record every broadcast numbered since, until their players resume (late, on any shard).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio

from lab.rawws import Closed, RawClient
from lab.server import open_server
from tests.support import resume_path

pytestmark = pytest.mark.timeout(90)


async def players_on(port: int, shard: int, count: int) -> list[tuple[RawClient, dict[str, Any]]]:
    """``count`` lobby players served by ``shard`` (others are closed again)."""
    found: list[tuple[RawClient, dict[str, Any]]] = []
    with trio.fail_after(30):
        while len(found) < count:
            client, welcome = await RawClient.open(port)
            assert welcome is not None
            if welcome["shard"] == shard:
                found.append((client, welcome))
            else:
                await client.aclose()
    return found


async def test_says_broadcast_while_a_crashed_shards_players_are_away_are_all_replayed() -> None:
    async with open_server("--checkpoint-interval", "0.2", shards=2) as server:
        players = await players_on(server.port, 0, 4)
        (talker, _), *_ = await players_on(server.port, 1, 1)
        # Some says before the crash, seen live by the players.
        for n in range(5):
            await talker.send({"type": "say", "text": f"before-{n}"})
        last_seq = []
        for client, _ in players:
            message = await client.receive_until("said", text="before-4")
            last_seq.append(message["seq"])
        await trio.sleep(0.5)  # a checkpoint or two after they were seen
        shard0 = server.shard_pids()[0]
        os.kill(shard0, signal.SIGKILL)
        await server.log.wait_for("sessions_orphaned", shard=0)
        # Keep broadcasting for several checkpoint intervals while they are away.
        for n in range(20):
            await talker.send({"type": "say", "text": f"after-{n}"})
            await talker.receive_until("said", text=f"after-{n}")
            await trio.sleep(0.05)
        await server.log.wait_for("shard_ready", shard=0, generation=3)
        for (_, welcome), seen in zip(players, last_seq, strict=True):
            again, back = await RawClient.open(server.port, resume_path(welcome, seen))
            assert back is not None
            assert back["resumed"] is True and back["recovered"] is True, back
            texts = []
            while not texts or texts[-1] != "after-19":
                message = await again.receive_until("said", timeout=10)
                texts.append(message["text"])
            # Every say sent after the crash, once, in order; nothing from before doubled.
            assert [t for t in texts if t.startswith("after-")] == [f"after-{n}" for n in range(20)]
            assert not [t for t in texts if t.startswith("before-")]
            await again.echo("back in business")


async def test_says_after_a_crash_reach_a_player_who_saw_more_than_the_checkpoint() -> None:
    """The player saw messages the shard sent after its last checkpoint (its last_seq is
    ahead of it); what was said after the crash is still replayed to it, once, in order,
    numbered after its last_seq - not skipped as if those seqs were already seen."""
    async with open_server("--checkpoint-interval", "0.5", shards=2) as server:
        (player, welcome), *_ = await players_on(server.port, 0, 1)
        (talker, _), *_ = await players_on(server.port, 1, 1)
        assert welcome is not None
        for n in range(3):
            await player.echo(n)
        await trio.sleep(1.2)  # a checkpoint or two after those
        # Three more the player sees, then the crash before the next checkpoint (0.5 s).
        last = 0
        for n in range(3, 6):
            last = (await player.echo(n))["seq"]
        os.kill(server.shard_pids()[0], signal.SIGKILL)
        await server.log.wait_for("sessions_orphaned", shard=0)
        for n in range(5):
            await talker.send({"type": "say", "text": f"after-{n}"})
            await talker.receive_until("said", text=f"after-{n}")
        await server.log.wait_for("shard_ready", shard=0, generation=3)
        again, back = await RawClient.open(server.port, resume_path(welcome, last))
        assert back is not None and back["recovered"] is True, back
        texts, seqs = [], []
        while len(texts) < 5:
            message = await again.receive_until("said", timeout=10)
            texts.append(message["text"])
            seqs.append(message["seq"])
        assert texts == [f"after-{n}" for n in range(5)]
        assert seqs == list(range(last + 1, last + 6))


async def test_with_the_durable_stream_repeated_kills_lose_and_double_nothing() -> None:
    """--durability stream: shards SIGKILLed again and again under traffic. Every echo a
    client sent is answered exactly once (processed once), every say is seen exactly once
    by everyone, in stream (seq) order; each resume after a kill is exact (no replay_gap)."""
    from client import Backoff, Message, Resumed, open_reconnecting_client

    args = ("--durability", "stream", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1")
    async with open_server(*args, shards=2) as server:
        url = server.url("/")
        backoff = Backoff(base=0.05, cap=0.5, max_retries=50)
        echoes: list[dict[int, int]] = [{}, {}, {}]
        saids: list[list[str]] = [[], [], []]
        resumes: list[list[Resumed]] = [[], [], []]
        sent_echoes = [0, 0, 0]
        says = 0
        said_by: dict[str, int] = {}

        async def player(i: int, task_status: Any) -> None:
            async with open_reconnecting_client(url, backoff=backoff) as client:
                task_status.started(client)
                async for event in client.events():
                    if isinstance(event, Resumed):
                        resumes[i].append(event)
                    elif isinstance(event, Message):
                        m = event.message
                        if m["type"] == "echo":
                            echoes[i][m["data"]] = echoes[i].get(m["data"], 0) + 1
                        elif m["type"] == "said":
                            saids[i].append(m["text"])

        async with trio.open_nursery() as nursery:
            clients = [await nursery.start(player, i) for i in range(3)]

            stop = trio.Event()

            async def traffic() -> None:
                nonlocal says
                for n in range(1, 10_000):
                    if stop.is_set():
                        return
                    for i, client in enumerate(clients):
                        await client.send({"type": "echo", "data": n})
                        sent_echoes[i] = n
                    if n % 5 == 0:
                        says += 1
                        said_by[f"say-{says}"] = n % 3
                        await clients[n % 3].send({"type": "say", "text": f"say-{says}"})
                    await trio.sleep(0.01)

            async with trio.open_nursery() as load:
                load.start_soon(traffic)
                for kill in range(4):
                    await trio.sleep(1.0)
                    victim = kill % 2
                    os.kill(server.shard_pids()[victim], signal.SIGKILL)
                    await server.log.wait_for("shard_ready", shard=victim, generation=3 + kill)
                await trio.sleep(1.0)
                stop.set()  # the senders finish what they started
            with trio.move_on_after(30):
                while any(len(e) < s for e, s in zip(echoes, sent_echoes, strict=True)) or any(
                    len(s) < says for s in saids
                ):
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        for i in range(3):
            missing = set(range(1, sent_echoes[i] + 1)) - set(echoes[i])
            extra = set(echoes[i]) - set(range(1, sent_echoes[i] + 1))
            assert not missing and not extra, f"player {i}: lost {sorted(missing)}, {extra=}"
            assert set(echoes[i].values()) == {1}, f"player {i}: an echo processed twice"
            # Exactly once each. "In order" is the stream's seq order (the client raises on a
            # skipped seq): across senders that is the order the server processed them, not
            # the order they were sent - a say lost with a killed shard before it was
            # processed is re-sent by its client after the resume, after later says of
            # players on the other shard. Each sender's own says keep its send order.
            assert sorted(saids[i]) == sorted(f"say-{n}" for n in range(1, says + 1)), (
                f"player {i} said {saids[i]}"
            )
            for sender in range(3):
                own = [int(t.removeprefix("say-")) for t in saids[i] if said_by[t] == sender]
                assert own == sorted(own), f"player {i} saw player {sender}'s says out of order"
        recovered = [r for rs in resumes for r in rs]
        assert recovered, "no player resumed: the kills hit nobody"
        assert not [r.welcome for r in recovered if r.replay_gap], "a resume lost messages"


async def test_a_draining_shard_keeps_answering_each_client_until_its_own_1012() -> None:
    """A rolling restart closes one unit of players at a time across the reconnect window;
    until its turn a connection is served as usual. A client whose dead-server limit equals
    the window (it gives up after that long without any answer) never gives up first."""
    window = 2.0
    async with open_server(
        "--reconnect-window-ms", str(int(window * 1000)), "--reconnect-after-ms", "100", shards=1
    ) as server:
        # One room each: a roll moves a room as one unit, so the 1012s spread over the window.
        clients = [await RawClient.open(server.port, f"/rooms/r{i}") for i in range(20)]
        longest = [0.0] * len(clients)
        codes: list[int | None] = [None] * len(clients)

        async def heartbeats(i: int) -> None:
            client, _ = clients[i]
            last = next_beat = trio.current_time()
            while True:
                if trio.current_time() >= next_beat:
                    await client.send({"type": "heartbeat", "ts": i})
                    next_beat = trio.current_time() + 0.2
                try:
                    await client.receive(timeout=max(0.01, next_beat - trio.current_time()))
                    last = trio.current_time()
                except trio.TooSlowError:
                    pass
                except Closed as closed:
                    codes[i] = closed.code
                    return
                longest[i] = max(longest[i], trio.current_time() - last)
                assert longest[i] < window, f"client {i} heard nothing for {longest[i]:.2f} s"

        async with trio.open_nursery() as nursery:
            for i in range(len(clients)):
                nursery.start_soon(heartbeats, i)
            await trio.sleep(0.5)
            server.signal(signal.SIGHUP)
        await server.log.wait_for("roll_done", timeout=30)
        assert codes == [1012] * len(clients), codes
        # The last unit went about a window after the first: those players were served
        # (heartbeats acked) all that time.
        closes = sorted(
            float(f["ts"]) for f in server.log.events("disconnect") if f.get("code") == "1012"
        )
        assert closes[-1] - closes[0] > window / 2
        print(f"longest silence before a 1012: {max(longest):.3f} s (window {window} s)")
