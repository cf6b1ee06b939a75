"""Micro-benchmark: the Cython heartbeat wheel against two pure-Python alternatives.

Run as ``python -m bench wheel [--sizes 10000,100000,1000000]``.

Contenders, all driven through the same Python-level calls (``add``, ``touch``,
``advance``) with the same ping/close rules:

* **wheel** - ``core.heartbeat_wheel.HeartbeatWheel``: ``touch`` is a store, the
  deadline is re-checked when its bucket fires;
* **heapq** - a heap of ``(deadline, slot)`` with lazy invalidation: a ``touch`` must push
  a new entry (that is how a heap reschedules), stale entries are skipped when popped;
* **dict** - ``{slot: last_activity}`` swept in full on every tick.

Measured for each number of connections N (median of ``--repeats`` runs):

* ``touch``: ns per ``touch`` of a random slot (includes the Python call);
* ``tick idle``: an ``advance`` over a tick in which no deadline falls;
* ``tick none due``: every connection is active: the deadlines in the tick (N * tick /
  interval of them) are stale because their slots were touched since - re-checked by the
  wheel, popped and dropped by the heap; nothing is reported;
* ``tick 1% due``: 1% of the slots go silent past ``interval`` in the tick and are pinged.

Defaults: ``--sizes 10000,100000,1000000 --repeats 7 --touches 100000 --interval 20
--timeout 10 --tick 0.1 --budget 100`` (about 5-15 s on a 2-core VM). Every loop is bounded
in count, and the run stops early (saying so) once ``--budget`` seconds have passed.

Writes ``bench/results/wheel-<stamp>.json`` (every median of the table, in ns) and
``wheel-<stamp>-cost.png`` (each metric against N per implementation, log-log).

Why over 300 lines: it carries the two pure-Python timer sets the wheel is measured
against (``HeapTimers``, ``DictTimers``: about 95 lines) and checks every timing option.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._report import Report, scenario_parser, table_head
from core.heartbeat_wheel import HeartbeatWheel

DEFAULT_SIZES = "10000,100000,1000000"


class HeapTimers:
    """``heapq`` of ``(deadline, slot)`` with lazy invalidation."""

    def __init__(self, interval: float, timeout: float, tick: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.tick = tick
        self.heap: list[tuple[float, int]] = []
        self.last: list[float] = []  # slot -> last activity
        self.pinged: list[float] = []  # slot -> time of the outstanding ping, -1.0 if none

    def add(self, now: float) -> int:
        slot = len(self.last)
        self.last.append(now)
        self.pinged.append(-1.0)
        heapq.heappush(self.heap, (now + self.interval, slot))
        return slot

    def touch(self, slot: int, now: float) -> None:
        self.last[slot] = now
        self.pinged[slot] = -1.0
        heapq.heappush(self.heap, (now + self.interval, slot))

    def advance(self, now: float) -> tuple[list[int], list[int]]:
        pings: list[int] = []
        closes: list[int] = []
        heap, last, pinged = self.heap, self.last, self.pinged
        interval, timeout, tick = self.interval, self.timeout, self.tick
        heappop, heappush = heapq.heappop, heapq.heappush
        while heap and heap[0][0] <= now:
            due, slot = heappop(heap)
            base = last[slot] + interval
            p = pinged[slot]
            if p < 0.0:
                if due != base:
                    continue  # stale: touched since this entry was pushed
                pings.append(slot)
                pinged[slot] = now
                if now - tick > base:
                    base = now - tick
                heappush(heap, (base + timeout, slot))
            else:
                if p - tick > base:
                    base = p - tick
                if due != base + timeout:
                    continue  # stale
                closes.append(slot)
        return pings, closes


class DictTimers:
    """``{slot: last_activity}``, swept in full by every ``advance``."""

    def __init__(self, interval: float, timeout: float, tick: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.tick = tick
        self.last: dict[int, float] = {}
        self.pinged: dict[int, float] = {}  # a ping is outstanding if newer than activity
        self.next_slot = 0

    def add(self, now: float) -> int:
        slot = self.next_slot
        self.next_slot += 1
        self.last[slot] = now
        return slot

    def touch(self, slot: int, now: float) -> None:
        self.last[slot] = now

    def advance(self, now: float) -> tuple[list[int], list[int]]:
        pings: list[int] = []
        closes: list[int] = []
        pinged = self.pinged
        interval, timeout, tick = self.interval, self.timeout, self.tick
        limit = now - interval
        for slot, a in self.last.items():
            if a <= limit:
                p = pinged.get(slot, -1.0)
                if p < a:
                    pings.append(slot)
                    pinged[slot] = now
                elif now >= max(a + interval, p - tick) + timeout:
                    closes.append(slot)
        return pings, closes


IMPLEMENTATIONS: dict[str, Callable[[float, float, float], object]] = {
    "wheel": lambda interval, timeout, tick: HeartbeatWheel(interval, timeout, tick=tick),
    "heapq": HeapTimers,
    "dict": DictTimers,
}


def ns(fn: Callable[[], object]) -> tuple[int, object]:
    started = time.perf_counter_ns()
    result = fn()
    return time.perf_counter_ns() - started, result


def bench_one(name: str, n: int, args: argparse.Namespace, deadline: float) -> dict[str, float]:
    """Run every measurement for one implementation and size; medians in ns."""
    results: dict[str, float] = {}
    bench_active(name, n, args, deadline, results)
    gc.collect()
    if time.monotonic() <= deadline:
        bench_due(name, n, args, deadline, results)
        gc.collect()
    return results


def bench_active(
    name: str, n: int, args: argparse.Namespace, deadline: float, results: dict[str, float]
) -> None:
    """Idle tick, touch, and a tick in which every deadline is stale (all active)."""
    interval, timeout, tick = args.interval, args.timeout, args.tick
    repeats = args.repeats
    rng = random.Random(args.seed)

    def out_of_time() -> bool:
        return time.monotonic() > deadline

    # Activity spread over [0, interval), so the deadlines spread over one interval.
    timers = IMPLEMENTATIONS[name](interval, timeout, tick)
    add = timers.add
    step = interval / n
    for i in range(n):
        add(i * step)
    advance = timers.advance
    advance(0.5 * tick)

    # tick idle: no deadline falls in ticks 1..repeats
    samples = []
    for r in range(repeats):
        t, (pings, closes) = ns(lambda r=r: advance((r + 1.5) * tick))
        assert not pings and not closes
        samples.append(t)
        if out_of_time():
            break
    results["tick_idle"] = statistics.median(samples)

    # touch: random slots (the wheel's touch of an un-pinged slot is a pure store)
    count = min(n, args.touches)
    slots = [rng.randrange(n) for _ in range(count)]
    touch = timers.touch
    now = 0.5 * interval

    def touch_loop() -> None:
        for s in slots:
            touch(s, now)

    samples = []
    for _ in range(repeats):
        t, _ = ns(touch_loop)
        samples.append(t / count)
        if out_of_time():
            break
    results["touch"] = statistics.median(samples)

    # tick none due: every slot was touched at interval - tick (not timed), so the
    # deadlines from ``add`` that fall in the measured ticks are all stale.
    now = interval - tick
    for s in range(n):
        touch(s, now)
    advance(interval - 0.5 * tick)
    samples = []
    for r in range(repeats):
        t, (pings, closes) = ns(lambda r=r: advance(interval + (r + 0.5) * tick))
        assert not pings and not closes, "nothing may be due in the all-active ticks"
        samples.append(t)
        if out_of_time():
            break
    results["tick_none_due"] = statistics.median(samples)


def bench_due(
    name: str, n: int, args: argparse.Namespace, deadline: float, results: dict[str, float]
) -> None:
    """A tick in which 1% of the slots are due for a ping."""
    interval, timeout, tick = args.interval, args.timeout, args.tick
    repeats = args.repeats
    # Group r (1% of the slots) went silent so that its ping is due in the r-th tick.
    timers = IMPLEMENTATIONS[name](interval, timeout, tick)
    add = timers.add
    group = max(1, n // 100)
    for r in range(repeats):
        for _ in range(group):
            add((r + 0.5) * tick)  # ping due at interval + (r + 0.5) * tick
    rest = n - group * repeats
    for i in range(rest):
        add(0.25 * interval + i * (0.5 * interval / rest))  # due far later
    advance = timers.advance
    advance(interval)  # nothing due yet
    samples = []
    for r in range(repeats):
        t, (pings, closes) = ns(lambda r=r: advance(interval + (r + 0.75) * tick))
        assert len(pings) == group and not closes, (len(pings), len(closes))
        samples.append(t)
        if time.monotonic() > deadline:
            break
    results["tick_1pct_due"] = statistics.median(samples)


def call_overhead_ns(count: int) -> float:
    """ns per iteration of the touch loop calling an empty function (the floor)."""

    def noop(slot: int, now: float) -> None:
        pass

    slots = list(range(count))
    samples = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for s in slots:
            noop(s, 1.0)
        samples.append((time.perf_counter_ns() - started) / count)
    return statistics.median(samples)


METRICS = [
    ("touch", "touch, random slot", "ns", 1.0),
    ("tick_idle", "tick, idle (no deadline in it)", "us", 1e-3),
    ("tick_none_due", "tick, none due (all active)", "us", 1e-3),
    ("tick_1pct_due", "tick, 1% due (pinged)", "us", 1e-3),
]


def fmt(value: float | None, scale: float) -> str:
    if value is None:
        return "-"
    v = value * scale
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    r = a / b
    return f"{r:,.0f}x" if r >= 100 else f"{r:.1f}x"


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or any(s < 100 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be integers >= 100")
    return sizes


def cost_chart(table: dict[int, dict[str, dict[str, float]]]) -> Callable[[Any], Any]:
    """Each metric against N, one line per implementation, log-log."""

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for ax, (key, label, unit, scale) in zip(axes.flat, METRICS, strict=True):
            for name, marker in zip(IMPLEMENTATIONS, "os^", strict=True):
                points = [
                    (n, r[name][key] * scale) for n, r in table.items() if key in r.get(name, {})
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), marker=marker, label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(label)
            ax.set_xlabel("connections (slots) N")
            ax.set_ylabel(unit)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle("Heartbeat timers: cost per call vs N (median, lower is better)")
        return fig

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = scenario_parser("wheel", __doc__.split("\n")[0], raw=False)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--touches", type=int, default=100_000, help="touches per run")
    parser.add_argument("--interval", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--tick", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--budget", type=float, default=100.0, help="stop after this many seconds (default 100)"
    )
    args = parser.parse_args(argv)
    args.repeats = max(1, min(args.repeats, 50))
    args.touches = max(1, min(args.touches, 1_000_000))
    if not (args.interval > 0 and args.timeout > 0 and args.tick > 0):
        parser.error("interval, timeout and tick must be positive")
    if (args.repeats + 1) * args.tick >= args.interval:
        parser.error("interval must be longer than (repeats + 1) ticks")

    report = Report("wheel", args, "Heartbeat timer wheel micro-benchmark (python -m bench wheel)")
    started = time.monotonic()
    deadline = started + args.budget
    overhead = call_overhead_ns(100_000)
    print(f"python loop + call of an empty function: {overhead:.0f} ns")
    print(
        f"'none due': all slots active, {args.tick / args.interval:.2%} of the deadlines "
        "(tick/interval) fall in the tick but are stale"
    )
    print()
    table_head(
        f"{'N':>9}  {'metric':<31} {'unit':<4} {'wheel':>9} {'heapq':>9} {'dict':>9}"
        f" {'heapq/wheel':>11} {'dict/wheel':>10}"
    )
    table: dict[int, dict[str, dict[str, float]]] = {}  # N -> implementation -> metric -> ns
    stopped = False
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with report.progress() as bar:
            task = bar.add("sizes x implementations", total=len(args.sizes) * len(IMPLEMENTATIONS))
            for n in args.sizes:
                if time.monotonic() > deadline:
                    stopped = True
                    break
                results: dict[str, dict[str, float]] = {}
                for name in IMPLEMENTATIONS:
                    if time.monotonic() > deadline:
                        stopped = True
                        break
                    bar.update(task, description=f"N={n:,} {name}")
                    results[name] = bench_one(name, n, args, deadline)
                    gc.collect()
                    bar.advance(task)
                table[n] = results
                for key, label, unit, scale in METRICS:
                    w = results.get("wheel", {}).get(key)
                    h = results.get("heapq", {}).get(key)
                    d = results.get("dict", {}).get(key)
                    print(
                        f"{n:>9,}  {label:<31} {unit:<4} {fmt(w, scale):>9} {fmt(h, scale):>9}"
                        f" {fmt(d, scale):>9} {ratio(h, w):>11} {ratio(d, w):>10}"
                    )
                sys.stdout.flush()
            bar.update(task, description="sizes x implementations")
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed = time.monotonic() - started
    if stopped:
        print(f"\nstopped early after {elapsed:.1f} s: time budget (--budget) reached")
    data = {
        "unit": "ns (medians); the table prints ticks in us",
        "metrics": {key: label for key, label, _, _ in METRICS},
        "call_overhead_ns": overhead,
        "stale_fraction_per_tick": args.tick / args.interval,
        "stopped_early": stopped,
        "elapsed_s": round(elapsed, 2),
        "results": [{"n": n, **results} for n, results in table.items()],
    }
    report.finish(data, charts={"cost": cost_chart(table)} if table else {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
