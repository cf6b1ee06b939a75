"""The supervisor <-> shard control channel: length-prefixed msgpack frames."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.control import (
    MAX_FRAME,
    Broadcast,
    ControlFrameError,
    Drain,
    Drained,
    FrameReader,
    Ready,
    encode_frame,
)
from core.protocol import Said, UserLeft

MESSAGES = [
    Ready(shard=0, pid=4242, generation=1),
    Ready(shard=7, pid=2**31 - 1, generation=0),
    Broadcast(origin=2, message=Said(from_="a1b2", text="hello ✓")),
    Broadcast(origin=0, message=Said(from_="a1b2", text="x" * 100_000)),
    Broadcast(origin=5, message=UserLeft(session="a1b2", reason="graceful")),
    Drain(reason="rolling restart", reconnect_after_ms=1000, timeout=2.5),
    Drain(reason="", reconnect_after_ms=0, timeout=0.0),
    Drained(shard=3, closed=10_000, forced=2),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_each_control_message_round_trips_through_one_frame(message: object) -> None:
    assert FrameReader().feed(encode_frame(message)) == [message]


def test_frame_is_a_4_byte_big_endian_length_then_the_msgpack_payload() -> None:
    message = Ready(shard=1, pid=2, generation=3)
    frame = encode_frame(message)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == {
        "kind": "ready",
        "shard": 1,
        "pid": 2,
        "generation": 3,
    }


def test_many_frames_in_one_feed_come_out_in_order() -> None:
    assert FrameReader().feed(b"".join(encode_frame(m) for m in MESSAGES)) == MESSAGES


def test_feeding_byte_by_byte_gives_the_same_messages() -> None:
    reader = FrameReader()
    data = b"".join(encode_frame(m) for m in MESSAGES if len(encode_frame(m)) < 1000)
    out = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i : i + 1]))
    assert out == [m for m in MESSAGES if len(encode_frame(m)) < 1000]


def test_a_partial_frame_yields_nothing_until_it_completes() -> None:
    frame = encode_frame(Drained(shard=1, closed=2, forced=0))
    reader = FrameReader()
    assert reader.feed(frame[:2]) == []
    assert reader.feed(frame[2:-1]) == []
    assert reader.feed(frame[-1:]) == [Drained(shard=1, closed=2, forced=0)]
    assert reader.feed(b"") == []


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    indices=st.lists(st.integers(0, len(MESSAGES) - 1), max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_any_chunking_of_the_stream_gives_the_same_messages(
    indices: list[int], cuts: list[int]
) -> None:
    messages = [MESSAGES[i] for i in indices]
    data = b"".join(encode_frame(m) for m in messages)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    reader = FrameReader()
    out = []
    for start, end in zip(points, points[1:], strict=False):
        out.extend(reader.feed(data[start:end]))
    assert out == messages


def test_length_prefix_over_max_frame_raises_before_the_payload_arrives() -> None:
    with pytest.raises(ControlFrameError, match="exceeds"):
        FrameReader().feed(struct.pack(">I", MAX_FRAME + 1))


def test_garbage_length_prefix_raises() -> None:
    with pytest.raises(ControlFrameError):
        FrameReader().feed(b"GET / HTTP/1.1\r\n")


def test_length_prefix_of_exactly_max_frame_waits_for_the_payload() -> None:
    assert FrameReader().feed(struct.pack(">I", MAX_FRAME)) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x82\xa4kind",  # truncated map
        msgspec.msgpack.encode(42),
        msgspec.msgpack.encode({"kind": "nope"}),
        msgspec.msgpack.encode({"kind": "ready", "shard": 1}),  # missing fields
        msgspec.msgpack.encode({"kind": "ready", "shard": "1", "pid": 2, "generation": 3}),
        msgspec.msgpack.encode({"kind": "broadcast", "origin": 1, "message": {"type": "echo"}}),
    ],
)
def test_garbage_payload_raises_control_frame_error(payload: bytes) -> None:
    with pytest.raises(ControlFrameError):
        FrameReader().feed(struct.pack(">I", len(payload)) + payload)
