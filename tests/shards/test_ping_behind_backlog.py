"""A client that is reading a backlog of broadcasts is pinged like any other (the ping
waits behind the backlog) and is never closed as a zombie, against a real
``python -m supervisor``.

Seen in ``python -m bench idle --say-rate 0.2`` at 10,000 connections on one shard: the
reactor skipped the ping of a connection with output pending, so an idle client that
was still reading a say got no ping, had nothing to answer, and was closed
``heartbeat_timeout`` at interval + timeout (384 of 10,000 clients in one run).
"""

from __future__ import annotations

import pytest
import trio

from core.ws_codec import OP_PING, OP_PONG, OP_TEXT
from lab.rawws import RawClient
from lab.server import open_server

pytestmark = pytest.mark.timeout(90)

SAY_BYTES = 32_000
# ~9.6 MB: more than the kernel buffers hold for a reader that has not read yet (its
# receive buffer stays near tcp_rmem's default, the server's send buffer <= tcp_wmem's
# 4 MiB), so most of it waits in the shard's own outbox.
SAYS = 300


async def test_a_reader_with_a_backlog_is_pinged_and_stays() -> None:
    async with open_server(
        *("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"),
        *("--max-say-bytes", "65536", "--max-outbound-bytes", str(64 * 2**20)),
        *("--broadcast-rate", "1000", "--broadcast-burst", "1000"),
        *("--max-message-rate", "1000", "--message-burst", "1000"),
        shards=1,
        echo_logs=False,
    ) as server:
        reader, welcome = await RawClient.open(server.port)
        assert welcome is not None
        talker, _ = await RawClient.open(server.port)
        text = "z" * SAY_BYTES
        for _ in range(SAYS):
            await talker.send({"type": "say", "text": text})
            await talker.receive_until("said")
        await talker.aclose()
        # The reader's last word: from here the heartbeat pings it after 0.5 s of
        # silence, while its backlog is still pending, and closes it after 2.5 s unless
        # it answers. It reads nothing for 1.2 s, then everything.
        await reader.send({"type": "echo", "data": "last word"})
        spoke = trio.current_time()
        await trio.sleep_until(spoke + 1.2)
        says = pings = 0
        with trio.move_on_after(20):
            while says < SAYS or pings < 2:
                data = await reader.stream.receive_some(65536)
                assert data, f"the server ended the connection after {says} says"
                for kind, value in reader.decoder.feed(data):
                    if kind == OP_PING:
                        pings += 1
                        await reader.stream.send_all(reader.encoder.frame(OP_PONG, value))
                    else:
                        assert kind == OP_TEXT, (kind, value)
                        says += b'"said"' in value
        assert (says, pings) >= (SAYS, 2), (says, pings)
        # Every say arrived, the pings came (the first behind the backlog), and the
        # connection lives past several silence limits.
        await reader.echo("still here")
        assert not server.log.events("disconnect", session=welcome["session"])
