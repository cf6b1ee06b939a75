"""The session -> shard directory."""

from __future__ import annotations

from typing import Any

import pytest

from core.directory import (
    ExpiredPlacement,
    InMemoryDirectory,
    PlacementRefused,
    RoomPlacements,
    SessionDirectory,
    address_key,
)


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


# ====================================================================== room counts
def test_room_count_follows_claims_moves_releases_and_dropped_shards() -> None:
    d = InMemoryDirectory()
    for i in range(5):
        d.claim_room(f"r{i}", 1)
    d.claim_room("x", 2)
    assert (d.room_count(1), d.room_count(2), d.room_count(3)) == (5, 1, 0)
    d.claim_room("r0", 2)  # moved
    assert (d.room_count(1), d.room_count(2)) == (4, 2)
    assert d.release_room("r1", 2) is False  # not the owner: nothing changes
    assert d.release_room("r1", 1) is True
    assert d.room_count(1) == 3
    d.drop_shard(1)
    assert (d.room_count(1), d.room_count(2)) == (0, 2)
    assert d.rooms_of(2) == ["r0", "x"]


# ====================================================================== placements
def placements(**kw: Any) -> tuple[InMemoryDirectory, RoomPlacements]:
    d = InMemoryDirectory()
    kw.setdefault("timeout", 15.0)
    return d, RoomPlacements(d, **kw)


def test_a_placement_never_hosted_is_released_at_its_deadline() -> None:
    d, p = placements(timeout=15.0)
    p.place("ghost", 1, "10.0.0.1", now=100.0)
    assert d.room_owner("ghost") == 1 and p.pending == 1
    assert p.next_deadline() == 115.0
    assert p.expire(114.999) == []
    assert d.room_owner("ghost") == 1
    assert p.expire(115.0) == [ExpiredPlacement("ghost", 1, "10.0.0.1", True)]
    assert d.room_owner("ghost") is None
    assert (p.pending, p.pending_of("10.0.0.1"), d.room_count(1)) == (0, 0, 0)
    assert p.expire(1000.0) == []  # once


def test_a_room_hosted_before_its_deadline_is_never_released_by_it() -> None:
    d, p = placements(timeout=15.0)
    p.place("real", 1, "10.0.0.1", now=100.0)
    p.hosted("real", 1)
    assert (p.pending, p.pending_of("10.0.0.1")) == (0, 0)
    assert p.expire(200.0) == []
    assert d.room_owner("real") == 1


def test_hosted_by_another_shard_does_not_confirm_the_placement() -> None:
    d, p = placements(timeout=15.0)
    p.place("r", 1, "", now=0.0)
    p.hosted("r", 2)  # a conflict: the supervisor logs it, the placement stays pending
    assert p.is_pending("r")
    d.drop_shard(1)  # the owner died; a new owner hosts the room
    d.claim_room("r", 2)
    expired = p.expire(15.0)
    assert expired == [ExpiredPlacement("r", 1, "", False)]  # nothing to release...
    assert d.room_owner("r") == 2  # ...and the new owner keeps it


def test_a_released_room_lingers_then_goes_and_hosting_it_again_cancels_that() -> None:
    d, p = placements(timeout=15.0, linger=5.0)
    d.claim_room("a", 1)
    d.claim_room("b", 1)
    p.released("a", 1, now=10.0)
    p.released("b", 1, now=10.0)
    p.hosted("b", 1)  # a player came back within the linger
    assert p.expire(14.9) == [] and d.room_owner("a") == 1
    assert p.expire(15.0) == []  # lingering rooms are not reported as expired placements
    assert d.room_owner("a") is None
    assert d.room_owner("b") == 1


def test_a_second_release_restarts_the_linger() -> None:
    d, p = placements(linger=5.0)
    d.claim_room("a", 1)
    p.released("a", 1, now=10.0)
    p.hosted("a", 1)
    p.released("a", 1, now=13.0)
    p.expire(15.0)  # the first linger's entry is stale
    assert d.room_owner("a") == 1
    p.expire(18.0)
    assert d.room_owner("a") is None


