"""The token bucket, with plain calls and fake time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.rate_limit import TokenBucket


def test_a_burst_up_to_the_bucket_size_passes_then_the_next_message_is_refused() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(0.1)  # 0.1 s x 10/s = one token
    assert not bucket.take(0.1)
    assert bucket.take(100.0)
    assert bucket.tokens == pytest.approx(4.0)  # capped at 5, minus the one just taken


def test_time_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (10, 0.5)])
def test_nonsense_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=200),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, passed = 0.0, 0
    for gap in gaps:
        now += gap
        passed += bucket.take(now)
    assert passed <= burst + rate * now + 1e-6
