"""A stream wrapper that reports every inbound byte to the heartbeat wheel.

Any inbound frame - data, pong, ping, close - counts as "alive"; observing bytes below
trio-websocket sees all of them, pongs included, and costs one store per read.
"""

from __future__ import annotations

import trio

from core.heartbeat_wheel import HeartbeatWheel


class ActivityStream(trio.abc.HalfCloseableStream):
    """Wraps a ``trio.SocketStream``; ``slot`` is -1 until the handshake is done."""

    __slots__ = ("stream", "wheel", "slot")

    def __init__(self, stream: trio.SocketStream, wheel: HeartbeatWheel) -> None:
        self.stream = stream
        self.wheel = wheel
        self.slot = -1

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        if self.slot >= 0:
            self.wheel.touch(self.slot, trio.current_time())
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def abort(self) -> None:
        """Drop the TCP connection now, without awaiting (wakes the blocked reader/writer)."""
        self.stream.socket.close()
