"""Reconnect backoff policy: capped exponential delays with jitter and a retry budget.

Pure, like the rest of ``core``: no I/O, no trio, no global randomness. The caller
passes a ``random.Random`` (seed it in tests for deterministic delays) and does the
sleeping itself.

Retry ``attempt`` numbers start at 0: the first reconnect after a drop (or after the
first connection failed) waits ``delay(0)``, the next ``delay(1)``, and so on. The
ceiling of attempt ``n`` is ``min(cap, base * 2**n)``:

=========  ===  ===  ===  ===  ====  ====  ====  ...
attempt     0    1    2    3    4     5     6    ...
ceiling s   1    2    4    8    16    30    30   ...  (defaults)
=========  ===  ===  ===  ===  ====  ====  ====  ...

Jitter spreads the clients of a crashed shard over the window instead of bringing them
all back in the same millisecond (the "thundering herd"):

* ``"full"`` (default): ``uniform(0, ceiling)``; the widest spread, mean ceiling / 2.
* ``"equal"``: ``ceiling / 2 + uniform(0, ceiling / 2)``; never shorter than half.
* ``"none"``: exactly ``ceiling``; deterministic, every client in lock-step.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

Jitter = Literal["full", "equal", "none"]
JITTERS: tuple[Jitter, ...] = ("full", "equal", "none")

DEFAULT_BASE = 1.0
DEFAULT_CAP = 30.0
DEFAULT_MAX_RETRIES = 10

# 2**62 * base already exceeds any sane cap; bounding the exponent avoids float overflow.
_MAX_EXPONENT = 62
_RETRY_AFTER = re.compile(r"retry_after_ms\s*[=:]\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnect attempt ``n`` and when to stop trying.

    ``base`` (default 1.0 s): the ceiling of the first retry; every further retry doubles
    it. A smaller base reconnects faster after a blip but hammers a server that is
    really down.

    ``cap`` (default 30.0 s): no ceiling exceeds this, so a client keeps checking at
    least every 30 s once the server has been down for a while (from attempt 5 on with
    the defaults).

    ``max_retries`` (default 10): consecutive failed reconnect attempts allowed before
    giving up; the count restarts after every successful ``welcome``. ``None`` retries
    forever, ``0`` never reconnects. With the defaults the waits add up to at most
    1+2+4+8+16+30*5 = 181 s (``worst_case_total``; about half that on average with full
    jitter), plus up to 11 connect timeouts, before the client gives up.

    ``jitter`` (default ``"full"``): ``"full"``, ``"equal"`` or ``"none"``, see the module
    docstring.
    """

    base: float = DEFAULT_BASE
    cap: float = DEFAULT_CAP
    max_retries: int | None = DEFAULT_MAX_RETRIES
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError("backoff base must be a positive number of seconds")
        if not self.cap >= self.base:
            raise ValueError("backoff cap must be at least base")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 or None")
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {JITTERS}, not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The longest delay of retry ``attempt`` (0-based): ``min(cap, base * 2**attempt)``."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.cap, self.base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (0-based), jittered with ``rng``.

        ``"full"``: in ``[0, ceiling]``; ``"equal"``: in ``[ceiling/2, ceiling]``;
        ``"none"``: ``ceiling`` (``rng`` is not used).
        """
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return rng.uniform(0.0, ceiling)
        if self.jitter == "equal":
            half = ceiling / 2.0
            return half + rng.uniform(0.0, half)
        return ceiling

    def overloaded_delay(
        self, attempt: int, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """The wait after close 1013 (try again later): the jittered ``delay`` but never
        less than ``base``, and never less than the server's ``retry_after`` hint."""
        return max(self.base, self.delay(attempt, rng), retry_after or 0.0)

    def exhausted(self, attempt: int) -> bool:
        """True when retry ``attempt`` (0-based) exceeds the budget: ``attempt >= max_retries``."""
        return self.max_retries is not None and attempt >= self.max_retries

    def worst_case_total(self) -> float | None:
        """Sum of every ceiling within the budget (``None`` when retrying forever)."""
        if self.max_retries is None:
            return None
        return sum(self.ceiling(n) for n in range(self.max_retries))


def retry_after_hint(reason: str | None) -> float | None:
    """Seconds from a ``retry_after_ms=N`` in a close reason (1013), else ``None``."""
    if not reason:
        return None
    match = _RETRY_AFTER.search(reason)
    return int(match.group(1)) / 1000.0 if match else None
