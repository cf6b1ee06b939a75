"""The client wire protocol: exact frames of the wire contract, codecs and their errors.

Pins ``../shared/DESIGN.md`` "Wire contract": the JSON of every server message, the
per-recipient ``seq`` splice (``encode_body`` + ``stamp``) in JSON and msgpack, and the
close codes of bad frames (1003 wrong frame kind, 1007 malformed or schema-violating).
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
    Codec,
    Echo,
    EchoReply,
    Heartbeat,
    HeartbeatAck,
    HeartbeatInfo,
    ProtocolError,
    Said,
    Say,
    ServerShutdown,
    UserLeft,
    Welcome,
    _msgpack_add_field,
    encode_json,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON = Codec(binary=False)
MSGPACK = Codec(binary=True)
CODECS = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])

CLOSE_REASON_LIMIT = 123  # RFC 6455: a close frame's reason is at most 123 bytes


def wire(codec: Codec, value: Any) -> str | bytes:
    """What a client would put on the wire for ``value`` under ``codec``."""
    if codec.binary:
        return msgspec.msgpack.encode(value)
    return msgspec.json.encode(value).decode()


def as_plain(codec: Codec, frame: str | bytes) -> Any:
    """A server frame as plain Python values, decoded without the project's types."""
    if codec.binary:
        assert isinstance(frame, bytes)
        return msgspec.msgpack.decode(frame)
    assert isinstance(frame, str)
    return json.loads(frame)


def decode_error(codec: Codec, frame: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    return info.value


# ------------------------------------------------------------------ client messages
CLIENT_MESSAGES = [
    Echo(data={"n": 1, "nested": [1, 2.5, "x", None, True]}),
    Echo(data="text", cseq=7),
    Echo(data=None),
    Echo(),
    Echo(data=[]),
    Say(text="hello"),
    Say(text="héllo wörld ✓", cseq=1),
    Say(text=""),
    Heartbeat(ts=1_700_000_000_123),
    Heartbeat(ts=12.5, cseq=2**40),
]


@CODECS
@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_every_client_message_round_trips(codec: Codec, message: Any) -> None:
    assert codec.decode(wire(codec, message)) == message


@CODECS
def test_client_messages_decode_from_the_documented_wire_shapes(codec: Codec) -> None:
    assert codec.decode(wire(codec, {"type": "echo", "data": {"n": 1}})) == Echo(data={"n": 1})
    assert codec.decode(wire(codec, {"type": "say", "text": "T"})) == Say(text="T")
    assert codec.decode(wire(codec, {"type": "heartbeat", "ts": 5})) == Heartbeat(ts=5)
    assert codec.decode(wire(codec, {"type": "heartbeat", "ts": 5.25})) == Heartbeat(ts=5.25)


@CODECS
def test_cseq_is_optional_and_defaults_to_none(codec: Codec) -> None:
    assert codec.decode(wire(codec, {"type": "say", "text": "a"})).cseq is None
    assert codec.decode(wire(codec, {"type": "say", "text": "a", "cseq": 9})).cseq == 9
    assert codec.decode(wire(codec, {"type": "say", "text": "a", "cseq": None})).cseq is None


def test_client_message_without_cseq_encodes_without_the_key() -> None:
    assert json.loads(msgspec.json.encode(Say(text="a"))) == {"type": "say", "text": "a"}


@CODECS
def test_echo_without_data_decodes_as_null_data(codec: Codec) -> None:
    assert codec.decode(wire(codec, {"type": "echo"})) == Echo(data=None)


def test_codec_for_msgpack_subprotocol_is_binary_and_anything_else_is_json() -> None:
    assert Codec.for_subprotocol(MSGPACK_SUBPROTOCOL).binary is True
    assert Codec.for_subprotocol(None).binary is False
    assert Codec.for_subprotocol("json").binary is False


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
    assert isinstance(frame, str)
    assert frame.startswith('{"type":"welcome",')
    assert json.loads(frame) == {
        "type": "welcome",
        "session": "a1b2c3d4e5f60708",
        "token": "tok",
        "resumed": False,
        "shard": 3,
        "heartbeat": {"interval_ms": 30000, "timeout_ms": 60000},
        "last_cseq": 0,
    }


def test_welcome_carries_resume_error_only_when_set() -> None:
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
    assert "resume_error" not in json.loads(JSON.encode(WELCOME))


def test_heartbeat_ack_json_echoes_ts() -> None:
    assert json.loads(JSON.encode(HeartbeatAck(ts=123))) == {"type": "heartbeat_ack", "ts": 123}
    assert json.loads(JSON.encode(HeartbeatAck(ts=1.5))) == {"type": "heartbeat_ack", "ts": 1.5}


def test_server_shutdown_json_is_exactly_the_contract() -> None:
    frame = JSON.encode(ServerShutdown(reason="rolling restart", reconnect_after_ms=750))
    assert json.loads(frame) == {
        "type": "server_shutdown",
        "reason": "rolling restart",
        "reconnect_after_ms": 750,
    }


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
    ],
    ids=["echo", "echo_null", "said", "user_left"],
)
@CODECS
def test_stream_messages_on_the_wire_are_exactly_the_contract(
    codec: Codec, message: Any, expected: dict[str, Any]
) -> None:
    frame = codec.stamp(codec.encode_body(message), 5)
    assert as_plain(codec, frame) == expected
    # Stamping is the same as encoding the message with its seq set.
    assert as_plain(codec, codec.encode(msgspec.structs.replace(message, seq=5))) == expected


