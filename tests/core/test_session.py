"""The sans-I/O session: stream numbering, replay buffer, lifecycle, tokens' epoch, hand-off.

Time is fake: plain floats passed as ``now``. Replay buffers hold ``(seq, body)`` where a
body is a stream message's JSON without ``seq`` (``core.protocol.encode_body``).
"""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.protocol import EchoReply, Said, UserLeft, encode_body
from core.session import (
    DEFAULT_GRACE,
    DEFAULT_REPLAY_BUFFER,
    DEFAULT_REPLAY_BYTES,
    ENTRY_OVERHEAD,
    RECOVER_SLACK,
    ResumePlan,
    Session,
    SessionSnapshot,
    SessionState,
    SessionStateError,
    SnapshotBatch,
    new_session_id,
    pack,
    unpack,
)

T0 = 1000.0
BIG_BUDGET = 1 << 30  # pack everything into one batch


def said(i: int) -> bytes:
    return encode_body(Said(from_="0123456789abcdef", text=f"m{i}"))


def filled(
    n: int,
    *,
    buffer_size: int = DEFAULT_REPLAY_BUFFER,
    buffer_bytes: int = DEFAULT_REPLAY_BYTES,
    grace: float = 10.0,
) -> Session:
    session = Session(grace=grace, buffer_size=buffer_size, buffer_bytes=buffer_bytes)
    for i in range(1, n + 1):
        session.record(said(i))
    return session


def seqs(plan: ResumePlan) -> list[int]:
    return [seq for seq, _ in plan.replay]


def cost(body: bytes) -> int:
    return len(body) + ENTRY_OVERHEAD


# ===================================================================== construction
def test_new_session_defaults() -> None:
    session = Session()
    assert session.state is SessionState.CONNECTED
    assert (session.epoch, session.last_seq, session.last_cseq) == (0, 0, 0)
    assert session.grace == DEFAULT_GRACE
    assert session.away_since is None and session.away_reason is None
    assert session.grace_deadline is None
    assert session.buffered == 0
    assert session.buffered_bytes == 0
    assert session.max_buffer_bytes == DEFAULT_REPLAY_BYTES
    assert session.peer == ""
    assert session.room is None
    assert session.token_confirmed is True


def test_session_keeps_its_peer_and_room() -> None:
    session = Session(peer="203.0.113.7", room="abc")
    assert (session.peer, session.room) == ("203.0.113.7", "abc")


def test_session_ids_are_unique_64_bit_hex() -> None:
    ids = {Session().id for _ in range(2000)} | {new_session_id() for _ in range(2000)}
    assert len(ids) == 4000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_a_given_session_id_is_kept() -> None:
    assert Session("abc123").id == "abc123"


def test_buffer_must_hold_a_message_and_a_byte() -> None:
    with pytest.raises(ValueError):
        Session(buffer_size=0)
    with pytest.raises(ValueError):
        Session(buffer_bytes=0)


# ===================================================================== outbound stream
def test_record_numbers_contiguously_from_1_and_keeps_bodies() -> None:
    session = Session()
    bodies = [said(i) for i in range(1, 101)]
    assert [session.record(b) for b in bodies] == list(range(1, 101))
    assert session.last_seq == 100
    assert session.buffered == 100
    assert session.buffered_bytes == sum(map(cost, bodies))
    plan = session.resume(0, 0, T0)
    assert plan == ResumePlan(replay=list(enumerate(bodies, start=1)), gap=False)
    # The very objects recorded are replayed (shared between broadcast recipients).
    assert all(got is sent for (_, got), sent in zip(plan.replay, bodies, strict=True))


def test_each_session_numbers_its_own_stream() -> None:
    a, b = Session(), Session()
    a.record(said(1))
    a.record(said(2))
    assert b.record(said(1)) == 1
    assert a.record(said(3)) == 3


def test_buffer_is_bounded_in_count() -> None:
    session = filled(10, buffer_size=4)
    assert session.buffered == 4
    assert session.last_seq == 10
    assert session.buffered_bytes == sum(cost(said(i)) for i in range(7, 11))
    assert seqs(session.resume(0, 6, T0)) == [7, 8, 9, 10]


