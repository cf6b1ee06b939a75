"""``core.forwarded``: X-Forwarded-For is believed only from a trusted proxy."""

from __future__ import annotations

import pytest

from core.forwarded import client_address, trusted_networks

LB = trusted_networks(("10.0.0.0/24", "fd00::1"))


def test_from_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() -> None:
    assert client_address("10.0.0.5", "198.51.100.7", LB) == "198.51.100.7"
    # A client may write its own header; the proxy appends what it saw: that one counts.
    assert client_address("10.0.0.5", "1.2.3.4, 198.51.100.7", LB) == "198.51.100.7"
    # A chain of trusted proxies is skipped.
    assert client_address("10.0.0.5", "198.51.100.7, 10.0.0.9", LB) == "198.51.100.7"
    assert client_address("fd00::1", "[2001:db8::5]:4711", LB) == "2001:db8::5"
    assert client_address("10.0.0.5", "198.51.100.7:5555", LB) == "198.51.100.7"


def test_from_anyone_else_or_when_malformed_the_peer_stays() -> None:
    assert client_address("203.0.113.9", "198.51.100.7", LB) == "203.0.113.9"
    assert client_address("10.0.0.5", None, LB) == "10.0.0.5"
    assert client_address("10.0.0.5", "not-an-address", LB) == "10.0.0.5"
    assert client_address("10.0.0.5", "10.0.0.7", LB) == "10.0.0.5"  # only proxies named
    assert client_address("10.0.0.5", "198.51.100.7", ()) == "10.0.0.5"  # nobody trusted


def test_a_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        trusted_networks(("10.0.0.300",))
