"""Faults through real processes: a frozen shard (SIGSTOP past the heartbeat timeout)."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from lab.crowd import Crowd, Player, run_crowd
from lab.server import open_server

pytestmark = pytest.mark.timeout(180)


async def test_a_shard_frozen_past_the_heartbeat_timeout_loses_no_player() -> None:
    """What happens: while the shard is stopped its players' clients see a dead server
    (no heartbeat acks) and reconnect; their resumes are routed to the session's holder -
    the frozen shard - where the kernel queues them. On SIGCONT the shard's wheel pings
    every connection before judging it (a stall never counts as the clients' silence),
    serves the queued resumes, and every player is back in their session with nothing
    lost or doubled. Players of the other shards notice nothing."""
    args = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "1")
    async with open_server(*args, shards=2, echo_logs=False) as server:
        crowd = Crowd([Player(i, "/") for i in range(30)])
        frozen = [0]

        async def during() -> None:
            await trio.sleep(0.5)
            frozen[0] = 0
            pid = server.shard_pids()[frozen[0]]
            os.kill(pid, signal.SIGSTOP)
            try:
                await trio.sleep(3.0)  # the fault itself: frozen for 2x the timeout
            finally:
                os.kill(pid, signal.SIGCONT)
            await trio.sleep(1.0)

        await run_crowd(server, crowd, during, settle=30.0)
        totals = crowd.totals()
        timeouts = server.log.events("disconnect", kind="heartbeat_timeout")
        print("SIGSTOP", totals, "heartbeat_timeouts", len(timeouts))
        stopped = [p for p in crowd.players if p.shard == frozen[0]]
        others = [p for p in crowd.players if p.shard != frozen[0]]
        assert stopped and others
        assert all(not p.aways for p in others)
        assert totals["sessions_lost"] == 0 and totals["not_in_original_session"] == 0, totals
        for key in ("c2s_lost", "c2s_doubled", "s2c_lost", "s2c_doubled"):
            assert totals[key] == 0, totals
        assert not server.log.events("shard_exit")  # frozen, not dead: nothing respawned