def test_a_50_kb_body_evicts_older_entries_to_stay_in_the_byte_budget() -> None:
    budget = 60_000
    session = filled(100, buffer_bytes=budget)  # 100 small bodies (~13 KB): all fit
    assert session.buffered == 100
    big = b'{"type":"echo","data":"' + b"x" * 50_000 + b'"}'
    seq = session.record(big)
    assert seq == 101
    assert session.buffered_bytes <= budget
    assert session.buffered < 101  # the oldest went
    plan = session.resume(0, 0, T0)
    assert plan.gap is True
    assert plan.replay[-1] == (101, big)
    # What is left is the newest messages, contiguous.
    assert seqs(plan) == list(range(101 - session.buffered + 1, 102))
    # One more 50 KB body: the first one no longer fits beside it.
    session.next_token_epoch()
    session.record(big)
    assert seqs(session.resume(1, 0, T0)) == [102]
    assert session.buffered_bytes == cost(big)


def test_a_body_over_the_whole_byte_budget_is_still_kept_alone() -> None:
    session = filled(5, buffer_bytes=1000)
    huge = b"{" + b" " * 5000 + b"}"
    session.record(huge)
    assert session.buffered == 1
    assert session.buffered_bytes == cost(huge)
    assert session.resume(0, 5, T0) == ResumePlan(replay=[(6, huge)], gap=False)
    session.next_token_epoch()
    session.record(said(7))  # a small one pushes the huge one out again
    assert seqs(session.resume(1, 6, T0)) == [7]


@settings(max_examples=100, deadline=None)
@given(
    budget=st.integers(1, 20_000),
    sizes=st.lists(st.integers(0, 8_000), min_size=1, max_size=60),
)
def test_buffered_bytes_stay_under_the_budget_plus_one_entry(budget: int, sizes: list[int]) -> None:
    session = Session(buffer_bytes=budget)
    for size in sizes:
        body = b"x" * size
        session.record(body)
        assert session.buffered >= 1  # the newest is always kept
        assert session.buffered_bytes <= budget + cost(body)
        if session.buffered > 1:
            assert session.buffered_bytes <= budget
    plan = session.resume(session.epoch, 0, T0)
    assert session.buffered_bytes == sum(cost(b) for _, b in plan.replay)


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


@pytest.mark.parametrize("last_seq", [11, 12, 10**9, 2**64 + 5, -1, -100])
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
    assert session.token_confirmed is False
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


def test_expire_ends_the_session_and_frees_its_buffer() -> None:
    session = filled(2, grace=30.0)
    deadline = session.away("abnormal", T0)
    session.expire(deadline)
    assert session.state is SessionState.EXPIRED
    assert session.buffered == 0
    assert session.buffered_bytes == 0
    assert not session.expired(deadline + 1)  # no longer away
    with pytest.raises(SessionStateError):
        session.record(said(3))
    with pytest.raises(SessionStateError):
        session.resume(0, 2, deadline)
    with pytest.raises(SessionStateError):
        session.recover(0, 2, deadline)
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
    assert session.buffered_bytes == 0
    assert session.last_seq == 2
    with pytest.raises(SessionStateError):
        session.record(said(3))
    with pytest.raises(SessionStateError):
        session.resume(0, 2, T0)
    with pytest.raises(SessionStateError):
        session.recover(0, 2, T0)
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


# ===================================================================== recover (checkpoints)
def test_recover_accepts_a_client_slightly_ahead_of_the_checkpoint() -> None:
    session = filled(10)
    session.next_token_epoch()
    session.away("abnormal", T0)
    # The dead holder sent 3 more messages (and a newer token) after its checkpoint.
    plan = session.recover(2, 13, T0 + 1)
    assert plan == ResumePlan(replay=[], gap=True)
    assert session.state is SessionState.CONNECTED
    assert session.away_since is None and session.away_reason is None
    assert (session.epoch, session.last_seq) == (2, 13)
    assert session.record(said(14)) == 14  # seq continues after what the client saw


def test_recover_renumbers_what_was_recorded_since_the_checkpoint_after_the_clients_seq() -> None:
    """The dead holder sent 11..13 after its checkpoint at 10 (the client saw them, the
    checkpoint does not know them); two says recorded since the crash were numbered 11,
    12 here. They are new to the client: replayed as 14, 15, not skipped."""
    session = filled(10)
    session.from_checkpoint()
    session.away("abnormal", T0)
    assert session.record(said(100)) == 11
    assert session.record(said(101)) == 12
    restored = Session.restore(*_one(session))  # it may travel before its player is back
    plan = restored.recover(0, 13, T0 + 1)
    assert plan.gap is True
    assert plan.replay == [(14, said(100)), (15, said(101))]
    assert restored.last_seq == 15 and restored.checkpoint_seq is None
    assert restored.record(said(102)) == 16
    # A later resume replays from the renumbered buffer.
    assert restored.resume(0, 14, T0 + 2).replay == [(15, said(101)), (16, said(102))]


