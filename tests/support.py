"""Test support: run the real supervisor, wait on its log lines, connect real clients.

Processes are started with ``--port 0``; the port comes from the ``ready`` line. Every
pid the test started (the supervisor and each shard it reported) is killed in a
``finally``. Waiting is always on a log line or a socket, never on a bare sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from core.logfmt import matches, parse

ROOT = Path(__file__).resolve().parent.parent


class LogLines:
    """Lines of logfmt output, parsed, with waiting on a predicate."""

    def __init__(self) -> None:
        self.lines: list[dict[str, str]] = []
        self.raw: list[str] = []
        self._changed = trio.Event()

    def add(self, raw: str) -> None:
        self.raw.append(raw)
        fields = parse(raw)
        if fields:
            self.lines.append(fields)
            self._changed.set()
            self._changed = trio.Event()

    def events(self, event: str, **match: Any) -> list[dict[str, str]]:
        return [f for f in self.lines if matches(f, event, **match)]

    async def wait_for(
        self,
        event: str,
        predicate: Callable[[dict[str, str]], bool] | None = None,
        *,
        timeout: float = 20.0,
        after: int = 0,
        **match: Any,
    ) -> dict[str, str]:
        """The first line (from index ``after``) with this event, fields and predicate."""
        with trio.fail_after(timeout):
            i = after
            while True:
                while i < len(self.lines):
                    f = self.lines[i]
                    i += 1
                    if matches(f, event, **match) and (predicate is None or predicate(f)):
                        return f
                await self._changed.wait()


class ServerProcess:
    """A running ``python -m supervisor`` and what it has logged."""

    def __init__(self, process: trio.Process, log: LogLines) -> None:
        self.process = process
        self.log = log
        self.port = 0
        self.host = "127.0.0.1"
        self.control_socket = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def shard_pids(self) -> dict[int, int]:
        """Current pid of each shard index (latest spawn wins)."""
        out: dict[int, int] = {}
        for f in self.log.events("shard_spawn"):
            out[int(f["shard"])] = int(f["pid"])
        return out

    def all_pids(self) -> set[int]:
        pids = {int(f["pid"]) for f in self.log.events("shard_spawn")}
        pids.add(self.pid)
        return pids

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    async def command(self, *args: str) -> str:
        """``python -m supervisor <args>`` against this supervisor's control socket."""

        def run() -> str:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "supervisor",
                    *args,
                    "--control-socket",
                    self.control_socket,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout

        return await trio.to_thread.run_sync(run)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"shards" in cmdline or b"supervisor" in cmdline


async def _pump(stream: trio.abc.ReceiveStream, log: LogLines, echo: bool) -> None:
    buf = b""
    async for chunk in stream:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if echo:
                print(text, file=sys.stderr)
            log.add(text)


async def _wait_ready(process: trio.Process, log: LogLines) -> int:
    """The port from the ``ready`` line; fail at once if the supervisor exits first."""
    port = 0

    async def ready(cancel: trio.CancelScope) -> None:
        nonlocal port
        port = int((await log.wait_for("ready", timeout=60))["port"])
        cancel.cancel()

    async def died(cancel: trio.CancelScope) -> None:
        code = await process.wait()
        raise AssertionError(f"supervisor exited with {code} before it was ready")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ready, nursery.cancel_scope)
        nursery.start_soon(died, nursery.cancel_scope)
    return port


