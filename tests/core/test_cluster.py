"""``core.cluster``: the lease arithmetic on the node's own clock, URLs, the key fingerprint."""

from __future__ import annotations

import pytest

from core.cluster import (
    Lease,
    check_public_url,
    redacted,
    redirect_url,
    secret_fingerprint,
)


def test_a_lease_counts_from_when_the_renewal_was_sent() -> None:
    lease = Lease(ttl=5.0)
    assert lease.fenced(0.0)  # never renewed: not ours
    lease.renewed(sent_at=10.0)  # answered later, but Redis may have applied it at 10.0
    assert not lease.fenced(14.999)
    assert lease.fenced(15.0)  # never later than Redis expires the key
    lease.renewed(sent_at=9.0)  # a late answer to an older renewal cannot shorten it
    assert lease.remaining(12.0) == pytest.approx(3.0)


def test_public_urls_are_checked_and_redirects_keep_the_clients_target() -> None:
    assert check_public_url("ws://10.0.0.11:8080/") == "ws://10.0.0.11:8080"
    assert check_public_url("wss://game.example") == "wss://game.example"
    for bad in ("http://x:1", "ws://", "ws://x:1/path", "ws://x:1?q=1"):
        with pytest.raises(ValueError):
            check_public_url(bad)
    url = redirect_url("ws://10.0.0.11:8080", "/rooms/r1?resume=T&last_seq=7")
    assert url == "ws://10.0.0.11:8080/rooms/r1?resume=T&last_seq=7"


def test_no_secret_reaches_a_log() -> None:
    assert redacted("redis://:hunter2@10.0.0.5:6379/0") == "redis://***@10.0.0.5:6379/0"
    assert redacted("redis://10.0.0.5:6379/0") == "redis://10.0.0.5:6379/0"
    key = b"k" * 32
    assert secret_fingerprint(key) == secret_fingerprint(key)
    assert secret_fingerprint(key) != secret_fingerprint(b"j" * 32)
    assert key.hex() not in secret_fingerprint(key) and "k" * 8 not in secret_fingerprint(key)