def test_recover_replays_what_the_checkpoint_holds_after_last_seq_and_reports_a_gap() -> None:
    session = filled(10)
    plan = session.recover(0, 7, T0)
    assert plan.gap is True
    assert plan.replay == [(8, said(8)), (9, said(9)), (10, said(10))]
    assert session.last_seq == 10


def test_recover_accepts_last_seq_up_to_the_slack() -> None:
    session = filled(3)
    session.recover(0, 3 + RECOVER_SLACK, T0)
    assert session.last_seq == 3 + RECOVER_SLACK


@pytest.mark.parametrize("last_seq", [2**64 + 5, 3 + RECOVER_SLACK + 1, -1])
def test_recover_refuses_a_last_seq_the_session_could_not_have_sent(last_seq: int) -> None:
    session = filled(3)
    session.away("abnormal", T0)
    with pytest.raises(ValueError):
        session.recover(0, last_seq, T0 + 1)
    # A refused recover changes nothing.
    assert (session.state, session.last_seq, session.epoch) == (SessionState.AWAY, 3, 0)


def test_recover_refuses_a_token_older_than_the_checkpoints_previous_one() -> None:
    session = filled(3)
    for _ in range(3):
        session.next_token_epoch()
    with pytest.raises(ValueError):
        session.recover(1, 3, T0)
    assert session.epoch == 3
    session.recover(2, 3, T0)  # the previous one is fine (its welcome may have been lost)
    assert session.epoch == 3


# ===================================================================== hand-off
STREAM_BODIES: list[bytes] = [
    encode_body(EchoReply(data={"x": [1, 2.5, "three", None, True], "nested": {"k": "v"}})),
    encode_body(EchoReply(data=None)),
    encode_body(EchoReply(data="plain")),
    encode_body(Said(from_="0123456789abcdef", text="héllo ✓")),
    encode_body(Said(from_="fedcba9876543210", text="")),
    encode_body(UserLeft(session="0123456789abcdef", reason="heartbeat_timeout")),
]


def snapshot_of(session: Session, keep: int = 0) -> tuple[SessionSnapshot, list[bytes]]:
    table: list[bytes] = []
    return session.snapshot({}, table, keep), table


def over_the_wire(batch: SnapshotBatch) -> SnapshotBatch:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(batch), type=SnapshotBatch)


def handed_off(session: Session, keep: int = 0) -> Session:
    (batch,) = pack([session], BIG_BUDGET, keep)
    (restored,) = unpack(over_the_wire(batch))
    return restored


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
    assert b.room == a.room
    assert b.peer == a.peer
    assert b.token_confirmed == a.token_confirmed
    assert b.max_buffer_bytes == a.max_buffer_bytes
    assert b.buffered == a.buffered
    assert b.buffered_bytes == a.buffered_bytes
    assert snapshot_of(b) == snapshot_of(a)


@pytest.mark.parametrize("body", STREAM_BODIES, ids=lambda b: b[:20].decode())
def test_snapshot_roundtrip_keeps_each_body_byte_for_byte(body: bytes) -> None:
    session = Session(grace=45.0, buffer_size=8, peer="198.51.100.2", room="r1")
    session.record(body)
    session.record(said(2))
    restored = handed_off(session)
    assert_same_session(session, restored)
    (seq, got), _ = restored.resume(0, 0, T0).replay
    assert (seq, got) == (1, body)


def test_snapshot_roundtrip_of_a_mixed_buffer_that_overflowed() -> None:
    session = Session("0123456789abcdef", grace=30.0, buffer_size=4, buffer_bytes=100_000)
    for body in STREAM_BODIES * 2:  # 12 recorded, 9..12 buffered
        session.record(body)
    session.processed(17)
    session.next_token_epoch()
    session.next_token_epoch()
    session.away("abnormal", T0)

    snap, table = snapshot_of(session)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=SessionSnapshot)
    assert (snap.buffer_size, snap.buffer_bytes) == (4, 100_000)
    assert [e.seq for e in snap.buffer] == [9, 10, 11, 12]
    restored = Session.restore(snap, table)
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
    assert got.replay == [(9 + i, b) for i, b in enumerate(STREAM_BODIES[2:])]
    # ... including the bounds of its buffer.
    restored.record(said(13))
    assert restored.buffered == 4


