"""Heartbeat presets, overrides, validation and the zombie detection bound."""

from __future__ import annotations

import math

import pytest

from core.config import ServerConfig
from core.heartbeat import DEFAULT_PRESET, PRESETS, HeartbeatPolicy, resolve


@pytest.mark.parametrize(
    ("preset", "interval", "timeout"),
    [("short", 5.0, 15.0), ("medium", 30.0, 60.0), ("long", 300.0, 600.0)],
)
def test_presets_have_the_documented_interval_and_timeout(
    preset: str, interval: float, timeout: float
) -> None:
    assert resolve(preset) == HeartbeatPolicy(interval=interval, timeout=timeout)


def test_there_are_exactly_three_presets() -> None:
    assert list(PRESETS) == ["short", "medium", "long"]


def test_default_preset_is_medium() -> None:
    assert DEFAULT_PRESET == "medium"
    assert resolve() == HeartbeatPolicy(interval=30.0, timeout=60.0)


def test_server_config_defaults_match_the_default_preset() -> None:
    config = ServerConfig()
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (30.0, 60.0)


def test_resolve_interval_overrides_only_the_interval() -> None:
    assert resolve("short", interval=1.0) == HeartbeatPolicy(interval=1.0, timeout=15.0)


def test_resolve_timeout_overrides_only_the_timeout() -> None:
    assert resolve("long", timeout=2.0) == HeartbeatPolicy(interval=300.0, timeout=2.0)


def test_resolve_with_both_overrides_ignores_the_preset_values() -> None:
    assert resolve("medium", interval=0.2, timeout=0.3) == HeartbeatPolicy(0.2, 0.3)


def test_unknown_preset_raises_value_error_naming_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        resolve("turbo")
    message = str(info.value)
    assert "'turbo'" in message
    for name in ("short", "medium", "long"):
        assert name in message


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [(0, 1), (1, 0), (-1, 1), (1, -0.5), (0, 0), (math.nan, 1), (1, math.nan)],
)
def test_non_positive_interval_or_timeout_is_rejected(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        HeartbeatPolicy(interval=interval, timeout=timeout)


@pytest.mark.parametrize("override", [{"interval": 0}, {"timeout": -5}])
def test_resolve_rejects_non_positive_overrides(override: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        resolve("short", **override)


@pytest.mark.parametrize(
    ("interval", "timeout", "tick"),
    [
        (0.01, 0.02, 0.005),  # a tenth would be 1 ms: clamped up to 5 ms
        (0.05, 0.05, 0.005),  # exactly the lower clamp
        (0.2, 0.5, 0.02),  # a tenth of the shorter period
        (2.0, 0.4, 0.04),  # the shorter one may be the timeout
        (10.0, 10.0, 1.0),  # exactly the upper clamp
        (300.0, 600.0, 1.0),  # a tenth would be 30 s: clamped down to 1 s
    ],
)
def test_tick_is_a_tenth_of_the_shorter_period_clamped_to_5ms_and_1s(
    interval: float, timeout: float, tick: float
) -> None:
    assert HeartbeatPolicy(interval, timeout).tick == pytest.approx(tick)


@pytest.mark.parametrize(("preset", "bound"), [("short", 20.5), ("medium", 91.0), ("long", 901.0)])
def test_preset_detection_bounds(preset: str, bound: float) -> None:
    assert resolve(preset).detection_bound == pytest.approx(bound)


@pytest.mark.parametrize(("interval", "timeout"), [(0.01, 0.02), (0.3, 0.7), (5.0, 15.0)])
def test_detection_bound_is_interval_plus_timeout_plus_tick(
    interval: float, timeout: float
) -> None:
    policy = HeartbeatPolicy(interval, timeout)
    assert policy.detection_bound == pytest.approx(interval + timeout + policy.tick)


def test_milliseconds_for_the_welcome_message_are_rounded() -> None:
    policy = HeartbeatPolicy(interval=0.25, timeout=1.0004)
    assert (policy.interval_ms, policy.timeout_ms) == (250, 1000)
    assert (resolve().interval_ms, resolve().timeout_ms) == (30_000, 60_000)


def test_policy_is_immutable() -> None:
    policy = resolve()
    with pytest.raises(AttributeError):
        policy.interval = 1.0  # type: ignore[misc]
