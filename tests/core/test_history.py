"""The supervisor's history ring (``core.history``): bounded by samples and markers, and
the rates and GC pause quantile a sample is made of."""

from __future__ import annotations

import json

import pytest

from core.control import GC_PAUSE_BOUNDS
from core.history import LABELS, MAX_MARKERS, History, pause_quantile, rates

T0 = 1_700_000_000.0


def sample(t: float, players: int = 7) -> dict[str, object]:
    """A sample of the documented shape (every one encodes to the same size)."""
    return {
        "t": t,
        "shards": {"0": {"players": players, "state": "ready", "pid": 4000, "gc_p99_ms": None}},
        "players": players,
        "away": 0,
        "rates": {"messages_in": 1.5},
        "roll": None,
        "cluster": None,
    }


def held(history: History) -> int:
    return sum(map(len, history.samples())) + sum(map(len, history.markers()))


# ====================================================================== the ring
def test_three_capacities_of_samples_keep_the_newest_capacity_and_stop_growing() -> None:
    capacity = 50
    history = History(capacity)
    sizes = []
    for i in range(3 * capacity):
        history.add(sample(T0 + i))
        sizes.append(history.bytes)
        assert len(history) == min(i + 1, capacity)
    assert history.added == 3 * capacity
    # Bytes grow while it fills, then stay where the bound put them.
    assert sizes[capacity - 1] > sizes[capacity - 2] > 0
    assert set(sizes[capacity - 1 :]) == {sizes[capacity - 1]}
    assert history.bytes == held(history)
    # The oldest went first: what is held is the last capacity samples, in order.
    ts = [json.loads(s)["t"] for s in history.samples()]
    assert ts == [T0 + i for i in range(2 * capacity, 3 * capacity)]


def test_bytes_follow_samples_of_different_sizes_as_they_come_and_go() -> None:
    history = History(3)
    for i, players in enumerate([1, 10_000, 5, 123_456_789, 2]):
        history.add(sample(T0 + i, players))
        assert history.bytes == held(history)


def test_samples_since_is_what_came_strictly_after_it() -> None:
    history = History(10)
    for i in range(5):
        history.add(sample(T0 + i))
    assert [json.loads(s)["t"] for s in history.samples(T0 + 2)] == [T0 + 3, T0 + 4]
    assert [json.loads(s)["t"] for s in history.samples(T0 + 2.5)] == [T0 + 3, T0 + 4]
    assert history.samples(T0 + 4) == []
    assert len(history.samples(None)) == len(history.samples(T0 - 1)) == 5


def test_markers_are_capped_at_max_markers_oldest_first() -> None:
    history = History(10)
    for i in range(MAX_MARKERS + 25):
        history.mark(T0 + i, "shard_crash", i % 4, signal="SIGKILL", code=None)
    markers = [json.loads(m) for m in history.markers()]
    assert len(markers) == MAX_MARKERS
    assert markers[0]["t"] == T0 + 25 and markers[-1]["t"] == T0 + MAX_MARKERS + 24
    assert markers[0] == {"t": T0 + 25, "kind": "shard_crash", "shard": 1, "signal": "SIGKILL"}
    assert history.bytes == held(history)


def test_a_marker_is_not_after_its_own_time_as_it_was_sent() -> None:
    """A follower that asks for what came after the ``t`` it was given (rounded to the
    millisecond) does not get the same marker again."""
    history = History(10)
    history.mark(T0 + 0.0004, "roll_start", shards=2)
    (marker,) = [json.loads(m) for m in history.markers()]
    assert history.markers(marker["t"]) == []
    assert history.markers(marker["t"] - 0.001) == history.markers()


def test_snapshot_is_one_json_document_with_samples_and_markers_in_order() -> None:
    history = History(4)
    for i in range(6):
        history.add(sample(T0 + i))
        if i % 2:
            history.mark(T0 + i + 0.5, "shard_respawn", 0, pid=5000 + i)
    document = json.loads(history.snapshot(node="a"))
    assert document["interval_s"] == 1 and document["capacity"] == 4
    assert document["labels"] == LABELS and document["node"] == "a"
    assert [s["t"] for s in document["samples"]] == [T0 + 2, T0 + 3, T0 + 4, T0 + 5]
    assert [m["pid"] for m in document["markers"]] == [5001, 5003, 5005]
    since = json.loads(history.snapshot(T0 + 3))
    assert [s["t"] for s in since["samples"]] == [T0 + 4, T0 + 5]
    assert [m["t"] for m in since["markers"]] == [T0 + 3.5, T0 + 5.5]
    empty = json.loads(History(2).snapshot())
    assert empty["samples"] == [] and empty["markers"] == []


