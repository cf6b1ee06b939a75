"""Tests of the Cython RFC 6455 frame codec, with wsproto 1.3 as the oracle.

The property tests generate streams of frames - valid and invalid - with a serialiser
written here (independent of the codec), split them at random points and check that
``FrameDecoder`` and wsproto's ``FrameProtocol`` report the same complete messages and
the same verdict (none, 1002 or 1007). Named tests pin each RFC 6455 rule on its own.

One deliberate difference: CPython's incremental UTF-8 decoder (so wsproto) waits for the
third byte after ED A0-BF, which starts a surrogate and can never become valid; the codec
fails such a fragment at once (RFC 6455 8.1, fail fast). The oracle is wsproto with that
one wait removed (``FailFastUTF8``), and a named test shows the difference.
"""

from __future__ import annotations

import codecs
import json
import os
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from core.ws_codec import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    VIOLATION,
    FrameDecoder,
    FrameEncoder,
    binary_frame,
    close_frame,
    encode_frame,
    ping_frame,
    pong_frame,
    stamped_text_frame,
    text_frame,
)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = b"\x37\xfa\x21\x3d"


# --------------------------------------------------------------------------- helpers


def xor_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = KEY,
    enc: str = "min",
    length: int | None = None,
) -> bytes:
    """One frame, exactly as told: ``enc`` is the length encoding (min, 16 or 64) and
    ``length`` overrides the length field (to announce what never comes)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if key is not None else 0
    if enc == "min":
        enc = "7" if n <= 125 else "16" if n <= 0xFFFF else "64"
    if enc == "7":
        head += bytes([mask_bit | n])
    elif enc == "16":
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + xor_mask(payload, key)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def verdict_of(events: list) -> tuple[list, int | None]:
    """Split our events into (messages, violation code); check terminal events come last."""
    for kind, _ in events[:-1]:
        assert kind not in (VIOLATION, OP_CLOSE)
    if events and events[-1][0] == VIOLATION:
        code, reason = events[-1][1]
        assert isinstance(reason, str) and reason.isascii() and 0 < len(reason) <= 60
        return events[:-1], code
    return events, None


def run_ours(chunks, *, client_side=False, max_message_size=0):
    decoder = FrameDecoder(max_message_size=max_message_size, client_side=client_side)
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        if max_message_size > 0:
            assert decoder.buffered <= max_message_size + 125
    return verdict_of(events)


class FailFastUTF8:
    """CPython's incremental UTF-8 decoder, except that a pending ED A0-BF fails at once."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def decode(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        pending = self._decoder.getstate()[0]
        if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            raise UnicodeDecodeError("utf-8", pending, 0, 2, "a surrogate")
        return text


def run_wsproto(chunks, *, client: bool, fail_fast: bool = True):
    """wsproto's messages (partial frames reassembled) and its verdict."""
    if fail_fast:
        with mock.patch("wsproto.frame_protocol.getincrementaldecoder", lambda _: FailFastUTF8):
            return run_wsproto(chunks, client=client, fail_fast=False)
    proto = FrameProtocol(client=client, extensions=[])
    events, parts = [], []
    try:
        for chunk in chunks:
            proto.receive_bytes(chunk)
            for frame in proto.received_frames():
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    parts.append(frame.payload)
                    if frame.message_finished:
                        if frame.opcode is Opcode.TEXT:
                            value = "".join(parts).encode("utf-8")
                        else:
                            value = b"".join(parts)
                        events.append((int(frame.opcode), value))
                        parts = []
                elif frame.opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    events.append((OP_CLOSE, (int(code), reason)))
                else:
                    events.append((int(frame.opcode), bytes(frame.payload)))
    except ParseFailed as exc:
        return events, int(exc.code)
    return events, None


def feed_all(decoder: FrameDecoder, *frames: bytes) -> list:
    return decoder.feed(b"".join(frames))


def violation(events: list) -> int | None:
    return verdict_of(events)[1]


# --------------------------------------------------------------------------- strategies