def test_said_uses_the_from_key_not_from_underscore() -> None:
    frame = JSON.encode(Said(from_="abc", text="hi", seq=1))
    assert '"from":"abc"' in frame
    assert "from_" not in frame


@CODECS
def test_encode_returns_a_text_frame_for_json_and_a_binary_frame_for_msgpack(
    codec: Codec,
) -> None:
    frame = codec.encode(HeartbeatAck(ts=1))
    assert isinstance(frame, bytes if codec.binary else str)


def test_encode_json_matches_the_json_codec() -> None:
    assert encode_json(WELCOME) == JSON.encode(WELCOME)


@CODECS
@pytest.mark.parametrize(
    "message",
    [
        WELCOME,
        msgspec.structs.replace(WELCOME, resumed=True, resume_error="invalid"),
        HeartbeatAck(ts=99),
        ServerShutdown(reason="bye", reconnect_after_ms=0),
        EchoReply(data=[1, {"k": "v"}], seq=3),
        Said(from_="s", text="t", seq=1),
        UserLeft(session="s", reason="expired", seq=2),
    ],
    ids=repr,
)
def test_every_server_message_round_trips_through_decode_server(codec: Codec, message: Any) -> None:
    assert codec.decode_server(codec.encode(message)) == message


# ------------------------------------------------------------------ encode_body + stamp
STREAM_MESSAGES = [
    EchoReply(data={"n": 1}),
    EchoReply(data=None),
    EchoReply(data={f"k{i}": i for i in range(40)}),  # a big payload inside a small map
    Said(from_="abc", text="hi ✓"),
    UserLeft(session="abc", reason="graceful"),
]
SEQS = [1, 2, 127, 128, 255, 256, 65_535, 65_536, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**64 - 1]


@CODECS
@pytest.mark.parametrize("message", STREAM_MESSAGES, ids=repr)
@pytest.mark.parametrize("seq", SEQS)
def test_stamp_decodes_to_the_same_message_with_that_seq(
    codec: Codec, message: Any, seq: int
) -> None:
    frame = codec.stamp(codec.encode_body(message), seq)
    assert codec.decode_server(frame) == msgspec.structs.replace(message, seq=seq)
    assert as_plain(codec, frame)["seq"] == seq


@CODECS
def test_one_body_stamped_for_many_recipients_gives_each_its_own_seq(codec: Codec) -> None:
    message = Said(from_="abc", text="hi")
    body = codec.encode_body(message)
    frames = [codec.stamp(body, seq) for seq in range(1, 51)]
    assert [codec.decode_server(f).seq for f in frames] == list(range(1, 51))
    assert codec.encode_body(message) == body  # the shared body is untouched


@CODECS
def test_encode_body_leaves_out_seq(codec: Codec) -> None:
    assert "seq" not in as_plain(codec, codec.encode_body(Said(from_="a", text="b")))


@CODECS
def test_encode_body_refuses_a_message_with_seq_set(codec: Codec) -> None:
    with pytest.raises(ValueError, match="without seq"):
        codec.encode_body(Said(from_="a", text="b", seq=1))


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


@pytest.mark.parametrize("body", [b"\x90", b"\xa3abc", b"\x01", b"\xc0"])
def test_msgpack_add_field_refuses_a_body_that_is_not_a_map(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a msgpack map"):
        _msgpack_add_field(body, b"\xa3seq", b"\x01")


# ------------------------------------------------------------------ decode errors
def test_binary_frame_without_msgpack_subprotocol_closes_1003() -> None:
    frame = msgspec.msgpack.encode({"type": "say", "text": "hi"})
    error = decode_error(JSON, frame)
    assert error.code == CloseCode.UNSUPPORTED_DATA == 1003


def test_binary_frame_holding_valid_json_without_msgpack_subprotocol_closes_1003() -> None:
    assert decode_error(JSON, b'{"type":"say","text":"hi"}').code == 1003


def test_text_frame_under_msgpack_subprotocol_closes_1003() -> None:
    error = decode_error(MSGPACK, '{"type":"say","text":"hi"}')
    assert error.code == CloseCode.UNSUPPORTED_DATA == 1003


@pytest.mark.parametrize(
    "frame",
    ["", "{", "not json", '{"type":"say","text":"hi"', '{"type":"say",}', "{'type':'say'}", "\x00"],
)
def test_malformed_json_closes_1007(frame: str) -> None:
    assert decode_error(JSON, frame).code == CloseCode.INVALID_PAYLOAD == 1007


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x82\xa4type",  # truncated map
        b"\xc1",  # never-used byte
        b"\x82\xa4type\xa3say\xa4text\xa2\xff\xfe",  # string that is not UTF-8
        msgspec.msgpack.encode({"type": "say", "text": "hi"}) + b"\x00",  # trailing data
    ],
)
def test_malformed_msgpack_closes_1007(frame: bytes) -> None:
    assert decode_error(MSGPACK, frame).code == 1007


