"""A TCP proxy that can cut every connection through it at once, like a network dropping.

``cut()`` resets both sides (SO_LINGER 0): bytes in flight are lost, neither end gets a
close frame - what a phone switching from Wi-Fi to 4G looks like to client and server.
``blackhole(True)`` is a partition instead: connections stay open but nothing crosses
(bytes are held, as TCP retransmits them; new connections are accepted and not connected
onward) until ``blackhole(False)``; neither end is told anything, as with a pulled cable.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def _reset(stream: trio.SocketStream) -> None:
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


async def serve_on_a_free_port(
    owner: Any,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    task_status: trio.TaskStatus[int],
) -> None:
    """Listen on a free port of 127.0.0.1 (set as ``owner.port`` and reported started),
    and serve each connection with ``handle`` until cancelled."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    owner.port = listeners[0].socket.getsockname()[1]
    task_status.started(owner.port)
    await trio.serve_listeners(handle, listeners)


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` kills all current connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self.blackholed = False
        self._healed = trio.Event()
        self._pairs: set[tuple[trio.SocketStream, trio.SocketStream]] = set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_a_free_port(self, self._handle, task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        while self.blackholed:
            await self._healed.wait()
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            _reset(client)
            return
        pair = (client, upstream)
        self._pairs.add(pair)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        finally:
            self._pairs.discard(pair)
            for stream in pair:
                _reset(stream)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in src:
                while self.blackholed:
                    await self._healed.wait()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def blackhole(self, on: bool) -> None:
        """Partition (``True``) or heal (``False``) every connection through the proxy."""
        self.blackholed = on
        if on:
            self._healed = trio.Event()
        else:
            self._healed.set()

    def cut(self) -> int:
        """Reset every connection through the proxy; returns how many were cut."""
        pairs = list(self._pairs)
        for a, b in pairs:
            _reset(a)
            _reset(b)
        self.cuts += 1
        return len(pairs)
