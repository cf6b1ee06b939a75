"""Per-session stream state: contiguous ``seq`` and the client's ``cseq`` high-water mark."""

from __future__ import annotations

import re

from core.session import Session, new_session_id


def test_new_session_starts_with_no_seq_and_no_cseq() -> None:
    session = Session()
    assert (session.last_seq, session.last_cseq) == (0, 0)


def test_next_seq_is_contiguous_from_1() -> None:
    session = Session()
    assert [session.next_seq() for _ in range(1000)] == list(range(1, 1001))
    assert session.last_seq == 1000


def test_each_session_numbers_its_own_stream() -> None:
    a, b = Session(), Session()
    a.next_seq()
    a.next_seq()
    assert b.next_seq() == 1
    assert a.next_seq() == 3


def test_saw_cseq_keeps_the_high_water_mark() -> None:
    session = Session()
    for cseq in (1, 2, 5):
        session.saw_cseq(cseq)
    assert session.last_cseq == 5


def test_saw_cseq_ignores_none() -> None:
    session = Session()
    session.saw_cseq(3)
    session.saw_cseq(None)
    assert session.last_cseq == 3


def test_saw_cseq_ignores_lower_and_equal_values() -> None:
    session = Session()
    session.saw_cseq(10)
    for cseq in (9, 10, 0, -1):
        session.saw_cseq(cseq)
    assert session.last_cseq == 10


def test_session_ids_are_unique_64_bit_hex() -> None:
    ids = {Session().id for _ in range(5000)} | {new_session_id() for _ in range(5000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_tokens_are_unique_and_url_safe() -> None:
    tokens = {Session().token for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", t) for t in tokens)


def test_a_given_session_id_is_kept() -> None:
    assert Session("abc123").id == "abc123"
