"""A tick's pings go out in small batches spread over the tick, not in one burst."""

from __future__ import annotations

import trio
import trio.testing

from shards.shard import spread_pings


async def test_a_large_tick_is_spread_in_batches_over_most_of_the_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[tuple[float, list[int]]] = []
    start = trio.current_time()
    await spread_pings(
        list(range(1000)),
        start,
        start + 0.5,
        lambda slots: sent.append((trio.current_time() - start, slots)),
    )
    sizes = [len(slots) for _, slots in sent]
    assert len(sizes) == 16 and max(sizes) <= 64
    assert [x for _, slots in sent for x in slots] == list(range(1000))  # each once, in order
    times = [t for t, _ in sent]
    assert times[0] == 0.0
    assert 0.35 <= times[-1] < 0.4  # the last batch leaves within 80% of the tick
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) - min(gaps) < 1e-9  # evenly


async def test_a_small_tick_is_one_batch_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[tuple[float, list[int]]] = []
    start = trio.current_time()
    await spread_pings(
        [3, 1, 2], start, start + 0.5, lambda s: sent.append((trio.current_time(), s))
    )
    assert sent == [(start, [3, 1, 2])]
