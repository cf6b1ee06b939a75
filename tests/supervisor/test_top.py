"""``python -m supervisor top``: the frame drawn from history samples, and the live view
in a real terminal (a pseudo-terminal) against a real supervisor."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from lab.server import ROOT, open_server
from supervisor import top
from supervisor.top import MARKERS_SHOWN, RING_SAMPLES, Seen, progress_bar, render, sparkline

T0 = 1_700_000_000.0


def sample(
    t: float,
    players: dict[int, int] | None = None,
    rates: dict[str, float] | None = None,
    roll: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A history sample as ``DashboardFeed.sample`` makes it (see ``core.history``)."""
    players = {0: 3, 1: 5} if players is None else players
    return {
        "t": t,
        "shards": {
            str(slot): {
                "players": n,
                "sessions": n + 1,
                "away": 1,
                "rooms": slot,
                "state": "ready",
                "pid": 4000 + slot,
                "gc_p99_ms": 0.5 if slot == 0 else None,
            }
            for slot, n in players.items()
        },
        "players": sum(players.values()),
        "away": 2,
        "rates": rates or {},
        "roll": roll,
        "cluster": cluster,
    }


def seen_of(*samples: dict[str, Any], markers: list[dict[str, Any]] | None = None) -> Seen:
    seen = Seen(pid=1234)
    seen.take({"samples": list(samples), "markers": markers or []})
    return seen


def row(lines: list[str], slot: int) -> str:
    """The shard table's row of ``slot``."""
    found = [line for line in lines if re.match(rf"\s*{slot}\s+{4000 + slot}\s", line)]
    assert len(found) == 1, lines
    return found[0]


# ====================================================================== pieces
def test_sparkline_scales_zero_to_lowest_and_top_to_highest_block() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([0, 7], 8, top=14) == "▁▅"  # a shared scale: 7 of 14 is half way
    assert sparkline([3, 3, 3], 8) == "███"


def test_sparkline_keeps_the_newest_values_and_shows_gaps_and_idle_series() -> None:
    assert sparkline(list(range(100)), 10) == sparkline(list(range(90, 100)), 10)
    assert len(sparkline(list(range(100)), 10)) == 10
    assert sparkline([0, 0, 0], 5) == "▁▁▁"
    assert sparkline([None, 4, None, 8], 5) == " ▅ █"
    assert sparkline([1, 2], 0) == ""


def test_progress_bar_fills_done_of_steps() -> None:
    assert progress_bar(1, 4, 8) == "██░░░░░░"
    assert progress_bar(4, 4, 8) == "████████"
    assert progress_bar(0, 0, 4) == "░░░░"
    assert progress_bar(9, 4, 4) == "████"


def test_seen_keeps_newer_samples_once_and_each_marker_once_in_a_bounded_ring() -> None:
    seen = Seen()
    crash = {"t": T0 + 0.5, "kind": "shard_crash", "shard": 1, "signal": "SIGKILL"}
    seen.take({"samples": [sample(T0), sample(T0 + 1)], "markers": [crash]})
    # The next poll's answer repeats the marker (no newer sample had arrived) and, from a
    # lagging answer, the last sample: both are kept once.
    seen.take({"samples": [sample(T0 + 1), sample(T0 + 2)], "markers": [crash]})
    assert [s["t"] for s in seen.samples] == [T0, T0 + 1, T0 + 2]
    assert list(seen.markers) == [crash]
    assert seen.since == T0 + 2
    seen.take({"samples": [sample(T0 + 3 + i) for i in range(3 * RING_SAMPLES)]})
    assert len(seen.samples) == RING_SAMPLES
    assert seen.since == T0 + 2 + 3 * RING_SAMPLES


# ====================================================================== the frame
def test_frame_has_a_header_and_a_row_per_shard_with_a_players_sparkline() -> None:
    history = [sample(T0 + i, players={0: i, 1: 7}) for i in range(8)]
    lines = render(seen_of(*history), 140, 50)
    assert lines[0].startswith("supervisor pid 1234 · players 14 · away 2 · roll: none")
    first = row(lines, 0).split()
    assert first[:7] == ["0", "4000", "ready", "7", "8", "0", "0.50"]
    assert first[7] == "▁▂▃▄▅▆▇█"  # shard 0 grew from 0 to 7 players
    second = row(lines, 1).split()
    assert second[:7] == ["1", "4001", "ready", "7", "8", "1", "-"]
    assert second[7] == "████████"  # one scale for all shards: shard 1 was full all along
    assert all(len(line) <= 140 for line in lines)


