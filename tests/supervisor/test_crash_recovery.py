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

from tests.support import WireClient, open_server, resume_path

pytestmark = pytest.mark.timeout(90)


async def players_on(port: int, shard: int, count: int) -> list[tuple[WireClient, dict[str, Any]]]:
    """``count`` lobby players served by ``shard`` (others are closed again)."""
    found: list[tuple[WireClient, dict[str, Any]]] = []
    with trio.fail_after(30):
        while len(found) < count:
            client, welcome = await WireClient.connect(port)
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
            await talker.send_json({"type": "say", "text": f"before-{n}"})
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
            await talker.send_json({"type": "say", "text": f"after-{n}"})
            await talker.receive_until("said", text=f"after-{n}")
            await trio.sleep(0.05)
        await server.log.wait_for("shard_ready", shard=0, generation=3)
        for (_, welcome), seen in zip(players, last_seq, strict=True):
            again, back = await WireClient.connect(server.port, resume_path(welcome, seen))
            assert back is not None
            assert back["resumed"] is True and back["recovered"] is True, back
            texts = []
            while not texts or texts[-1] != "after-19":
                message = await again.receive_until("said", timeout=10)
                texts.append(message["text"])
            # Every say sent after the crash, once, in order; nothing from before doubled.
            assert [t for t in texts if t.startswith("after-")] == [
                f"after-{n}" for n in range(20)
            ]
            assert not [t for t in texts if t.startswith("before-")]
            await again.echo("back in business")
