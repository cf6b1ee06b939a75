"""Sessions whose state is big, and resumes that lie, against a real supervisor: hand-offs
and checkpoints travel in bounded frames, a roll that cannot hand over aborts with the old
shard serving, and no client-chosen integer can crash a shard.

Rows of the robustness issue: 2 (sessions whose changes exceed a control frame; a roll
whose hand-off cannot complete) and 6 (a resume with ``last_seq`` beyond 2^64).
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

from lab.rawws import Closed, RawClient
from lab.server import open_server
from tests.support import bystander, resume_path

pytestmark = pytest.mark.timeout(120)

BIG = ("--max-say-bytes", "65536", "--broadcast-rate", "1000", "--broadcast-burst", "1000")


async def test_big_session_state_is_checkpointed_and_rolled_in_bounded_frames() -> None:
    """4 away players hold 8 MB of replay each (200 says of 50 KB, shared bodies): 32 MB of
    session state, over any single control frame's worth once per session. Checkpoints and
    a rolling restart carry it in bounded frames - the shard is never killed for a frame's
    size, nothing is skipped - and every player resumes with the newest says, in order."""
    async with open_server(
        *BIG, "--replay-buffer-bytes", "8000000", "--reconnect-window-ms", "500", shards=1
    ) as server:
        away = []
        for _ in range(4):
            client, welcome = await RawClient.open(server.port)
            assert welcome is not None
            client.stream.socket.close()  # gone without a goodbye: the session is away
            away.append(welcome)
        for welcome in away:
            await server.log.wait_for("disconnect", session=welcome["session"])
        talker, _ = await RawClient.open(server.port)
        for n in range(200):
            text = f"{n:04d}" + "z" * 50_000
            await talker.send({"type": "say", "text": text})
            await talker.receive_until("said", text=text)  # a reader that keeps up
        checkpoints = len(server.log.raw)
        await trio.sleep(2.5)  # two checkpoint intervals
        assert len(server.log.raw) >= checkpoints
        server.signal(signal.SIGHUP)
        await server.log.wait_for("roll_done", timeout=60)
        for event in ("roll_aborted", "control_frame_skipped", "control_frame_dropped"):
            assert not server.log.events(event), event
        assert not server.log.events("shard_exit")
        for welcome in away:
            again, back = await RawClient.open(server.port, resume_path(welcome, 0))
            assert back is not None and back["resumed"] is True, back
            assert back["replay_gap"] is True  # the oldest says no longer fitted 8 MB
            texts = []
            while not texts or not texts[-1].startswith("0199"):
                texts.append((await again.receive_until("said", timeout=20))["text"])
            numbers = [int(t[:4]) for t in texts]
            assert numbers == list(range(numbers[0], 200)) and len(numbers) > 100


async def test_a_roll_whose_replacement_stops_answering_aborts_with_the_old_shard_serving() -> None:
    async with open_server(
        "--reconnect-window-ms",
        "3000",
        "--reconnect-after-ms",
        "100",
        "--fetch-timeout",
        "1",
        shards=1,
    ) as server:
        old_pid = server.shard_pids()[0]
        players = [await RawClient.open(server.port, f"/rooms/r{i}") for i in range(12)]
        async with bystander(server.port) as rtts:
            spawned = len(server.log.events("shard_spawn"))
            server.signal(signal.SIGHUP)
            line = await server.log.wait_for("shard_ready", generation=2)
            await server.log.wait_for("drain_start")  # the old shard is handing over
            os.kill(int(line["pid"]), signal.SIGSTOP)  # the replacement stops answering
            await server.log.wait_for("handover_failed", timeout=20)
            await server.log.wait_for("roll_aborted", timeout=20)
            await server.log.wait_for("drain_aborted", timeout=20)
            assert len(server.log.events("shard_spawn")) == spawned + 1
            assert rtts
        # The old shard still serves: the bystander (on it) kept its echo, and so do the
        # players whose rooms had not moved yet.
        assert server.shard_pids()[0] == old_pid or old_pid in server.all_pids()
        kept = 0
        for i, (client, welcome) in enumerate(players):
            assert welcome is not None
            try:
                await client.echo("after the abort", timeout=3)
                kept += 1
            except Closed as closed:
                # Its room moved before the replacement stopped: it was told to come back,
                # and its session survives the replacement (kept from the hand-off).
                assert closed.code == 1012
                again, back = await RawClient.open(
                    server.port, resume_path(welcome, 0, f"/rooms/r{i}")
                )
                assert back is not None and back["resumed"] is True, back
                await again.echo("resumed")
        assert kept >= 6, kept
        assert not server.log.events("shard_exit", pid=old_pid)


async def test_a_resume_with_last_seq_past_2_to_the_64_after_a_crash_is_refused() -> None:
    async with open_server(shards=1) as server:
        client, welcome = await RawClient.open(server.port)
        assert welcome is not None
        await client.echo("x")
        await trio.sleep(1.5)  # one checkpoint interval: the session is checkpointed
        pid = server.shard_pids()[0]
        os.kill(pid, signal.SIGKILL)
        await server.log.wait_for("shard_ready", generation=2, timeout=20)
        for last_seq in (2**64 + 5, 2**62):
            again, back = await RawClient.open(server.port, resume_path(welcome, last_seq))
            assert back is not None
            assert back["resumed"] is False and back["resume_error"] == "invalid", back
            await again.echo("new session works")
        await trio.sleep(1.5)  # a checkpoint later: nothing overflowed
        assert len(server.log.events("shard_exit")) == 1  # only the kill
        again, back = await RawClient.open(server.port, resume_path(welcome, 1))
        assert back is not None and back["resumed"] is True and back["recovered"] is True
