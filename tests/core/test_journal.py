"""The session journal: a mirror fed a shard's journal equals the shard's sessions."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.journal import JournalWriter, SessionMirror
from core.session import Session, SessionState, pack, unpack

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["new", "record", "broadcast", "processed", "epoch", "away", "back", "gone", "arrive"]
        ),
        st.integers(0, 5),
        st.binary(min_size=1, max_size=40),
    ),
    max_size=80,
)


def comparable(session: Session) -> tuple[Any, ...]:
    (batch,) = pack([session], 1 << 20)
    snap = batch.sessions[0]
    return (
        snap.id,
        snap.state,
        snap.epoch,
        snap.last_seq,
        snap.last_cseq,
        snap.token_confirmed,
        snap.away_since,
        snap.away_reason,
        [(e.seq, batch.bodies[e.body]) for e in snap.buffer],
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_a_mirror_fed_the_journal_equals_the_sessions_it_describes(
    ops: list[tuple[str, int, bytes]],
) -> None:
    journal = JournalWriter()
    held: dict[str, Session] = {}
    bodies: dict[int, bytes] = {}
    forwarded: dict[str, list[Session]] = {}  # what the holder forwarded for each arrival
    bseq = 0
    now = 100.0
    for op, k, body in ops:
        now += 1.0
        names = sorted(held)
        target = held[names[k % len(names)]] if names else None
        if op == "new" or target is None:
            session = Session(f"{len(bodies) + len(held) + now:016.0f}"[-16:], buffer_size=4)
            held[session.id] = session
            journal.new(session)
        elif op == "record":
            seq = target.record(body)
            journal.record(target.id, seq, body)
        elif op == "broadcast":
            bseq += 1
            bodies[bseq] = body
            skipped = [target.id] if k == 5 else []
            for session in held.values():
                if session.id not in skipped:
                    session.record(body)
            journal.broadcast(bseq, skipped)
        elif op == "processed":
            target.processed(k * 7 + len(body))
            journal.processed(target.id, k * 7 + len(body))
        elif op == "epoch":
            target.next_token_epoch()
            if k % 2:
                target.confirm_token()
            journal.epoch(target)
        elif op == "away" and target.state is SessionState.CONNECTED:
            target.away("abnormal", now)
            journal.away(target)
        elif op == "back" and target.state is SessionState.AWAY:
            target.resume(target.epoch, target.last_seq, now)
            journal.away(target)
        elif op == "gone":
            del held[target.id]
            journal.gone(target.id)
        elif op == "arrive":
            (moved,) = unpack(next(iter(pack([target], 1 << 20))))
            forwarded.setdefault(target.id, []).append(moved)
            journal.arrive(target.id)
    mirror = SessionMirror()
    while entries := journal.take(budget=64):
        mirror.apply(entries, bodies.get, lambda sid: forwarded[sid].pop(0))
    assert not mirror.diverged
    assert sorted(mirror.sessions) == sorted(held)
    for sid, session in held.items():
        assert comparable(mirror.sessions[sid]) == comparable(session)


def test_a_record_that_does_not_follow_marks_the_session_diverged() -> None:
    journal = JournalWriter()
    session = Session("0123456789abcdef")
    journal.new(session)
    journal.record(session.id, 5, b"{}")  # seq 1 expected
    mirror = SessionMirror()
    mirror.apply(journal.take(), lambda bseq: None, lambda sid: None)
    assert mirror.diverged == {session.id}


def test_take_bounds_a_batch_by_body_bytes_but_returns_at_least_one_entry() -> None:
    journal = JournalWriter()
    for n in range(10):
        journal.record("s", n + 1, b"x" * 1000)
    first = journal.take(budget=2500)
    assert len(first) == 2
    rest = []
    while entries := journal.take(budget=2500):
        rest.extend(entries)
    assert len(first) + len(rest) == 10
    single = JournalWriter()
    single.record("s", 1, b"y" * 10_000)
    assert len(single.take(budget=100)) == 1
