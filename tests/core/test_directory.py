"""The session -> shard directory."""

from __future__ import annotations

from core.directory import InMemoryDirectory, SessionDirectory


def test_in_memory_directory_implements_the_interface() -> None:
    directory: SessionDirectory = InMemoryDirectory()
    assert directory.owner_of("nobody") is None


def test_claim_and_owner_of() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.claim("b", 2)
    assert d.owner_of("a") == 1
    assert d.owner_of("b") == 2
    assert d.owner_of("c") is None
    assert (d.count(1), d.count(2), d.count(3)) == (1, 1, 0)


def test_claim_twice_is_idempotent() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.claim("a", 1)
    assert d.owner_of("a") == 1
    assert d.count(1) == 1


def test_move_changes_the_owner_and_the_counts() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.claim("b", 1)
    d.move("a", 2)
    assert d.owner_of("a") == 2
    assert (d.count(1), d.count(2)) == (1, 1)
    d.move("a", 3)
    assert (d.count(1), d.count(2), d.count(3)) == (1, 0, 1)


def test_move_of_an_unknown_session_claims_it() -> None:
    d = InMemoryDirectory()
    d.move("a", 4)
    assert d.owner_of("a") == 4
    assert d.count(4) == 1


def test_release_by_the_owner() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    assert d.release("a", 1) is True
    assert d.owner_of("a") is None
    assert d.count(1) == 0
    assert d.release("a", 1) is False  # already gone


def test_stale_release_by_a_non_owner_is_ignored() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.move("a", 2)  # handed off; shard 1's late "session ended" must not forget it
    assert d.release("a", 1) is False
    assert d.owner_of("a") == 2
    assert (d.count(1), d.count(2)) == (0, 1)
    assert d.release("a", 2) is True
    assert d.owner_of("a") is None


def test_release_of_an_unknown_session() -> None:
    d = InMemoryDirectory()
    assert d.release("ghost", 1) is False
    assert d.count(1) == 0


def test_drop_shard_returns_its_sessions_and_forgets_only_those() -> None:
    d = InMemoryDirectory()
    for s in ("c", "a", "b"):
        d.claim(s, 1)
    d.claim("x", 2)
    d.claim("y", 3)
    assert d.drop_shard(1) == ["a", "b", "c"]
    for s in ("a", "b", "c"):
        assert d.owner_of(s) is None
    assert d.owner_of("x") == 2
    assert d.owner_of("y") == 3
    assert (d.count(1), d.count(2), d.count(3)) == (0, 1, 1)
    assert d.drop_shard(1) == []


def test_drop_unknown_shard() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    assert d.drop_shard(9) == []
    assert d.owner_of("a") == 1


def test_a_session_moved_away_is_not_dropped_with_its_old_shard() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.claim("b", 1)
    d.move("a", 2)
    assert d.drop_shard(1) == ["b"]
    assert d.owner_of("a") == 2
    assert d.owner_of("b") is None
    assert d.count(2) == 1
    assert d.drop_shard(2) == ["a"]
    assert d.owner_of("a") is None


def test_a_released_session_is_not_reported_by_drop_shard() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.claim("b", 1)
    d.release("a", 1)
    assert d.drop_shard(1) == ["b"]


def test_a_shard_can_claim_again_after_being_dropped() -> None:
    d = InMemoryDirectory()
    d.claim("a", 1)
    d.drop_shard(1)
    d.claim("b", 1)
    assert d.owner_of("b") == 1
    assert d.count(1) == 1
    assert d.drop_shard(1) == ["b"]


def test_count_per_shard() -> None:
    d = InMemoryDirectory()
    for i in range(10):
        d.claim(f"s{i}", i % 3)
    assert [d.count(k) for k in range(4)] == [4, 3, 3, 0]
    d.release("s0", 0)
    d.move("s1", 0)
    assert [d.count(k) for k in range(4)] == [4, 2, 3, 0]
    assert sum(d.count(k) for k in range(3)) == 9
