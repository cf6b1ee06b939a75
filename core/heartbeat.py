"""Heartbeat policy: how often the server pings an idle connection and how long it waits.

A silent connection (a pulled cable, a frozen phone) is found within
``interval + timeout + tick``. Shorter values find zombies sooner but cost one ping
frame per idle connection per ``interval`` (about 6 bytes each way) and wake mobile
radios more often.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """``interval``: seconds of silence before a ping; ``timeout``: seconds to wait for
    any inbound frame after that ping before closing (detection bound =
    interval + timeout + tick)."""

    interval: float
    timeout: float

    def __post_init__(self) -> None:
        if not (self.interval > 0 and self.timeout > 0):
            raise ValueError("heartbeat interval and timeout must be positive seconds")

    @property
    def tick(self) -> float:
        """Wheel resolution: a tenth of the shorter period, clamped to [5 ms, 1 s]."""
        return max(0.005, min(1.0, min(self.interval, self.timeout) / 10.0))

    @property
    def detection_bound(self) -> float:
        """Longest time a silent connection stays open after its last inbound frame."""
        return self.interval + self.timeout + self.tick

    @property
    def interval_ms(self) -> int:
        return round(self.interval * 1000)

    @property
    def timeout_ms(self) -> int:
        return round(self.timeout * 1000)


PRESETS: dict[str, HeartbeatPolicy] = {
    # Fast zombie detection (20 s), for action games; a ping every 5 s per idle client.
    "short": HeartbeatPolicy(interval=5.0, timeout=15.0),
    # Default: detection within 90 s; a ping every 30 s per idle client.
    "medium": HeartbeatPolicy(interval=30.0, timeout=60.0),
    # Turn-based games on mobile: detection within 15 min; a ping every 5 min.
    "long": HeartbeatPolicy(interval=300.0, timeout=600.0),
}
DEFAULT_PRESET = "medium"


def resolve(
    preset: str = DEFAULT_PRESET, interval: float | None = None, timeout: float | None = None
) -> HeartbeatPolicy:
    """The preset, with ``interval``/``timeout`` overriding its values when given."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ValueError(
            f"unknown heartbeat preset {preset!r}; choose one of {', '.join(PRESETS)}"
        ) from None
    return HeartbeatPolicy(
        interval=base.interval if interval is None else interval,
        timeout=base.timeout if timeout is None else timeout,
    )
