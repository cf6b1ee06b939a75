"""The supervisor <-> shard control channel: length-prefixed msgpack frames.

A frame over ``MAX_FRAME`` or one that does not decode is skipped (and described in
``FrameReader.skipped``), never a reason to drop the channel: the frames around it are read.
"""

from __future__ import annotations

import struct
import tracemalloc

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.control import (
    FRAME_BUDGET,
    MAX_FRAME,
    Adopt,
    Adopted,
    Broadcast,
    BroadcastGap,
    Checkpoint,
    Claim,
    ControlFrameError,
    Drain,
    Drained,
    Evacuate,
    Evacuated,
    Fetch,
    FrameReader,
    Handoff,
    Load,
    PassConnection,
    Ready,
    Release,
    RoomHosted,
    RoomReleased,
    SessionResumed,
    Surrender,
    encode_frame,
)
from core.protocol import Said, UserLeft, encode_body
from core.session import Session, SnapshotBatch, pack

SAID = encode_body(Said(from_="a1b2", text="hello ✓"))


def batch_of(n: int) -> SnapshotBatch:
    sessions = []
    for i in range(n):
        session = Session(f"{i:016x}", room="r1" if i % 2 else None, peer="192.0.2.1")
        session.record(SAID)  # shared by every session: once in the batch
        session.record(encode_body(Said(from_=f"{i:04x}", text="own")))
        sessions.append(session)
    (batch,) = pack(sessions, FRAME_BUDGET)
    return batch


BATCH = batch_of(3)

MESSAGES = [
    Ready(shard=0, pid=4242, generation=1),
    Ready(shard=7, pid=2**31 - 1, generation=0),
    Broadcast(origin=2, body=SAID),
    Broadcast(origin=0, body=encode_body(Said(from_="a1b2", text="x" * 100_000)), bseq=9),
    Broadcast(origin=5, body=encode_body(UserLeft(session="a1b2", reason="graceful")), bseq=2**40),
    BroadcastGap(first=10, last=20),
    Claim(shard=1, session="0123456789abcdef"),
    Release(shard=1, session="0123456789abcdef"),
    Fetch(request=3, shard=2, session="0123456789abcdef", epoch=4),
    Surrender(request=3, session="0123456789abcdef", epoch=4),
    Handoff(request=3, session="0123456789abcdef", batch=BATCH, applied_bseq=17),
    Handoff(request=4, session="0123456789abcdef", batch=None, error="expired"),
    Handoff(request=5, session="0123456789abcdef", batch=BATCH, recovered=True),
    Drain(reason="rolling restart", reconnect_after_ms=1000, timeout=2.5),
    Drain(reason="", reconnect_after_ms=0, timeout=0.0, evacuate=True, window_ms=5000),
    Drained(shard=3, closed=10_000, forced=2),
    Evacuate(shard=1, unit=0, room="r1", app_state=b"\x00state", batch=BATCH, applied_bseq=5),
    Evacuate(shard=1, unit=1, room=None, app_state=None, batch=BATCH, applied_bseq=5, final=False),
    Adopt(unit=0, room="r1", app_state=b"\x00state", batch=BATCH, applied_bseq=5),
    Adopt(unit=1, room=None, app_state=None, batch=batch_of(1), applied_bseq=0, final=False),
    Adopted(shard=2, unit=0),
    Evacuated(unit=0, ok=True),
    Evacuated(unit=1, ok=False),
    Checkpoint(shard=1, batch=BATCH),
    SessionResumed(shard=2, session="0123456789abcdef"),
    Load(shard=0, connections=10, sessions=12, rooms=1),
    Load(
        shard=1,
        connections=10,
        sessions=12,
        rooms=1,
        sessions_away=2,
        counters={"closes|code 1006": 3.0},
        gc_pause_buckets=[[1, 2], [0, 0]],
        gc_pause_sum=[0.5, 0.0],
    ),
    RoomHosted(shard=1, room="r1"),
    RoomReleased(shard=1, room="r1"),
]
SMALL = [m for m in MESSAGES if len(encode_frame(m)) < 1000]


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def feed_in_pieces(reader: FrameReader, data: bytes, points: list[int]) -> list[object]:
    cuts = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    out: list[object] = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        out.extend(reader.feed(data[start:end]))
    return out


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_each_control_message_round_trips_through_one_frame(message: object) -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame(message)) == [message]
    assert reader.skipped == []