INVALID_UTF8 = [
    b"\x80",  # lone continuation
    b"\xbf",
    b"\xc0\xaf",  # overlong
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xf0\x80\x80\xaf",  # overlong 4-byte
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\xc2",  # truncated sequences: invalid at the end or before a non-continuation
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc2\xc2",
    b"\xed\xa0",  # a surrogate's first two bytes: CPython waits for a third, we do not
    b"\xed\xbf",
]
CLOSE_CODES = [
    999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012,
    1013, 1014, 1015, 1016, 2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535, 0,
]  # fmt: skip


@st.composite
def utf8ish(draw) -> bytes:
    """Mostly valid UTF-8 (all planes), sometimes with one invalid sequence inside."""
    text = draw(st.text(max_size=40)).encode("utf-8")
    shape = draw(st.integers(0, 7))
    if shape == 0:
        return draw(st.binary(max_size=40))
    if shape == 1:
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:]
    if shape == 2:
        return text[: draw(st.integers(0, len(text)))]  # maybe cut inside a code point
    return text


@st.composite
def big_payload(draw) -> bytes:
    """A payload that needs the 64-bit length (cheap to draw: a repeated seed)."""
    n = draw(st.integers(65536, 66000))
    seed = draw(st.text(min_size=1, max_size=4)).encode("utf-8")
    return (seed * (n // len(seed) + 1))[:n]


@st.composite
def frame_stream(draw, *, masked: bool) -> bytes:
    """Serialised frames a peer might send: messages, controls, close frames and junk,
    each frame sometimes mutated into a protocol violation."""
    key = KEY if masked else None
    specs: list[dict] = []

    def control(opcode):
        n = 126 if draw(st.integers(0, 20)) == 0 else draw(st.integers(0, 125))
        return {"opcode": opcode, "payload": draw(st.binary(min_size=n, max_size=n))}

    for _ in range(draw(st.integers(1, 6))):
        item = draw(st.sampled_from(["text"] * 4 + ["binary"] * 3 + ["ping", "close", "junk"]))
        if item in ("text", "binary"):
            if draw(st.integers(0, 40)) == 0:
                payload = draw(big_payload())
            elif item == "text":
                payload = draw(utf8ish())
            else:
                payload = draw(st.binary(max_size=300))
            cuts = draw(st.lists(st.integers(0, len(payload)), max_size=4))
            points = sorted({0, len(payload), *cuts})
            frags = [payload[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
            for i, frag in enumerate(frags):
                last = i == len(frags) - 1
                op = (OP_TEXT if item == "text" else OP_BINARY) if i == 0 else OP_CONT
                specs.append({"opcode": op, "payload": frag, "fin": last})
                if not last and draw(st.integers(0, 3)) == 0:
                    specs.append(control(draw(st.sampled_from([OP_PING, OP_PONG]))))
        elif item == "ping":
            specs.append(control(draw(st.sampled_from([OP_PING, OP_PONG]))))
        elif item == "close":
            shape = draw(st.integers(0, 5))
            if shape == 0:
                payload = b""
            elif shape == 1:
                payload = draw(st.binary(min_size=1, max_size=1))
            else:
                code = draw(st.one_of(st.sampled_from(CLOSE_CODES), st.integers(0, 5000)))
                reason = draw(utf8ish())[:123]
                payload = code.to_bytes(2, "big") + reason
            if draw(st.integers(0, 20)) == 0:
                payload = payload + bytes(126 - len(payload))  # 126 bytes: too long
            specs.append({"opcode": OP_CLOSE, "payload": payload})
        else:
            specs.append(
                {
                    "opcode": draw(st.integers(0, 15)),
                    "payload": draw(st.binary(max_size=20)),
                    "fin": draw(st.booleans()),
                }
            )

    out = []
    for spec in specs:
        spec.setdefault("fin", True)
        spec["key"] = key
        mutation = draw(st.integers(0, 60))
        if mutation == 1:
            spec["key"] = None if masked else KEY
        elif mutation == 2:
            spec["rsv"] = draw(st.sampled_from([1, 2, 4, 7]))
        elif mutation == 3:
            spec["fin"] = not spec["fin"]
        elif mutation == 4 and len(spec["payload"]) <= 0xFFFF:
            spec["enc"] = "16"  # non-minimal when the payload is <= 125 bytes
        elif mutation == 5:
            spec["enc"] = "64"  # non-minimal when the payload is <= 65535 bytes
        elif mutation == 6:
            spec["enc"] = "64"
            spec["length"] = (1 << 63) | len(spec["payload"])
        elif mutation == 7:
            spec["opcode"] = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
        out.append(raw_frame(**spec))
    return b"".join(out)


@st.composite
def chunked(draw, stream_strategy) -> tuple[bytes, list[bytes]]:
    stream = draw(stream_strategy)
    if len(stream) < 400 and draw(st.integers(0, 9)) == 0:
        return stream, [stream[i : i + 1] for i in range(len(stream))]
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=8))
    return stream, split(stream, cuts)


# --------------------------------------------------------------------------- wsproto oracle


@PROPERTY
@given(chunked(frame_stream(masked=True)))
def test_decoder_agrees_with_wsproto_on_client_streams(case):
    stream, chunks = case
    messages, verdict = run_ours(chunks)
    event(f"verdict {verdict}; {min(len(messages), 3)}+ messages")
    assert (messages, verdict) == run_wsproto([stream], client=False)
    assert (messages, verdict) == run_wsproto(chunks, client=False)


@PROPERTY
@given(chunked(frame_stream(masked=False)))
def test_client_side_decoder_agrees_with_wsproto_on_server_streams(case):
    stream, chunks = case
    messages, verdict = run_ours(chunks, client_side=True)
    event(f"verdict {verdict}; {min(len(messages), 3)}+ messages")
    assert (messages, verdict) == run_wsproto([stream], client=True)


@settings(PROPERTY, max_examples=150)
@given(chunked(frame_stream(masked=True)), st.integers(1, 400))
def test_size_limit_refuses_only_oversized_messages_and_bounds_buffered(case, limit):
    stream, chunks = case
    ours, verdict = run_ours(chunks, max_message_size=limit)  # asserts the buffered bound
    theirs, their_verdict = run_wsproto([stream], client=False)
    if verdict != 1009:
        assert (ours, verdict) == (theirs, their_verdict)
        return
    assert theirs[: len(ours)] == ours
    later_data = [v for k, v in theirs[len(ours) :] if k in (OP_TEXT, OP_BINARY)]
    if later_data:  # else wsproto failed or the stream ended inside that message
        assert len(later_data[0]) > limit


@settings(PROPERTY, max_examples=200)
@given(utf8ish(), st.lists(st.integers(0, 200), max_size=4), st.data())
def test_utf8_verdict_matches_python_strict_decoder(payload, cuts, data):
    try:
        payload.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    frags = split(payload, cuts)
    frames = [
        raw_frame(OP_TEXT if i == 0 else OP_CONT, frag, fin=i == len(frags) - 1)
        for i, frag in enumerate(frags)
    ]
    stream = b"".join(frames)
    chunks = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    messages, verdict = run_ours(chunks)
    if valid:
        assert (messages, verdict) == ([(OP_TEXT, payload)], None)
    else:
        assert (messages, verdict) == ([], 1007)


# --------------------------------------------------------------------------- round trips

LENGTHS = st.one_of(
    st.integers(0, 125), st.integers(126, 2000), st.integers(65530, 65540), st.just(0xFFFF)
)


@st.composite
def payload_of_length_class(draw) -> bytes:
    n = draw(LENGTHS)
    seed = draw(st.binary(min_size=1, max_size=16))
    return (seed * (n // len(seed) + 1))[:n]


@settings(PROPERTY, max_examples=150)
@given(payload_of_length_class(), st.text(max_size=60), st.integers(0, 2**40))
def test_server_frames_round_trip_through_wsproto(payload, text, seq):
    body = text.encode("utf-8")
    close_code = 4000 + seq % 1000
    frames = [
        binary_frame(payload),
        text_frame(body),
        encode_frame(OP_BINARY, memoryview(payload)),
        ping_frame(payload[:125]),
        pong_frame(bytearray(payload[:125])),
        stamped_text_frame(b'{"t":' + repr(text).encode() + b"}", seq),
        close_frame(close_code, text),
    ]
    expected = [
        (OP_BINARY, payload),
        (OP_TEXT, body),
        (OP_BINARY, payload),
        (OP_PING, payload[:125]),
        (OP_PONG, payload[:125]),
        (OP_TEXT, b'{"t":' + repr(text).encode() + b',"seq":' + str(seq).encode() + b"}"),
        (OP_CLOSE, (close_code, text.encode("utf-8")[:123].decode("utf-8", "ignore"))),
    ]
    stream = b"".join(frames)
    assert run_wsproto([stream], client=True) == (expected, None)
    assert run_ours(split(stream, [7, 300, 65540]), client_side=True) == (expected, None)


@settings(PROPERTY, max_examples=150)
@given(payload_of_length_class(), st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG]))
def test_frame_encoder_output_decodes_in_ours_and_wsproto(payload, opcode):
    if opcode >= OP_CLOSE:
        payload = payload[:125]
    if opcode == OP_TEXT:
        payload = payload.decode("latin-1").encode("utf-8")
    encoder = FrameEncoder()
    stream = encoder.frame(opcode, payload) + encoder.close(1000, "done")
    expected = ([(opcode, payload), (OP_CLOSE, (1000, "done"))], None)
    assert run_wsproto([stream], client=False) == expected
    assert run_ours(split(stream, [3, 130])) == expected
    assert run_ours([stream], max_message_size=max(len(payload), 1)) == expected
    unmasked = FrameEncoder(mask=False)
    stream = unmasked.frame(opcode, payload) + unmasked.close(1000, "done")
    assert run_ours([stream], client_side=True) == expected


# --------------------------------------------------------------------------- RFC 6455 rules


def test_unmasked_client_frame_is_1002():
    events = FrameDecoder().feed(raw_frame(OP_TEXT, b"hi", key=None))
    assert events == [(VIOLATION, (1002, "frame not masked"))]


def test_masked_frame_from_server_is_1002_on_client_side():
    assert violation(FrameDecoder(client_side=True).feed(raw_frame(OP_TEXT, b"hi"))) == 1002


def test_unmasked_frame_is_refused_from_its_first_two_bytes():
    assert violation(FrameDecoder().feed(raw_frame(OP_TEXT, b"x" * 300, key=None)[:2])) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcode_is_1002(opcode):
    events = FrameDecoder().feed(raw_frame(opcode, b""))
    assert events == [(VIOLATION, (1002, f"reserved opcode {opcode}"))]


@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_reserved_bit_is_1002_as_no_extension_is_negotiated(rsv):
    assert violation(FrameDecoder().feed(raw_frame(OP_TEXT, b"hi", rsv=rsv))) == 1002


def test_fragmented_control_frame_is_1002():
    assert violation(FrameDecoder().feed(raw_frame(OP_PING, b"", fin=False))) == 1002


def test_bare_continuation_is_1002():
    assert violation(FrameDecoder().feed(raw_frame(OP_CONT, b"x"))) == 1002


def test_new_message_inside_a_fragmented_one_is_1002():
    events = feed_all(FrameDecoder(), raw_frame(OP_TEXT, b"a", fin=False), raw_frame(OP_TEXT, b"b"))
    assert violation(events) == 1002


def test_close_frame_with_126_byte_payload_is_1002():
    payload = (1000).to_bytes(2, "big") + b"x" * 124
    assert violation(FrameDecoder().feed(raw_frame(OP_CLOSE, payload))) == 1002


def test_ping_with_126_byte_payload_is_1002_from_its_header():
    assert violation(FrameDecoder().feed(raw_frame(OP_PING, b"x" * 126)[:2])) == 1002


def test_close_with_1_byte_payload_is_1002():
    assert violation(FrameDecoder().feed(raw_frame(OP_CLOSE, b"\x03"))) == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535])
