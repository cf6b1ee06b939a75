"""Bad input and abuse, through real sockets: each offender gets the documented close code
or HTTP status and a log line; the bystander on the same shard is unaffected."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from lab.rawws import Closed, RawClient
from tests.shards.test_shard import running_shard
from tests.support import open_client, receive_until


async def _http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    reply = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            reply += chunk
    return reply


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _still_fine(bystander: Any) -> None:
    await bystander.send_message(json.dumps({"type": "echo", "data": "fine"}))
    assert (await receive_until(bystander, "echo"))["data"] == "fine"


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "status", "overrides"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426", {}),  # plain HTTP
        (
            UPGRADE + b"Origin: https://evil.example\r\n\r\n",
            b"403",
            {"allowed_origins": ("https://game.example",)},
        ),
    ],
)
async def test_requests_that_are_not_allowed_upgrades_get_an_http_error(
    request_bytes: bytes, status: bytes, overrides: dict[str, Any]
) -> None:
    async with (
        running_shard(**overrides) as (_, url, events),
        open_client(url, welcome=True) if not overrides else _nothing() as bystander,
    ):
        reply = await _http(_port(url), request_bytes)
        assert reply.split(b" ")[1] == status, reply
        line = await events.wait_for("rejected")
        assert line["status"] == int(status)
        if bystander is not None:
            await _still_fine(bystander[0])


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_an_allowed_origin_is_served() -> None:
    async with running_shard(allowed_origins=("https://game.example",)) as (_, url, _e):
        stream = await trio.open_tcp_stream("127.0.0.1", _port(url))
        await stream.send_all(UPGRADE + b"Origin: https://game.example\r\n\r\n")
        reply = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in reply:
                reply += await stream.receive_some(4096)
        assert reply.startswith(b"HTTP/1.1 101"), reply
        await stream.aclose()


async def test_over_capacity_gets_503_with_retry_after_before_the_upgrade() -> None:
    async with running_shard(max_connections=2) as (_, url, events):
        async with open_client(url) as (first, _), open_client(url) as (_second, _):
            reply = await _http(_port(url), UPGRADE + b"\r\n")
            assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply
            line = await events.wait_for("rejected")
            assert (line["status"], line["reason"]) == (503, "over_capacity")
            await _still_fine(first)


async def test_a_slowloris_is_dropped_after_the_handshake_timeout_and_counted() -> None:
    async with running_shard(handshake_timeout=0.3) as (shard, url, events):
        async with open_client(url) as (bystander, _):
            stream = await trio.open_tcp_stream("127.0.0.1", _port(url))
            await stream.send_all(b"GET / HT")  # and then nothing
            with trio.fail_after(5):
                try:
                    assert await stream.receive_some(100) == b""  # the server closed it
                except trio.BrokenResourceError:
                    pass  # closed with our unread half-line pending: a reset, also closed
            await events.wait_for("handshake_failed")
            assert shard.stats["handshake_timeouts"] == 1
            await _still_fine(bystander)


def _masked(opcode_byte: int, payload: bytes) -> bytes:
    return bytes([opcode_byte, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x02hi", 1002),  # a client frame must be masked
        (_masked(0x83, b"x"), 1002),  # reserved opcode
        (_masked(0x09, b"ping")[:1] + b"\x84" + b"\x00" * 4 + b"ping", 1002),  # fragmented ping
        (_masked(0x81, b"\xff\xfe"), 1007),  # invalid UTF-8 in a text frame
        (_masked(0x88, (999).to_bytes(2, "big")), 1002),  # a close frame with a bad code
    ],
)
async def test_protocol_violations_close_only_the_offender_with_the_right_code(
    frame: bytes, code: int
) -> None:
    async with running_shard() as (_, url, events), open_client(url) as (bystander, _):
        offender = await RawClient.connect(_port(url))
        welcome = await offender.receive()
        await offender.stream.send_all(frame)
        with pytest.raises(Closed) as info:
            while True:
                await offender.receive()
        # The close frame is on the wire before the TCP connection ends (RFC 6455 7.1.7).
        assert info.value.code == code
        line = await events.wait_for("disconnect", session=welcome["session"])
        assert (line["kind"], line["code"]) == ("policy", code)
        await _still_fine(bystander)


async def test_a_message_above_the_size_limit_closes_1009() -> None:
    async with (
        running_shard(max_message_size=1024) as (_, url, events),
        open_client(url) as (
            bystander,
            _,
        ),
    ):
        offender = await RawClient.connect(_port(url))
        welcome = await offender.receive()
        await offender.send({"type": "echo", "data": "x" * 2000})
        with pytest.raises(Closed) as info:
            while True:
                await offender.receive()
        assert info.value.code == 1009
        line = await events.wait_for("disconnect", session=welcome["session"])
        assert (line["kind"], line["code"]) == ("policy", 1009)
        await _still_fine(bystander)


async def test_a_message_flood_closes_1008() -> None:
    async with (
        running_shard(max_message_rate=5, message_burst=5) as (_, url, events),
        open_client(url) as (bystander, _),
    ):
        offender = await RawClient.connect(_port(url))
        welcome = await offender.receive()
        with pytest.raises(Closed) as info:
            for i in range(200):
                await offender.send({"type": "echo", "data": i})
            while True:
                await offender.receive()
        assert info.value.code == 1008
        await events.wait_for("rate_limited", session=welcome["session"])
        line = await events.wait_for("disconnect", session=welcome["session"])
        assert (line["kind"], line["code"], line["reason"]) == (
            "policy",
            1008,
            "message rate limit",
        )
        await _still_fine(bystander)


async def test_a_client_that_never_reads_is_dropped_as_a_slow_consumer() -> None:
    async with (
        running_shard(
            max_outbound_bytes=64 * 1024,
            max_message_rate=1000,
            message_burst=1000,
            max_say_bytes=65536,
            broadcast_rate=1000,
            broadcast_burst=1000,
        ) as (
            _,
            url,
            events,
        ),
        open_client(url) as (talker, _),
    ):
        sleeper = await RawClient.connect(_port(url))
        welcome = await sleeper.receive()
        # Big broadcasts the sleeper never reads: its socket buffers fill, then its outbox.
        text = "y" * 30_000
        with trio.fail_after(30):
            for _ in range(400):
                await talker.send_message(json.dumps({"type": "say", "text": text}))
                await receive_until(talker, "said")
                if any(
                    n == "disconnect" and f.get("session") == welcome["session"]
                    for n, f in events.items
                ):
                    break
        line = await events.wait_for("disconnect", session=welcome["session"])
        assert (line["kind"], line["code"], line["reason"]) == ("policy", 1008, "slow consumer")
        await _still_fine(talker)
