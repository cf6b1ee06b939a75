"""Per-key locks: one holder per key at a time, other keys independent, nothing kept
for a key nobody holds or waits for."""

from __future__ import annotations

import trio
import trio.testing

from supervisor.key_locks import KeyLocks


async def test_one_holder_per_key_and_no_lock_left_behind() -> None:
    locks = KeyLocks()
    order: list[str] = []
    first_in = trio.Event()
    release = trio.Event()

    async def first() -> None:
        async with locks.hold("s1"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("s1"):
            order.append("second in")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await first_in.wait()
        nursery.start_soon(second)
        async with locks.hold("s2"):  # another key is not held up
            order.append("other key")
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(locks) == 0


async def test_a_block_that_raises_leaves_no_lock_behind() -> None:
    locks = KeyLocks()
    try:
        async with locks.hold("room"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert len(locks) == 0