def test_a_replaced_placement_does_not_expire_the_new_one() -> None:
    d, p = placements(timeout=10.0)
    p.place("r", 1, "10.0.0.1", now=0.0)
    d.drop_shard(1)  # owner died before hosting: the room is placed again elsewhere
    p.place("r", 2, "10.0.0.2", now=5.0)
    assert p.pending_of("10.0.0.1") == 0  # the first client's placement is gone
    assert p.expire(10.0) == []
    assert d.room_owner("r") == 2
    assert p.expire(15.0) == [ExpiredPlacement("r", 2, "10.0.0.2", True)]


def test_an_address_over_its_pending_cap_is_refused_until_one_is_hosted() -> None:
    d, p = placements(max_pending=3, rate=None)
    for i in range(3):
        p.place(f"r{i}", 1, "10.0.0.1", now=0.0)
    with pytest.raises(PlacementRefused) as info:
        p.place("r3", 1, "10.0.0.1", now=0.0)
    assert (info.value.reason, info.value.address, info.value.refused) == (
        "pending_cap",
        "10.0.0.1",
        1,
    )
    assert d.room_owner("r3") is None and p.pending == 3  # a refusal changes nothing
    p.place("s0", 1, "10.0.0.2", now=0.0)  # another address is not affected
    p.hosted("r0", 1)
    p.place("r3", 1, "10.0.0.1", now=0.0)
    assert p.pending_of("10.0.0.1") == 3
    with pytest.raises(PlacementRefused):
        p.place("r4", 1, "10.0.0.1", now=0.0)
    p.expire(100.0)  # expiry frees the address too
    assert p.pending_of("10.0.0.1") == 0
    p.place("r4", 1, "10.0.0.1", now=100.0)


def test_an_address_placing_rooms_too_fast_is_refused_by_its_bucket() -> None:
    _, p = placements(max_pending=0, rate=20.0, burst=50.0)
    for i in range(50):
        p.place(f"r{i}", 1, "10.0.0.1", now=0.0)
        p.hosted(f"r{i}", 1)
    with pytest.raises(PlacementRefused) as info:
        p.place("r50", 1, "10.0.0.1", now=0.0)
    assert info.value.reason == "rate"
    p.place("r50", 1, "10.0.0.1", now=0.05)  # one token back after 1/20 s
    with pytest.raises(PlacementRefused):
        p.place("r51", 1, "10.0.0.1", now=0.05)


def test_an_unknown_peer_is_never_capped_as_one_address() -> None:
    _, p = placements(max_pending=1, rate=1.0, burst=1.0)
    for i in range(100):
        p.place(f"r{i}", 1, "", now=0.0)
    assert p.pending == 100


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:51234", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::ffff]", "2001:db8:1:2::/64"),
        ("", ""),
    ],
)
def test_address_keys(peer: str, key: str) -> None:
    assert address_key(peer) == key


def test_one_ipv6_subscriber_cannot_escape_the_cap_by_changing_its_low_bits() -> None:
    _, p = placements(max_pending=2, rate=None)
    p.place("a", 1, "2001:db8::1", now=0.0)
    p.place("b", 1, "2001:db8::2", now=0.0)
    with pytest.raises(PlacementRefused):
        p.place("c", 1, "2001:db8::3:4", now=0.0)
    p.place("c", 1, "2001:db8:0:1::1", now=0.0)  # another /64


def test_the_address_table_is_bounded_and_evicts_the_least_recently_seen() -> None:
    _, p = placements(max_pending=1, rate=None, max_addresses=3)
    for i in range(3):
        p.place(f"r{i}", 1, f"10.0.0.{i}", now=0.0)
    with pytest.raises(PlacementRefused):
        p.place("again0", 1, "10.0.0.0", now=0.0)  # 10.0.0.0 is now the most recent
    p.place("r3", 1, "10.0.0.3", now=0.0)  # evicts 10.0.0.1, the least recently seen
    assert len(p._addresses) == 3
    assert p.pending_of("10.0.0.1") == 0
    p.place("again1", 1, "10.0.0.1", now=0.0)  # forgotten: admitted afresh
    with pytest.raises(PlacementRefused):
        p.place("again0b", 1, "10.0.0.3", now=0.0)


def test_the_deadline_heap_stays_bounded_when_every_placement_is_hosted() -> None:
    _, p = placements(max_pending=0, rate=None)
    for i in range(100_000):
        p.place(f"r{i}", 1, "", now=float(i) / 1000)
        p.hosted(f"r{i}", 1)
    assert p.pending == 0
    assert len(p._heap) <= 1024 + 1  # stale entries are compacted away