def test_snapshot_keeps_the_byte_budget_and_restore_enforces_it_afterwards() -> None:
    session = filled(50, buffer_bytes=2_000)
    restored = handed_off(session)
    assert_same_session(session, restored)
    big = b"{" + b" " * 1_500 + b"}"
    restored.record(big)
    session.record(big)
    assert restored.buffered == session.buffered
    assert restored.buffered_bytes == session.buffered_bytes <= 2_000


def test_snapshot_roundtrip_of_a_connected_session() -> None:
    session = filled(3)
    session.next_token_epoch()
    restored = handed_off(session)
    assert_same_session(session, restored)
    assert restored.state is SessionState.CONNECTED
    assert restored.token_confirmed is False
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
    restored = handed_off(session)
    assert_same_session(session, restored)
    with pytest.raises(SessionStateError):
        restored.record(said(4))


def test_integer_times_survive_the_roundtrip() -> None:
    """Integer ``now`` values survive the round trip as equal floats."""
    session = Session(grace=5)
    session.away("abnormal", 100)
    restored = handed_off(session)
    assert restored.grace_deadline == 105
    assert restored.expired(105) and not restored.expired(104.9)


@pytest.mark.parametrize("keep", [1, 3, 9])
def test_snapshot_with_keep_carries_only_the_newest_messages(keep: int) -> None:
    session = filled(9)
    snap, table = snapshot_of(session, keep)
    assert [e.seq for e in snap.buffer] == list(range(10 - keep, 10))
    assert table == [said(i) for i in range(10 - keep, 10)]
    restored = handed_off(session, keep)
    assert restored.last_seq == 9
    plan = restored.resume(0, 0, T0)
    assert seqs(plan) == list(range(10 - keep, 10))
    assert plan.gap is (keep < 9)


@pytest.mark.parametrize("keep", [0, 9, 100])
def test_snapshot_with_keep_zero_or_at_least_the_buffer_carries_everything(keep: int) -> None:
    snap, _ = snapshot_of(filled(9), keep)
    assert [e.seq for e in snap.buffer] == list(range(1, 10))


def test_a_body_twice_in_one_buffer_is_in_the_table_once() -> None:
    session = Session()
    body = said(1)
    session.record(body)
    session.record(body)
    snap, table = snapshot_of(session)
    assert table == [body]
    assert [(e.seq, e.body) for e in snap.buffer] == [(1, 0), (2, 0)]


# ===================================================================== pack / unpack
def test_pack_carries_a_body_shared_by_100_sessions_once() -> None:
    broadcast = encode_body(Said(from_="0123456789abcdef", text="x" * 1_000))
    sessions = []
    for i in range(100):
        session = Session(peer=f"10.0.0.{i}")
        session.record(said(i))  # its own
        session.record(broadcast)  # the same bytes object in every buffer
        sessions.append(session)
    (batch,) = pack(sessions, BIG_BUDGET)
    assert len(batch.sessions) == 100
    assert sum(1 for b in batch.bodies if b == broadcast) == 1
    assert len(batch.bodies) == 101  # 100 own bodies + the broadcast
    assert batch.size < 100 * len(broadcast)
    restored = unpack(over_the_wire(batch))
    plans = [s.resume(0, 0, T0) for s in restored]
    assert all(p.replay[1] == (2, broadcast) for p in plans)
    # ... and is shared again after unpack: one object, referenced by each session.
    assert len({id(p.replay[1][1]) for p in plans}) == 1


def test_pack_splits_many_sessions_into_batches_within_the_budget() -> None:
    budget = 20_000
    broadcast = encode_body(Said(from_="0123456789abcdef", text="b" * 500))
    sessions = []
    for i in range(300):
        session = Session()
        for j in range(i % 7):
            session.record(said(i * 10 + j))
        session.record(broadcast)
        sessions.append(session)
    batches = list(pack(sessions, budget))
    assert len(batches) > 1
    for batch in batches:
        assert batch.sessions
        assert batch.size <= budget
        assert sum(1 for b in batch.bodies if b is broadcast) == 1  # once per batch
        assert len({id(b) for b in batch.bodies}) == len(batch.bodies)
    ids = [snap.id for batch in batches for snap in batch.sessions]
    assert ids == [s.id for s in sessions]  # every session, once, in order