def test_a_batch_in_a_frame_carries_a_shared_body_once() -> None:
    (got,) = FrameReader().feed(encode_frame(Checkpoint(shard=1, batch=batch_of(50))))
    assert len(got.batch.sessions) == 50
    assert got.batch.bodies.count(SAID) == 1


def test_pass_connection_round_trips_with_peer_and_head() -> None:
    note = PassConnection(
        room="r1",
        session=None,
        origin=2,
        peer="2001:db8::1",
        head=b"GET /rooms/r1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    data = msgspec.msgpack.encode(note)
    assert msgspec.msgpack.decode(data, type=PassConnection) == note
    old = msgspec.msgpack.encode({"room": None, "session": "s", "origin": 0})
    assert msgspec.msgpack.decode(old, type=PassConnection) == PassConnection(session="s", origin=0)


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


def test_broadcast_carries_the_body_as_bytes() -> None:
    frame = encode_frame(Broadcast(origin=2, body=SAID, bseq=7))
    assert msgspec.msgpack.decode(frame[4:]) == {
        "kind": "broadcast",
        "origin": 2,
        "body": SAID,
        "bseq": 7,
    }


def test_many_frames_in_one_feed_come_out_in_order() -> None:
    assert FrameReader().feed(b"".join(encode_frame(m) for m in MESSAGES)) == MESSAGES


def test_feeding_byte_by_byte_gives_the_same_messages() -> None:
    reader = FrameReader()
    data = b"".join(encode_frame(m) for m in SMALL)
    out = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i : i + 1]))
    assert out == SMALL


def test_a_partial_frame_yields_nothing_until_it_completes() -> None:
    frame = encode_frame(Drained(shard=1, closed=2, forced=0))
    reader = FrameReader()
    assert reader.feed(frame[:2]) == []
    assert reader.feed(frame[2:-1]) == []
    assert reader.feed(frame[-1:]) == [Drained(shard=1, closed=2, forced=0)]
    assert reader.feed(b"") == []