def test_close_code_wsproto_refuses_from_a_peer_is_1002(code):
    events = FrameDecoder().feed(raw_frame(OP_CLOSE, code.to_bytes(2, "big") + b"bye"))
    assert violation(events) == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 3999, 4000, 4999])
def test_close_code_a_peer_may_send_is_reported(code):
    events = FrameDecoder().feed(raw_frame(OP_CLOSE, code.to_bytes(2, "big") + "bye ✓".encode()))
    assert events == [(OP_CLOSE, (code, "bye ✓"))]


def test_empty_close_reports_1005():
    assert FrameDecoder().feed(raw_frame(OP_CLOSE, b"")) == [(OP_CLOSE, (1005, ""))]


def test_close_reason_not_utf8_is_1007():
    events = FrameDecoder().feed(raw_frame(OP_CLOSE, b"\x03\xe8\xff"))
    assert events == [(VIOLATION, (1007, "invalid UTF-8 in close reason"))]


def test_invalid_utf8_in_text_is_1007():
    events = FrameDecoder().feed(raw_frame(OP_TEXT, b"ok \xed\xa0\x80"))
    assert events == [(VIOLATION, (1007, "invalid UTF-8 in text message"))]


def test_invalid_utf8_fails_at_its_fragment_not_at_message_end():
    decoder = FrameDecoder()
    assert decoder.feed(raw_frame(OP_TEXT, b"fine", fin=False)) == []
    assert violation(decoder.feed(raw_frame(OP_CONT, b"\xc0\xaf", fin=False))) == 1007


