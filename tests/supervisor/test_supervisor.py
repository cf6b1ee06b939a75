"""The real ``python -m supervisor``: shards, cross-shard broadcast, respawn, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from lab.procfs import pid_alive
from lab.server import ROOT, open_server
from tests.support import open_client, receive_until

pytestmark = pytest.mark.timeout(120)


async def _clients_on_distinct_shards(
    stack: AsyncExitStack, url: str, want: int, limit: int = 200
) -> dict[int, tuple[WebSocketConnection, dict[str, Any]]]:
    """Open connections until ``want`` different shards have answered (bounded by ``limit``)."""
    by_shard: dict[int, tuple[WebSocketConnection, dict[str, Any]]] = {}
    for _ in range(limit):
        ws, welcome = await stack.enter_async_context(open_client(url))
        assert welcome is not None
        by_shard.setdefault(welcome["shard"], (ws, welcome))
        if len(by_shard) >= want:
            return by_shard
    raise AssertionError(f"only shards {sorted(by_shard)} answered {limit} connections")


async def test_say_reaches_clients_on_other_shards() -> None:
    async with open_server(shards=4) as server, AsyncExitStack() as stack:
        clients = await _clients_on_distinct_shards(stack, server.url(), want=2)
        (ws_a, welcome_a), (ws_b, _) = list(clients.values())[:2]
        await ws_a.send_message(json.dumps({"type": "say", "text": "across"}))
        for ws in (ws_a, ws_b):
            said = await receive_until(ws, "said")
            assert said["from"] == welcome_a["session"] and said["text"] == "across"
        # user_left crosses shards too.
        await ws_a.aclose()
        left = await receive_until(ws_b, "user_left")
        assert left["session"] == welcome_a["session"] and left["reason"] == "graceful"


async def test_killed_shard_is_respawned_and_other_clients_are_untouched() -> None:
    async with open_server(shards=4) as server, AsyncExitStack() as stack:
        clients = await _clients_on_distinct_shards(stack, server.url(), want=2)
        (victim_shard, (victim_ws, _)), (other_shard, (other_ws, other_welcome)) = list(
            clients.items()
        )[:2]
        old_pid = server.shard_pids()[victim_shard]
        mark = len(server.log.lines)
        os.kill(old_pid, signal.SIGKILL)
        exit_line = await server.log.wait_for("shard_exit", shard=victim_shard, after=mark)
        assert exit_line["signal"] == "SIGKILL"
        ready = await server.log.wait_for("shard_ready", shard=victim_shard, after=mark)
        assert int(ready["pid"]) != old_pid
        # The victim's client lost its TCP connection...
        with pytest.raises(ConnectionClosed):
            with trio.fail_after(10):
                while True:
                    await victim_ws.get_message()
        # ...the other shard's client never noticed.
        await other_ws.send_message(json.dumps({"type": "echo", "data": "fine"}))
        assert (await receive_until(other_ws, "echo"))["data"] == "fine"
        assert not server.log.events("disconnect", session=other_welcome["session"])
        # And the new shard serves: keep connecting until it answers.
        await _clients_on_distinct_shards(stack, server.url(), want=4)
        assert server.shard_pids()[other_shard] == int(
            server.log.events("shard_ready", shard=other_shard)[0]["pid"]
        )


async def test_sigterm_sends_server_shutdown_and_1012_then_exits_0_leaving_no_process() -> None:
    async with open_server("--drain-timeout", "5", shards=4) as server, AsyncExitStack() as stack:
        clients = []
        for _ in range(12):
            clients.append(await stack.enter_async_context(open_client(server.url())))
        pids = server.all_pids()
        server.signal(signal.SIGTERM)
        for ws, _ in clients:
            shutdown = await receive_until(ws, "server_shutdown")
            assert shutdown["reconnect_after_ms"] >= 1000
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(10):
                    await ws.get_message()
            assert info.value.reason.code == 1012
        with trio.fail_after(5 + 10):
            code = await server.process.wait()
        assert code == 0
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert len(server.log.events("disconnect", kind="shutdown", code=1012)) == 12


async def test_sigint_is_a_graceful_shutdown_too() -> None:
    async with open_server(shards=2) as server, open_client(server.url()) as (ws, _):
        server.signal(signal.SIGINT)
        await receive_until(ws, "server_shutdown")
        with trio.fail_after(15):
            assert await server.process.wait() == 0


async def test_shards_exit_when_the_supervisor_is_killed() -> None:
    async with open_server("--drain-timeout", "2", shards=3) as server:
        async with open_client(server.url()) as (ws, _):
            shard_pids = set(server.shard_pids().values())
            server.signal(signal.SIGKILL)
            # Control-channel EOF: each shard drains its clients and exits.
            shutdown = await receive_until(ws, "server_shutdown")
            assert shutdown["reason"] == "supervisor lost"
        with trio.fail_after(2 + 10):
            while any(pid_alive(pid) for pid in shard_pids):
                await trio.sleep(0.05)


async def test_unloadable_app_stops_the_supervisor_with_exit_1() -> None:
    async with open_server("--app", "no_such_module:App", shards=2, ready=False) as server:
        with trio.fail_after(30):
            code = await server.process.wait()
        assert code == 1
        assert server.log.events("app_load_failed")
        assert server.log.events("startup_failed")


def test_help_documents_heartbeat_presets_and_signals() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    out = " ".join(out.split())
    for text in ("short 5s/15s", "medium 30s/60s", "long 300s/600s", "SIGTERM", "1012"):
        assert text in out