@settings(
    max_examples=100,
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
    assert feed_in_pieces(FrameReader(), data, cuts) == messages


# ------------------------------------------------------------------ sender's bound
def test_encode_frame_refuses_a_message_over_max_frame() -> None:
    message = Broadcast(origin=0, body=b"x" * (MAX_FRAME + 1))
    with pytest.raises(ControlFrameError, match="exceeds"):
        encode_frame(message)


def test_encode_frame_accepts_a_message_of_exactly_max_frame() -> None:
    overhead = len(encode_frame(Broadcast(origin=0, body=b"x" * 100_000))) - 4 - 100_000
    frame = encode_frame(Broadcast(origin=0, body=b"x" * (MAX_FRAME - overhead)))
    assert len(frame) == 4 + MAX_FRAME


# ------------------------------------------------------------------ skipping
GOOD_BEFORE = Ready(shard=1, pid=2, generation=3)
GOOD_AFTER = Drained(shard=1, closed=2, forced=0)
UNDECODABLE = [
    b"",
    b"\xc1",  # never-used msgpack byte
    b"\x82\xa4kind",  # truncated map
    msgspec.msgpack.encode(42),
    msgspec.msgpack.encode({"kind": "nope"}),
    msgspec.msgpack.encode({"kind": "ready", "shard": 1}),  # missing fields
    msgspec.msgpack.encode({"kind": "ready", "shard": "1", "pid": 2, "generation": 3}),
    msgspec.msgpack.encode({"kind": "broadcast", "origin": 1, "message": {"type": "echo"}}),
    b"\x81\xa4kind\xa2\xff\xfe",  # a string that is not UTF-8
    # an unknown field nested 5,000 deep (msgspec skips it recursively)
    b"\x84\xa4kind\xa5ready\xa5shard\x01\xa3pid\x02\xa1x" + b"\x91" * 5_000 + b"\xc0",
]


@pytest.mark.parametrize("payload", UNDECODABLE, ids=lambda p: repr(p[:24]))
def test_an_undecodable_frame_is_skipped_and_the_frames_around_it_are_read(
    payload: bytes,
) -> None:
    reader = FrameReader()
    data = encode_frame(GOOD_BEFORE) + frame_of(payload) + encode_frame(GOOD_AFTER)
    assert reader.feed(data) == [GOOD_BEFORE, GOOD_AFTER]
    assert len(reader.skipped) == 1
    assert reader.skipped[0].startswith("undecodable control frame")


def test_an_oversized_frame_is_skipped_and_the_frames_around_it_are_read() -> None:
    reader = FrameReader()
    data = encode_frame(GOOD_BEFORE) + frame_of(bytes(MAX_FRAME + 1)) + encode_frame(GOOD_AFTER)
    assert reader.feed(data) == [GOOD_BEFORE, GOOD_AFTER]
    assert reader.skipped == [f"control frame of {MAX_FRAME + 1} bytes exceeds {MAX_FRAME}"]


def test_a_length_prefix_of_exactly_max_frame_waits_for_the_payload() -> None:
    reader = FrameReader()
    assert reader.feed(struct.pack(">I", MAX_FRAME)) == []
    assert reader.skipped == []


def test_an_oversized_frame_fed_in_small_pieces_is_never_buffered() -> None:
    """Its bytes are thrown away as they arrive: the reader's memory does not grow with it."""
    piece = bytes(64 * 1024)
    size = MAX_FRAME + 1
    reader = FrameReader()
    out = reader.feed(encode_frame(GOOD_BEFORE) + struct.pack(">I", size) + piece[:100])
    tracemalloc.start()
    try:
        left = size - 100
        while left > len(piece):
            out += reader.feed(piece)
            left -= len(piece)
        out += reader.feed(piece[:left] + encode_frame(GOOD_AFTER))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [GOOD_BEFORE, GOOD_AFTER]
    assert len(reader.skipped) == 1
    assert peak < 4 * len(piece)  # a few pieces at most, never the 16 MiB frame


def test_garbage_that_looks_like_a_huge_length_prefix_is_skipped_not_raised() -> None:
    reader = FrameReader()
    assert reader.feed(b"GET / HTTP/1.1\r\n") == []  # "GET " = a 1.1 GB frame: discarded
    assert reader.skipped and "exceeds" in reader.skipped[0]


OVERSIZED = frame_of(bytes(MAX_FRAME + 3))  # built once: hypothesis reuses it


def _stream_item() -> st.SearchStrategy[tuple[str, bytes, object | None]]:
    good = st.sampled_from(SMALL).map(lambda m: ("good", encode_frame(m), m))
    bad = st.sampled_from(UNDECODABLE).map(lambda p: ("bad", frame_of(p), None))
    return good | bad


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    before=st.lists(_stream_item(), max_size=6),
    after=st.lists(_stream_item(), min_size=1, max_size=6),
    near=st.lists(st.integers(-40, 40), max_size=12),
    anywhere=st.lists(st.integers(min_value=0), max_size=8),
)
def test_skipping_keeps_the_stream_in_step_whatever_the_chunking(
    before: list[tuple[str, bytes, object | None]],
    after: list[tuple[str, bytes, object | None]],
    near: list[int],
    anywhere: list[int],
) -> None:
    """Good frames, undecodable ones and one oversized frame, cut anywhere - often close to
    the oversized frame's edges, where the discarding starts and stops."""
    head = b"".join(frame for _, frame, _ in before)
    tail = b"".join(frame for _, frame, _ in after)
    data = head + OVERSIZED + tail
    edges = [len(head), len(head) + 4, len(head) + len(OVERSIZED)]
    points = [edges[i % 3] + d for i, d in enumerate(near) if edges[i % 3] + d >= 0] + anywhere
    reader = FrameReader()
    out = feed_in_pieces(reader, data, points)
    assert out == [m for kind, _, m in before + after if kind == "good"]
    bad = sum(1 for kind, _, _ in before + after if kind == "bad")
    assert len(reader.skipped) == bad + 1
    assert sum("exceeds" in s for s in reader.skipped) == 1