def test_invalid_utf8_fails_before_its_frame_is_complete():
    frame = raw_frame(OP_TEXT, b"\xff" + b"x" * 1000)
    assert violation(FrameDecoder().feed(frame[:20])) == 1007


def test_surrogate_prefix_fails_at_once_where_wsproto_waits_for_its_third_byte():
    stream = raw_frame(OP_TEXT, b"a\xed\xa0", fin=False) + raw_frame(OP_CLOSE, b"\x03\xe8")
    assert run_ours([stream]) == ([], 1007)
    assert run_wsproto([stream], client=False, fail_fast=False) == ([(OP_CLOSE, (1000, ""))], None)
    assert run_wsproto([stream], client=False) == ([], 1007)


def test_code_point_split_across_two_fragments_is_accepted():
    emoji = "😀".encode()
    events = feed_all(
        FrameDecoder(),
        raw_frame(OP_TEXT, b"a" + emoji[:1], fin=False),
        raw_frame(OP_CONT, emoji[1:3], fin=False),
        raw_frame(OP_CONT, emoji[3:] + b"b"),
    )
    assert events == [(OP_TEXT, b"a" + emoji + b"b")]


def test_incomplete_code_point_at_message_end_is_1007():
    decoder = FrameDecoder()
    assert decoder.feed(raw_frame(OP_TEXT, b"a\xf0\x9f", fin=False)) == []
    assert violation(decoder.feed(raw_frame(OP_CONT, b""))) == 1007