@asynccontextmanager
async def open_server(
    *args: str, shards: int = 2, ready: bool = True, echo_logs: bool = True
) -> AsyncIterator[ServerProcess]:
    """Start the supervisor with ``--port 0``; kill exactly its processes on the way out."""
    control = tempfile.mkdtemp(prefix="ws-test-") + "/supervisor.sock"
    cmd = [
        sys.executable,
        "-m",
        "supervisor",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--shards",
        str(shards),
        "--control-socket",
        control,
        *args,
    ]
    log = LogLines()
    process = await trio.lowlevel.open_process(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    server = ServerProcess(process, log)
    server.control_socket = control
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(_pump, process.stderr, log, echo_logs)
            if ready:
                server.port = await _wait_ready(process, log)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for pid in server.all_pids():
            if pid_alive(pid) and _ours(pid):
                os.kill(pid, signal.SIGKILL)
        with trio.move_on_after(10):
            await process.wait()


@asynccontextmanager
async def open_client(
    url: str, *, welcome: bool = True, subprotocols: list[str] | None = None
) -> AsyncIterator[tuple[WebSocketConnection, dict[str, Any] | None]]:
    async with open_websocket_url(url, subprotocols=subprotocols, connect_timeout=10) as ws:
        first = None
        if welcome:
            with trio.fail_after(10):
                first = json.loads(await ws.get_message())
            assert first["type"] == "welcome", first
        yield ws, first


async def receive_json(ws: WebSocketConnection, timeout: float = 10.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def receive_until(
    ws: WebSocketConnection, type_: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Skip other messages (e.g. said/user_left of other tests' clients) until ``type_``."""
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == type_:
                return message


class RawClient:
    """A WebSocket client on a bare TCP stream (wsproto), so a test can vanish without a
    close frame, or stop reading, exactly like a lost phone."""

    def __init__(self, stream: trio.SocketStream) -> None:
        import wsproto

        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._pending: list[Any] = []
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, port: int, path: str = "/", host: str = "127.0.0.1") -> RawClient:
        from wsproto.events import AcceptConnection, Request

        client = cls(await trio.open_tcp_stream(host, port))
        await client.stream.send_all(client.ws.send(Request(host=host, target=path)))
        with trio.fail_after(10):
            while True:
                event = await client._next_event()
                if isinstance(event, AcceptConnection):
                    return client
                raise AssertionError(f"handshake failed: {event!r}")

    async def _next_event(self) -> Any:
        from wsproto.events import Ping

        while True:
            if not self._pending:
                self._pending.extend(self.ws.events())
            while self._pending:
                event = self._pending.pop(0)
                if isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                    continue
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)

    async def send(self, message: dict[str, Any]) -> None:
        """Send; raises ``Closed`` (with the server's code) if the server already closed."""
        from wsproto.events import TextMessage
        from wsproto.utilities import LocalProtocolError

        try:
            data = self.ws.send(TextMessage(data=json.dumps(message)))
        except LocalProtocolError:
            while True:  # the server's close frame is waiting to be read: report its code
                await self.receive()
        await self.stream.send_all(data)

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON message; raises ``Closed`` with the code when the server closes."""
        from wsproto.events import CloseConnection, TextMessage

        with trio.fail_after(timeout):
            buf = ""
            while True:
                event = await self._next_event()
                if isinstance(event, TextMessage):
                    buf += event.data
                    if event.message_finished:
                        return json.loads(buf)
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    raise Closed(event.code, event.reason)

    async def receive_until(
        self, type_: str, timeout: float = 10.0, **match: Any
    ) -> dict[str, Any]:
        """Skip messages until one of ``type_`` whose fields equal ``match``."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive()
                if message["type"] == type_ and all(message.get(k) == v for k, v in match.items()):
                    return message

    def vanish(self) -> None:
        """TCP reset, no close frame: the server sees a 1006."""
        import socket as stdsocket
        import struct

        sock = self.stream.socket
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    async def close(self, code: int = 1000) -> None:
        from wsproto.events import CloseConnection

        await self.stream.send_all(self.ws.send(CloseConnection(code=code)))
        with trio.move_on_after(5):
            try:
                while True:
                    await self.receive()
            except Closed:
                pass
        await self.stream.aclose()


async def welcomed(server: ServerProcess, path: str = "/") -> tuple[RawClient, dict[str, Any]]:
    """A new connection to ``path`` and its welcome (asserted to be one)."""
    client = await RawClient.connect(server.port, path)
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client, welcome


class Closed(Exception):
    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


def resume_path(welcome: dict[str, Any], last_seq: int, path: str = "/") -> str:
    return f"{path}?resume={welcome['token']}&last_seq={last_seq}"


class WireClient:
    """A WebSocket client on a bare socket built on the server's own frame codec
    (``core.ws_codec``), for tests where the bytes on the wire are the point: it sends
    any bytes (malformed frames included) and reports exactly what came back - the
    frames, the close frame's code, and whether the TCP connection ended after it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        from core.ws_codec import FrameDecoder, FrameEncoder

        self.stream = stream
        self.decoder = FrameDecoder(client_side=True, max_message_size=0)
        self.encoder = FrameEncoder(mask=True)
        self.close_code: int | None = None
        self.close_reason = ""
        self.eof = False
        self._events: list[tuple[int, Any]] = []

    @classmethod
    async def connect(
        cls, port: int, path: str = "/", host: str = "127.0.0.1", welcome: bool = True
    ) -> tuple[WireClient, dict[str, Any] | None]:
        stream = await trio.open_tcp_stream(host, port)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed during the handshake: {head!r}"
                head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        client = cls(stream)
        if rest:
            client._events.extend(client.decoder.feed(rest))
        first = await client.receive_json() if welcome else None
        if first is not None:
            assert first["type"] == "welcome", first
        return client, first

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_json(self, message: dict[str, Any]) -> None:
        from core.ws_codec import OP_TEXT

        await self.stream.send_all(self.encoder.frame(OP_TEXT, json.dumps(message).encode()))

    async def next_frame(self, timeout: float = 10.0) -> tuple[int, Any]:
        """The next frame (pings answered); raises ``Closed`` at the server's close frame
        (``eof`` tells whether the TCP connection then ended) or at a bare EOF (1006)."""
        from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, VIOLATION

        with trio.fail_after(timeout):
            while True:
                while self._events:
                    kind, value = self._events.pop(0)
                    if kind == OP_PING:
                        await self.stream.send_all(self.encoder.frame(OP_PONG, value))
                        continue
                    if kind == OP_CLOSE:
                        self.close_code, self.close_reason = value
                        await self._until_eof()
                        raise Closed(self.close_code, self.close_reason)
                    if kind == VIOLATION:
                        raise AssertionError(f"the server broke the protocol: {value}")
                    return kind, value
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.eof = True
                    raise Closed(1006, "connection ended without a close frame")
                self._events.extend(self.decoder.feed(data))

    async def _until_eof(self) -> None:
        """After the server's close frame: answer it, then expect the server's FIN."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(self.encoder.close(self.close_code or 1000))
        with trio.move_on_after(5):
            try:
                while await self.stream.receive_some(65536):
                    pass
                self.eof = True
            except trio.BrokenResourceError:
                self.eof = True
        await self.stream.aclose()  # as a browser does once the server has closed

    async def receive_json(self, timeout: float = 10.0) -> dict[str, Any]:
        _kind, payload = await self.next_frame(timeout)
        return json.loads(payload)

    async def receive_until(
        self, type_: str, timeout: float = 10.0, **match: Any
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                message = await self.receive_json()
                if message["type"] == type_ and all(message.get(k) == v for k, v in match.items()):
                    return message

    async def closed_with(self, timeout: float = 10.0) -> int:
        """Read until the server closes; its close code (1006 when there was none)."""
        try:
            while True:
                await self.next_frame(timeout)
        except Closed as closed:
            return closed.code

    async def echo(self, data: Any, timeout: float = 5.0) -> dict[str, Any]:
        """One echo round trip (skipping other traffic, e.g. says)."""
        await self.send_json({"type": "echo", "data": data})
        return await self.receive_until("echo", timeout, data=data)

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(self.encoder.close(1000))
        await self.stream.aclose()


@asynccontextmanager
async def bystander(port: int, path: str = "/", every: float = 0.05) -> AsyncIterator[list[float]]:
    """A well-behaved player on the same server that echoes every ``every`` seconds while
    the block runs; each round trip must come back within 5 s. Yields the round trips;
    on exit asserts there were some and the connection stayed open throughout."""
    client, _ = await WireClient.connect(port, path)
    rtts: list[float] = []

    async def loop() -> None:
        n = 0
        while True:
            n += 1
            started = trio.current_time()
            await client.echo(f"bystander-{n}")
            rtts.append(trio.current_time() - started)
            await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield rtts
        nursery.cancel_scope.cancel()
    assert rtts, "the bystander never got an echo back"
    await client.echo("still here")
    await client.aclose()
