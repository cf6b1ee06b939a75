"""The client wire protocol: exact frames of the wire contract, codecs and their errors.

Pins ``../shared/DESIGN.md`` "Wire contract": the JSON of every server message, the
per-recipient ``seq`` splice (``encode_body`` + ``stamp``) in JSON and msgpack, and the
two kinds of refusal: bytes that are not the wire format close the connection
(``ProtocolError``: 1003 wrong frame kind, 1007 not JSON/msgpack), a well-formed message
of the wrong shape is answered with ``error`` and the connection stays (``BadMessage``).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.close_codes import CloseCode
from core.protocol import (
    MAX_REASON_BYTES,
    MSGPACK_SUBPROTOCOL,
    SHUTDOWN_MESSAGE,
    BadMessage,
    ClientMessage,
    Codec,
    Echo,
    EchoReply,
    Error,
    Heartbeat,
    HeartbeatAck,
    HeartbeatInfo,
    ProtocolError,
    Said,
    Say,
    ServerShutdown,
    StreamMessage,
    UserLeft,
    Welcome,
    _msgpack_add_field,
    decode_server,
    encode_body,
    encode_json,
    short_reason,
)

# Recursive value strategies cost ~10 ms an example to draw: 75 keep this file quick.
FUZZ = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON = Codec(binary=False)
MSGPACK = Codec(binary=True)
CODECS = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])

CLOSE_REASON_LIMIT = 123  # RFC 6455: a close frame's reason is at most 123 bytes
MAX_CSEQ = 2**63 - 1


# An app's own messages (the demo game's live in shards/race21.py; these stand in for any app).
class Poke(ClientMessage, tag="poke", kw_only=True):
    n: int


class Poked(StreamMessage, tag="poked", kw_only=True):
    by: str
    n: int


APP = Codec(binary=False, messages=(Poke,))
APP_MSGPACK = Codec(binary=True, messages=(Poke,))


def wire(codec: Codec, value: Any) -> bytes:
    """What a client would put on the wire for ``value`` under ``codec``."""
    if codec.binary:
        return msgspec.msgpack.encode(value)
    return msgspec.json.encode(value)


def decode(codec: Codec, value: Any) -> ClientMessage:
    """``value`` sent as the right kind of frame for ``codec``, decoded."""
    return codec.decode(wire(codec, value), text=not codec.binary)


def frame_of(codec: Codec, message: StreamMessage, seq: int) -> bytes:
    """What a recipient of ``codec`` gets for a stream message: one body, stamped."""
    return codec.stamp(codec.body_from_json(encode_body(message)), seq)


def decode_error(codec: Codec, payload: bytes, text: bool | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(payload, text=not codec.binary if text is None else text)
    return info.value


def bad_message(codec: Codec, value: Any) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        decode(codec, value)
    return info.value


# ------------------------------------------------------------------ client messages
CLIENT_MESSAGES = [
    Echo(data={"n": 1, "nested": [1, 2.5, "x", None, True]}),
    Echo(data="text", cseq=7),
    Echo(data=None),
    Echo(),
    Echo(data=[]),
    Echo(data=[2**64 - 1, -(2**63)]),  # the edges of what msgpack carries
    Say(text="hello"),
    Say(text="héllo wörld ✓", cseq=1),
    Say(text=""),
    Heartbeat(ts=1_700_000_000_123),
    Heartbeat(ts=12.5, cseq=2**40),
    Heartbeat(timestamp=1_700_000_000_000),
    Heartbeat(ts=-(2**63), cseq=MAX_CSEQ),
    Heartbeat(),
]


@CODECS
@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_every_client_message_round_trips(codec: Codec, message: Any) -> None:
    assert decode(codec, message) == message


@CODECS
def test_client_messages_decode_from_the_documented_wire_shapes(codec: Codec) -> None:
    assert decode(codec, {"type": "echo", "data": {"n": 1}}) == Echo(data={"n": 1})
    assert decode(codec, {"type": "say", "text": "T"}) == Say(text="T")
    assert decode(codec, {"type": "heartbeat", "ts": 5}) == Heartbeat(ts=5)
    assert decode(codec, {"type": "heartbeat", "ts": 5.25}) == Heartbeat(ts=5.25)


@CODECS
def test_the_field_reports_heartbeat_with_timestamp_decodes(codec: Codec) -> None:
    message = decode(codec, {"type": "heartbeat", "timestamp": 1700000000000})
    assert message == Heartbeat(timestamp=1700000000000)
    assert message.ts is None


def test_the_field_reports_heartbeat_decodes_from_its_exact_bytes() -> None:
    payload = b'{"type":"heartbeat","timestamp":1700000000000}'
    assert JSON.decode(payload, text=True) == Heartbeat(timestamp=1700000000000)


@CODECS
def test_a_heartbeat_with_neither_stamp_decodes(codec: Codec) -> None:
    assert decode(codec, {"type": "heartbeat"}) == Heartbeat(ts=None, timestamp=None)


@CODECS
def test_cseq_is_optional_and_defaults_to_none(codec: Codec) -> None:
    assert decode(codec, {"type": "say", "text": "a"}).cseq is None
    assert decode(codec, {"type": "say", "text": "a", "cseq": 9}).cseq == 9
    assert decode(codec, {"type": "say", "text": "a", "cseq": None}).cseq is None
    assert decode(codec, {"type": "say", "text": "a", "cseq": MAX_CSEQ}).cseq == MAX_CSEQ


@CODECS
def test_unknown_extra_fields_are_ignored(codec: Codec) -> None:
    value = {"type": "say", "text": "a", "cseq": 3, "mood": "happy", "v2": {"x": [1]}}
    assert decode(codec, value) == Say(text="a", cseq=3)


def test_client_message_without_cseq_encodes_without_the_key() -> None:
    assert json.loads(msgspec.json.encode(Say(text="a"))) == {"type": "say", "text": "a"}


@CODECS
def test_echo_without_data_decodes_as_null_data(codec: Codec) -> None:
    assert decode(codec, {"type": "echo"}) == Echo(data=None)


def test_codec_for_msgpack_subprotocol_is_binary_and_anything_else_is_json() -> None:
    assert Codec.for_subprotocol(MSGPACK_SUBPROTOCOL).binary is True
    assert Codec.for_subprotocol(None).binary is False
    assert Codec.for_subprotocol("json").binary is False
    app = Codec.for_subprotocol(MSGPACK_SUBPROTOCOL, messages=(Poke,))
    assert app.decode(msgspec.msgpack.encode({"type": "poke", "n": 1}), text=False) == Poke(n=1)


# ------------------------------------------------------------------ app messages
@pytest.mark.parametrize("codec", [APP, APP_MSGPACK], ids=["json", "msgpack"])
def test_an_app_message_type_passed_in_messages_decodes(codec: Codec) -> None:
    assert decode(codec, {"type": "poke", "n": 2, "cseq": 4}) == Poke(n=2, cseq=4)
    # ... and the transport messages still do.
    assert decode(codec, {"type": "say", "text": "x"}) == Say(text="x")


def test_transport_messages_passed_again_in_messages_are_harmless() -> None:
    codec = Codec(messages=(Echo, Poke, Say))
    assert decode(codec, {"type": "echo", "data": 1}) == Echo(data=1)
    assert decode(codec, {"type": "poke", "n": 1}) == Poke(n=1)


@CODECS
def test_an_app_message_is_an_unknown_type_to_a_codec_without_it(codec: Codec) -> None:
    error = bad_message(codec, {"type": "poke", "n": 2, "cseq": 11})
    assert (error.code, error.cseq) == ("unknown_type", 11)
    assert "poke" in error.reason


@pytest.mark.parametrize("codec", [APP, APP_MSGPACK], ids=["json", "msgpack"])
def test_an_unknown_tag_is_a_bad_message_with_the_messages_cseq(codec: Codec) -> None:
    error = bad_message(codec, {"type": "teleport", "to": [1, 2], "cseq": 42})
    assert isinstance(error, BadMessage)
    assert (error.code, error.cseq) == ("unknown_type", 42)
    assert error.reason == "unknown message type 'teleport'"


@pytest.mark.parametrize("codec", [APP, APP_MSGPACK], ids=["json", "msgpack"])
def test_an_app_message_of_the_wrong_shape_is_an_invalid_message(codec: Codec) -> None:
    error = bad_message(codec, {"type": "poke", "n": "two", "cseq": 5})
    assert (error.code, error.cseq) == ("invalid_message", 5)
    assert "$.n" in error.reason


@CODECS
@pytest.mark.parametrize("tag", ["welcome", "heartbeat_ack", "error", "said", "user_left"])
def test_a_server_message_type_sent_by_a_client_is_an_unknown_type(codec: Codec, tag: str) -> None:
    assert bad_message(codec, {"type": tag, "cseq": 1}).code == "unknown_type"


# ------------------------------------------------------------------ server messages
WELCOME = Welcome(
    session="a1b2c3d4e5f60708",
    token="tok",
    resumed=False,
    shard=3,
    heartbeat=HeartbeatInfo(interval_ms=30000, timeout_ms=60000),
    last_cseq=0,
)


def test_welcome_json_is_exactly_the_contract() -> None:
    frame = JSON.encode(WELCOME)
    assert isinstance(frame, bytes)
    assert frame.startswith(b'{"type":"welcome",')
    assert json.loads(frame) == {
        "type": "welcome",
        "session": "a1b2c3d4e5f60708",
        "token": "tok",
        "resumed": False,
        "shard": 3,
        "heartbeat": {"interval_ms": 30000, "timeout_ms": 60000},
        "last_cseq": 0,
    }


def test_welcome_carries_resume_error_and_gaps_only_when_set() -> None:
    failed = msgspec.structs.replace(WELCOME, resume_error="expired", last_cseq=4)
    assert json.loads(JSON.encode(failed)) == {
        "type": "welcome",
        "session": "a1b2c3d4e5f60708",
        "token": "tok",
        "resumed": False,
        "shard": 3,
        "heartbeat": {"interval_ms": 30000, "timeout_ms": 60000},
        "last_cseq": 4,
        "resume_error": "expired",
    }
    plain = json.loads(JSON.encode(WELCOME))
    assert not {"resume_error", "replay_gap", "recovered"} & plain.keys()
    recovered = msgspec.structs.replace(WELCOME, resumed=True, replay_gap=True, recovered=True)
    got = json.loads(JSON.encode(recovered))
    assert (got["resumed"], got["replay_gap"], got["recovered"]) == (True, True, True)


def test_heartbeat_ack_json_echoes_ts() -> None:
    assert JSON.encode(HeartbeatAck(ts=123)) == b'{"type":"heartbeat_ack","ts":123}'
    assert JSON.encode(HeartbeatAck(ts=1.5)) == b'{"type":"heartbeat_ack","ts":1.5}'


def test_heartbeat_ack_json_echoes_timestamp_when_that_was_sent() -> None:
    ack = HeartbeatAck(timestamp=1700000000000, last_cseq=7)
    expected = b'{"type":"heartbeat_ack","timestamp":1700000000000,"last_cseq":7}'
    assert JSON.encode(ack) == expected


def test_heartbeat_ack_carries_last_cseq_once_something_was_processed() -> None:
    assert json.loads(JSON.encode(HeartbeatAck(ts=1, last_cseq=9))) == {
        "type": "heartbeat_ack",
        "ts": 1,
        "last_cseq": 9,
    }


def test_server_shutdown_json_is_exactly_the_contract() -> None:
    message = ServerShutdown(
        reason="rolling restart", reconnect_after_ms=750, message=SHUTDOWN_MESSAGE
    )
    assert JSON.encode(message) == (
        b'{"type":"server_shutdown","reason":"rolling restart","reconnect_after_ms":750,'
        b'"message":"Server is restarting, please reconnect later"}'
    )


def test_server_shutdown_requires_a_message() -> None:
    with pytest.raises(TypeError, match="message"):
        ServerShutdown(reason="x", reconnect_after_ms=0)  # type: ignore[call-arg]


def test_error_json_is_exactly_the_contract() -> None:
    error = Error(code="unknown_type", reason="unknown message type 'x'", cseq=12)
    assert JSON.encode(error) == (
        b'{"type":"error","code":"unknown_type","reason":"unknown message type \'x\'","cseq":12}'
    )


def test_error_without_a_cseq_leaves_the_key_out() -> None:
    assert JSON.encode(Error(code="invalid_message", reason="r")) == (
        b'{"type":"error","code":"invalid_message","reason":"r"}'
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (EchoReply(data={"n": 1}), {"type": "echo", "data": {"n": 1}, "seq": 5}),
        (EchoReply(data=None), {"type": "echo", "data": None, "seq": 5}),
        (Said(from_="abc", text="hi"), {"type": "said", "from": "abc", "text": "hi", "seq": 5}),
        (
            UserLeft(session="abc", reason="graceful"),
            {"type": "user_left", "session": "abc", "reason": "graceful", "seq": 5},
        ),
        (Poked(by="abc", n=3), {"type": "poked", "by": "abc", "n": 3, "seq": 5}),
    ],
    ids=["echo", "echo_null", "said", "user_left", "app"],
)
@CODECS
def test_stream_messages_on_the_wire_are_exactly_the_contract(
    codec: Codec, message: Any, expected: dict[str, Any]
) -> None:
    frame = frame_of(codec, message, 5)
    assert decode_server(frame, binary=codec.binary) == expected
    # Stamping is the same as encoding the message with its seq set.
    stamped = codec.encode(msgspec.structs.replace(message, seq=5))
    assert decode_server(stamped, binary=codec.binary) == expected


def test_stamped_json_is_the_body_with_seq_appended() -> None:
    body = encode_body(Said(from_="abc", text="hi"))
    assert body == b'{"type":"said","from":"abc","text":"hi"}'
    assert JSON.stamp(body, 5) == b'{"type":"said","from":"abc","text":"hi","seq":5}'


def test_said_uses_the_from_key_not_from_underscore() -> None:
    frame = JSON.encode(Said(from_="abc", text="hi", seq=1))
    assert b'"from":"abc"' in frame
    assert b"from_" not in frame


@CODECS
def test_encode_returns_bytes_in_the_codecs_format(codec: Codec) -> None:
    frame = codec.encode(HeartbeatAck(ts=1))
    assert isinstance(frame, bytes)
    assert decode_server(frame, binary=codec.binary) == {"type": "heartbeat_ack", "ts": 1}


def test_encode_json_matches_the_json_codec() -> None:
    assert encode_json(WELCOME) == JSON.encode(WELCOME)


def test_decode_server_reads_text_as_well_as_bytes() -> None:
    assert decode_server('{"type":"said","seq":1}') == {"type": "said", "seq": 1}


SERVER_MESSAGES = [
    WELCOME,
    msgspec.structs.replace(WELCOME, resumed=True, resume_error="invalid"),
    HeartbeatAck(ts=99),
    HeartbeatAck(timestamp=1.5, last_cseq=3),
    ServerShutdown(reason="bye", reconnect_after_ms=0, message=SHUTDOWN_MESSAGE),
    Error(code="too_long", reason="r", cseq=1),
    EchoReply(data=[1, {"k": "v"}], seq=3),
    Said(from_="s", text="t", seq=1),
    UserLeft(session="s", reason="expired", seq=2),
    Poked(by="s", n=1, seq=4),
]


@CODECS
@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=repr)
def test_every_server_message_round_trips(codec: Codec, message: Any) -> None:
    frame = codec.encode(message)
    plain = decode_server(frame, binary=codec.binary)
    assert plain == msgspec.to_builtins(message)
    assert msgspec.convert(plain, type=type(message)) == message


# ------------------------------------------------------------------ encode_body + stamp
STREAM_MESSAGES = [
    EchoReply(data={"n": 1}),
    EchoReply(data=None),
    EchoReply(data={f"k{i}": i for i in range(40)}),  # a big payload inside a small map
    Said(from_="abc", text="hi ✓"),
    UserLeft(session="abc", reason="graceful"),
    Poked(by="abc", n=0),
]
SEQS = [1, 2, 127, 128, 255, 256, 65_535, 65_536, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**64 - 1]


@CODECS
@pytest.mark.parametrize("message", STREAM_MESSAGES, ids=repr)
@pytest.mark.parametrize("seq", SEQS)
def test_stamp_decodes_to_the_same_message_with_that_seq(
    codec: Codec, message: Any, seq: int
) -> None:
    frame = frame_of(codec, message, seq)
    plain = decode_server(frame, binary=codec.binary)
    assert msgspec.convert(plain, type=type(message)) == msgspec.structs.replace(message, seq=seq)
    assert plain["seq"] == seq


@CODECS
def test_one_body_stamped_for_many_recipients_gives_each_its_own_seq(codec: Codec) -> None:
    message = Said(from_="abc", text="hi")
    body = codec.body_from_json(encode_body(message))
    frames = [codec.stamp(body, seq) for seq in range(1, 51)]
    assert [decode_server(f, binary=codec.binary)["seq"] for f in frames] == list(range(1, 51))
    assert codec.body_from_json(encode_body(message)) == body  # the shared body is untouched


def test_encode_body_is_json_without_seq() -> None:
    body = encode_body(Said(from_="a", text="b"))
    assert json.loads(body) == {"type": "said", "from": "a", "text": "b"}


def test_encode_body_refuses_a_message_with_seq_set() -> None:
    with pytest.raises(ValueError, match="without seq"):
        encode_body(Said(from_="a", text="b", seq=1))


def test_body_from_json_is_the_same_body_for_json_and_msgpack_for_msgpack() -> None:
    body = encode_body(EchoReply(data={"x": [1, 2.5, None]}))
    assert JSON.body_from_json(body) is body
    assert msgspec.msgpack.decode(MSGPACK.body_from_json(body)) == json.loads(body)


def _map_of(size: int) -> dict[str, int]:
    return {f"k{i}": i for i in range(size)}


@pytest.mark.parametrize(
    ("size", "head"),
    [
        (0, 0x81),
        (1, 0x82),
        (14, 0x8F),  # the last fixmap
        (15, 0xDE),  # fixmap full: becomes a map16 of 16 keys
        (16, 0xDE),
        (17, 0xDE),
        (1_000, 0xDE),
        (65_534, 0xDE),  # the last map16
        (65_535, 0xDF),  # map16 full: becomes a map32
        (65_536, 0xDF),
    ],
)
@pytest.mark.parametrize("seq", [1, 2**64 - 1])
def test_msgpack_add_field_grows_the_map_header_across_size_limits(
    size: int, head: int, seq: int
) -> None:
    original = _map_of(size)
    body = msgspec.msgpack.encode(original)
    out = _msgpack_add_field(body, b"\xa3seq", msgspec.msgpack.encode(seq))
    assert out[0] == head
    assert msgspec.msgpack.decode(out) == {**original, "seq": seq}


@pytest.mark.parametrize("size", [14, 15, 65_534, 65_535])
def test_msgpack_stamp_of_a_body_at_a_map_size_limit_decodes(size: int) -> None:
    body = MSGPACK.body_from_json(json.dumps(_map_of(size)).encode())
    assert msgspec.msgpack.decode(MSGPACK.stamp(body, 9)) == {**_map_of(size), "seq": 9}


@pytest.mark.parametrize("body", [b"\x90", b"\xa3abc", b"\x01", b"\xc0"])
def test_msgpack_add_field_refuses_a_body_that_is_not_a_map(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a msgpack map"):
        _msgpack_add_field(body, b"\xa3seq", b"\x01")


# ------------------------------------------------------------------ bytes: ProtocolError
def test_binary_frame_without_msgpack_subprotocol_closes_1003() -> None:
    payload = msgspec.msgpack.encode({"type": "say", "text": "hi"})
    error = decode_error(JSON, payload, text=False)
    assert error.code == CloseCode.UNSUPPORTED_DATA == 1003


def test_binary_frame_holding_valid_json_without_msgpack_subprotocol_closes_1003() -> None:
    assert decode_error(JSON, b'{"type":"say","text":"hi"}', text=False).code == 1003


def test_text_frame_under_msgpack_subprotocol_closes_1003() -> None:
    error = decode_error(MSGPACK, b'{"type":"say","text":"hi"}', text=True)
    assert error.code == CloseCode.UNSUPPORTED_DATA == 1003


def test_text_frame_holding_valid_msgpack_under_msgpack_subprotocol_closes_1003() -> None:
    payload = msgspec.msgpack.encode({"type": "say", "text": "hi"})
    assert decode_error(MSGPACK, payload, text=True).code == 1003


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"not json",
        b'{"type":"say","text":"hi"',
        b'{"type":"say",}',
        b"{'type':'say'}",
        b"\x00",
        b'{"type":"say","text":"hi"} trailing',
    ],
)
def test_malformed_json_closes_1007(payload: bytes) -> None:
    assert decode_error(JSON, payload).code == CloseCode.INVALID_PAYLOAD == 1007


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x82\xa4type",  # truncated map
        b"\xc1",  # never-used byte
        b"\x82\xa4type\xa3say\xa4text\xa2\xff\xfe",  # string that is not UTF-8
        b"\x82\xa4type\xa4echo\xa4data\xa2\xff\xfe",  # ... where the schema says Any
        msgspec.msgpack.encode({"type": "say", "text": "hi"}) + b"\x00",  # trailing data
    ],
)
def test_malformed_msgpack_closes_1007(payload: bytes) -> None:
    assert decode_error(MSGPACK, payload).code == 1007


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deeply_nested_json_data_closes_1007_instead_of_crashing(depth: int) -> None:
    payload = b'{"type":"echo","data":' + b"[" * depth + b"]" * depth + b"}"
    assert decode_error(JSON, payload).code == 1007


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deeply_nested_msgpack_data_closes_1007_instead_of_crashing(depth: int) -> None:
    payload = b"\x82\xa4type\xa4echo\xa4data" + b"\x91" * depth + b"\xc0"
    assert decode_error(MSGPACK, payload).code == 1007


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"say","text":"\xff"}',  # not UTF-8 at all
        b'{"type":"say","text":"\xed\xa0\x80"}',  # a UTF-8-encoded lone surrogate
        b'{"type":"say","text":"\\ud800"}',  # an escaped lone surrogate
    ],
)
def test_json_text_that_is_not_valid_unicode_closes_1007(payload: bytes) -> None:
    assert decode_error(JSON, payload).code == 1007


def test_protocol_error_carries_its_code_and_reason() -> None:
    error = ProtocolError(1007, "bad")
    assert (error.code, error.reason, str(error)) == (1007, "bad", "bad")


@pytest.mark.parametrize("unit", ["a", "é", "✓", "😀"])
def test_protocol_error_reason_fits_a_close_frame_even_with_long_multibyte_text(
    unit: str,
) -> None:
    error = ProtocolError(1007, unit * 500)
    data = error.reason.encode()
    assert len(data) <= MAX_REASON_BYTES <= CLOSE_REASON_LIMIT
    assert error.reason.endswith("...")
    assert error.reason[:-3] == unit * len(error.reason[:-3])  # cut on a character boundary
    assert short_reason(unit * 500) == error.reason


def test_protocol_error_reason_of_exactly_the_limit_is_kept_whole() -> None:
    text = "x" * MAX_REASON_BYTES
    assert ProtocolError(1007, text).reason == text


# ------------------------------------------------------------------ shape: BadMessage
SCHEMA_VIOLATIONS = [
    {"text": "no type"},
    {"type": "nope"},
    {"type": 1},
    {"type": None},
    {"type": "say"},  # text is required
    {"type": "say", "text": 5},
    {"type": "say", "text": None},
    {"type": "heartbeat", "ts": "soon"},
    {"type": "heartbeat", "ts": 2**63},  # stamps are signed 64-bit
    {"type": "heartbeat", "timestamp": 2**64 - 1},
    {"type": "echo", "data": 1, "cseq": "1"},
    {"type": "echo", "cseq": 1.5},
    {"type": "echo", "cseq": -1},
    {"type": "echo", "cseq": 2**63},
    {"type": "echo", "cseq": True},
    [],
    ["say", "hi"],
    "say",
    42,
    None,
]


@CODECS
@pytest.mark.parametrize("value", SCHEMA_VIOLATIONS, ids=repr)
def test_a_well_formed_message_of_the_wrong_shape_is_a_bad_message_not_a_close(
    codec: Codec, value: Any
) -> None:
    error = bad_message(codec, value)
    assert error.code in ("unknown_type", "invalid_message")
    assert error.cseq is None  # none of these carries a valid cseq
    assert len(error.reason.encode()) <= MAX_REASON_BYTES


@CODECS
@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"type": "nope"}, "unknown_type"),
        ({"type": ""}, "unknown_type"),
        ({"type": "ECHO"}, "unknown_type"),  # tags are case-sensitive
        ({"type": 1}, "invalid_message"),
        ({"text": "no type"}, "invalid_message"),
        ({"type": "say"}, "invalid_message"),
        ({"type": "say", "text": 5}, "invalid_message"),
        ([], "invalid_message"),
    ],
    ids=repr,
)
def test_a_bad_message_says_whether_the_type_is_unknown_or_the_shape_is_wrong(
    codec: Codec, value: Any, code: str
) -> None:
    assert bad_message(codec, value).code == code


@CODECS
def test_a_bad_message_carries_the_messages_cseq(codec: Codec) -> None:
    assert bad_message(codec, {"type": "say", "text": 5, "cseq": 3}).cseq == 3
    assert bad_message(codec, {"type": "nope", "cseq": 0}).cseq == 0
    assert bad_message(codec, {"type": "nope", "cseq": MAX_CSEQ}).cseq == MAX_CSEQ


@CODECS
@pytest.mark.parametrize("cseq", [-1, MAX_CSEQ + 1, 1.0, 2.5, "3", True, None, [1], {"a": 1}])
def test_a_bad_message_carries_cseq_only_when_it_is_a_valid_cseq(codec: Codec, cseq: Any) -> None:
    assert bad_message(codec, {"type": "nope", "cseq": cseq}).cseq is None
    assert bad_message(codec, {"type": "say", "text": 5, "cseq": cseq}).cseq is None


def test_json_echo_data_holding_an_integer_msgpack_cannot_carry_is_a_bad_message() -> None:
    for data in (2**64, [1, {"k": -(2**63) - 1}], {"deep": [[[10**30]]]}):
        error = bad_message(JSON, {"type": "echo", "data": data, "cseq": 8})
        assert (error.code, error.cseq) == ("invalid_message", 8)
    # The edges themselves are fine (see CLIENT_MESSAGES).


@CODECS
def test_a_bad_message_reason_quoting_a_long_multibyte_value_fits_a_close_frame(
    codec: Codec,
) -> None:
    error = bad_message(codec, {"type": "é" * 400, "text": "ü" * 400})
    assert error.code == "unknown_type"
    assert len(error.reason.encode()) <= MAX_REASON_BYTES


@pytest.mark.parametrize(
    "payload",
    [
        b"\x82\xa4type\xa4echo\xa4data\xd4\x05\x01",  # ext type 5
        b"\x82\xa4type\xa4echo\xa4data\x81\xc0\xa1a",  # {nil: "a"}
        b"\x82\xa4type\xa4echo\xa4data\x81\x91\x01\xa1a",  # {[1]: "a"}
    ],
    ids=["ext", "nil_key", "array_key"],
)
def test_msgpack_echo_data_is_refused_or_can_be_echoed(payload: bytes) -> None:
    try:
        message = MSGPACK.decode(payload, text=False)
    except BadMessage:
        return
    assert isinstance(message, Echo)
    encode_body(EchoReply(data=message.data))


# ------------------------------------------------------------------ fuzz
def assert_decodes_or_refuses(codec: Codec, payload: bytes, text: bool) -> None:
    """Decoding never raises anything but ProtocolError/BadMessage, both well-formed; a
    decoded echo can be echoed."""
    try:
        message = codec.decode(payload, text)
    except ProtocolError as error:
        assert error.code in (1003, 1007)
        assert len(error.reason.encode()) <= MAX_REASON_BYTES
    except BadMessage as error:
        assert error.code in ("unknown_type", "invalid_message")
        assert len(error.reason.encode()) <= MAX_REASON_BYTES
        assert error.cseq is None or (type(error.cseq) is int and 0 <= error.cseq <= MAX_CSEQ)
    else:
        assert isinstance(message, Echo | Say | Heartbeat)
        if isinstance(message, Echo):
            body = codec.body_from_json(encode_body(EchoReply(data=message.data)))
            codec.stamp(body, 1)


@CODECS
@FUZZ
@given(payload=st.binary(max_size=256), text=st.booleans())
def test_random_bytes_never_raise_anything_but_protocol_error_or_bad_message(
    codec: Codec, payload: bytes, text: bool
) -> None:
    assert_decodes_or_refuses(codec, payload, text)


@CODECS
@FUZZ
@given(text=st.text(max_size=256))
def test_random_text_never_raises_anything_but_protocol_error_or_bad_message(
    codec: Codec, text: str
) -> None:
    assert_decodes_or_refuses(codec, text.encode("utf-8", "surrogatepass"), not codec.binary)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats()  # NaN and infinities dump as invalid JSON: 1007
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["type", "cseq", "data", "text", "ts", "timestamp", "from", "seq", "n", "x"]
)
MESSAGE_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["echo", "say", "heartbeat", "poke", "said", "", "ECHO"])},
    optional={
        "cseq": JSON_VALUES,
        "data": JSON_VALUES,
        "text": JSON_VALUES,
        "ts": JSON_VALUES,
        "timestamp": JSON_VALUES,
    },
) | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=5)


@FUZZ
@given(value=JSON_VALUES | MESSAGE_LIKE)
def test_random_json_values_never_raise_anything_but_protocol_error_or_bad_message(
    value: Any,
) -> None:
    assert_decodes_or_refuses(JSON, json.dumps(value).encode(), text=True)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    value=MSGPACK_VALUES
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "say", "heartbeat", "said"])},
        optional={
            "cseq": MSGPACK_VALUES,
            "data": MSGPACK_VALUES,
            "text": MSGPACK_VALUES,
            "ts": MSGPACK_VALUES,
            "timestamp": MSGPACK_VALUES,
        },
    )
)
def test_random_msgpack_values_never_raise_anything_but_protocol_error_or_bad_message(
    value: Any,
) -> None:
    assert_decodes_or_refuses(MSGPACK, msgspec.msgpack.encode(value), text=False)


ECHO_DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@CODECS
@FUZZ
@given(data=ECHO_DATA, cseq=st.none() | st.integers(min_value=0, max_value=MAX_CSEQ))
def test_any_echo_payload_round_trips_and_comes_back_with_its_seq(
    codec: Codec, data: Any, cseq: int | None
) -> None:
    message = decode(codec, Echo(data=data, cseq=cseq))
    assert message == Echo(data=data, cseq=cseq)
    frame = frame_of(codec, EchoReply(data=message.data), 1)
    assert decode_server(frame, binary=codec.binary) == {"type": "echo", "data": data, "seq": 1}