def test_ping_between_fragments_is_delivered_in_order():
    decoder = FrameDecoder()
    events = feed_all(
        decoder,
        raw_frame(OP_BINARY, b"one", fin=False),
        raw_frame(OP_PING, b"p"),
        raw_frame(OP_CONT, b"two", fin=False),
        raw_frame(OP_PONG, b"q"),
    )
    assert events == [(OP_PING, b"p"), (OP_PONG, b"q")]
    assert decoder.in_message and decoder.buffered == 6
    assert decoder.feed(raw_frame(OP_CONT, b"three")) == [(OP_BINARY, b"onetwothree")]
    assert not decoder.in_message and decoder.buffered == 0


def test_message_too_big_across_fragments_is_1009_before_its_payload_is_fed():
    decoder = FrameDecoder(max_message_size=1000)
    assert decoder.feed(raw_frame(OP_BINARY, b"x" * 600, fin=False)) == []
    assert decoder.buffered == 600
    second = raw_frame(OP_CONT, b"y" * 500)
    events = decoder.feed(second[:8])  # the header only: 4 bytes + masking key
    assert events == [(VIOLATION, (1009, "message of 1100 bytes exceeds 1000"))]
    assert decoder.buffered == 0 and decoder.finished


def test_frame_announcing_a_huge_length_is_1009_from_its_header():
    decoder = FrameDecoder()  # default limit 65536
    header = raw_frame(OP_BINARY, enc="64", length=2**40)
    assert violation(decoder.feed(header[:10])) == 1009
    assert decoder.buffered == 0


