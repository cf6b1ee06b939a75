"""Rolling restarts and crashes through real processes and real signals, with players."""

from __future__ import annotations

import os
import signal
import statistics
from collections import Counter

import pytest
import trio

from lab.crowd import ROLL_ARGS, Crowd, Player, paths, run_crowd
from lab.server import open_server

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("players", [200])
async def test_hup_replaces_every_shard_and_no_player_loses_anything(players: int) -> None:
    async with open_server(*ROLL_ARGS, shards=4, echo_logs=False) as server:
        crowd = Crowd([Player(i, p) for i, p in enumerate(paths(players, rooms=10, per_room=10))])
        before = server.shard_pids()
        roll: dict[str, str] = {}
        started = [0.0]

        async def during() -> None:
            await trio.sleep(1.0)  # traffic flowing
            started[0] = trio.current_time()
            server.signal(signal.SIGHUP)
            roll.update(await server.log.wait_for("roll_done", timeout=120))
            await trio.sleep(0.5)

        await run_crowd(server, crowd, during)
        after = server.shard_pids()
        totals = crowd.totals()
        latencies = sorted(x for p in crowd.players for x in p.reconnect_latencies)
        report = {
            **totals,
            "min_connected_fraction": round(crowd.min_connected_fraction(started[0]), 3),
            "reconnect_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "reconnect_p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3)
            if latencies
            else None,
            "roll_s": roll.get("duration_s"),
        }
        print("ROLL", report)
        low = min((c, t) for t, c in crowd.samples if t >= started[0])
        print("lowest connected count", low[0], "at", round(low[1] - started[0], 3), "s after HUP")
        near = Counter(
            (code, reason[:40]) for t, code, reason, _ in crowd.aways if low[1] - 0.6 < t <= low[1]
        )
        print("disconnects in the 0.6 s before it:", dict(near))
        for f in server.log.lines:
            if f.get("event") in (
                "roll_start",
                "roll_step",
                "roll_done",
                "evacuate",
                "evacuated",
                "adopted",
                "resume_failed",
                "replacement_failed",
                "drain_start",
                "drain_done",
                "app_error",
                "sessions_lost",
                "evacuate_failed",
                "fetch_timeout",
            ):
                print("LOG", f)
        assert not server.log.events("roll_aborted")
        assert set(before.values()).isdisjoint(after.values()), (before, after)
        assert len(after) == 4
        assert report["min_connected_fraction"] >= 0.75, report
        assert totals["sessions_lost"] == 0 and totals["not_in_original_session"] == 0, totals
        for key in ("c2s_lost", "c2s_doubled", "s2c_lost", "s2c_doubled"):
            assert totals[key] == 0, totals
        assert totals["resumes"] >= players * 0.9


async def test_a_killed_shard_is_respawned_within_a_second_and_others_never_disconnect() -> None:
    async with open_server(*ROLL_ARGS, shards=4, echo_logs=False) as server:
        crowd = Crowd([Player(i, "/") for i in range(40)])

        async def during() -> None:
            await trio.sleep(0.5)
            pids = server.shard_pids()
            mark = len(server.log.lines)
            killed_at = trio.current_time()
            os.kill(pids[1], signal.SIGKILL)
            await server.log.wait_for("shard_ready", shard=1, after=mark, timeout=10)
            assert trio.current_time() - killed_at <= 1.0 + 0.5  # + scheduling slack
            await trio.sleep(1.0)

        # The victims' sessions die with their shard (no checkpoints yet): do not wait for
        # their traffic to complete.
        await run_crowd(server, crowd, during, settle=3.0)
        exit_line = server.log.events("shard_exit", shard=1)[-1]
        assert exit_line["signal"] == "SIGKILL"
        victims = [p for p in crowd.players if p.shard == 1]
        others = [p for p in crowd.players if p.shard != 1]
        assert victims and others
        # Players on the other shards never saw a disconnect; the victims came back.
        assert all(not p.aways for p in others), [(p.index, p.shard) for p in others if p.aways]
        assert all(p.aways for p in victims)


