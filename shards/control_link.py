"""The shard's end of the control channel to its supervisor (``core.control`` frames).

Frames out are written in order without blocking: at once when nothing is queued (one
nonblocking ``send``), else queued and written by one task. The queue is bounded in bytes
(``OUT_BUDGET``, 64 MiB): past it - a supervisor that stopped reading - a checkpoint is
skipped (the next one supersedes it; counted) rather than growing the shard's memory;
other frames are always queued. ``drained`` tells whether everything sent so far is in
the kernel's socket buffer (then the supervisor gets it even if this process dies now):
the durable session journal relies on it. Frames in are decoded by
``core.control.FrameReader``; a frame it skips (too big, undecodable) is logged and counted,
never fatal. When the channel closes, the supervisor is gone: ``on_lost`` runs once.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable

import trio

from core.control import Checkpoint, ControlMessage, FrameReader, encode_frame
from shards import stats
from shards.log import log

OUT_BUDGET = 64 * 1024 * 1024


class ControlLink:
    def __init__(self, sock: socket.socket, shard_index: int) -> None:
        sock.setblocking(False)
        self._raw = sock
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.shard_index = shard_index
        self._send, self._recv = trio.open_memory_channel[bytes](math.inf)
        self._queued_bytes = 0
        self._queued = 0
        self._sent = 0
        self._flushed = trio.Event()

    def send(self, message: ControlMessage) -> None:
        """Queue one frame for the supervisor (never blocks)."""
        if self._queued_bytes > OUT_BUDGET and isinstance(message, Checkpoint):
            stats.count("checkpoint_skipped")
            return
        try:
            frame = encode_frame(message)
        except Exception as exc:  # noqa: BLE001 - an unencodable frame must not kill the shard
            stats.count("control_frame_dropped")
            log("control_frame_dropped", shard=self.shard_index, error=repr(exc)[:200])
            return
        self.send_frame(frame)

    def send_frame(self, frame: bytes) -> None:
        """An encoded frame, in order after everything sent before it."""
        if self._queued == self._sent:  # the writer is idle: try the kernel now
            try:
                sent = self._raw.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the channel is gone: the reader notices and drains the shard
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._queued_bytes += len(frame)
        self._queued += 1
        self._send.send_nowait(frame)

    @property
    def drained(self) -> bool:
        """Everything sent so far has reached the kernel (nothing waits in the queue)."""
        return self._queued == self._sent

    async def writer(self) -> None:
        async for frame in self._recv:
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._queued_bytes -= len(frame)
            self._sent += 1
            self._flushed.set()

    async def flushed(self, timeout: float) -> None:
        """Wait (bounded) until every frame queued so far is on the wire - e.g. ``Drained``
        before the process ends: an idle writer takes a frame at once, so wait for its
        count of frames sent, not for an empty queue."""
        with trio.move_on_after(timeout):
            while self._sent < self._queued:
                self._flushed = trio.Event()
                await self._flushed.wait()

    async def reader(
        self, dispatch: Callable[[ControlMessage], None], on_lost: Callable[[], None]
    ) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    break
                for message in reader.feed(data):
                    dispatch(message)
                for why in reader.skipped:
                    stats.count("control_frame_skipped")
                    log("control_frame_skipped", shard=self.shard_index, reason=why)
                reader.skipped.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log("control_error", shard=self.shard_index, error=repr(exc))
        log("supervisor_lost", shard=self.shard_index)
        on_lost()
