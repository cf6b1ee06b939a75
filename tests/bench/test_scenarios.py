"""Every ``python -m bench`` scenario runs end to end at a tiny size and writes its result.

These are not measurements (the figures of a run this small mean nothing and nothing here
is timed): they prove that the command a user types starts its servers and load
processes, gets through every phase, writes ``bench/results``-style JSON with the
machine and the settings, and leaves no process behind. The PNG plots need matplotlib,
which is a bench extra, so they are checked only when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from lab.redis import redis_available
from lab.server import open_server
from tests.support import open_client

ROOT = Path(__file__).resolve().parents[2]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def survivors(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``BENCH_RESULTS=marker``: the
    scenario's servers and load processes all inherit it."""
    needle = f"BENCH_RESULTS={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            cmdline = b"(gone)"
        out.append(f"{pid}: {cmdline.decode(errors='replace')[:200]}")
    return out


def run_bench(tmp_path: Path, *args: str, timeout: float = 100.0) -> dict[str, Any]:
    """``python -m bench ARGS`` with results under ``tmp_path``; its one JSON, parsed."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # only on a timeout: the whole group it started
            os.killpg(process.pid, 9)
            process.wait()
    assert process.returncode == 0, out
    # A process SIGKILLed just before the command returned may take a moment to go.
    deadline = time.monotonic() + 10
    while (left := survivors(env["BENCH_RESULTS"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, (describe(left), out)
    found = sorted(tmp_path.glob(f"{args[0]}-*.json"))
    assert len(found) == 1, (found, out)
    doc = json.loads(found[0].read_text())
    assert doc["scenario"] == args[0]
    assert doc["command"].startswith(f"python -m bench {args[0]}")
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["loadavg_end"]
    pngs = sorted(tmp_path.glob(f"{found[0].stem}-*.png"))
    if HAS_MATPLOTLIB:
        assert pngs, out
    doc["_out"] = out
    doc["_pngs"] = pngs
    return doc


def test_idle_holds_its_connections_and_reports_per_shard(tmp_path: Path) -> None:
    doc = run_bench(
        tmp_path,
        "idle",
        "--connections",
        "300",
        "--shards",
        "2",
        "--duration",
        "2",
        "--idle-window",
        "1.5",
        "--interval",
        "0.5",
        "--timeout",
        "5",
        "--connect-rate",
        "500",
    )
    (summary,) = doc["data"]["summary"]
    assert summary["held"] == 300 and summary["closed"] == 0
    assert summary["heartbeat"] == "0.5 s/5 s"
    assert len(summary["kib_per_connection_per_shard"]) == 2
    (variant,) = doc["data"]["variants"]
    assert variant["open_end"] == 300
    assert not variant["disconnects"]
    assert len(variant["per_shard"]) == 2
    assert sum(s["sockets"] for s in variant["per_shard"]) >= 300
    assert variant["rtts"], "the active clients measured no round trip"
    # Every connection was pinged in the idle window (0.5 s interval, 1.5 s window) and
    # the figure per ping/pong is reported.
    assert variant["pongs"] >= 300 and summary["hb_us_per_ping"] > 0
    assert "us/ping" in doc["_out"] and "conntrack entries" in doc["_out"]


def test_echo_measures_ours_and_profiles_the_shard(tmp_path: Path) -> None:
    doc = run_bench(
        tmp_path,
        "echo",
        "--only",
        "ours echo 1sh",
        "--connections",
        "1",
        "4",
        "--seconds",
        "1",
        "--count",
        "2000",
    )
    rows = doc["data"]["rows"]
    assert {r["connections"] for r in rows} == {1, 4}
    assert all(r["messages"] > 0 and not r["errors"] for r in rows)
    profile = doc["data"]["profile"]
    if "skipped" not in profile:  # py-spy is a bench extra
        assert "trio" in profile["by_package"]


def test_zombie_finds_every_kind_within_the_bound(tmp_path: Path) -> None:
    doc = run_bench(
        tmp_path, "zombie", "--presets", "sub", "--zombies", "4", "--pulled", "2", "--live", "3"
    )
    out = doc["_out"]
    assert "silent_s over the bound: 0" in out, out
    assert "not detected: 0" in out, out


def test_wheel_measures_every_implementation(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "wheel", "--sizes", "1000", "--repeats", "1", "--touches", "2000")
    (row,) = doc["data"]["results"]
    assert row["n"] == 1000
    for implementation in ("wheel", "heapq"):
        assert row[implementation]["touch"] > 0 and row[implementation]["tick_1pct_due"] > 0


def test_routing_balance_and_respawn_run_small(tmp_path: Path) -> None:
    routing = run_bench(
        tmp_path / "routing",
        "routing",
        "--connections",
        "60",
        "--shards",
        "2",
        "--rounds",
        "1",
        "--probe",
        "5",
    )
    data = routing["data"]
    assert data["room_kept"] and not data["client_errors"], (
        {k: data[k] for k in ("room_kept", "room_re_placed", "anchor", "client_errors")},
        routing["_out"],
    )
    balance = run_bench(tmp_path / "balance", "balance", "--connections", "80", "--shards", "2")
    for mode in ("kernel only", "load-aware"):
        assert sum(balance["data"][mode]["per_shard"]) == 80
    respawn = run_bench(tmp_path / "respawn", "respawn", "--kills", "2", "--shards", "2")
    kills = respawn["data"]["kills"]
    assert len(kills) == 2 and all(k["new_pid"] != k["old_pid"] for k in kills)


def test_resume_cuts_loses_nothing(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "resume_cuts", "--cuts", "5", "--shards", "2")
    summary = doc["data"]["summary"]
    assert summary["cuts"] == 5 and summary["sessions_lost"] == 0
    for direction in ("client_to_server", "server_to_client"):
        assert summary[f"{direction}_sent"] > 0
        assert summary[f"{direction}_lost"] == summary[f"{direction}_doubled"] == 0


def test_storm_gets_every_client_back(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "storm", "--clients", "100", "--jitter", "full", "--seconds", "40")
    (row,) = doc["data"]["rows"]
    assert "HTTP refusals by the restarted server" in doc["_out"]
    assert row["reconnected"] == 100 and row["shard_exits"] == 0, (
        {k: row[k] for k in ("reconnected", "shard_exits", "restarted_server_notable")},
        doc["_out"],
    )


def test_broadcast_reaches_every_receiver_of_each_server(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "broadcast", "--clients", "100", "--says", "1", "--echo-says", "1")
    rows = doc["data"]["rows"]
    assert any(r["server"].startswith("ours") for r in rows)
    for row in rows:
        assert [say["received"] for say in row["says"]] == [100, 100], row["server"]
        assert [say["echoes"] for say in row["says"]] == [False, True]
        # The bystanders echoed around the second say and their round trips were timed.
        assert row["bystander_echoes"] > 0 and not row["errors"], row
        assert row["says"][1]["echo_base_p50_ms"] is not None
    if len(rows) == 2:  # the peer ran: the ratio line is printed
        assert "ours / websockets at 100 clients" in doc["_out"]


def test_rolling_replaces_every_shard_and_loses_nothing(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "rolling", "--players", "20", "--shards", "2")
    figures = doc["data"]["figures"]
    assert figures["all_shards_replaced"] is True
    assert figures["sessions_lost"] == 0
    assert figures["c2s_lost"] == figures["s2c_lost"] == 0


@pytest.mark.skipif(redis_available() is not None, reason=str(redis_available()))
def test_cluster_kills_and_rolls_a_node_and_reports_each_phase(tmp_path: Path) -> None:
    doc = run_bench(
        tmp_path, "cluster", "--nodes", "2", "--players", "8", "--warmup", "2", "--settle", "1"
    )
    data, out = doc["data"], doc["_out"]
    warmup, killed, rolled = data["phases"]
    assert killed["phase"].startswith("kill -9 n") and rolled["phase"].startswith("roll n"), out
    # Every player came back after each node went; the roll handed the lobby over whole.
    for phase in (killed, rolled):
        assert phase["players_hit"] >= 1 and phase["all_back_s"] is not None, (phase, out)
    assert rolled["sessions"].get("lobby_lost", 0) == 0, out
    assert rolled["echoes_doubled"] == 0, out
    for phase in (warmup, killed, rolled):
        assert phase["echoes_sent"] > 0 and phase["says_expected"] > 0
        assert phase["echoes_lost"] == phase["says_lost"] == phase["says_doubled"] == 0, out
    # What a dead node costs (sessions lost or recovered with a gap) is reported, whatever
    # it is today.
    for line in ("sessions lost (new session)", "gone with a lost session", "replay_gap"):
        assert line in out, out
    assert data["baseline"]["socket"]["n"] > 0 and "one node without --cluster" in out
    assert data["redis"]["commands"] > 0 and "redis per player message" in out
    assert data["rolled"]["exit_code"] == 0, out  # the rolled node left cleanly


async def test_echo_broadcast_and_idle_measure_a_running_server_by_url(tmp_path: Path) -> None:
    async with open_server(
        "--max-message-rate", "1e9", "--message-burst", "1e9", shards=2, echo_logs=False
    ) as server:
        url = server.url()

        def runs() -> tuple[dict[str, Any], ...]:
            echo = run_bench(
                tmp_path / "echo", "echo", "--url", url, "--connections", "2", "--seconds", "1"
            )
            said = run_bench(
                tmp_path / "broadcast",
                "broadcast",
                "--url",
                url,
                "--clients",
                "50",
                "--says",
                "1",
                "--echo-says",
                "1",
            )
            idle = run_bench(
                tmp_path / "idle",
                "idle",
                "--url",
                url,
                "--connections",
                "200",
                "--duration",
                "1",
                "--idle-window",
                "1",
            )
            return echo, said, idle

        echo, said, idle = await trio.to_thread.run_sync(runs)
        (row,) = echo["data"]["rows"]
        assert row["messages"] > 0 and not row["errors"]
        assert not echo["data"]["profile"]  # not our process to sample
        (broadcast,) = said["data"]["rows"]
        assert [say["received"] for say in broadcast["says"]] == [50, 50]
        (summary,) = idle["data"]["summary"]
        assert summary["held"] == 200
        # The running server was measured, not stopped: it still serves.
        assert server.process.returncode is None
        async with open_client(url) as (_, welcome):
            assert welcome is not None
