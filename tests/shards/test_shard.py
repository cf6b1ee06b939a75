"""A shard in-process, through real sockets: messages, heartbeats, classified disconnects."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from core.config import ServerConfig, ShardConfig
from core.protocol import decode_server
from shards import log as shard_log
from shards.app import load_app
from shards.shard import Shard
from tests.support import open_client, receive_json, receive_until


class Events:
    """Log events of the in-process shard, with waiting."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._changed = trio.Event()

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.items.append((event, fields))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        with trio.fail_after(timeout):
            i = 0
            while True:
                while i < len(self.items):
                    name, fields = self.items[i]
                    i += 1
                    if name == event and all(fields.get(k) == v for k, v in match.items()):
                        return fields
                await self._changed.wait()


@asynccontextmanager
async def running_shard(**overrides: Any) -> AsyncIterator[tuple[Shard, str, Events]]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = ShardConfig(index=3, generation=1, server=ServerConfig(port=port, **overrides))
    shard = Shard(config, sock, None, load_app(config.server.app))
    events = Events()
    shard_log.listeners.append(events)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(shard.run)
            yield shard, f"ws://127.0.0.1:{port}", events
            nursery.cancel_scope.cancel()
    finally:
        shard_log.listeners.remove(events)


async def test_welcome_then_echo_carries_seq_and_shard_index() -> None:
    async with running_shard() as (_, url, _events), open_client(url + "/") as (ws, welcome):
        assert welcome is not None
        assert welcome["shard"] == 3
        assert welcome["resumed"] is False and welcome["last_cseq"] == 0
        assert welcome["heartbeat"] == {"interval_ms": 30000, "timeout_ms": 60000}
        await ws.send_message(json.dumps({"type": "echo", "data": {"n": 1}, "cseq": 1}))
        assert await receive_json(ws) == {"type": "echo", "data": {"n": 1}, "seq": 1}
        await ws.send_message(json.dumps({"type": "echo", "data": "x"}))
        assert (await receive_json(ws))["seq"] == 2


async def test_say_reaches_every_session_on_the_shard() -> None:
    async with running_shard() as (_, url, _events):
        async with open_client(url) as (a, wa), open_client(url) as (b, _wb):
            assert wa is not None
            await a.send_message(json.dumps({"type": "say", "text": "gg"}))
            for ws in (a, b):
                said = await receive_until(ws, "said")
                assert said["from"] == wa["session"] and said["text"] == "gg"


async def test_user_left_is_announced_when_a_session_ends() -> None:
    async with running_shard() as (_, url, _events):
        async with open_client(url) as (stay, _):
            async with open_client(url) as (_leave, welcome):
                assert welcome is not None
                gone = welcome["session"]
            left = await receive_until(stay, "user_left")
            assert left["session"] == gone and left["reason"] == "graceful"


async def test_heartbeat_message_is_acknowledged_without_seq() -> None:
    async with running_shard() as (_, url, _events), open_client(url) as (ws, _):
        await ws.send_message(json.dumps({"type": "heartbeat", "ts": 123}))
        assert await receive_json(ws) == {"type": "heartbeat_ack", "ts": 123}


async def test_msgpack_subprotocol_uses_binary_frames() -> None:
    async with running_shard() as (_, url, _events):
        async with open_websocket_url(url, subprotocols=["msgpack"]) as ws:
            assert ws.subprotocol == "msgpack"
            welcome = msgspec.msgpack.decode(await ws.get_message())
            assert welcome["type"] == "welcome"
            await ws.send_message(msgspec.msgpack.encode({"type": "echo", "data": [1, 2]}))
            reply = decode_server(await ws.get_message(), binary=True)
            assert reply == {"type": "echo", "data": [1, 2], "seq": 1}


