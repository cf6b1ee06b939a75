"""Per-connection message rate limit: a token bucket, time passed in.

``rate`` messages per second on average with bursts of up to ``burst``. A client that
keeps sending faster than that empties the bucket and is closed with 1008 (policy).
Defaults (``--max-message-rate`` 100/s, burst 200) leave a 60 Hz game client plus its
chat ample room while a flood is cut within a couple of seconds; the cost is two floats per
connection and a few arithmetic operations per message.
"""

from __future__ import annotations

DEFAULT_RATE = 100.0
DEFAULT_BURST = 200.0


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(
        self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, now: float = 0.0
    ) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens at ``now``; False when the bucket cannot pay (over rate)."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens
