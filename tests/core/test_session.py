"""The sans-I/O session: stream numbering, replay buffer, lifecycle, tokens' epoch, hand-off.

Time is fake: plain floats passed as ``now``.
"""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.protocol import EchoReply, Said, StreamMessage, UserLeft
from core.session import (
    DEFAULT_GRACE,
    DEFAULT_REPLAY_BUFFER,
    ResumePlan,
    Session,
    SessionSnapshot,
    SessionState,
    SessionStateError,
    new_session_id,
)

T0 = 1000.0


def said(i: int) -> Said:
    return Said(from_="0123456789abcdef", text=f"m{i}")


def filled(n: int, *, buffer_size: int = DEFAULT_REPLAY_BUFFER, grace: float = 10.0) -> Session:
    session = Session(grace=grace, buffer_size=buffer_size)
    for i in range(1, n + 1):
        session.record(said(i))
    return session


def seqs(plan: ResumePlan) -> list[int]:
    return [seq for seq, _ in plan.replay]


# ===================================================================== construction
def test_new_session_defaults() -> None:
    session = Session()
    assert session.state is SessionState.CONNECTED
    assert (session.epoch, session.last_seq, session.last_cseq) == (0, 0, 0)
    assert session.grace == DEFAULT_GRACE
    assert session.away_since is None and session.away_reason is None
    assert session.grace_deadline is None
    assert session.buffered == 0


def test_session_ids_are_unique_64_bit_hex() -> None:
    ids = {Session().id for _ in range(2000)} | {new_session_id() for _ in range(2000)}
    assert len(ids) == 4000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_a_given_session_id_is_kept() -> None:
    assert Session("abc123").id == "abc123"


def test_buffer_must_hold_a_message() -> None:
    with pytest.raises(ValueError):
        Session(buffer_size=0)


# ===================================================================== outbound stream
def test_record_numbers_contiguously_from_1_and_keeps_messages() -> None:
    session = Session()
    messages = [said(i) for i in range(1, 101)]
    assert [session.record(m) for m in messages] == list(range(1, 101))
    assert session.last_seq == 100
    assert session.buffered == 100
    plan = session.resume(0, 0, T0)
    assert plan == ResumePlan(replay=list(enumerate(messages, start=1)), gap=False)
    # The very objects recorded are replayed (shared between broadcast recipients).
    assert all(got is sent for (_, got), sent in zip(plan.replay, messages, strict=True))


def test_each_session_numbers_its_own_stream() -> None:
    a, b = Session(), Session()
    a.record(said(1))
    a.record(said(2))
    assert b.record(said(1)) == 1
    assert a.record(said(3)) == 3


def test_buffer_is_bounded() -> None:
    session = filled(10, buffer_size=4)
    assert session.buffered == 4
    assert session.last_seq == 10
    assert seqs(session.resume(0, 6, T0)) == [7, 8, 9, 10]


def test_resume_older_than_the_buffer_reports_a_gap_and_replays_what_is_left() -> None:
    session = filled(10, buffer_size=4)  # holds 7..10
    plan = session.resume(0, 2, T0)
    assert plan.gap is True
    assert plan.replay == [(i, said(i)) for i in range(7, 11)]


def test_resume_just_before_the_buffer_has_no_gap() -> None:
    session = filled(10, buffer_size=4)  # holds 7..10: last_seq 6 misses nothing
    plan = session.resume(0, 6, T0)
    assert plan.gap is False
    assert seqs(plan) == [7, 8, 9, 10]
    session.next_token_epoch()
    plan = session.resume(1, 5, T0)  # 6 is gone
    assert plan.gap is True
    assert seqs(plan) == [7, 8, 9, 10]


@pytest.mark.parametrize("last_seq", [0, 1, 5, 9])
def test_resume_replays_exactly_the_messages_after_last_seq(last_seq: int) -> None:
    session = filled(10)
    session.away("abnormal", T0)
    plan = session.resume(0, last_seq, T0 + 1)
    assert plan.gap is False
    assert plan.replay == [(i, said(i)) for i in range(last_seq + 1, 11)]
    assert len(set(seqs(plan))) == len(plan.replay)  # none twice


def test_resume_with_everything_seen_replays_nothing() -> None:
    session = filled(10)
    session.away("abnormal", T0)
    assert session.resume(0, 10, T0 + 1) == ResumePlan(replay=[], gap=False)


def test_resume_of_an_empty_session_replays_nothing() -> None:
    session = Session()
    session.away("abnormal", T0)
    assert session.resume(0, 0, T0) == ResumePlan(replay=[], gap=False)


def test_messages_recorded_while_away_are_replayed() -> None:
    session = filled(3)
    session.away("abnormal", T0)
    session.record(said(4))
    session.record(said(5))
    assert session.resume(0, 3, T0 + 1).replay == [(4, said(4)), (5, said(5))]


def test_resume_does_not_consume_the_buffer() -> None:
    session = filled(5)
    assert seqs(session.resume(0, 2, T0)) == [3, 4, 5]
    session.next_token_epoch()
    assert seqs(session.resume(1, 1, T0)) == [2, 3, 4, 5]
    assert session.buffered == 5


@pytest.mark.parametrize("last_seq", [11, 12, 10**9, -1, -100])
def test_resume_with_last_seq_out_of_range_is_refused(last_seq: int) -> None:
    session = filled(10)
    session.away("abnormal", T0)
    with pytest.raises(ValueError):
        session.resume(0, last_seq, T0 + 1)
    # A refused resume changes nothing.
    assert session.state is SessionState.AWAY
    assert session.away_since == T0
    assert session.resume(0, 10, T0 + 1).replay == []


# ===================================================================== tokens' epoch
def test_stale_epoch_is_refused() -> None:
    session = filled(3)
    session.away("abnormal", T0)
    with pytest.raises(ValueError):
        session.resume(1, 3, T0)
    with pytest.raises(ValueError):
        session.resume(-1, 3, T0)
    assert session.state is SessionState.AWAY


def test_after_next_token_epoch_the_old_token_fails() -> None:
    session = filled(3)
    assert session.next_token_epoch() == 1  # first welcome
    session.away("abnormal", T0)
    session.resume(1, 3, T0 + 1)
    assert session.next_token_epoch() == 2  # welcome of the resume
    session.confirm_token()  # the client spoke on that connection: it has token 2
    session.away("abnormal", T0 + 2)
    with pytest.raises(ValueError):
        session.resume(1, 3, T0 + 3)  # the token already used
    assert session.state is SessionState.AWAY
    assert session.resume(2, 3, T0 + 3).replay == []


def test_a_lost_welcome_lets_the_previous_token_resume_until_the_new_one_is_confirmed() -> None:
    session = filled(3)
    session.next_token_epoch()  # 1: first welcome, delivered
    session.confirm_token()
    session.away("abnormal", T0)
    session.resume(1, 3, T0 + 1)
    session.next_token_epoch()  # 2: this welcome is lost with the link
    session.away("abnormal", T0 + 2)
    assert session.accepts_epoch(1) and session.accepts_epoch(2)
    assert not session.accepts_epoch(0)  # two back: never
    session.resume(1, 3, T0 + 3)  # the client only has token 1
    session.next_token_epoch()  # 3
    session.confirm_token()
    assert not session.accepts_epoch(2) and session.accepts_epoch(3)


def test_epoch_counts_welcomes() -> None:
    session = Session()
    assert [session.next_token_epoch() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert session.epoch == 5


# ===================================================================== inbound cseq
def test_is_duplicate_and_processed_keep_a_high_water_mark() -> None:
    session = Session()
    assert not session.is_duplicate(1)
    session.processed(1)
    assert session.is_duplicate(1)
    assert session.is_duplicate(0)
    assert not session.is_duplicate(2)
    session.processed(5)
    assert session.last_cseq == 5
    for cseq in (1, 4, 5):
        assert session.is_duplicate(cseq)
    assert not session.is_duplicate(6)


def test_processed_never_lowers_the_high_water_mark() -> None:
    session = Session()
    session.processed(10)
    for cseq in (9, 10, 0, None):
        session.processed(cseq)
    assert session.last_cseq == 10


def test_none_cseq_is_never_a_duplicate() -> None:
    session = Session()
    assert not session.is_duplicate(None)
    session.processed(None)
    assert session.last_cseq == 0
    session.processed(7)
    assert not session.is_duplicate(None)


def test_cseq_high_water_mark_survives_away_and_resume() -> None:
    session = Session()
    session.processed(3)
    session.away("abnormal", T0)
    session.resume(0, 0, T0 + 1)
    assert session.last_cseq == 3
    assert session.is_duplicate(3)


# ===================================================================== lifecycle
def test_away_returns_the_grace_deadline() -> None:
    session = Session(grace=30.0)
    assert session.away("heartbeat_timeout", T0) == T0 + 30.0
    assert session.state is SessionState.AWAY
    assert session.away_since == T0
    assert session.away_reason == "heartbeat_timeout"
    assert session.grace_deadline == T0 + 30.0


def test_expired_exactly_at_the_deadline() -> None:
    session = Session(grace=30.0)
    deadline = session.away("abnormal", T0)
    assert not session.expired(T0)
    assert not session.expired(deadline - 1e-6)
    assert session.expired(deadline)
    assert session.expired(deadline + 1000)


def test_a_connected_session_never_expires() -> None:
    session = Session(grace=1.0)
    assert not session.expired(T0 + 10**9)
    with pytest.raises(SessionStateError):
        session.expire(T0 + 10**9)


def test_resume_just_inside_the_grace_window() -> None:
    session = filled(2, grace=30.0)
    deadline = session.away("abnormal", T0)
    plan = session.resume(0, 1, deadline - 1e-6)
    assert seqs(plan) == [2]
    assert session.state is SessionState.CONNECTED
    assert session.away_since is None and session.away_reason is None
    assert session.grace_deadline is None


@pytest.mark.parametrize("late", [0.0, 0.5, 1000.0])
def test_resume_after_the_grace_ran_out_raises(late: float) -> None:
    session = filled(2, grace=30.0)
    deadline = session.away("abnormal", T0)
    with pytest.raises(SessionStateError):
        session.resume(0, 2, deadline + late)
    assert session.state is SessionState.AWAY  # still for the expiry timer to end


def test_expire_before_the_deadline_raises() -> None:
    session = filled(2, grace=30.0)
    deadline = session.away("abnormal", T0)
    with pytest.raises(SessionStateError):
        session.expire(deadline - 1e-6)
    assert session.state is SessionState.AWAY
    assert session.buffered == 2


def test_expire_ends_the_session() -> None:
    session = filled(2, grace=30.0)
    deadline = session.away("abnormal", T0)
    session.expire(deadline)
    assert session.state is SessionState.EXPIRED
    assert session.buffered == 0
    assert not session.expired(deadline + 1)  # no longer away
    with pytest.raises(SessionStateError):
        session.record(said(3))
    with pytest.raises(SessionStateError):
        session.resume(0, 2, deadline)
    with pytest.raises(SessionStateError):
        session.expire(deadline + 1)
    with pytest.raises(SessionStateError):
        session.leave()
    with pytest.raises(SessionStateError):
        session.away("abnormal", deadline)


@pytest.mark.parametrize("away_first", [False, True])
def test_leave_ends_the_session(away_first: bool) -> None:
    session = filled(2)
    if away_first:
        session.away("abnormal", T0)
    session.leave()
    assert session.state is SessionState.LEFT
    assert session.buffered == 0
    assert session.last_seq == 2
    with pytest.raises(SessionStateError):
        session.record(said(3))
    with pytest.raises(SessionStateError):
        session.resume(0, 2, T0)
    with pytest.raises(SessionStateError):
        session.leave()
    with pytest.raises(SessionStateError):
        session.away("abnormal", T0)
    with pytest.raises(SessionStateError):
        session.expire(T0 + 10**9)


def test_resume_from_connected_is_allowed_for_a_zombie() -> None:
    """The old connection is a zombie the server has not noticed: resume anyway."""
    session = filled(5)
    session.next_token_epoch()
    plan = session.resume(1, 3, T0)
    assert plan == ResumePlan(replay=[(4, said(4)), (5, said(5))], gap=False)
    assert session.state is SessionState.CONNECTED


def test_away_twice_is_illegal() -> None:
    session = Session()
    session.away("abnormal", T0)
    with pytest.raises(SessionStateError):
        session.away("abnormal", T0 + 1)
    assert session.away_since == T0  # the first deadline stands


def test_away_resume_away_again() -> None:
    session = Session(grace=10.0)
    session.away("abnormal", T0)
    session.resume(0, 0, T0 + 5)
    session.next_token_epoch()
    assert session.away("heartbeat_timeout", T0 + 100) == T0 + 110
    assert not session.expired(T0 + 109)
    assert session.expired(T0 + 110)


# ===================================================================== hand-off
STREAM_MESSAGES: list[StreamMessage] = [
    EchoReply(data={"x": [1, 2.5, "three", None, True], "nested": {"k": "v"}}),
    EchoReply(data=None),
    EchoReply(data="plain"),
    Said(from_="0123456789abcdef", text="héllo ✓"),
    Said(from_="fedcba9876543210", text=""),
    UserLeft(session="0123456789abcdef", reason="heartbeat_timeout"),
]


def roundtrip(snapshot: SessionSnapshot) -> SessionSnapshot:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=SessionSnapshot)


def assert_same_session(a: Session, b: Session) -> None:
    assert b.id == a.id
    assert b.state is a.state
    assert b.epoch == a.epoch
    assert b.last_seq == a.last_seq
    assert b.last_cseq == a.last_cseq
    assert b.grace == a.grace
    assert b.away_since == a.away_since
    assert b.away_reason == a.away_reason
    assert b.grace_deadline == a.grace_deadline
    assert b.buffered == a.buffered
    assert b.snapshot() == a.snapshot()