def test_capacity_below_one_sample_is_refused() -> None:
    with pytest.raises(ValueError):
        History(0)


# ====================================================================== rates
def test_rates_sum_disconnect_codes_by_kind_per_second() -> None:
    before = {"disconnect|graceful|1000": 10, "disconnect|graceful|1001": 4, "messages_in": 100}
    after = {
        "disconnect|graceful|1000": 14,
        "disconnect|graceful|1001": 8,
        "disconnect|abnormal|1006": 3,  # new since the last sample: all of it counts
        "resume|ok": 2,
        "rejected|over_capacity": 1,
        "messages_in": 160,
    }
    assert rates(before, after, 2.0) == {
        "disconnect|abnormal": 1.5,
        "disconnect|graceful": 4.0,
        "messages_in": 30.0,
        "rejected|over_capacity": 0.5,
        "resume|ok": 1.0,
    }


def test_rates_ignore_counters_that_are_not_charted() -> None:
    after = {"drain": 5, "replayed": 40, "drain_seconds": 1.5, "connections": 9, "resume|ok": 1}
    assert rates({}, after, 1.0) == {"resume|ok": 1.0}


def test_a_counter_that_went_down_counts_zero_not_negative() -> None:
    before = {"disconnect|policy|1008": 10, "disconnect|policy|1009": 1, "messages_out": 50}
    after = {"disconnect|policy|1008": 4, "disconnect|policy|1009": 3, "messages_out": 20}
    # The code that went down does not cancel the one that went up.
    assert rates(before, after, 1.0) == {"disconnect|policy": 2.0, "messages_out": 0.0}


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_no_time_between_totals_is_no_rates(seconds: float) -> None:
    assert rates({}, {"messages_in": 5}, seconds) == {}


# ====================================================================== GC pauses
def buckets(*pairs: tuple[int, int]) -> list[int]:
    """Cumulative counts per GC_PAUSE_BOUNDS bucket (+Inf last) from (index, count) pairs."""
    counts = [0] * (len(GC_PAUSE_BOUNDS) + 1)
    for index, count in pairs:
        counts[index] = count
    return counts


def test_no_collection_in_the_window_is_no_quantile() -> None:
    same = [buckets((0, 5), (3, 2)), buckets((1, 1))]
    assert pause_quantile(same, same, GC_PAUSE_BOUNDS) is None
    assert pause_quantile([], [], GC_PAUSE_BOUNDS) is None


def test_p99_is_the_upper_bound_of_the_bucket_holding_the_99th_percent() -> None:
    before = [buckets((0, 1000)), buckets(), buckets()]
    # 98 fast pauses (<= 0.1 ms), 1 at <= 1 ms, 1 at <= 10 ms: p99 is the 99th - 1 ms.
    after = [buckets((0, 1098), (2, 1)), buckets((5, 1)), buckets()]
    assert pause_quantile(before, after, GC_PAUSE_BOUNDS) == GC_PAUSE_BOUNDS[2]
    assert pause_quantile(before, after, GC_PAUSE_BOUNDS, q=0.5) == GC_PAUSE_BOUNDS[0]
    assert pause_quantile(before, after, GC_PAUSE_BOUNDS, q=1.0) == GC_PAUSE_BOUNDS[5]
    # A generation the earlier totals did not have yet counts from zero.
    assert pause_quantile(before[:1], after, GC_PAUSE_BOUNDS, q=1.0) == GC_PAUSE_BOUNDS[5]


def test_pauses_beyond_the_last_bound_report_the_largest_bound() -> None:
    last = len(GC_PAUSE_BOUNDS)  # the +Inf bucket
    after = [buckets((0, 1), (last, 9))]
    assert pause_quantile([buckets()], after, GC_PAUSE_BOUNDS) == GC_PAUSE_BOUNDS[-1]
