"""Behind a real HAProxy with ``send-proxy-v2``: each player is counted under the address
HAProxy saw (the PROXY header's, port included - X-Forwarded-For would give port 0), its
health checks (a ``LOCAL`` header, then ``GET /healthz``) pass, and a server that does
not trust it refuses every connection, which its health check shows at once."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from lab.haproxy import HAProxy, haproxy_available, run_haproxy
from lab.rawws import RawClient
from lab.server import ServerProcess, open_server
from tests.support import resume_path

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(haproxy_available() is not None, reason=str(haproxy_available())),
]


async def open_from(
    haproxy: HAProxy, source: str, path: str = "/"
) -> tuple[RawClient, dict[str, Any], int]:
    """A player connected from ``source`` (a loopback address other than the proxy's)
    through ``haproxy``; its welcome and its own port."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", haproxy.port))
    client = RawClient(trio.SocketStream(sock))
    await client.upgrade(path, "127.0.0.1", haproxy.port)
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client, welcome, sock.getsockname()[1]


async def away_from(server: ServerProcess, haproxy: HAProxy, source: str) -> dict[str, Any]:
    """A player from ``source`` echoes once and vanishes; its welcome, once the server
    logged it gone, asserted to be under ``source`` and its own port."""
    client, welcome, port = await open_from(haproxy, source)
    await client.echo(1)
    client.vanish()
    gone = await server.log.wait_for("disconnect", session=welcome["session"])
    assert gone["peer"] == f"{source}:{port}", gone
    return welcome


async def test_through_haproxy_send_proxy_v2_each_player_has_its_own_away_cap() -> None:
    args = ("--trusted-proxy", "127.0.0.1", "--max-away-per-address", "1")
    async with (
        open_server(*args, shards=2) as server,
        run_haproxy({"a": server.port}, "send-proxy-v2") as haproxy,
    ):
        await haproxy.wait_for_line("Health check for server nodes/a succeeded")
        first = await away_from(server, haproxy, "127.0.0.2")
        await away_from(server, haproxy, "127.0.0.3")
        # Two addresses, one away session each: the first one is still there to resume.
        client, back, _ = await open_from(haproxy, "127.0.0.2", resume_path(first, 1))
        assert back["resumed"] is True, back
        await client.aclose()
        assert not server.log.events("rejected")
        assert not server.log.events("session_evicted")


async def test_a_server_that_does_not_trust_haproxy_fails_its_health_check() -> None:
    async with (
        open_server(shards=1) as server,
        run_haproxy({"a": server.port}, "send-proxy-v2") as haproxy,
    ):
        failed = await haproxy.wait_for_line("Health check for server nodes/a failed")
        assert "code: 400" in failed, failed
        refused = await server.log.wait_for("rejected", reason="proxy_header_untrusted")
        assert refused["status"] == "400", refused
