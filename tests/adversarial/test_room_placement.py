"""Room placement under abuse: request heads for new rooms whose clients reset at once,
one address holding many placements, one address creating rooms too fast.

Each placement the supervisor makes is pending until the owner hosts the room; a pending
one is released after ``--placement-timeout``. Over a per-address cap the supervisor
itself answers 503 + Retry-After: 1 on the connection it holds. Flood connections come
from many loopback source addresses (127.0.1.x), so the per-address caps do not hide the
expiry; the legitimate clients use 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
from typing import Any

import pytest
import trio

from lab.rawws import RawClient
from lab.server import ServerProcess, open_server
from tests.support import welcomed

pytestmark = pytest.mark.timeout(90)

HEAD = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
FLOOD_ADDRESSES = 250
FLOOD_PER_ADDRESS = 8  # below the default cap (16 pending) and burst (50): never refused


async def head_then_reset(port: int, source: str, path: str) -> None:
    """A complete upgrade request for ``path`` from ``source``, then a TCP RST."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        await sock.send(HEAD.format(path=path).encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


async def http_answer(port: int, source: str, path: str) -> tuple[int, dict[str, str]]:
    """Send an upgrade request from ``source``; the status and headers of the answer."""
    with trio.fail_after(10):
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        async with stream:
            await stream.send_all(HEAD.format(path=path).encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split(" ")[1]), headers


