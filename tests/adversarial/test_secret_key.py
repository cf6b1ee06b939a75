"""The resume-token key: read once by the supervisor, handed to every shard through an
inherited fd, and refused when the file could have been read or planted by someone else.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from client import Connected, Resumed, SessionLost, open_reconnecting_client
from core.tokens import load_or_create_secret
from lab.server import ServerProcess, open_server
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(120)

ROLL_ARGS = (
    "--reconnect-after-ms",
    "100",
    "--reconnect-window-ms",
    "500",
    "--drain-timeout",
    "10",
)
PLAYERS = 6


async def test_a_rolling_restart_after_the_key_file_is_deleted_resumes_every_player(
    tmp_path: Path,
) -> None:
    key = tmp_path / "secret"
    async with open_server("--secret-file", str(key), *ROLL_ARGS, shards=2) as server:
        assert key.exists()
        # One player is away through the whole roll: its token was signed before the roll
        # and is verified after it, by a shard that did not exist when it was issued.
        away, away_welcome = await welcomed(server)
        away.vanish()
        await server.log.wait_for("disconnect", session=away_welcome["session"])

        events: list[list[object]] = [[] for _ in range(PLAYERS)]
        connected = [trio.Event() for _ in range(PLAYERS)]
        resumed = [trio.Event() for _ in range(PLAYERS)]

        async def player(i: int) -> None:
            async with open_reconnecting_client(server.url()) as client:
                async for event in client.events():
                    events[i].append(event)
                    if isinstance(event, Connected):
                        connected[i].set()
                    elif isinstance(event, Resumed | SessionLost):
                        resumed[i].set()
                        return

        async with trio.open_nursery() as nursery:
            for i in range(PLAYERS):
                nursery.start_soon(player, i)
            with trio.fail_after(20):
                for event in connected:
                    await event.wait()
            before = server.shard_pids()

            key.unlink()  # an operator's cleanup, a tmp reaper, a bad deploy script
            mark = len(server.log.lines)
            server.signal(signal.SIGHUP)
            await server.log.wait_for("roll_done", after=mark, timeout=60)
            with trio.fail_after(30):
                for event in resumed:
                    await event.wait()

        after = server.shard_pids()
        assert set(before.values()).isdisjoint(after.values()), "every shard was replaced"
        for i, seen in enumerate(events):
            first = seen[0]
            assert isinstance(first, Connected)
            last = seen[-1]
            assert isinstance(last, Resumed), f"player {i}: {seen}"
            assert last.welcome["session"] == first.welcome["session"]
        back, again = await welcomed(server, resume_path(away_welcome, 0))
        assert again["resumed"] is True, again
        assert again["session"] == away_welcome["session"]
        assert not server.log.events("resume_failed")
        assert not key.exists(), "a shard recreated the key file: it must never open it"
        await back.close()


async def refused(server: ServerProcess) -> tuple[int, str]:
    """The supervisor's exit code and its plain (non-logfmt) stderr line."""
    with trio.fail_after(20):
        code = await server.process.wait()
        await server.log.wait_for("secret_refused")
    plain = [raw for raw in server.log.raw if raw.startswith("python -m supervisor:")]
    assert len(plain) == 1, server.log.raw
    return code, plain[0]


def private_key(path: Path) -> bytes:
    return load_or_create_secret(path)  # created 0600, ours


@pytest.mark.parametrize(
    ("mode", "what"),
    [(0o640, "group-readable"), (0o604, "world-readable"), (0o666, "world-writable (planted)")],
)
async def test_a_key_file_open_to_others_stops_the_supervisor_with_exit_2(
    tmp_path: Path, mode: int, what: str
) -> None:
    key = tmp_path / "secret"
    content = private_key(key)
    key.chmod(mode)
    async with open_server("--secret-file", str(key), ready=False) as server:
        code, line = await refused(server)
    assert code == 2, what
    assert str(key) in line and f"mode {mode:04o}" in line
    assert f"fix: chmod 600 {key}" in line
    assert not server.log.events("shard_spawn")  # no shard ever saw the key
    assert key.stat().st_mode & 0o777 == mode
    key.chmod(0o600)
    assert load_or_create_secret(key) == content  # untouched


async def test_a_symlinked_key_file_stops_the_supervisor_with_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    private_key(target)
    key = tmp_path / "secret"
    key.symlink_to(target)
    async with open_server("--secret-file", str(key), ready=False) as server:
        code, line = await refused(server)
    assert code == 2
    assert str(key) in line and "symbolic link" in line and "fix:" in line
    assert not server.log.events("shard_spawn")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
async def test_a_key_file_owned_by_another_user_stops_the_supervisor_with_exit_2(
    tmp_path: Path,
) -> None:
    key = tmp_path / "secret"
    private_key(key)
    os.chown(key, 65534, 65534)  # nobody
    async with open_server("--secret-file", str(key), ready=False) as server:
        code, line = await refused(server)
    assert code == 2
    assert str(key) in line and "owned by uid 65534" in line and "fix:" in line
    assert not server.log.events("shard_spawn")