SCHEMA_VIOLATIONS = [
    {"text": "no type"},
    {"type": "nope"},
    {"type": 1},
    {"type": "say"},  # text is required
    {"type": "say", "text": 5},
    {"type": "say", "text": None},
    {"type": "heartbeat"},  # ts is required
    {"type": "heartbeat", "ts": "soon"},
    {"type": "echo", "data": 1, "cseq": "1"},
    {"type": "echo", "cseq": 1.5},
    [],
    ["say", "hi"],
    "say",
    42,
    None,
]


@CODECS
@pytest.mark.parametrize("value", SCHEMA_VIOLATIONS, ids=repr)
def test_schema_violation_closes_1007(codec: Codec, value: Any) -> None:
    assert decode_error(codec, wire(codec, value)).code == 1007


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deeply_nested_json_data_closes_1007_instead_of_crashing(depth: int) -> None:
    frame = '{"type":"echo","data":' + "[" * depth + "]" * depth + "}"
    assert decode_error(JSON, frame).code == 1007


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_deeply_nested_msgpack_data_closes_1007_instead_of_crashing(depth: int) -> None:
    frame = b"\x82\xa4type\xa4echo\xa4data" + b"\x91" * depth + b"\xc0"
    assert decode_error(MSGPACK, frame).code == 1007


def test_text_with_lone_surrogate_closes_1007() -> None:
    assert decode_error(JSON, '{"type":"say","text":"\ud800"}').code == 1007


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


def test_protocol_error_reason_of_exactly_the_limit_is_kept_whole() -> None:
    text = "x" * MAX_REASON_BYTES
    assert ProtocolError(1007, text).reason == text


@CODECS
def test_decode_error_reason_quoting_a_long_multibyte_value_fits_a_close_frame(
    codec: Codec,
) -> None:
    error = decode_error(codec, wire(codec, {"type": "é" * 400, "text": "ü" * 400}))
    assert error.code == 1007
    assert len(error.reason.encode()) <= MAX_REASON_BYTES


# ------------------------------------------------------------------ fuzz
def assert_decodes_or_protocol_error(codec: Codec, frame: str | bytes) -> None:
    try:
        message = codec.decode(frame)
    except ProtocolError as error:
        assert error.code in (1003, 1007)
        assert len(error.reason.encode()) <= MAX_REASON_BYTES
    else:
        assert isinstance(message, Echo | Say | Heartbeat)


@CODECS
@FUZZ
@given(frame=st.binary(max_size=256))
def test_random_bytes_never_raise_anything_but_protocol_error(codec: Codec, frame: bytes) -> None:
    assert_decodes_or_protocol_error(codec, frame)


@CODECS
@FUZZ
@given(frame=st.text(max_size=256))
def test_random_text_never_raises_anything_but_protocol_error(codec: Codec, frame: str) -> None:
    assert_decodes_or_protocol_error(codec, frame)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities dump as invalid JSON: 1007
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELD_NAMES = st.sampled_from(["type", "cseq", "data", "text", "ts", "from", "seq", "x"])
MESSAGE_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["echo", "say", "heartbeat", "said", "", "ECHO"])},
    optional={"cseq": JSON_VALUES, "data": JSON_VALUES, "text": JSON_VALUES, "ts": JSON_VALUES},
) | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=5)


@FUZZ
@given(value=JSON_VALUES | MESSAGE_LIKE)
def test_random_json_values_never_raise_anything_but_protocol_error(value: Any) -> None:
    assert_decodes_or_protocol_error(JSON, json.dumps(value))


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
    max_leaves=30,
)


@FUZZ
@given(
    value=MSGPACK_VALUES
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "say", "heartbeat", "said"])},
        optional={"cseq": MSGPACK_VALUES, "text": MSGPACK_VALUES, "ts": MSGPACK_VALUES},
    )
)
def test_random_msgpack_values_never_raise_anything_but_protocol_error(value: Any) -> None:
    assert_decodes_or_protocol_error(MSGPACK, msgspec.msgpack.encode(value))


ECHO_DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@CODECS
@FUZZ
@given(data=ECHO_DATA, cseq=st.none() | st.integers(min_value=0, max_value=2**63 - 1))
def test_any_echo_payload_round_trips_and_comes_back_with_its_seq(
    codec: Codec, data: Any, cseq: int | None
) -> None:
    message = codec.decode(wire(codec, Echo(data=data, cseq=cseq)))
    assert message == Echo(data=data, cseq=cseq)
    frame = codec.stamp(codec.encode_body(EchoReply(data=message.data)), 1)
    assert codec.decode_server(frame) == EchoReply(data=data, seq=1)
