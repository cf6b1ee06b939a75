"""``--trusted-proxy``: behind a load balancer the per-address caps count each player's
own address (from X-Forwarded-For), and a header from anyone else changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from lab.rawws import RawClient
from lab.server import TrioLog, open_server
from tests.support import resume_path

pytestmark = pytest.mark.timeout(60)


async def away_twice(port: int, log: TrioLog, first: str, second: str) -> dict[str, Any]:
    """Two players (X-Forwarded-For ``first``/``second``) go away one after the other;
    the welcome the first one gets when it comes back."""
    welcomes = []
    for address in (first, second):
        client, welcome = await RawClient.open(port, "/", headers=(f"X-Forwarded-For: {address}",))
        assert welcome is not None
        await client.echo(1)
        client.vanish()
        await log.wait_for("disconnect", session=welcome["session"])
        welcomes.append(welcome)
    _, back = await RawClient.open(port, resume_path(welcomes[0], 1))
    assert back is not None
    return back


async def test_behind_a_trusted_proxy_each_player_has_its_own_away_cap() -> None:
    args = ("--trusted-proxy", "127.0.0.0/8", "--max-away-per-address", "1")
    async with open_server(*args, shards=1) as server:
        back = await away_twice(server.port, server.log, "198.51.100.1", "198.51.100.2")
        assert back["resumed"] is True, back  # two addresses: one away session each
        peers = {e.get("peer") for e in server.log.events("disconnect")}
        assert {"198.51.100.1:0", "198.51.100.2:0"} <= peers, peers


async def test_the_header_from_an_untrusted_peer_changes_nothing() -> None:
    args = ("--trusted-proxy", "10.9.9.9", "--max-away-per-address", "1")
    async with open_server(*args, shards=1) as server:
        back = await away_twice(server.port, server.log, "198.51.100.1", "198.51.100.2")
        # Both counted as 127.0.0.1: the second away session evicted the first.
        assert back["resumed"] is False and back.get("resume_error"), back
        assert server.log.events("session_evicted", reason="address_cap")
