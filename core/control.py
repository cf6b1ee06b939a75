"""The control channel between the supervisor and its shards.

One Unix socketpair per shard carries length-prefixed (4-byte big-endian) msgspec
msgpack frames, each one member of the ``ControlMessage`` tagged union.
``FrameReader`` is the sans-I/O decoder: feed it bytes, get messages.
"""

from __future__ import annotations

import struct

import msgspec

from core.protocol import Said, UserLeft

MAX_FRAME = 64 * 1024 * 1024  # a hand-off of a big shard's sessions fits; garbage does not
_LEN = struct.Struct(">I")


class _Control(msgspec.Struct, tag_field="kind", kw_only=True):
    pass


class Ready(_Control, tag="ready", kw_only=True):
    """Shard -> supervisor: listening and serving."""

    shard: int
    pid: int
    generation: int


class Broadcast(_Control, tag="broadcast", kw_only=True):
    """A stream message for every session on every shard; ``origin`` already delivered it."""

    origin: int
    message: Said | UserLeft


class Drain(_Control, tag="drain", kw_only=True):
    """Supervisor -> shard: stop accepting, tell clients, close 1012, exit."""

    reason: str
    reconnect_after_ms: int
    timeout: float


class Drained(_Control, tag="drained", kw_only=True):
    """Shard -> supervisor: every connection is closed (``forced`` of them by the deadline)."""

    shard: int
    closed: int
    forced: int


ControlMessage = Ready | Broadcast | Drain | Drained

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


class ControlFrameError(Exception):
    """The peer sent something that is not a control frame; the channel is unusable."""


def encode_frame(message: ControlMessage) -> bytes:
    payload = _encoder.encode(message)
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Reassembles control frames from a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ControlMessage]:
        self._buf += data
        out: list[ControlMessage] = []
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ControlFrameError(f"control frame of {size} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < 4 + size:
                break
            payload = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                out.append(_decoder.decode(payload))
            except msgspec.DecodeError as exc:
                raise ControlFrameError(str(exc)) from None
        return out
