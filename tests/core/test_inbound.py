"""What one connection does with each client frame: deliver, reply, close or skip.

Time is fake (``now`` passed in); the rate bucket is a real ``TokenBucket``.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.close_codes import CloseCode
from core.inbound import (
    CLOSE,
    DEFAULT_MAX_SAY_BYTES,
    DELIVER,
    RATE_LIMITED,
    REPLY,
    SKIP,
    InboundRules,
)
from core.protocol import (
    ClientMessage,
    Codec,
    Echo,
    Error,
    HeartbeatAck,
    Say,
)
from core.rate_limit import TokenBucket
from core.session import Session

T0 = 100.0


class Poke(ClientMessage, tag="poke", kw_only=True):
    n: int


def rules(
    *,
    binary: bool = False,
    rate: float = 100.0,
    burst: float = 200.0,
    max_say_bytes: int = DEFAULT_MAX_SAY_BYTES,
) -> InboundRules:
    codec = Codec(binary=binary, messages=(Poke,))
    return InboundRules(codec, TokenBucket(rate, burst, now=T0), max_say_bytes)


def payload(value: object, binary: bool = False) -> bytes:
    return msgspec.msgpack.encode(value) if binary else msgspec.json.encode(value)


def on(
    inbound: InboundRules, session: Session, value: object, now: float = T0
) -> tuple[int, object]:
    binary = inbound.codec.binary
    return inbound.on_data(session, payload(value, binary), not binary, now)


# ------------------------------------------------------------------ deliver
@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_good_message_is_delivered(binary: bool) -> None:
    inbound, session = rules(binary=binary), Session()
    assert on(inbound, session, {"type": "say", "text": "hi", "cseq": 1}) == (
        DELIVER,
        Say(text="hi", cseq=1),
    )
    assert on(inbound, session, {"type": "echo", "data": [1]}) == (DELIVER, Echo(data=[1]))
    assert on(inbound, session, {"type": "poke", "n": 3}) == (DELIVER, Poke(n=3))


def test_delivering_does_not_mark_the_message_processed() -> None:
    """The caller marks it (``session.processed``) once the app has handled it."""
    inbound, session = rules(), Session()
    message = {"type": "say", "text": "hi", "cseq": 1}
    assert on(inbound, session, message)[0] == DELIVER
    assert session.last_cseq == 0
    assert on(inbound, session, message)[0] == DELIVER


# ------------------------------------------------------------------ heartbeat
def test_a_heartbeat_is_answered_with_an_ack_carrying_last_cseq() -> None:
    inbound, session = rules(), Session()
    session.processed(41)
    action, reply = on(inbound, session, {"type": "heartbeat", "ts": 1234})
    assert (action, reply) == (REPLY, HeartbeatAck(ts=1234, last_cseq=41))


def test_the_ack_echoes_timestamp_when_the_client_sent_timestamp() -> None:
    inbound, session = rules(), Session()
    action, reply = on(inbound, session, {"type": "heartbeat", "timestamp": 1700000000000})
    assert action == REPLY
    assert reply == HeartbeatAck(ts=None, timestamp=1700000000000, last_cseq=0)
    assert Codec().encode(reply) == b'{"type":"heartbeat_ack","timestamp":1700000000000}'


def test_a_heartbeat_is_answered_even_with_an_old_cseq() -> None:
    inbound, session = rules(), Session()
    session.processed(10)
    assert on(inbound, session, {"type": "heartbeat", "ts": 1, "cseq": 3})[0] == REPLY


# ------------------------------------------------------------------ errors that keep the link
@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_an_unknown_type_is_answered_with_error_and_the_connection_stays(binary: bool) -> None:
    inbound, session = rules(binary=binary), Session()
    action, reply = on(inbound, session, {"type": "teleport", "cseq": 7})
    assert action == REPLY
    assert reply == Error(code="unknown_type", reason="unknown message type 'teleport'", cseq=7)
    # ... and the next message is served as usual.
    assert on(inbound, session, {"type": "say", "text": "hi", "cseq": 8})[0] == DELIVER


def test_a_message_of_the_wrong_shape_is_answered_with_invalid_message() -> None:
    inbound, session = rules(), Session()
    action, reply = on(inbound, session, {"type": "poke", "n": "three", "cseq": 2})
    assert action == REPLY
    assert isinstance(reply, Error)
    assert (reply.code, reply.cseq) == ("invalid_message", 2)


def test_an_error_reply_leaves_the_cseq_out_when_the_message_had_no_valid_one() -> None:
    inbound, session = rules(), Session()
    _, reply = on(inbound, session, {"type": "teleport", "cseq": -4})
    assert isinstance(reply, Error) and reply.cseq is None


# ------------------------------------------------------------------ closes
def test_a_payload_that_is_not_json_closes_1007() -> None:
    inbound, session = rules(), Session()
    action, (code, reason) = inbound.on_data(session, b"{not json", True, T0)
    assert (action, code) == (CLOSE, CloseCode.INVALID_PAYLOAD)
    assert "JSON" in reason


def test_a_binary_frame_on_a_json_connection_closes_1003() -> None:
    inbound, session = rules(), Session()
    frame = msgspec.json.encode({"type": "say", "text": "hi"})
    action, (code, _) = inbound.on_data(session, frame, False, T0)
    assert (action, code) == (CLOSE, CloseCode.UNSUPPORTED_DATA)


def test_a_text_frame_on_a_msgpack_connection_closes_1003() -> None:
    inbound, session = rules(binary=True), Session()
    frame = msgspec.msgpack.encode({"type": "say", "text": "hi"})
    action, (code, _) = inbound.on_data(session, frame, True, T0)
    assert (action, code) == (CLOSE, CloseCode.UNSUPPORTED_DATA)


def test_the_connection_is_closed_1008_once_the_bucket_is_empty() -> None:
    inbound, session = rules(rate=1.0, burst=5), Session()
    good = {"type": "echo", "data": 1}
    assert [on(inbound, session, good)[0] for _ in range(5)] == [DELIVER] * 5
    assert on(inbound, session, good) == (CLOSE, RATE_LIMITED)
    assert RATE_LIMITED == (1008, "message rate limit")


def test_the_bucket_refills_at_the_rate() -> None:
    inbound, session = rules(rate=2.0, burst=2), Session()
    good = {"type": "echo"}
    assert on(inbound, session, good, T0)[0] == DELIVER
    assert on(inbound, session, good, T0)[0] == DELIVER
    assert on(inbound, session, good, T0)[0] == CLOSE
    assert on(inbound, session, good, T0 + 0.5)[0] == DELIVER  # one token back
    assert on(inbound, session, good, T0 + 0.5)[0] == CLOSE


def test_a_client_sending_only_bad_messages_is_closed_by_the_rate_limit() -> None:
    """Error replies cost a token each: answering must not be a free amplifier."""
    inbound, session = rules(rate=1.0, burst=10), Session()
    bad = {"type": "teleport"}
    actions = [on(inbound, session, bad)[0] for _ in range(11)]
    assert actions == [REPLY] * 10 + [CLOSE]
    assert on(inbound, session, bad) == (CLOSE, RATE_LIMITED)


def test_duplicates_and_heartbeats_cost_a_token_too() -> None:
    inbound, session = rules(rate=1.0, burst=3), Session()
    session.processed(5)
    assert on(inbound, session, {"type": "echo", "cseq": 4})[0] == SKIP
    assert on(inbound, session, {"type": "heartbeat", "ts": 1})[0] == REPLY
    assert on(inbound, session, {"type": "echo", "cseq": 6})[0] == DELIVER
    assert on(inbound, session, {"type": "echo", "cseq": 7}) == (CLOSE, RATE_LIMITED)


def test_pings_and_unasked_pongs_share_the_bucket() -> None:
    inbound, session = rules(rate=1.0, burst=3), Session()
    assert inbound.on_control(T0) is True
    assert inbound.on_control(T0) is True
    assert on(inbound, session, {"type": "echo"})[0] == DELIVER
    assert inbound.on_control(T0) is False
    assert on(inbound, session, {"type": "echo"}) == (CLOSE, RATE_LIMITED)
    assert inbound.on_control(T0 + 1.0) is True


# ------------------------------------------------------------------ exactly once
def test_a_message_at_or_below_the_high_water_mark_is_skipped() -> None:
    inbound, session = rules(), Session()
    session.processed(5)
    assert on(inbound, session, {"type": "say", "text": "again", "cseq": 5}) == (SKIP, None)
    assert on(inbound, session, {"type": "say", "text": "older", "cseq": 1}) == (SKIP, None)
    assert on(inbound, session, {"type": "say", "text": "new", "cseq": 6})[0] == DELIVER
    assert on(inbound, session, {"type": "say", "text": "none"})[0] == DELIVER  # no cseq


def test_a_resent_message_after_the_caller_processed_it_is_skipped() -> None:
    inbound, session = rules(), Session()
    message = {"type": "poke", "n": 1, "cseq": 1}
    action, delivered = on(inbound, session, message)
    assert action == DELIVER
    session.processed(delivered.cseq)  # what the caller does after the app
    assert on(inbound, session, message) == (SKIP, None)


# ------------------------------------------------------------------ say length
def test_a_say_over_max_say_bytes_is_refused_with_too_long() -> None:
    inbound, session = rules(max_say_bytes=10), Session()
    action, reply = on(inbound, session, {"type": "say", "text": "x" * 11, "cseq": 3})
    assert action == REPLY
    assert isinstance(reply, Error)
    assert (reply.code, reply.cseq) == ("too_long", 3)
    assert "11 bytes" in reply.reason
    assert on(inbound, session, {"type": "say", "text": "x" * 10})[0] == DELIVER


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("é" * 5, DELIVER),  # 5 characters, 10 bytes
        ("é" * 6, REPLY),  # 6 characters, 12 bytes
        ("😀" * 2 + "ab", DELIVER),  # 4 characters, 10 bytes
        ("😀" * 3, REPLY),  # 3 characters, 12 bytes
        ("✓" * 4, REPLY),  # 4 characters, 12 bytes
    ],
)
def test_say_length_is_counted_in_utf8_bytes_not_characters(text: str, action: int) -> None:
    inbound, session = rules(max_say_bytes=10), Session()
    got, reply = on(inbound, session, {"type": "say", "text": text})
    assert got == action
    if action == REPLY:
        assert isinstance(reply, Error) and reply.code == "too_long"


def test_the_say_limit_applies_to_say_only() -> None:
    inbound, session = rules(max_say_bytes=10), Session()
    assert on(inbound, session, {"type": "echo", "data": "x" * 100})[0] == DELIVER


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=40), limit=st.integers(1, 60))
def test_a_say_is_refused_exactly_when_its_utf8_is_longer_than_the_limit(
    text: str, limit: int
) -> None:
    inbound, session = rules(max_say_bytes=limit), Session()
    action, reply = on(inbound, session, {"type": "say", "text": text})
    if len(text.encode()) > limit:
        assert action == REPLY and isinstance(reply, Error) and reply.code == "too_long"
    else:
        assert (action, reply) == (DELIVER, Say(text=text))


# ------------------------------------------------------------------ token confirmation
@pytest.mark.parametrize(
    "value",
    [{"type": "say", "text": "hi"}, {"type": "heartbeat", "ts": 1}],
    ids=["message", "heartbeat"],
)
def test_the_first_data_frame_confirms_the_sessions_token(value: dict[str, object]) -> None:
    inbound, session = rules(), Session()
    session.next_token_epoch()
    session.next_token_epoch()  # a resume's welcome: epoch 2, token 1 still works meanwhile
    assert session.token_confirmed is False
    assert session.accepts_epoch(1)
    on(inbound, session, value)
    assert session.token_confirmed is True
    assert not session.accepts_epoch(1)  # the older token is dead now


def test_a_duplicate_still_confirms_the_token() -> None:
    inbound, session = rules(), Session()
    session.processed(3)
    session.next_token_epoch()
    assert on(inbound, session, {"type": "echo", "cseq": 2}) == (SKIP, None)
    assert session.token_confirmed is True


def test_a_frame_that_closes_the_connection_confirms_nothing() -> None:
    inbound, session = rules(), Session()
    session.next_token_epoch()
    assert inbound.on_data(session, b"garbage", True, T0)[0] == CLOSE
    assert session.token_confirmed is False