async def test_a_replacement_that_crashes_at_start_aborts_the_roll_and_keeps_four_shards(
    tmp_path: object,
) -> None:
    from pathlib import Path

    app_dir = Path(str(tmp_path))
    marker = app_dir / "broken"
    (app_dir / "deployable.py").write_text(
        "import pathlib\n"
        "from shards.demo import DemoApp\n"
        f"if pathlib.Path({str(marker)!r}).exists():\n"
        "    raise RuntimeError('this deploy is broken')\n"
        "App = DemoApp\n"
    )
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{app_dir}{os.pathsep}{env_path}" if env_path else str(app_dir)
    try:
        async with open_server("--app", "deployable:App", *ROLL_ARGS, shards=4) as server:
            before = server.shard_pids()
            marker.write_text("yes")
            server.signal(signal.SIGHUP)
            await server.log.wait_for("roll_aborted", timeout=60)
            assert server.log.events("replacement_failed", shard=0)
            assert not server.log.events("roll_step")  # no old shard was drained
            # The old shards serve on: all four still answer.
            from lab.rawws import RawClient

            seen = set()
            for _ in range(200):
                client = await RawClient.connect(server.port)
                seen.add((await client.receive())["shard"])
                client.vanish()
                if len(seen) == 4:
                    break
            assert seen == {0, 1, 2, 3}
            assert all(os.path.exists(f"/proc/{pid}") for pid in before.values())
    finally:
        os.environ["PYTHONPATH"] = env_path


async def test_status_shows_every_shard_and_reload_rolls_them() -> None:
    import json

    async with open_server(*ROLL_ARGS, shards=3) as server:
        status = json.loads(await server.command("status", "--json"))
        assert [s["shard"] for s in status["shards"]] == [0, 1, 2]
        assert {s["pid"] for s in status["shards"]} == set(server.shard_pids().values())
        assert all(s["state"] == "ready" for s in status["shards"])
        table = await server.command("status")
        assert "generation" in table or "gen" in table
        reply = json.loads(await server.command("reload"))
        assert reply == {"reload": "started"}
        await server.log.wait_for("roll_done", timeout=60)
        after = json.loads(await server.command("status", "--json"))
        assert {s["pid"] for s in after["shards"]}.isdisjoint({s["pid"] for s in status["shards"]})
        assert len(after["shards"]) == 3


async def test_a_crashed_shards_player_resumes_from_the_checkpoint_and_is_told_so() -> None:
    import json

    from lab.rawws import RawClient
    from tests.support import resume_path

    async with open_server("--checkpoint-interval", "0.2", shards=2) as server:
        player = await RawClient.connect(server.port)
        welcome = await player.receive()
        other = await RawClient.connect(server.port)
        await other.receive()
        for i in range(3):
            await other.send({"type": "say", "text": f"before crash {i}"})
        last_seq = 0
        while last_seq < 3:
            last_seq = (await player.receive_until("said"))["seq"]
        with trio.fail_after(20):
            while json.loads(await server.command("status", "--json"))["checkpointed_sessions"] < 2:
                await trio.sleep(0.1)
        mark = len(server.log.lines)
        os.kill(server.shard_pids()[welcome["shard"]], signal.SIGKILL)
        await server.log.wait_for("shard_ready", shard=welcome["shard"], after=mark)
        back = await RawClient.connect(server.port, resume_path(welcome, last_seq))
        again = await back.receive()
        assert again["session"] == welcome["session"], again
        assert again["resumed"] is True and again["recovered"] is True
        assert again["replay_gap"] is True  # what followed the checkpoint is unknown
        await server.log.wait_for("session_recovered", session=welcome["session"])
        # The stream goes on after what the client had seen: no seq is reused.
        await back.send({"type": "echo", "data": "alive"})
        echo = await back.receive_until("echo")
        assert echo["seq"] > last_seq
