"""Floods within the per-connection limits, against a real ``python -m supervisor``: the
senders are throttled or refused, the readers who keep up are never closed, memory stays
inside the documented budgets, and no shard exits.

Rows of the robustness issue: 3 (say bursts from many clients), 4 (readers that never
read under big says), 5 (connect + RST floods holding away sessions), 10 (say size, pings).
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from core.ws_codec import OP_PING, FrameEncoder
from lab.rawws import RawClient
from lab.server import open_server
from tests.support import bystander

pytestmark = pytest.mark.timeout(120)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_a_burst_of_says_throttles_the_senders_and_never_closes_a_reader() -> None:
    """12 clients each send 190 tiny says at once (within their own burst): the shards'
    broadcast budget refuses what is over it with an ``error`` to the sender; every
    client - all of them read - stays open and gets every accepted say."""
    async with open_server("--shards", "2", shards=2, echo_logs=False) as server:
        clients = [await RawClient.open(server.port) for _ in range(12)]
        refused = [0] * len(clients)
        said: list[int] = [0] * len(clients)
        async with bystander(server.port) as rtts:

            async def talk(i: int) -> None:
                client, _ = clients[i]
                for n in range(190):
                    await client.send({"type": "say", "text": f"{i}-{n}", "cseq": n + 1})

            async def read(i: int) -> None:
                client, _ = clients[i]
                while True:
                    try:
                        message = await client.receive(timeout=3)
                    except trio.TooSlowError:
                        return  # 3 s of quiet: the burst is over
                    if message["type"] == "said":
                        said[i] += 1
                    elif message["type"] == "error":
                        assert message["code"] == "broadcast_budget", message
                        refused[i] += 1

            async with trio.open_nursery() as nursery:
                for i in range(len(clients)):
                    nursery.start_soon(read, i)
                for i in range(len(clients)):
                    nursery.start_soon(talk, i)
            assert rtts
        accepted = 12 * 190 - sum(refused)
        assert accepted > 0
        assert said == [accepted] * 12, (said, accepted, refused)
        assert not server.log.events("disconnect", code="1008")
        assert not server.log.events("shard_exit")


async def test_readers_that_never_read_cost_at_most_the_outbound_budget() -> None:
    """8 clients never read while another says 50 KB texts: each is closed 1008 once
    its pending bytes pass --max-outbound-bytes (1 MiB), and the shard's memory grows by
    a bounded amount (before the byte budget: +446 MiB)."""
    async with open_server(
        *("--max-say-bytes", "65536", "--broadcast-rate", "1000", "--broadcast-burst", "1000"),
        *("--max-message-rate", "1000", "--message-burst", "1000"),
        shards=1,
        echo_logs=False,
    ) as server:
        pid = server.shard_pids()[0]
        sleepers = []
        for _ in range(8):
            client, welcome = await RawClient.open(server.port)
            client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sleepers.append((client, welcome))  # kept: a collected socket would close
        baseline = rss_bytes(pid)
        peak = baseline
        text = "y" * 50_000
        async with bystander(server.port):
            talker, _ = await RawClient.open(server.port)
            with trio.fail_after(60):
                sent = 0
                while len(server.log.events("disconnect", reason="slow consumer")) < 8:
                    await talker.send({"type": "say", "text": text})
                    await talker.receive_until("said")
                    sent += 1
                    peak = max(peak, rss_bytes(pid))
        for _client, welcome in sleepers:
            assert welcome is not None
            line = server.log.events("disconnect", session=welcome["session"])[0]
            assert (line["code"], line["reason"]) == ("1008", "slow consumer")
        grown = peak - baseline
        print(f"says sent {sent}, RSS grew {grown / 2**20:.1f} MiB")
        assert grown < 64 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
        assert not server.log.events("shard_exit")


async def test_a_connect_and_reset_flood_holds_at_most_the_away_cap_per_address() -> None:
    """1,500 connections that get their welcome and reset: each leaves an away session,
    but one address may hold at most --max-away-per-address of them; the oldest go
    first, counted and logged. Then 300 says: replay buffers stay bounded."""
    async with open_server(
        *("--max-away-per-address", "100", "--broadcast-burst", "1000"),
        *("--max-message-rate", "1000", "--message-burst", "1000"),
        shards=1,
        echo_logs=False,
    ) as server:
        pid = server.shard_pids()[0]
        async with bystander(server.port):
            for _ in range(1500):
                client, _ = await RawClient.open(server.port)
                sock = client.stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            with trio.fail_after(30):
                while len(server.log.events("session_evicted")) < 1400:
                    await trio.sleep(0.1)
            evicted = server.log.events("session_evicted")
            assert {e["reason"] for e in evicted} == {"address_cap"}
            before = rss_bytes(pid)
            talker, _ = await RawClient.open(server.port)
            for n in range(300):
                await talker.send({"type": "say", "text": f"n{n}"})
            await talker.receive_until("said", text="n299")
            assert rss_bytes(pid) - before < 32 * 2**20
        assert not server.log.events("shard_exit")


async def test_a_say_over_the_size_cap_is_refused_and_the_sender_stays() -> None:
    async with open_server("--max-say-bytes", "1000", shards=1, echo_logs=False) as server:
        client, _ = await RawClient.open(server.port)
        await client.send({"type": "say", "text": "é" * 600, "cseq": 4})  # 1,200 bytes
        error = await client.receive_until("error")
        assert (error["code"], error["cseq"]) == ("too_long", 4)
        await client.send({"type": "say", "text": "short"})
        assert (await client.receive_until("said"))["text"] == "short"


async def test_a_ping_flood_is_closed_by_the_rate_limit_but_answering_pings_is_free() -> None:
    async with open_server(
        "--max-message-rate",
        "20",
        "--message-burst",
        "20",
        "--heartbeat-interval",
        "0.1",
        "--heartbeat-timeout",
        "2",
        shards=1,
        echo_logs=False,
    ) as server:
        # A well-behaved client answers ~10 server pings a second for 3 s: never closed.
        quiet, _ = await RawClient.open(server.port)
        flooder, welcome = await RawClient.open(server.port)
        encoder = FrameEncoder(mask=True)
        await flooder.send_raw(b"".join(encoder.frame(OP_PING, b"p") for _ in range(500)))
        assert await flooder.closed_with() == 1008
        line = await server.log.wait_for("disconnect", session=welcome["session"])
        assert line["reason"] == "message rate limit"
        with trio.move_on_after(3):
            while True:  # pings are answered inside; a Closed would fail the test
                await quiet.next_frame(timeout=5)
        await quiet.echo("still open")
        assert not server.log.events("shard_exit")


async def test_pongs_answering_the_servers_pings_do_not_spend_the_rate() -> None:
    async with open_server(
        "--max-message-rate",
        "1",
        "--message-burst",
        "2",
        "--heartbeat-interval",
        "0.05",
        "--heartbeat-timeout",
        "1",
        shards=1,
        echo_logs=False,
    ) as server:
        client, welcome = await RawClient.open(server.port)
        with trio.move_on_after(2):
            while True:  # answers ~40 pings in 2 s; a Closed would fail the test
                await client.next_frame(timeout=5)
        await client.echo("still open")
        assert not server.log.events("disconnect", session=welcome["session"])
