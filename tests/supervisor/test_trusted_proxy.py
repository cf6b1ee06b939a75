"""``--trusted-proxy``: behind a load balancer the per-address caps count each player's
own address (from X-Forwarded-For, or a PROXY protocol header before the request), and a
header from anyone else changes nothing (X-Forwarded-For) or is refused (PROXY: 400)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from core.proxy_protocol import V2_SIGNATURE, encode_v2
from lab.rawws import RawClient, first_line, handshake_request
from lab.server import TrioLog, open_server
from tests.support import resume_path

pytestmark = pytest.mark.timeout(60)

Opener = Callable[[int, str, str], Awaitable[tuple[RawClient, dict[str, Any]]]]
PROXY_PORT = 40000  # the client port the PROXY headers below name


async def open_forwarded(port: int, address: str, path: str = "/") -> tuple[RawClient, Any]:
    """A player whose proxy names it in X-Forwarded-For."""
    client, welcome = await RawClient.open(port, path, headers=(f"X-Forwarded-For: {address}",))
    assert welcome is not None
    return client, welcome


async def open_proxied(port: int, address: str, path: str = "/") -> tuple[RawClient, Any]:
    """A player whose proxy names it in a PROXY v2 header (HAProxy ``send-proxy-v2``)."""
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    server = "::1" if ":" in address else "127.0.0.1"
    await client.send_raw(encode_v2((address, PROXY_PORT), (server, port)))
    await client.upgrade(path, "127.0.0.1", port)
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client, welcome


def v2_upgrade(port: int, address: str) -> bytes:
    """A PROXY v2 header naming ``address``, then an upgrade request, as one write."""
    return encode_v2((address, PROXY_PORT), ("127.0.0.1", port)) + handshake_request(
        "127.0.0.1", port
    )


async def away_twice(
    port: int, log: TrioLog, first: str, second: str, opener: Opener = open_forwarded
) -> dict[str, Any]:
    """Two players (named ``first``/``second`` by their proxy) go away one after the
    other; the welcome the first one gets when it comes back."""
    welcomes = []
    for address in (first, second):
        client, welcome = await opener(port, address, "/")
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


# ---------------------------------------------------------------------- PROXY protocol
async def test_behind_a_trusted_proxy_a_proxy_v2_header_names_each_player() -> None:
    args = ("--trusted-proxy", "127.0.0.1", "--max-away-per-address", "1")
    async with open_server(*args, shards=1) as server:
        log = server.log
        back = await away_twice(server.port, log, "198.51.100.1", "2001:db8::2", open_proxied)
        assert back["resumed"] is True, back  # two addresses: one away session each
        peers = {e.get("peer") for e in log.events("disconnect")}
        assert {"198.51.100.1:40000", "[2001:db8::2]:40000"} <= peers, peers
        assert not log.events("rejected")


async def test_a_room_connection_is_placed_and_passed_under_the_header_s_address() -> None:
    """The shard that accepts strips the header; the supervisor places the room for the
    header's address and the owner gets the stripped head with the resolved peer."""
    async with open_server("--trusted-proxy", "127.0.0.1", shards=2) as server:
        for n in range(4):
            address = f"198.51.100.{10 + n}"
            await open_proxied(server.port, address, f"/rooms/proxied{n}")
            placed = await server.log.wait_for("room_placed", room=f"proxied{n}")
            assert placed["peer"] == f"{address}:40000", placed
            routed = await server.log.wait_for("routed", room=f"proxied{n}")
            assert routed["peer"] == f"{address}:40000", routed
        assert not server.log.events("rejected")


async def test_a_proxy_header_from_an_untrusted_peer_is_refused() -> None:
    async with open_server("--max-away-per-address", "1", shards=1) as server:
        assert await first_line(server.port, v2_upgrade(server.port, "198.51.100.1")) == (
            b"HTTP/1.1 400 Bad Request"
        )
        v1 = b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 80\r\n"
        line = await first_line(server.port, v1 + handshake_request("127.0.0.1", server.port))
        assert line == b"HTTP/1.1 400 Bad Request"
        refused = server.log.events("rejected", reason="proxy_header_untrusted", status="400")
        assert len(refused) == 2, refused
        assert all(e["peer"].startswith("127.0.0.1:") for e in refused), refused


async def test_from_a_trusted_proxy_a_bad_or_oversized_header_is_refused() -> None:
    async with open_server("--trusted-proxy", "127.0.0.1", shards=1) as server:
        port = server.port
        bad_version = V2_SIGNATURE + bytes((0x31, 0x11, 0, 12)) + bytes(12)
        request = handshake_request("127.0.0.1", port)
        assert await first_line(port, bad_version + request) == b"HTTP/1.1 400 Bad Request"
        bad = await server.log.wait_for("rejected", reason="bad_proxy_header")
        assert "version 3" in bad["detail"], bad
        # The header counts against the request head's 8 KiB: a 1040-byte header and a
        # 7.2 KiB head (each fine alone) are too much together.
        big = encode_v2(("198.51.100.1", 1), ("127.0.0.1", port), bytes(1024 - 12))
        padded = handshake_request("127.0.0.1", port, headers=("X-Pad: " + "a" * 7000,))
        assert len(big) + len(padded) > 8192 > len(padded)
        assert (
            await first_line(port, big + padded) == b"HTTP/1.1 431 Request Header Fields Too Large"
        )


async def test_a_local_header_keeps_the_proxy_and_its_x_forwarded_for() -> None:
    """``LOCAL`` (the balancer's own connection, e.g. a health check) names nobody: the
    peer is the proxy, whose X-Forwarded-For counts as without a PROXY header."""
    async with open_server("--trusted-proxy", "127.0.0.1", shards=1) as server:
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        await client.send_raw(V2_SIGNATURE + bytes((0x20, 0x00, 0, 0)))
        await client.upgrade("/", "127.0.0.1", server.port, ("X-Forwarded-For: 198.51.100.3",))
        welcome = await client.receive()
        client.vanish()
        gone = await server.log.wait_for("disconnect", session=welcome["session"])
        assert gone["peer"] == "198.51.100.3:0", gone
