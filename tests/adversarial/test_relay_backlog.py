"""Broadcasts to a shard that stops reading: deferred past a byte budget, refilled from the
supervisor's broadcast log in order and exactly once, or reported as one BroadcastGap.

The first half drives ``supervisor.relay`` directly (no processes); the second SIGSTOPs a
real shard while a client of the other shard floods ``say``s.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from core.control import BroadcastGap, FrameReader
from lab.rawws import Closed, RawClient
from lab.server import ServerProcess, open_server
from supervisor.relay import BroadcastLog, RelayQueue
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(90)


# ====================================================================== unit: no processes
def frame(bseq: int, size: int = 100) -> bytes:
    return f"B{bseq:07d}".encode().ljust(size, b".")


def control_frame(n: int) -> bytes:
    return f"C{n:07d}".encode()


def decode(frames: list[bytes]) -> list[int | str | tuple[int, int]]:
    """Broadcast frames as their bseq, control frames as "C<n>", gaps as (first, last)."""
    out: list[int | str | tuple[int, int]] = []
    for f in frames:
        if f.startswith(b"B"):
            out.append(int(f[1:8]))
        elif f.startswith(b"C"):
            out.append(f.decode())
        else:
            (gap,) = FrameReader().feed(f)
            assert isinstance(gap, BroadcastGap)
            out.append((gap.first, gap.last))
    return out


def drain(queue: RelayQueue, max_bytes: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(100_000):
        frames = queue.take(max_bytes)
        if not frames:
            return out
        out.extend(frames)
    raise AssertionError("the queue never ran dry")


def publish(log: BroadcastLog, queues: list[RelayQueue], bseq: int, size: int = 100) -> None:
    data = frame(bseq, size)
    log.append(bseq, data)
    for queue in queues:
        queue.broadcast(bseq, data)


def test_the_log_keeps_the_newest_frames_within_its_byte_budget() -> None:
    log = BroadcastLog(1000)
    for bseq in range(1, 26):
        log.append(bseq, frame(bseq))
    assert (log.first, log.last, log.bytes, len(log)) == (16, 25, 1000, 10)
    assert log.get(15) is None and log.get(16) == frame(16)
    log.append(26, frame(26, 5000))  # bigger than the budget: kept alone
    assert (log.first, log.last, len(log)) == (26, 26, 1)
    with pytest.raises(ValueError):
        log.append(28, frame(28))


def test_a_queue_that_keeps_up_writes_live_broadcasts_in_order() -> None:
    log = BroadcastLog(10_000)
    queue = RelayQueue(log, budget=1000, shard=0)
    for bseq in range(1, 6):
        publish(log, [queue], bseq)
    assert queue.cursor is None and queue.queued_bytes == 500
    assert decode(drain(queue)) == [1, 2, 3, 4, 5]
    assert queue.idle and queue.queued_bytes == 0


def test_past_the_budget_broadcasts_come_from_the_log_in_order_exactly_once() -> None:
    log = BroadcastLog(1_000_000)
    queue = RelayQueue(log, budget=1000, shard=1)
    for bseq in range(1, 101):
        publish(log, [queue], bseq)
    assert queue.queued_bytes == 1000  # ten frames held, the rest left in the log
    assert queue.cursor == 11
    got = decode(queue.take(350))  # the writer drains a little...
    assert got == [1, 2, 3]
    for bseq in range(101, 121):  # ...more arrive meanwhile...
        publish(log, [queue], bseq)
    got += decode(drain(queue))  # ...and it catches up from the log
    assert got == list(range(1, 121))
    assert queue.cursor is None  # live again: the next one is queued
    publish(log, [queue], 121)
    assert decode(drain(queue)) == [121]


def test_control_frames_are_never_dropped_and_never_wait_behind_the_catch_up() -> None:
    log = BroadcastLog(1_000_000)
    queue = RelayQueue(log, budget=300, shard=1)
    for bseq in range(1, 51):
        publish(log, [queue], bseq)
    queue.control(control_frame(1))  # over the budget: queued anyway
    assert decode(queue.take(250)) == ["C0000001", 1, 2]
    assert decode(queue.take(250)) == [3, 4, 5]  # from the log now
    queue.control(control_frame(2))
    queue.control(control_frame(3))
    assert decode(queue.take(250))[:2] == ["C0000002", "C0000003"]  # ahead of the log
    rest = decode(drain(queue))
    broadcasts = [x for x in rest if isinstance(x, int)]
    assert broadcasts == list(range(broadcasts[0], 51))


def test_a_shard_behind_what_the_log_holds_gets_one_gap_then_the_rest() -> None:
    gaps: list[tuple[int, int]] = []
    log = BroadcastLog(1000)  # ten frames
    queue = RelayQueue(log, budget=300, shard=2, on_gap=lambda a, b: gaps.append((a, b)))
    keeping_up = RelayQueue(log, budget=300, shard=3)
    seen: list[int | str | tuple[int, int]] = []
    for bseq in range(1, 51):
        publish(log, [queue, keeping_up], bseq)
        seen += decode(drain(keeping_up))
    assert seen == list(range(1, 51))  # a sibling that keeps up misses nothing
    assert decode(drain(queue)) == [1, 2, 3, (4, 40), *range(41, 51)]
    assert gaps == [(4, 40)]
    publish(log, [queue, keeping_up], 51)
    assert decode(drain(queue)) == [51]


def test_broadcasts_that_will_never_exist_are_skipped_as_a_gap() -> None:
    """Cluster mode: says trimmed from the stream before this node read them. A shard that
    keeps up sees bseq jump (it marks the gap itself); one catching up gets a BroadcastGap
    for what it no longer can have."""
    log = BroadcastLog(1_000_000)
    live = RelayQueue(log, budget=1000, shard=0)
    behind = RelayQueue(log, budget=300, shard=1)
    for bseq in range(1, 11):
        publish(log, [live, behind], bseq)
    assert decode(drain(live)) == list(range(1, 11))
    assert decode(behind.take(100)) == [1]  # the rest waits in the log
    log.skip(30)
    assert (log.first, log.last, len(log), log.bytes) == (31, 30, 0, 0)
    publish(log, [live, behind], 31)
    assert decode(drain(live)) == [31]
    assert decode(drain(behind)) == [2, 3, (4, 30), 31]
    log.skip(20)  # behind what it has: nothing changes
    assert (log.first, log.last) == (31, 31)


def test_a_closed_queue_drops_everything_and_takes_nothing() -> None:
    log = BroadcastLog(1000)
    queue = RelayQueue(log, budget=300, shard=0)
    publish(log, [queue], 1)
    queue.control(control_frame(1))
    queue.close()
    publish(log, [queue], 2)
    queue.control(control_frame(2))
    assert queue.take() == [] and queue.queued_bytes == 0


operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(10, 400)),
        st.tuples(st.just("control"), st.integers(1, 100)),
        st.tuples(st.just("take"), st.integers(1, 2000)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, budget=st.integers(1, 3000), log_budget=st.integers(1, 6000))
def test_any_interleaving_delivers_every_broadcast_in_order_once_or_as_a_gap(
    ops: list[tuple[str, int]], budget: int, log_budget: int
) -> None:
    log = BroadcastLog(log_budget)
    queue = RelayQueue(log, budget=budget, shard=0)
    out: list[bytes] = []
    published = controls = 0
    for op, n in ops:
        if op == "publish":
            published += 1
            publish(log, [queue], published, n)
        elif op == "control":
            controls += 1
            queue.control(control_frame(controls))
        else:
            out += queue.take(n)
        # Broadcasts never hold more than the budget (control frames may exceed it).
        assert queue.queued_bytes <= budget + 8 * controls
    out += drain(queue)
    items = decode(out)
    assert [x for x in items if isinstance(x, str)] == [f"C{i:07d}" for i in range(1, controls + 1)]
    expected = 1
    for item in items:
        if isinstance(item, int):
            assert item == expected
            expected += 1
        elif isinstance(item, tuple):
            first, last = item
            assert first == expected and last >= first
            expected = last + 1
    assert expected == published + 1


# ====================================================================== real processes
SAYS = 300
TEXT = "x" * 2000  # ~2 KiB frames: 300 of them overflow the socketpair buffer and the budget


async def says_from(client: RawClient, session: str, count: int) -> list[int]:
    """The indexes of the next ``count`` says of ``session`` this client receives, and
    their seqs checked contiguous."""
    got: list[int] = []
    last_seq = None
    with trio.fail_after(30):
        while len(got) < count:
            message = await client.receive(timeout=30)
            if last_seq is not None and "seq" in message:
                assert message["seq"] == last_seq + 1, message
            last_seq = message.get("seq", last_seq)
            if message["type"] == "said" and message["from"] == session:
                got.append(int(message["text"][:4]))
    return got


async def test_a_stopped_shard_gets_every_broadcast_in_order_once_after_sigcont() -> None:
    args = ("--relay-budget-bytes", "4096", "--max-message-rate", "1e9", "--message-burst", "1e9")
    async with open_server(*args, shards=2, echo_logs=False) as server:
        flooder, flooder_welcome = await welcomed_on(server, 0)
        beside, _ = await welcomed_on(server, 0)
        stopped = [(await welcomed_on(server, 1))[0] for _ in range(2)]
        pid = server.shard_pids()[1]
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(SAYS):
                await flooder.send({"type": "say", "text": f"{i:04d}{TEXT}"})
            session = flooder_welcome["session"]
            # The running shard's clients get every say: the supervisor relayed them all.
            assert await says_from(flooder, session, SAYS) == list(range(SAYS))
            assert await says_from(beside, session, SAYS) == list(range(SAYS))
            behind = server.log.events("relay_behind", shard=1)
            assert behind, "the frozen shard's queue never went over its budget"
        finally:
            os.kill(pid, signal.SIGCONT)
        for client in stopped:
            assert await says_from(client, session, SAYS) == list(range(SAYS))
        await server.log.wait_for("relay_caught_up", shard=1)
        assert not server.log.events("broadcast_gap")
        # Live again: one more say arrives once, right after.
        await flooder.send({"type": "say", "text": f"{SAYS:04d} after"})
        for client in stopped:
            assert await says_from(client, session, 1) == [SAYS]
        for client in [flooder, beside, *stopped]:
            await client.close()


BIG_TEXT = "y" * 3500  # ~3.6 KiB frames: 300 of them are ~1 MiB


async def test_a_shard_stopped_past_the_log_gets_one_gap_and_no_say_twice() -> None:
    """Budget 64 KiB, log 256 KiB, ~1 MiB of says while shard 1 is frozen: it gets what
    was queued, one BroadcastGap for what the log lost, then the rest; never a say twice
    or out of order; its attached clients are told to resume (4003) and get replay_gap."""
    args = (
        "--relay-budget-bytes",
        str(64 * 1024),
        "--broadcast-log-bytes",
        str(256 * 1024),
        "--max-message-rate",
        "1e9",
        "--message-burst",
        "1e9",
        "--metrics-port",
        "0",
    )
    async with open_server(*args, shards=2, echo_logs=False) as server:
        mport = int((await server.log.wait_for("metrics_ready"))["port"])
        flooder, flooder_welcome = await welcomed_on(server, 0)
        listener, listener_welcome = await welcomed_on(server, 1)
        session = flooder_welcome["session"]
        pid = server.shard_pids()[1]
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(SAYS):
                await flooder.send({"type": "say", "text": f"{i:04d}{BIG_TEXT}"})
            assert await says_from(flooder, session, SAYS) == list(range(SAYS))
        finally:
            os.kill(pid, signal.SIGCONT)
        gap = await server.log.wait_for("broadcast_gap", lambda f: "sessions" not in f)
        assert gap["shard"] == "1"  # the supervisor's line; the running shard kept up
        lost = int(gap["last"]) - int(gap["first"]) + 1
        assert 0 < lost < SAYS

        got: list[int] = []
        last_seq = 0
        closed: Closed | None = None
        try:
            with trio.fail_after(30):
                while len(got) < SAYS - lost:
                    message = await listener.receive(timeout=30)
                    if "seq" in message:
                        assert message["seq"] == last_seq + 1, message
                        last_seq = message["seq"]
                    if message["type"] == "said" and message["from"] == session:
                        got.append(int(message["text"][:4]))
        except Closed as exc:
            closed = exc  # the shard told its client to resume (replay_gap)
        assert got == sorted(set(got)), "a say came twice or out of order"
        queued = 0  # the says queued before the gap: 0, 1, 2, ...
        while queued < len(got) and got[queued] == queued:
            queued += 1
        # then nothing of the lost run, and everything after it, in order
        assert got[queued:] == list(range(queued + lost, lost + len(got)))
        print(f"{queued} says queued, {lost} lost, {len(got) - queued} from the log, {closed}")
        # The shard tells its attached clients to resume (4003, reconnectable, on the
        # wire); the resume reports the gap, so the app can send a full snapshot.
        assert closed is not None and closed.code == 4003, closed
        back, again = await welcomed(server, resume_path(listener_welcome, last_seq))
        assert again["resumed"] is True and again.get("replay_gap") is True, again
        await back.close()
        with trio.fail_after(10):
            while True:
                stream = await trio.open_tcp_stream("127.0.0.1", mport)
                async with stream:
                    await stream.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                counters = json.loads(data.partition(b"\r\n\r\n")[2])["counters"]
                if counters.get("broadcast_gap_sent|1"):
                    break
                await trio.sleep(0.1)
        assert counters["broadcast_gap_sent|1"] == 1
        assert counters["broadcast_lost|1"] == lost
        assert not counters.get("broadcast_gap_sent|0")
        await flooder.close()


async def welcomed_on(server: ServerProcess, shard: int) -> tuple[RawClient, dict[str, Any]]:
    """A client welcomed by ``shard``. Clients that land elsewhere stay connected until
    then - the shards accept by load, so the next connection goes to the emptier one -
    and then vanish (TCP reset): their sessions stay away for --grace, so no user_left
    enters the stream under test."""
    elsewhere: list[RawClient] = []
    try:
        for _ in range(60):
            client, welcome = await welcomed(server)
            if welcome["shard"] == shard:
                return client, welcome
            elsewhere.append(client)
    finally:
        for other in elsewhere:
            other.vanish()
    raise AssertionError(f"shard {shard} never accepted a connection")