@pytest.mark.parametrize("message", STREAM_MESSAGES, ids=lambda m: type(m).__name__)
def test_snapshot_roundtrip_keeps_each_stream_message_type(message: StreamMessage) -> None:
    session = Session(grace=45.0, buffer_size=8)
    session.record(message)
    session.record(said(2))
    restored = Session.restore(roundtrip(session.snapshot()))
    assert_same_session(session, restored)
    (seq, got), _ = restored.resume(0, 0, T0).replay
    assert seq == 1
    assert type(got) is type(message)
    assert got == message
    assert got is not message


def test_snapshot_roundtrip_of_a_mixed_buffer_that_overflowed() -> None:
    session = Session("0123456789abcdef", grace=30.0, buffer_size=4)
    for message in STREAM_MESSAGES * 2:  # 12 recorded, 9..12 buffered
        session.record(message)
    session.processed(17)
    session.next_token_epoch()
    session.next_token_epoch()
    session.away("abnormal", T0)

    snap = roundtrip(session.snapshot())
    assert snap.buffer_size == 4
    assert [e.seq for e in snap.buffer] == [9, 10, 11, 12]
    restored = Session.restore(snap)
    assert_same_session(session, restored)
    assert restored.state is SessionState.AWAY
    assert (restored.epoch, restored.last_seq, restored.last_cseq) == (2, 12, 17)
    assert restored.away_since == T0 and restored.away_reason == "abnormal"
    assert restored.grace_deadline == T0 + 30.0

    # The restored session behaves exactly like the original.
    expected = session.resume(2, 3, T0 + 1)
    got = restored.resume(2, 3, T0 + 1)
    assert got == expected
    assert got.gap is True
    assert got.replay == [(9 + i, m) for i, m in enumerate(STREAM_MESSAGES[2:])]
    assert [type(m) for _, m in got.replay] == [type(m) for m in STREAM_MESSAGES[2:]]
    # ... including the bound of its buffer.
    restored.record(said(13))
    assert restored.buffered == 4


def test_snapshot_roundtrip_of_a_connected_session() -> None:
    session = filled(3)
    session.next_token_epoch()
    restored = Session.restore(roundtrip(session.snapshot()))
    assert_same_session(session, restored)
    assert restored.state is SessionState.CONNECTED
    assert restored.away_since is None
    assert restored.record(said(4)) == 4


@pytest.mark.parametrize("end", ["leave", "expire"])
def test_snapshot_roundtrip_of_an_ended_session(end: str) -> None:
    session = filled(3, grace=1.0)
    deadline = session.away("abnormal", T0)
    if end == "leave":
        session.leave()
    else:
        session.expire(deadline)
    restored = Session.restore(roundtrip(session.snapshot()))
    assert_same_session(session, restored)
    with pytest.raises(SessionStateError):
        restored.record(said(4))


def test_integer_times_survive_the_roundtrip() -> None:
    """Integer ``now`` values survive the round trip as equal floats."""
    session = Session(grace=5)
    session.away("abnormal", 100)
    restored = Session.restore(roundtrip(session.snapshot()))
    assert restored.grace_deadline == 105
    assert restored.expired(105) and not restored.expired(104.9)


# ===================================================================== property
@settings(max_examples=200, deadline=None)
@given(buffer_size=st.integers(1, 8), data=st.data())
def test_replay_matches_a_model(buffer_size: int, data: st.DataObject) -> None:
    """Random record/away/resume/hand-off: each resume replays model[last_seq+1:] within
    the buffer window, in order, and reports a gap exactly when something was lost."""
    session = Session(grace=1e6, buffer_size=buffer_size)  # never runs out here
    model: list[StreamMessage] = []  # model[i] has seq i + 1
    now = T0
    steps = data.draw(
        st.lists(st.sampled_from(["record", "away", "resume", "handoff"]), max_size=60)
    )
    for step in steps:
        now += 1.0
        if step == "record":
            message = data.draw(st.sampled_from(STREAM_MESSAGES))
            model.append(message)
            assert session.record(message) == len(model)
        elif step == "away":
            if session.state is SessionState.AWAY:
                with pytest.raises(SessionStateError):
                    session.away("abnormal", now)
            else:
                assert session.away("abnormal", now) == now + 1e6
        elif step == "handoff":
            session = Session.restore(roundtrip(session.snapshot()))
        else:
            last_seq = data.draw(st.integers(0, len(model)), label="last_seq")
            plan = session.resume(session.epoch, last_seq, now)
            oldest = max(1, len(model) - buffer_size + 1)
            start = max(last_seq + 1, oldest)
            assert plan.replay == [(s, model[s - 1]) for s in range(start, len(model) + 1)]
            assert plan.gap == (last_seq + 1 < oldest)
            assert session.state is SessionState.CONNECTED
            old = session.epoch
            session.next_token_epoch()
            session.confirm_token()  # the client spoke on the new connection
            with pytest.raises(ValueError):
                session.resume(old, last_seq, now)
        assert session.last_seq == len(model)
        assert session.buffered == min(len(model), buffer_size)
