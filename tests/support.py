"""Test support beyond the lab kit: trio-websocket clients, a welcomed raw client, a bystander.

The server tree (``lab.server.open_server``), its log waits and the raw-socket client
(``lab.rawws.RawClient``) come from the kit. Waiting is always on a log line or a
socket, never on a bare sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from lab.rawws import RawClient
from lab.server import ServerProcess


@asynccontextmanager
async def open_client(
    url: str, *, welcome: bool = True, subprotocols: list[str] | None = None
) -> AsyncIterator[tuple[WebSocketConnection, dict[str, Any] | None]]:
    async with open_websocket_url(url, subprotocols=subprotocols, connect_timeout=10) as ws:
        first = None
        if welcome:
            with trio.fail_after(10):
                first = json.loads(await ws.get_message())
            assert first["type"] == "welcome", first
        yield ws, first


async def receive_json(ws: WebSocketConnection, timeout: float = 10.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def receive_until(
    ws: WebSocketConnection, type_: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Skip other messages (e.g. said/user_left of other tests' clients) until ``type_``."""
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == type_:
                return message


async def welcomed(server: ServerProcess, path: str = "/") -> tuple[RawClient, dict[str, Any]]:
    """A new connection to ``path`` and its welcome (asserted to be one)."""
    client = await RawClient.connect(server.port, path)
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client, welcome


def resume_path(welcome: dict[str, Any], last_seq: int, path: str = "/") -> str:
    return f"{path}?resume={welcome['token']}&last_seq={last_seq}"


@asynccontextmanager
async def bystander(port: int, path: str = "/", every: float = 0.05) -> AsyncIterator[list[float]]:
    """A well-behaved player on the same server that echoes every ``every`` seconds while
    the block runs; each round trip must come back within 5 s. Yields the round trips;
    on exit asserts there were some and the connection stayed open throughout."""
    client, _ = await RawClient.open(port, path)
    rtts: list[float] = []

    async def loop() -> None:
        n = 0
        while True:
            n += 1
            started = trio.current_time()
            await client.echo(f"bystander-{n}")
            rtts.append(trio.current_time() - started)
            await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield rtts
        nursery.cancel_scope.cancel()
    assert rtts, "the bystander never got an echo back"
    await client.echo("still here")
    await client.aclose()