def test_message_at_the_limit_is_accepted():
    events = FrameDecoder(max_message_size=1000).feed(raw_frame(OP_BINARY, b"z" * 1000))
    assert events == [(OP_BINARY, b"z" * 1000)]


def test_no_limit_when_max_message_size_is_zero():
    payload = b"q" * 100_000
    assert FrameDecoder(max_message_size=0).feed(raw_frame(OP_BINARY, payload)) == [
        (OP_BINARY, payload)
    ]


def test_non_minimal_lengths_are_1002():
    assert violation(FrameDecoder().feed(raw_frame(OP_TEXT, b"x" * 125, enc="16"))) == 1002
    assert violation(FrameDecoder().feed(raw_frame(OP_TEXT, b"x" * 0xFFFF, enc="64"))) == 1002
    assert FrameDecoder().feed(raw_frame(OP_TEXT, b"x" * 126, enc="16")) == [(OP_TEXT, b"x" * 126)]


def test_64_bit_length_with_msb_set_is_1002():
    header = raw_frame(OP_BINARY, enc="64", length=(1 << 63) | 70000)
    assert violation(FrameDecoder(max_message_size=0).feed(header)) == 1002


def test_events_after_close_are_ignored():
    decoder = FrameDecoder()
    events = feed_all(decoder, raw_frame(OP_CLOSE, b"\x03\xe8bye"), raw_frame(OP_TEXT, b"late"))
    assert events == [(OP_CLOSE, (1000, "bye"))]
    assert decoder.finished and decoder.buffered == 0
    assert decoder.feed(raw_frame(OP_TEXT, b"later")) == []
    assert decoder.feed(b"\x00garbage") == []


def test_events_after_a_violation_are_ignored():
    decoder = FrameDecoder()
    events = feed_all(decoder, raw_frame(OP_TEXT, b"ok"), raw_frame(3, b""), raw_frame(OP_PING))
    assert events == [(OP_TEXT, b"ok"), (VIOLATION, (1002, "reserved opcode 3"))]
    assert decoder.feed(raw_frame(OP_TEXT, b"later")) == []


def test_feeding_one_byte_at_a_time_gives_the_same_events():
    stream = b"".join(
        [
            raw_frame(OP_TEXT, "héllo wörld, ".encode() * 12, fin=False),
            raw_frame(OP_PING, b"ping"),
            raw_frame(OP_CONT, "😀 and more".encode()),
            raw_frame(OP_BINARY, bytes(range(256)) * 300),
            raw_frame(OP_PONG, b""),
            raw_frame(OP_CLOSE, b"\x0f\xa0see you"),
        ]
    )
    whole = FrameDecoder(max_message_size=0).feed(stream)
    decoder = FrameDecoder(max_message_size=0)
    bytewise = []
    for i in range(len(stream)):
        bytewise += decoder.feed(stream[i : i + 1])
    assert bytewise == whole
    assert [kind for kind, _ in whole] == [OP_PING, OP_TEXT, OP_BINARY, OP_PONG, OP_CLOSE]
    assert whole[-1] == (OP_CLOSE, (4000, "see you"))


def test_feed_accepts_bytearray_and_memoryview():
    frame = raw_frame(OP_TEXT, b"hello")
    assert FrameDecoder().feed(bytearray(frame)) == [(OP_TEXT, b"hello")]
    assert FrameDecoder().feed(memoryview(b"\x00" + frame)[1:]) == [(OP_TEXT, b"hello")]
    with pytest.raises(TypeError):
        FrameDecoder().feed("text")