def test_pack_puts_a_session_bigger_than_the_budget_alone_in_its_batch() -> None:
    small = filled(2)
    big = filled(0)
    big.record(b"{" + b" " * 10_000 + b"}")
    batches = list(pack([small, big, small], 1_000))
    assert [[s.id for s in b.sessions] for b in batches] == [[small.id], [big.id], [small.id]]
    assert batches[1].size > 1_000


def test_pack_of_nothing_is_no_batch() -> None:
    assert list(pack([], 1_000)) == []


@settings(max_examples=100, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(0, 5), max_size=12),  # per session: which shared body it records
        min_size=1,
        max_size=25,
    ),
    budget=st.integers(100, 20_000),
    keep=st.integers(0, 6),
)
def test_pack_unpack_round_trip_gives_equal_replay_plans(
    shapes: list[list[int]], budget: int, keep: int
) -> None:
    shared = [encode_body(EchoReply(data="s" * (n * 300))) for n in range(6)]
    sessions = []
    for i, picks in enumerate(shapes):
        session = Session(buffer_size=8, buffer_bytes=3_000, peer=f"p{i}")
        for pick in picks:
            session.record(shared[pick])
        session.processed(i)
        sessions.append(session)
    batches = list(pack(sessions, budget, keep))
    restored = [s for batch in batches for s in unpack(over_the_wire(batch))]
    assert [s.id for s in restored] == [s.id for s in sessions]
    for batch in batches:
        assert batch.size <= budget or len(batch.sessions) == 1
        assert len(set(batch.bodies)) == len(batch.bodies)  # each body once per batch
    for original, copy in zip(sessions, restored, strict=True):
        assert (copy.last_seq, copy.last_cseq, copy.peer) == (
            original.last_seq,
            original.last_cseq,
            original.peer,
        )
        expected = original.resume(0, 0, T0)
        if keep:
            expected = ResumePlan(
                replay=expected.replay[-keep:],
                gap=expected.gap or len(expected.replay) > keep,
            )
        assert copy.resume(0, 0, T0) == expected


# ===================================================================== property
def window(model: list[bytes], size: int, budget: int) -> int:
    """How many of the newest bodies a buffer of ``size`` entries / ``budget`` bytes holds."""
    held, used = 0, 0
    for body in reversed(model):
        if held == size or (held and used + cost(body) > budget):
            break
        held += 1
        used += cost(body)
    return held


@settings(max_examples=100, deadline=None)
@given(buffer_size=st.integers(1, 8), buffer_bytes=st.integers(1, 1_200), data=st.data())
def test_replay_matches_a_model(buffer_size: int, buffer_bytes: int, data: st.DataObject) -> None:
    """Random record/away/resume/hand-off: each resume replays model[last_seq+1:] within
    the buffer window, in order, and reports a gap exactly when something was lost."""
    session = Session(grace=1e6, buffer_size=buffer_size, buffer_bytes=buffer_bytes)
    model: list[bytes] = []  # model[i] has seq i + 1
    now = T0
    steps = data.draw(
        st.lists(st.sampled_from(["record", "away", "resume", "handoff"]), max_size=60)
    )
    for step in steps:
        now += 1.0
        if step == "record":
            body = data.draw(st.sampled_from(STREAM_BODIES + [b"{" + b" " * 400 + b"}"]))
            model.append(body)
            assert session.record(body) == len(model)
        elif step == "away":
            if session.state is SessionState.AWAY:
                with pytest.raises(SessionStateError):
                    session.away("abnormal", now)
            else:
                assert session.away("abnormal", now) == now + 1e6
        elif step == "handoff":
            session = handed_off(session)
        else:
            last_seq = data.draw(st.integers(0, len(model)), label="last_seq")
            plan = session.resume(session.epoch, last_seq, now)
            oldest = len(model) - window(model, buffer_size, buffer_bytes) + 1
            start = max(last_seq + 1, oldest)
            assert plan.replay == [(s, model[s - 1]) for s in range(start, len(model) + 1)]
            assert plan.gap == (last_seq + 1 < oldest)
            assert session.state is SessionState.CONNECTED
            old = session.epoch
            session.next_token_epoch()
            session.confirm_token()  # the client spoke on the new connection
            with pytest.raises(ValueError):
                session.resume(old, last_seq, now)
        held = window(model, buffer_size, buffer_bytes)
        assert session.last_seq == len(model)
        assert session.buffered == held
        assert session.buffered_bytes == sum(cost(b) for b in model[len(model) - held :])


def _one(session: Session) -> tuple[SessionSnapshot, list[bytes]]:
    table: list[bytes] = []
    return session.snapshot({}, table), table