async def connect_from(port: int, source: str, path: str) -> RawClient:
    """A WebSocket upgrade from ``source`` that does not wait for the answer."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    client = RawClient(trio.SocketStream(sock))
    await client.upgrade(path, "127.0.0.1", port)
    return client


async def status(port: int) -> dict[str, Any]:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])


async def metrics_port(server: ServerProcess) -> int:
    return int((await server.log.wait_for("metrics_ready"))["port"])


def flood_placed(server: ServerProcess) -> int:
    return sum(1 for f in server.log.events("room_placed") if f["room"].startswith("flood-"))


async def test_reset_room_requests_expire_and_real_joins_work_meanwhile() -> None:
    args = ("--handshake-timeout", "1", "--placement-timeout", "2", "--metrics-port", "0")
    async with open_server(*args, shards=2, echo_logs=False) as server:
        mport = await metrics_port(server)
        tag = secrets.token_hex(3)
        sources = [f"127.0.1.{i}" for i in range(1, FLOOD_ADDRESSES + 1)]
        heads = FLOOD_ADDRESSES * FLOOD_PER_ADDRESS
        sent = 0

        async def flood(worker: int, workers: int) -> None:
            nonlocal sent
            for i in range(worker, heads, workers):
                path = f"/rooms/flood-{tag}-{i}"
                await head_then_reset(server.port, sources[i % len(sources)], path)
                sent += 1

        legit_shard = -1
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(flood, w, 8)
            # During the flood: a real player creates and joins a room.
            await server.log.wait_for("room_placed", lambda f: f["room"].startswith("flood-"))
            legit, welcome = await welcomed(server, "/rooms/legit")
            legit_shard = welcome["shard"]
            assert flood_placed(server) < heads, "the join came after the flood, not during it"
        flood_s = trio.current_time() - started
        assert sent == heads

        # Every placement of a reset client expires; the real room stays.
        report: dict[str, Any] = {}
        try:
            with trio.fail_after(20):
                while True:
                    report = await status(mport)
                    if report["rooms_pending"] == 0 and flood_placed(server) > 0:
                        expired = report["counters"].get("room_placement_expired", 0)
                        # A client whose reset came after its upgrade did host its room
                        # (its session is away now): every other placement expired.
                        hosted = report["rooms_placed"] - 1  # the real room stays
                        if expired + hosted >= flood_placed(server):
                            break
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            raise AssertionError(
                f"placements did not all expire: {flood_placed(server)} placed, status "
                f"{ {k: v for k, v in report.items() if k != 'shards'} }"
            ) from None
        placed = flood_placed(server)
        expired = report["counters"]["room_placement_expired"]
        hosted = report["rooms_placed"] - 1
        print(f"{heads} heads + RST in {flood_s:.2f} s: {placed} placed, {expired} expired")
        assert placed >= heads // 2, f"only {placed} of {heads} heads were placed"
        # Nothing placed lingers: each expired, or its client got its upgrade in before the
        # reset (then its session is away and holds the room for its grace, as any player's).
        assert expired + hosted == placed and hosted <= placed // 100, (expired, hosted)
        assert report["rooms_pending"] == 0
        lines = server.log.events("room_placements_expired")
        assert sum(int(f["count"]) for f in lines) == expired

        # After: the real room still routes to its owner, and a new room can be made.
        again, welcome2 = await welcomed(server, "/rooms/legit")
        assert welcome2["shard"] == legit_shard
        after, _ = await welcomed(server, "/rooms/after-the-flood")
        assert (await status(mport))["rooms_placed"] == 2 + hosted
        assert not server.log.events("room_refused")
        for client in (legit, again, after):
            await client.close()


async def test_one_address_over_its_pending_cap_gets_503_with_retry_after() -> None:
    """Shard 1 is frozen, so rooms placed on it stay pending: the address's fourth pending
    placement is refused on the wire; once shard 1 hosts them, it may place again."""
    args = ("--max-pending-rooms-per-address", "3", "--metrics-port", "0")
    async with open_server(*args, shards=2, echo_logs=False) as server:
        mport = await metrics_port(server)
        frozen = server.shard_pids()[1]
        os.kill(frozen, signal.SIGSTOP)
        waiting: list[RawClient] = []
        served: list[RawClient] = []
        try:
            for i in range(40):
                # Rooms hosted on shard 0 count as pending until its RoomHosted reaches the
                # supervisor (the welcome can be faster): wait for that before the next one.
                with trio.fail_after(10):
                    while (await status(mport))["rooms_pending"] != len(waiting):
                        await trio.sleep(0.02)
                if len(waiting) == 3:
                    break
                room = f"cap-{i}"
                client = await connect_from(server.port, "127.0.0.5", f"/rooms/{room}")
                placed = await server.log.wait_for("room_placed", room=room)
                assert placed["peer"].split(":")[0] == "127.0.0.5"
                if placed["shard"] == "1":
                    waiting.append(client)  # pending: its owner is frozen
                else:
                    served.append(client)
                    welcome = await client.receive_until("welcome")  # hosted at once
                    assert welcome["shard"] == 0
            assert len(waiting) == 3, "shard 1 was never chosen for a new room"

            status_code, headers = await http_answer(server.port, "127.0.0.5", "/rooms/one-more")
            assert status_code == 503
            assert headers.get("Retry-After") == "1"
            refused = await server.log.wait_for("room_refused")
            assert (
                refused["reason"] == "pending_cap" and refused["peer"].split(":")[0] == "127.0.0.5"
            )
            assert refused["room"] == "one-more"
            # Another address is not affected (whichever shard its room lands on).
            other = await connect_from(server.port, "127.0.0.6", "/rooms/elsewhere")
            placed = await server.log.wait_for("room_placed", room="elsewhere")
            assert placed["peer"].split(":")[0] == "127.0.0.6"
        finally:
            os.kill(frozen, signal.SIGCONT)
        # Shard 1 wakes and hosts the three rooms: their players get welcomed...
        for client in [*waiting, other]:
            assert (await client.receive_until("welcome", timeout=15))["type"] == "welcome"
        # ...and the address may place a room again.
        with trio.fail_after(10):
            while (await status(mport))["rooms_pending"]:
                await trio.sleep(0.1)
        back = await connect_from(server.port, "127.0.0.5", "/rooms/one-more")
        assert (await back.receive_until("welcome"))["type"] == "welcome"
        counters = (await status(mport))["counters"]
        assert counters["room_refused|pending_cap"] == 1
        for client in [*waiting, *served, other, back]:
            await client.close()


async def test_one_address_creating_rooms_too_fast_gets_503_and_joins_stay_free() -> None:
    args = ("--room-placement-rate", "0.05", "--room-placement-burst", "5")  # 20 s a token
    async with open_server(*args, shards=2, echo_logs=False) as server:
        clients = []
        for i in range(5):  # the burst: hosted at once, so never pending for long
            client = await connect_from(server.port, "127.0.0.7", f"/rooms/fast-{i}")
            await client.receive_until("welcome")
            clients.append(client)
        status_code, headers = await http_answer(server.port, "127.0.0.7", "/rooms/fast-5")
        assert (status_code, headers.get("Retry-After")) == (503, "1")
        refused = await server.log.wait_for("room_refused")
        assert (refused["reason"], refused["peer"]) == ("rate", "127.0.0.7")
        # Joining rooms that exist is not a placement: never limited.
        for i in range(5):
            join = await connect_from(server.port, "127.0.0.7", f"/rooms/fast-{i}")
            assert (await join.receive_until("welcome"))["type"] == "welcome"
            clients.append(join)
        # Another address creates rooms freely.
        fresh = await connect_from(server.port, "127.0.0.8", "/rooms/fresh")
        assert (await fresh.receive_until("welcome"))["type"] == "welcome"
        for client in [*clients, fresh]:
            await client.close()