@pytest.mark.parametrize(("frame", "code"), [("{not json", 1007), (b"\x01", 1003)])
async def test_bad_frames_close_only_the_offender(frame: str | bytes, code: int) -> None:
    async with running_shard() as (_, url, events):
        async with open_client(url) as (good, _), open_client(url) as (bad, welcome):
            assert welcome is not None
            await bad.send_message(frame)
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(10):
                    while True:
                        await bad.get_message()
            assert info.value.reason.code == code
            line = await events.wait_for("disconnect", session=welcome["session"])
            assert line["kind"] == "policy" and line["code"] == code
            await good.send_message(json.dumps({"type": "echo", "data": 1}))
            assert (await receive_until(good, "echo"))["data"] == 1


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ('{"type":"say","cseq":7}', {"code": "invalid_message", "cseq": 7}),
        ('{"type":"fly","cseq":8,"speed":3}', {"code": "unknown_type", "cseq": 8}),
        ('{"type":"echo","data":18446744073709551622}', {"code": "invalid_message"}),
        ("[1,2]", {"code": "invalid_message"}),
    ],
)
async def test_well_formed_messages_the_schema_does_not_know_get_an_error_and_stay(
    frame: str, error: dict[str, Any]
) -> None:
    # Lenient on shape (a newer client during a rolling deploy), strict on bytes.
    async with running_shard() as (_, url, _events), open_client(url) as (ws, _welcome):
        await ws.send_message(frame)
        reply = await receive_json(ws)
        assert reply["type"] == "error" and error.items() <= reply.items(), reply
        assert "seq" not in reply  # not part of the session stream
        await ws.send_message(json.dumps({"type": "echo", "data": 1, "extra": "ignored"}))
        assert await receive_json(ws) == {"type": "echo", "data": 1, "seq": 1}


async def test_raw_echo_app_returns_frames_verbatim_without_welcome() -> None:
    async with running_shard(app="echo") as (_, url, _events):
        async with open_websocket_url(url) as ws:
            await ws.send_message("not even json")
            assert await ws.get_message() == "not even json"
            await ws.send_message(b"\x00\xff")
            assert await ws.get_message() == b"\x00\xff"


@pytest.mark.parametrize("code", [1000, 1001])
async def test_client_close_is_logged_graceful(code: int) -> None:
    async with running_shard() as (_, url, events):
        async with open_client(url) as (ws, welcome):
            assert welcome is not None
            await ws.aclose(code=code)
        line = await events.wait_for("disconnect", session=welcome["session"])
        assert (line["kind"], line["code"], line["reconnect"]) == ("graceful", code, False)


async def _raw_handshake(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    buf = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf
    return stream


async def test_vanished_client_is_logged_abnormal_1006() -> None:
    async with running_shard() as (shard, url, events):
        port = int(url.rsplit(":", 1)[1])
        stream = await _raw_handshake(port)
        # TCP close without a close frame: a tab killed, a phone out of coverage.
        await stream.aclose()
        line = await events.wait_for("disconnect")
        assert (line["kind"], line["code"], line["reconnect"]) == ("abnormal", 1006, True)
        assert not shard.connections


async def test_zombie_is_closed_within_interval_plus_timeout_plus_tick() -> None:
    interval, timeout = 0.3, 0.4
    async with running_shard(heartbeat_interval=interval, heartbeat_timeout=timeout) as (
        shard,
        url,
        events,
    ):
        port = int(url.rsplit(":", 1)[1])
        tick = shard.wheel.tick
        # Handshake, then never read, never answer a ping: TCP stays open, the player is gone.
        zombie = await _raw_handshake(port)
        async with open_client(url) as (alive, _):
            started = trio.current_time()
            line = await events.wait_for("disconnect", timeout=10)
            detected_after = trio.current_time() - started
            assert (line["kind"], line["code"]) == ("heartbeat_timeout", 1006)
            # The wheel's own measure of the silence: never early, at most one tick late
            # (+ scheduling slack of this shared machine for the loop's own lateness).
            assert interval + timeout <= line["silent_s"] <= interval + timeout + tick + 0.25
            assert detected_after < interval + timeout + tick + 1.0
            # A client that answers pings (trio-websocket does) survives the same silence.
            await trio.sleep(interval + timeout + 2 * tick)
            await alive.send_message(json.dumps({"type": "echo", "data": "still here"}))
            assert (await receive_until(alive, "echo"))["data"] == "still here"
        await zombie.aclose()


async def test_drain_sends_server_shutdown_then_1012() -> None:
    async with running_shard(reconnect_after_ms=500) as (shard, url, events):
        async with open_client(url) as (ws, _):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(shard.drainer.drain, "deploy", 500, 5.0)
                shutdown = await receive_until(ws, "server_shutdown")
                assert shutdown["reason"] == "deploy"
                assert 500 <= shutdown["reconnect_after_ms"] < 1000
                with pytest.raises(ConnectionClosed) as info:
                    with trio.fail_after(10):
                        await ws.get_message()
                assert info.value.reason.code == 1012
            line = await events.wait_for("disconnect")
            assert (line["kind"], line["code"], line["reconnect"]) == ("shutdown", 1012, True)
            done = await events.wait_for("drain_done")
            assert done["forced"] == 0 and done["closed"] == 1
