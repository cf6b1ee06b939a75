import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.backoff import Backoff, retry_after_hint


def test_defaults_are_documented_values() -> None:
    backoff = Backoff()
    assert (backoff.base, backoff.cap, backoff.max_retries, backoff.jitter) == (
        1.0,
        30.0,
        10,
        "full",
    )
    # 1 + 2 + 4 + 8 + 16 + 30 * 5: the worst-case total wait the docstring states.
    assert backoff.worst_case_total() == 181.0
    assert Backoff(max_retries=None).worst_case_total() is None


def test_ceiling_doubles_then_caps() -> None:
    backoff = Backoff(base=0.5, cap=5.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.ceiling(10_000) == 5.0  # no float overflow for absurd attempts


@given(
    attempt=st.integers(min_value=0, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32),
    base=st.floats(min_value=0.001, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=100.0),
)
def test_jitter_bounds(attempt: int, seed: int, base: float, factor: float) -> None:
    cap = base * factor
    rng = random.Random(seed)
    full = Backoff(base=base, cap=cap, jitter="full")
    ceiling = full.ceiling(attempt)
    assert ceiling <= cap
    assert 0.0 <= full.delay(attempt, rng) <= ceiling
    equal = Backoff(base=base, cap=cap, jitter="equal")
    assert ceiling / 2 <= equal.delay(attempt, rng) <= ceiling
    assert Backoff(base=base, cap=cap, jitter="none").delay(attempt, rng) == ceiling


def test_full_jitter_spreads_over_the_whole_window() -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(2000)]
    assert min(delays) < 0.5 and max(delays) > 7.5  # covers [0, 8]
    assert 3.6 < sum(delays) / len(delays) < 4.4  # mean ceiling / 2
    assert len(set(delays)) == len(delays)  # jittered: no two clients in lock-step


def test_equal_jitter_keeps_half() -> None:
    backoff = Backoff(base=1.0, jitter="equal")
    rng = random.Random(7)
    delays = [backoff.delay(2, rng) for _ in range(2000)]
    assert min(delays) >= 2.0 and max(delays) <= 4.0
    assert min(delays) < 2.1 and max(delays) > 3.9


def test_same_seed_same_delays() -> None:
    backoff = Backoff()
    first = [backoff.delay(n, random.Random(42)) for n in range(12)]
    again = [backoff.delay(n, random.Random(42)) for n in range(12)]
    assert first == again
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert [backoff.delay(n, rng_a) for n in range(12)] == [
        backoff.delay(n, rng_b) for n in range(12)
    ]
    assert [backoff.delay(n, random.Random(2)) for n in range(12)] != first


def test_max_retries() -> None:
    backoff = Backoff(max_retries=3)
    assert [backoff.exhausted(n) for n in range(5)] == [False, False, False, True, True]
    assert Backoff(max_retries=0).exhausted(0)
    assert not Backoff(max_retries=None).exhausted(10**9)


def test_overloaded_delay_is_at_least_base_and_the_hint() -> None:
    backoff = Backoff(base=2.0)
    rng = random.Random(3)
    assert all(backoff.overloaded_delay(0, rng) >= 2.0 for _ in range(200))
    assert backoff.overloaded_delay(0, rng, retry_after=45.0) == 45.0


def test_retry_after_hint() -> None:
    assert retry_after_hint("over capacity; retry_after_ms=2500") == 2.5
    assert retry_after_hint("retry_after_ms: 10") == 0.01
    assert retry_after_hint("over capacity") is None
    assert retry_after_hint(None) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0},
        {"base": -1},
        {"base": 2.0, "cap": 1.0},
        {"max_retries": -1},
        {"jitter": "decorrelated"},
    ],
)
def test_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_negative_attempt_rejected() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1, random.Random())
