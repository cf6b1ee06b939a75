"""Test support: run the real supervisor, wait on its log lines, connect real clients.

Processes are started with ``--port 0``; the port comes from the ``ready`` line. Every
pid the test started (the supervisor and each shard it reported) is killed in a
``finally``. Waiting is always on a log line or a socket, never on a bare sleep.
"""

from __future__ import annotations

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