def test_a_shard_missing_from_older_samples_leaves_a_gap_in_its_sparkline() -> None:
    history = [sample(T0, players={0: 2}), sample(T0 + 1, players={0: 2, 1: 2})]
    assert row(render(seen_of(*history), 140, 50), 1).split()[-1] == "█"
    assert row(render(seen_of(*history), 140, 50), 1).endswith(" █")


def test_rates_show_every_disconnect_kind_resume_result_and_messages() -> None:
    rates = {
        "disconnect|abnormal": 2.5,
        "resume|ok": 1.0,
        "resume|token_reused": 0.5,
        "messages_in": 120.0,
        "messages_out": 480.0,
    }
    lines = render(seen_of(sample(T0), sample(T0 + 1, rates=rates)), 160, 60)
    text = "\n".join(lines)
    for kind in top.DISCONNECT_KINDS:
        assert re.search(rf"^\s+{kind}\s+[\d.]+ ", text, re.M), kind
    assert re.search(r"abnormal\s+2\.5 ▁█", text)
    assert re.search(r"\bok\s+1\.0 ▁█", text)
    assert re.search(r"token_reused\s+0\.5 ", text)  # a result not listed beforehand
    assert re.search(r"\bin\s+120\.0 ", text) and re.search(r"\bout\s+480\.0 ", text)
    assert "disconnects/s" in text and "resumes/s" in text and "messages/s" in text


def test_roll_in_progress_draws_a_bar_with_the_draining_shard_and_players_back() -> None:
    roll = {"steps": 4, "done": 1, "shard": 2, "moved": 5, "back": 3}
    lines = render(seen_of(sample(T0, roll=roll)), 120, 50)
    assert "rolling 1/4" in lines[0]
    (bar,) = [line for line in lines if line.startswith("roll [")]
    filled = re.match(r"roll \[(█*)(░*)\]", bar)
    assert filled is not None and len(filled[1]) * 3 == len(filled[2])  # a quarter done
    assert "1/4 replaced" in bar and "draining shard 2" in bar and "back 3/5 moved" in bar
    assert not [line for line in render(seen_of(sample(T0)), 120, 50) if line.startswith("roll")]


def test_cluster_mode_adds_the_nodes_table_and_redis_reachability() -> None:
    cluster = {
        "node": "alpha",
        "reachable": True,
        "rtt_ms": 0.42,
        "lease_s": 4.5,
        "fenced": False,
        "nodes": [
            {"node": "alpha", "alive": True, "lease_ms": 4500, "rooms": 3, "players": 8},
            {"node": "beta-long-name", "alive": False, "lease_ms": 0, "rooms": 0, "players": 0},
        ],
    }
    lines = render(seen_of(sample(T0, cluster=cluster)), 120, 50)
    text = "\n".join(lines)
    assert "cluster node alpha · redis reachable, rtt 0.42 ms · lease 4.5 s" in text
    assert re.search(r"^node\s+alive\s+lease ms\s+rooms\s+players$", text, re.M)
    assert re.search(r"^alpha\s+yes\s+4500\s+3\s+8$", text, re.M)
    assert re.search(r"^beta-long-name\s+no\s+0\s+0\s+0$", text, re.M)
    unreachable = {**cluster, "reachable": False, "rtt_ms": None}
    assert "redis UNREACHABLE, rtt -" in "\n".join(
        render(seen_of(sample(T0, cluster=unreachable)), 120, 50)
    )
    assert "cluster" not in "\n".join(render(seen_of(sample(T0)), 120, 50))


def test_the_last_markers_are_listed_with_time_kind_shard_and_detail() -> None:
    markers = [{"t": T0 + i, "kind": "shard_respawn", "shard": 0, "pid": 100 + i} for i in range(8)]
    markers.append({"t": T0 + 9, "kind": "roll_start", "shard": None, "shards": 2})
    lines = render(seen_of(sample(T0 + 10), markers=markers), 120, 60)
    start = lines.index("markers")
    listed = lines[start + 1 :]
    assert len(listed) == MARKERS_SHOWN
    assert listed[-1].split() == [top._clock(T0 + 9), "roll_start", "shards=2"]
    assert listed[-2].split() == [top._clock(T0 + 7), "shard_respawn", "shard", "0", "pid=107"]