def test_buffered_counts_a_partial_header_and_payload():
    decoder = FrameDecoder()
    frame = raw_frame(OP_TEXT, b"x" * 200)
    assert decoder.feed(frame[:3]) == [] and decoder.buffered == 3
    assert decoder.feed(frame[3:50]) == [] and decoder.buffered == 50 - 8
    assert not decoder.in_message  # a whole frame in two reads is not a fragmented message
    assert decoder.feed(frame[50:]) == [(OP_TEXT, b"x" * 200)] and decoder.buffered == 0


# --------------------------------------------------------------------------- encoders


def test_close_reason_is_cut_at_a_utf8_boundary():
    reason = "a" * 121 + "😀"  # the emoji would need bytes 122..125 of a 123-byte budget
    frame = close_frame(1001, reason)
    assert frame == b"\x88\x7b\x03\xe9" + b"a" * 121
    assert run_wsproto([frame], client=True) == ([(OP_CLOSE, (1001, "a" * 121))], None)
    assert close_frame(1000, "é" * 70)[4:] == "é".encode() * 61  # 122 bytes, not 123
    assert close_frame(1000, "b" * 123)[4:] == b"b" * 123


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 5000, -1])
def test_close_frame_refuses_codes_that_cannot_be_sent(code):
    with pytest.raises(ValueError):
        close_frame(code)
    with pytest.raises(ValueError):
        FrameEncoder().close(code)


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_length_classes_are_encoded_minimally(n, header):
    payload = os.urandom(n)
    assert binary_frame(payload) == header + payload
    assert encode_frame(OP_BINARY, payload) == header + payload
    assert text_frame(payload)[1:] == header[1:] + payload
    masked = FrameEncoder().frame(OP_BINARY, payload)
    assert masked[1] == header[1] | 0x80 and masked[2 : len(header)] == header[2:]
    assert FrameDecoder(max_message_size=0).feed(masked) == [(OP_BINARY, payload)]


def test_control_payload_over_125_bytes_is_valueerror():
    for build, first in ((ping_frame, 0x89), (pong_frame, 0x8A)):
        assert build(b"x" * 125) == bytes([first, 125]) + b"x" * 125
        with pytest.raises(ValueError):
            build(b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(OP_CLOSE, b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(3, b"")
    assert ping_frame() == b"\x89\x00" and pong_frame() == b"\x8a\x00"


@settings(PROPERTY, max_examples=200)
@given(
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=4),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 70000),
)
def test_stamped_text_frame_equals_text_frame_of_the_body_with_seq(fields, seq, pad):
    if pad > 60000:
        fields = {**fields, "pad": "p" * pad}
    body = json.dumps(fields, separators=(",", ":")).encode()
    stamped = stamped_text_frame(body, seq)
    if body == b"{}":
        assert stamped == text_frame(b'{"seq":' + str(seq).encode() + b"}")
    else:
        assert stamped == text_frame(body[:-1] + b',"seq":' + str(seq).encode() + b"}")
    assert json.loads(FrameDecoder(client_side=True, max_message_size=0).feed(stamped)[0][1]) == {
        **fields,
        "seq": seq,
    }


def test_stamped_text_frame_of_an_empty_object():
    assert stamped_text_frame(b"{}", 7) == text_frame(b'{"seq":7}')
    with pytest.raises(ValueError):
        stamped_text_frame(b"[1]", 1)
    with pytest.raises(ValueError):
        stamped_text_frame(b"}", 1)


def test_frame_encoder_masks_each_frame_with_a_fresh_key():
    encoder = FrameEncoder()
    keys = {encoder.frame(OP_TEXT, b"same")[2:6] for _ in range(200)}
    assert len(keys) > 190
    assert FrameEncoder(mask=False).frame(OP_TEXT, b"hi") == b"\x81\x02hi"
    assert FrameEncoder(mask=False).frame(OP_TEXT, b"hi", fin=False, rsv1=True) == b"\x41\x02hi"
    with pytest.raises(ValueError):
        encoder.frame(16, b"")
