"""Property and example tests of the Cython heartbeat timer wheel.

The property tests drive ``HeartbeatWheel`` and a pure-Python reference model (a dict of
slot -> [activity, pinged_at, closed]) with the same random operations and check every
report against the rules of the module docstring:

* ping when ``now >= a + interval`` and no ping is outstanding;
* close when a ping is outstanding and ``now >= max(a + interval, p - tick) + timeout``;
* a report is never early, and comes at the first ``advance`` at or after its deadline
  (so at most one tick late when ``advance`` runs at least once per tick).
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.heartbeat_wheel import HeartbeatWheel

EPS = 1e-9

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- model


class Model:
    """Reference model: the rules of the docstring, checked against every report."""

    def __init__(self, wheel: HeartbeatWheel) -> None:
        self.wheel = wheel
        self.interval = wheel.interval
        self.timeout = wheel.timeout
        self.tick = wheel.tick
        self.slots: dict[int, list] = {}  # slot -> [activity, pinged_at | None, closed]
        self.freed: list[int] = []  # removed and not yet reused, most recent last
        self.ever: set[int] = set()
        self.last_advance: float | None = None
        # Time of the latest advance that ended a gap longer than one tick (a stall).
        self.stall_end = -math.inf
        self.pings = 0
        self.closes = 0

    # Deadlines, computed with the same float operations as the wheel.
    def ping_due(self, activity: float) -> float:
        return activity + self.interval

    def close_due(self, activity: float, pinged_at: float) -> float:
        base = activity + self.interval
        if pinged_at - self.tick > base:
            base = pinged_at - self.tick
        return base + self.timeout

    def regular_since(self, t: float) -> bool:
        """True when every advance gap ending after ``t`` was at most one tick."""
        return self.stall_end <= t

    # Operations, applied to both the wheel and the model.
    def add(self, now: float) -> int:
        slot = self.wheel.add(now)
        assert slot not in self.slots, "add returned a live slot"
        assert slot >= 0
        if self.freed:
            assert slot in self.freed, "a freed slot id must be reused before growing"
            self.freed.remove(slot)
        else:
            assert slot not in self.ever, "fresh slot id expected"
        self.ever.add(slot)
        self.slots[slot] = [now, None, False]
        return slot

    def remove(self, slot: int) -> None:
        if slot in self.slots:
            self.wheel.remove(slot)
            del self.slots[slot]
            self.freed.append(slot)
        else:
            with pytest.raises(KeyError):
                self.wheel.remove(slot)

    def touch(self, slot: int, now: float) -> None:
        self.wheel.touch(slot, now)
        state = self.slots.get(slot)
        if state is not None:
            state[0] = now
            state[1] = None  # clears the outstanding ping (a closed slot stays closed)

    def advance(self, now: float) -> None:
        if self.last_advance is not None:
            assert now >= self.last_advance
            if now - self.last_advance > self.tick:
                self.stall_end = now
        pings, closes = self.wheel.advance(now)
        assert len(set(pings)) == len(pings), "a slot pinged twice in one advance"
        assert len(set(closes)) == len(closes), "a slot closed twice in one advance"
        pinged_now = set()
        for slot in pings:
            assert slot in self.slots, f"removed slot {slot} reported for ping"
            a, p, closed = self.slots[slot]
            assert not closed, f"closed slot {slot} reported for ping"
            assert p is None, f"slot {slot} pinged while a ping is outstanding"
            assert now >= self.ping_due(a), "ping before a + interval"
            if self.regular_since(a):
                assert now <= a + self.interval + self.tick + EPS, "ping more than a tick late"
            self.slots[slot][1] = now
            pinged_now.add(slot)
            self.pings += 1
        for slot in closes:
            assert slot in self.slots, f"removed slot {slot} reported for close"
            a, p, closed = self.slots[slot]
            assert not closed, f"slot {slot} closed twice"
            assert p is not None, f"slot {slot} closed without an outstanding ping"
            assert now >= self.close_due(a, p), "close before its deadline"
            assert now >= a + self.interval + self.timeout, "close before a+interval+timeout"
            assert now >= p + self.timeout - self.tick - EPS, "close before p+timeout-tick"
            if self.regular_since(a) and self.tick <= self.timeout:
                bound = a + self.interval + self.timeout + self.tick + EPS
                assert now <= bound, "close later than a + interval + timeout + tick"
            self.slots[slot][2] = True
            self.closes += 1
        # Nothing overdue stays unreported: a deadline is reported by the first advance
        # at or after it. (A close whose deadline had already passed when its ping was
        # sent - only possible when tick > timeout - may wait for the next advance.)
        for slot, (a, p, closed) in self.slots.items():
            if closed:
                continue
            if p is None:
                assert self.ping_due(a) > now, f"slot {slot} overdue for a ping"
            elif slot not in pinged_now:
                assert self.close_due(a, p) > now, f"slot {slot} overdue for a close"
        self.last_advance = now
        self.check_state()

    def check_state(self) -> None:
        wheel = self.wheel
        assert len(wheel) == len(self.slots)
        assert wheel.capacity >= len(self.slots)
        for slot, (a, p, _closed) in self.slots.items():
            assert slot in wheel
            assert wheel.last_activity(slot) == a
            assert wheel.ping_outstanding(slot) == (p is not None)
        for slot in self.freed:
            assert slot not in wheel
            with pytest.raises(KeyError):
                wheel.last_activity(slot)


# --------------------------------------------------------------------------- strategies


@st.composite
def wheel_configs(draw):
    """(interval, timeout, tick-or-None): sub-second to tens of seconds, few ticks per span."""
    if draw(st.booleans()):
        tick = draw(st.floats(0.001, 2.0))
        interval = tick * draw(st.floats(0.3, 30.0))
        timeout = tick * draw(st.floats(0.3, 30.0))
        return interval, timeout, tick
    # Default tick: min(interval, timeout) / 10 clamped to [0.005, 1].
    shorter = draw(st.floats(0.02, 5.0))
    longer = shorter * draw(st.floats(1.0, 8.0))
    if draw(st.booleans()):
        return shorter, longer, None
    return longer, shorter, None


fractions = st.floats(0.0, 1.0)

add_op = st.tuples(st.just("add"), st.integers(1, 4))
touch_op = st.tuples(st.just("touch"), st.integers(0, 10_000))
# advance several times, each step at most one tick
run_op = st.tuples(st.just("run"), st.lists(fractions, min_size=1, max_size=30))
operations = st.one_of(
    add_op,
    add_op,
    touch_op,
    touch_op,
    run_op,
    run_op,
    st.tuples(st.just("remove"), st.integers(0, 10_000)),
    st.tuples(st.just("touch_unknown"), st.integers(-3, 10**6)),
    # move the clock without advancing (adds and touches between ticks)
    st.tuples(st.just("clock"), fractions),
    # a stall: one step of up to three wheel spans
    st.tuples(st.just("stall"), st.floats(0.0, 3.0)),
)


def run_program(config, start, ops, buckets=None, initial=3) -> Model:
    interval, timeout, tick = config
    wheel = HeartbeatWheel(interval, timeout, tick=tick, capacity=4, buckets=buckets)
    model = Model(wheel)
    span = interval + timeout
    now = start
    model.advance(now)
    for _ in range(initial):
        model.add(now)
    for op, arg in ops:
        if op == "add":
            for _ in range(arg):
                model.add(now)
        elif op == "remove":
            known = sorted(model.ever)
            if known:
                model.remove(known[arg % len(known)])
        elif op == "touch":
            known = sorted(model.ever)
            if known:
                model.touch(known[arg % len(known)], now)
        elif op == "touch_unknown":
            if arg not in model.slots:
                model.touch(arg, now)
        elif op == "run":
            for fraction in arg:
                now += fraction * model.tick
                model.advance(now)
        elif op == "clock":
            now += arg * model.tick
        elif op == "stall":
            now += arg * span
            model.advance(now)
    # Finally run silent for long enough that every live slot is pinged and closed.
    end = now + 2 * span + 3 * model.tick
    while now < end:
        now += model.tick * 0.999
        model.advance(now)
    for slot, (_a, _p, closed) in model.slots.items():
        assert closed, f"silent slot {slot} never closed"
    event(f"reports: {bucket(model.pings + model.closes)}")
    event(f"stalls: {model.stall_end > -math.inf}")
    return model


def bucket(n: int) -> str:
    """Coarse size class for hypothesis statistics."""
    return "0" if n == 0 else "1-9" if n < 10 else "10-99" if n < 100 else "100+"


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(
    config=wheel_configs(),
    start=st.one_of(st.just(0.0), st.floats(0.0, 1e5)),
    ops=st.lists(operations, min_size=5, max_size=60),
    initial=st.integers(1, 8),
)
def test_wheel_matches_reference_model(config, start, ops, initial):
    run_program(config, start, ops, initial=initial)


@PROPERTY_SETTINGS
@given(
    config=wheel_configs(),
    ops=st.lists(operations, min_size=5, max_size=40),
    buckets=st.integers(2, 8),
)
def test_tiny_wheel_with_many_laps_matches_model(config, ops, buckets):
    # Deadlines many laps ahead must be re-checked on fire, never reported early.
    run_program(config, 10.0, ops, buckets=buckets)


@PROPERTY_SETTINGS
@given(
    config=wheel_configs(),
    touch_gaps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    advance_steps=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=10),
)
def test_slot_touched_at_least_every_interval_is_never_closed(config, touch_gaps, advance_steps):
    interval, timeout, tick = config
    wheel = HeartbeatWheel(interval, timeout, tick=tick)
    model = Model(wheel)
    now = 1.0
    model.advance(now)
    alive = model.add(now)
    zombie = model.add(now)
    step_index = 0
    for gap in touch_gaps:
        # Advance (with steps that may be larger than a tick) until the next touch.
        next_touch = now + gap * interval
        while True:
            step = advance_steps[step_index % len(advance_steps)] * model.tick
            step_index += 1
            if now + step >= next_touch:
                break
            now += step
            model.advance(now)
        now = next_touch
        model.advance(now)
        model.touch(alive, now)
        assert not model.slots[alive][2], "a slot touched every interval was closed"
    # The model checked every report of the silent slot on the way (never early,
    # reported by the first advance after its deadline).
    assert zombie in model.slots


@PROPERTY_SETTINGS
@given(
    config=wheel_configs(),
    stall=st.floats(1.0, 5.0),
    answer=st.booleans(),
)
def test_after_a_stall_the_client_gets_timeout_minus_tick(config, stall, answer):
    interval, timeout, tick = config
    wheel = HeartbeatWheel(interval, timeout, tick=tick)
    model = Model(wheel)
    model.advance(0.0)
    slot = model.add(0.0)
    # The shard stalls for longer than interval + timeout, then pings late.
    now = stall * (interval + timeout)
    model.advance(now)
    assert model.slots[slot][1] == now
    pinged_at = now
    limit = pinged_at + 3 * (interval + timeout) + 4 * model.tick
    while not model.slots[slot][2] and now < limit:
        now += model.tick * 0.5
        model.advance(now)
        if answer and now >= pinged_at + timeout / 2:
            model.touch(slot, now)
            answer = False
    assert model.slots[slot][2]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(100, 1000), capacity=st.integers(1, 8))
def test_wheel_grows_past_initial_capacity(n, capacity):
    wheel = HeartbeatWheel(5.0, 5.0, tick=0.5, capacity=capacity)
    model = Model(wheel)
    model.advance(0.0)
    slots = [model.add(i * 0.001) for i in range(n)]
    assert sorted(slots) == list(range(n))
    assert wheel.capacity >= n
    assert len(wheel) == n
    now = 0.0
    while now < 11.5:
        now += 0.5
        model.advance(now)
    assert model.pings == n
    assert model.closes == n


# --------------------------------------------------------------------------- examples


def advance_until(wheel, start, end, step):
    """Advance from ``start`` to ``end`` in steps; return {slot: time} of pings, closes."""
    pinged, closed = {}, {}
    now = start
    while now < end:
        now = min(end, now + step)
        pings, closes = wheel.advance(now)
        for slot in pings:
            pinged.setdefault(slot, now)
        for slot in closes:
            closed.setdefault(slot, now)
    return pinged, closed


def test_new_slot_is_pinged_after_interval_not_before():
    wheel = HeartbeatWheel(10.0, 5.0, tick=0.5)
    slot = wheel.add(100.0)
    assert wheel.advance(109.99) == ([], [])
    assert wheel.advance(110.0) == ([slot], [])
    assert wheel.ping_outstanding(slot)


def test_zombie_is_closed_within_interval_plus_timeout_plus_tick():
    interval, timeout, tick = 10.0, 5.0, 0.25
    wheel = HeartbeatWheel(interval, timeout, tick=tick)
    slot = wheel.add(3.3)
    pinged, closed = advance_until(wheel, 3.3, 40.0, tick * 0.97)
    assert 3.3 + interval <= pinged[slot] <= 3.3 + interval + tick
    assert 3.3 + interval + timeout <= closed[slot] <= 3.3 + interval + timeout + tick


def test_touch_defers_ping():
    wheel = HeartbeatWheel(10.0, 5.0, tick=0.5)
    slot = wheel.add(0.0)
    assert advance_until(wheel, 0.0, 9.0, 0.5) == ({}, {})
    wheel.touch(slot, 9.0)
    assert wheel.last_activity(slot) == 9.0
    pinged, _ = advance_until(wheel, 9.0, 19.5, 0.5)
    assert pinged == {slot: 19.0}


def test_answered_ping_clears_outstanding_and_prevents_close():
    wheel = HeartbeatWheel(10.0, 5.0, tick=0.5)
    slot = wheel.add(0.0)
    pinged, _ = advance_until(wheel, 0.0, 10.0, 0.5)
    assert pinged == {slot: 10.0}
    wheel.touch(slot, 11.0)  # the pong
    assert not wheel.ping_outstanding(slot)
    assert advance_until(wheel, 10.0, 20.5, 0.5) == ({}, {})  # no close at 15
    assert advance_until(wheel, 20.5, 21.0, 0.5) == ({slot: 21.0}, {})


def test_answered_ping_schedules_next_ping_when_interval_shorter_than_timeout():
    # Regression: the slot waited in the bucket of its old close deadline (a + 11) after
    # the pong, so the next ping came at 11.0 instead of 2.05.
    wheel = HeartbeatWheel(1.0, 10.0, tick=0.1)
    slot = wheel.add(0.0)
    pinged, _ = advance_until(wheel, 0.0, 1.0, 0.1)
    assert list(pinged) == [slot]
    wheel.touch(slot, 1.05)
    pinged, closed = advance_until(wheel, 1.0, 2.2, 0.1)
    assert list(pinged) == [slot]
    assert 2.05 <= pinged[slot] <= 2.05 + 0.1
    _, closed = advance_until(wheel, 2.2, 13.0, 0.1)
    assert 12.05 <= closed[slot] <= 12.05 + 0.1


def test_report_comes_at_first_advance_after_deadline_not_at_end_of_tick():
    # Regression: with the deadline mid-tick and advance running once per tick but out of
    # phase with the tick grid, the ping used to come almost two ticks late.
    wheel = HeartbeatWheel(10.0, 10.0, tick=1.0)
    slot = wheel.add(0.1)  # ping due at 10.1
    for now in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0):
        assert wheel.advance(now) == ([], [])
    assert wheel.advance(10.999) == ([slot], [])  # not 11.998
    for now in (11.9, 12.8, 13.7, 14.6, 15.5, 16.4, 17.3, 18.2, 19.1, 20.0):
        assert wheel.advance(now) == ([], [])
    assert wheel.advance(20.99) == ([], [slot])  # close due at 20.1


def test_advance_called_many_times_within_a_tick_reports_once():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1)
    slot = wheel.add(0.0)
    reports = [wheel.advance(1.0 + i * 0.001) for i in range(200)]
    assert [r for r in reports if r != ([], [])] == [([slot], [])]


def test_stalled_shard_gives_pinged_client_timeout_minus_tick():
    interval, timeout, tick = 2.0, 1.0, 0.1
    wheel = HeartbeatWheel(interval, timeout, tick=tick)
    slot = wheel.add(0.0)
    # No advance for 60 s, far longer than interval + timeout and the wheel span.
    assert wheel.advance(60.0) == ([slot], [])
    pinged, closed = advance_until(wheel, 60.0, 62.0, 0.05)
    assert pinged == {}
    assert 60.0 + timeout - tick <= closed[slot] <= 60.0 + timeout


def test_long_stall_reports_every_slot_exactly_once():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1)
    slots = [wheel.add(i * 0.37) for i in range(50)]
    pings, closes = wheel.advance(1000.0)
    assert sorted(pings) == sorted(slots)
    assert closes == []
    pings, closes = wheel.advance(2000.0)
    assert pings == []
    assert sorted(closes) == sorted(slots)
    assert wheel.advance(3000.0) == ([], [])


def test_closed_slot_is_not_reported_again_even_if_touched():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1)
    slot = wheel.add(0.0)
    _, closed = advance_until(wheel, 0.0, 2.5, 0.1)
    assert slot in closed
    assert slot in wheel  # stays allocated until remove
    assert wheel.ping_outstanding(slot)
    wheel.touch(slot, 2.5)
    assert wheel.last_activity(slot) == 2.5
    assert not wheel.ping_outstanding(slot)
    assert advance_until(wheel, 2.5, 20.0, 0.1) == ({}, {})
    wheel.remove(slot)
    assert slot not in wheel


def test_removed_slot_is_never_reported():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1)
    doomed = wheel.add(0.0)
    kept = wheel.add(0.0)
    wheel.remove(doomed)
    wheel.touch(doomed, 0.5)  # ignored
    pinged, closed = advance_until(wheel, 0.0, 5.0, 0.1)
    assert set(pinged) == {kept}
    assert set(closed) == {kept}


def test_remove_of_unallocated_slot_raises_key_error():
    wheel = HeartbeatWheel(1.0, 1.0, capacity=4)
    slot = wheel.add(0.0)
    wheel.remove(slot)
    for bad in (slot, -1, 3, 4, 10**6):
        with pytest.raises(KeyError):
            wheel.remove(bad)
        with pytest.raises(KeyError):
            wheel.last_activity(bad)
        with pytest.raises(KeyError):
            wheel.ping_outstanding(bad)


def test_touch_of_unknown_or_freed_slot_is_ignored():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1, capacity=4)
    slot = wheel.add(0.0)
    wheel.remove(slot)
    for bad in (slot, -5, 4, 10**6):
        wheel.touch(bad, 0.5)
    assert len(wheel) == 0
    again = wheel.add(0.7)
    assert again == slot
    assert wheel.last_activity(again) == 0.7
    assert not wheel.ping_outstanding(again)
    pinged, _ = advance_until(wheel, 0.0, 1.8, 0.1)
    assert pinged == {again: pytest.approx(1.7)}


def test_slot_ids_are_reused_after_remove():
    wheel = HeartbeatWheel(1.0, 1.0, capacity=8)
    slots = [wheel.add(0.0) for _ in range(8)]
    assert slots == list(range(8))
    wheel.remove(5)
    wheel.remove(2)
    assert {wheel.add(0.0), wheel.add(0.0)} == {2, 5}
    assert wheel.capacity == 8
    assert wheel.add(0.0) == 8  # only now does it grow
    assert wheel.capacity == 16


def test_len_and_contains():
    wheel = HeartbeatWheel(1.0, 1.0)
    assert len(wheel) == 0
    assert 0 not in wheel
    a, b = wheel.add(0.0), wheel.add(0.0)
    assert len(wheel) == 2 and a in wheel and b in wheel
    assert -1 not in wheel and 10**9 not in wheel
    wheel.remove(a)
    assert len(wheel) == 1 and a not in wheel and b in wheel


def test_grows_from_capacity_4_to_1000_slots():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1, capacity=4)
    assert wheel.capacity == 4
    slots = [wheel.add(0.0) for _ in range(1000)]
    assert len(set(slots)) == 1000
    assert wheel.capacity >= 1000
    pinged, closed = advance_until(wheel, 0.0, 2.2, 0.1)
    assert set(pinged) == set(slots)
    assert set(closed) == set(slots)


def test_advance_backwards_fires_nothing():
    wheel = HeartbeatWheel(1.0, 1.0, tick=0.1)
    slot = wheel.add(0.0)
    assert wheel.advance(0.5) == ([], [])
    assert wheel.advance(0.2) == ([], [])
    assert wheel.advance(1.0) == ([slot], [])


def test_default_tick_and_validation():
    assert HeartbeatWheel(30.0, 10.0).tick == 1.0
    assert HeartbeatWheel(1.0, 0.5).tick == pytest.approx(0.05)
    assert HeartbeatWheel(0.01, 0.01).tick == 0.005
    wheel = HeartbeatWheel(2.0, 3.0, tick=0.25)
    assert (wheel.interval, wheel.timeout, wheel.tick) == (2.0, 3.0, 0.25)
    for args, kwargs in [
        ((0.0, 1.0), {}),
        ((1.0, 0.0), {}),
        ((-1.0, 1.0), {}),
        ((1.0, 1.0), {"tick": 0.0}),
        ((1.0, 1.0), {"tick": -0.1}),
    ]:
        with pytest.raises(ValueError):
            HeartbeatWheel(*args, **kwargs)


def test_one_million_slots():
    n = 1_000_000
    wheel = HeartbeatWheel(30.0, 10.0)
    started = time.perf_counter()
    add = wheel.add
    for i in range(n):
        add(i * 1e-5)  # activity spread over 10 s
    elapsed = time.perf_counter() - started
    assert len(wheel) == n
    assert wheel.capacity >= n
    assert elapsed < 10.0, f"adding {n} slots took {elapsed:.1f} s"
    assert wheel.advance(30.0 - 0.001) == ([], [])
    pings, closes = wheel.advance(35.0)  # activity up to 5 s is due
    assert closes == []
    assert len(pings) == sum(1 for i in range(n) if i * 1e-5 + 30.0 <= 35.0)