def test_a_narrow_short_terminal_gets_whole_rows_cut_to_fit() -> None:
    history = [sample(T0 + i, rates={"messages_in": i}) for i in range(5)]
    markers = [{"t": T0, "kind": "shard_crash", "shard": 1, "signal": "SIGKILL"}]
    lines = render(seen_of(*history, markers=markers), 40, 12)
    assert len(lines) <= 12
    assert all(len(line) <= 40 for line in lines)
    assert lines[0] == "supervisor pid 1234 · players 8 · away 2"  # whole parts only
    assert row(lines, 0).split()[:3] == ["0", "4000", "ready"]
    assert not any(ch in line for line in lines for ch in top.SPARKS[1:])  # no room: none
    # Taller, the stacked rate sections and then the markers come into view.
    tall = render(seen_of(*history, markers=markers), 40, 60)
    assert "resumes/s" in "\n".join(tall) and "markers" in tall
    assert all(len(line) <= 40 for line in tall)


def test_no_samples_yet_and_a_lost_supervisor_are_said() -> None:
    seen = Seen(pid=99)
    assert render(seen, 80, 24)[-1].startswith("no samples yet")
    seen = seen_of(sample(T0))
    seen.error = "no answer from /tmp/x.sock: refused (retrying)"
    lines = render(seen, 80, 24)
    assert lines[1] == "! no answer from /tmp/x.sock: refused (retrying)"
    assert row(lines, 0)  # the last data seen stays on screen


def test_no_supervisor_is_one_line_on_stderr_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "nobody.sock")
    assert top.main(["--control-socket", path, "--once"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"no supervisor answers on {path}: ") and err.count("\n") == 1


# ====================================================================== a real terminal
SHOW_CURSOR = b"\x1b[?25h"
HIDE_CURSOR = b"\x1b[?25l"


async def read_until(master: int, output: bytearray, done: Callable[[bytes], bool]) -> None:
    """Read the pseudo-terminal into ``output`` until ``done(output)`` or its end."""
    while not done(bytes(output)):
        await trio.lowlevel.wait_readable(master)
        try:
            chunk = os.read(master, 65536)
        except OSError as exc:  # EIO: every process holding the terminal has closed it
            if exc.errno != errno.EIO:
                raise
            return
        if not chunk:
            return
        output += chunk


async def top_in_a_terminal(
    cmd: list[str], drawn: Callable[[bytes], bool], stop: Callable[[trio.Process, int], None]
) -> tuple[int, bytes]:
    """Run ``cmd`` on a new 120x40 pseudo-terminal until ``drawn(output)``, then
    ``stop(process, master)``; (its exit code, everything it wrote)."""
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    os.set_blocking(master, False)
    try:
        process = await trio.lowlevel.open_process(
            cmd, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT
        )
    finally:
        os.close(terminal)
    output = bytearray()
    try:
        with trio.fail_after(10):
            await read_until(master, output, drawn)
        stop(process, master)
        with trio.fail_after(5):
            await read_until(master, output, lambda out: False)  # to its last byte
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)
    return code, bytes(output)


@pytest.mark.timeout(30)
async def test_top_in_a_terminal_draws_both_shards_and_restores_the_cursor_on_ctrl_c() -> None:
    async with open_server(shards=2) as server:
        pids = server.shard_pids()
        rows = [re.compile(rf"\b{slot}\s+{pids[slot]}\s+ready\b".encode()) for slot in (0, 1)]

        def drawn(out: bytes) -> bool:
            return all(r.search(out) for r in rows)

        cmd = [sys.executable, "-m", "supervisor", "top"]
        cmd += ["--control-socket", server.control_socket]
        code, output = await top_in_a_terminal(
            cmd, drawn, lambda process, master: process.send_signal(signal.SIGINT)
        )
        text = output.decode(errors="replace")
        assert code == 0, text[-2000:]
        assert "Traceback" not in text
        assert HIDE_CURSOR in output  # hidden while drawing...
        assert output.rfind(SHOW_CURSOR) > output.rfind(HIDE_CURSOR)  # ...and shown at the end
        # q quits the same way.
        code, output = await top_in_a_terminal(
            cmd, drawn, lambda process, master: os.write(master, b"q")
        )
        assert code == 0 and b"Traceback" not in output
        assert output.rfind(SHOW_CURSOR) > output.rfind(HIDE_CURSOR)
        # Piped (not a terminal): one frame, no escapes, exit 0.
        piped = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, cwd=ROOT)
        frame = piped.stdout.decode()
        assert "\x1b" not in frame and drawn(piped.stdout), frame
        assert frame.startswith(f"supervisor pid {server.pid} · players 0 · away 0")
