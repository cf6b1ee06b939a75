"""One raw-socket WebSocket client, on the server's own frame codec (``core.ws_codec``).

The codec's ``FrameEncoder`` builds the masked client frames and its ``FrameDecoder``
(``client_side=True``) decodes the server's, so every test and load process that talks
through this module exercises the codec from the client side too. Two drivers:

- blocking sockets (the load processes, which drive thousands of them from one epoll
  loop): ``open_ws`` connects, upgrades and reads the welcome; ``ServerFrames`` decodes
  what comes next; ``client_frame``/``text_frame``/``close_reply`` build what goes out;
- trio (the tests and the trio scenarios): ``RawClient``, one connection that can also
  vanish without a close frame, stop reading, or send malformed bytes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import struct
import urllib.parse
from typing import Any

import trio

from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, VIOLATION, FrameDecoder, FrameEncoder

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_ENCODER = FrameEncoder(mask=True)


# ====================================================================== frames and the upgrade
def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` -> (host, port, path); for ``--url`` of a running server."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws://host:port/ URL: {url!r} (wss is not supported here)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


async def first_line(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` over a fresh connection to 127.0.0.1:``port``; the first line of
    the answer (without CRLF; what arrived if the peer closed first)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(timeout):
            while b"\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                answer += chunk
    return answer.split(b"\r\n", 1)[0]


def handshake_request(
    host: str, port: int, path: str = "/", headers: tuple[str, ...] = ()
) -> bytes:
    """An upgrade request; ``headers``: more lines, e.g. ``"X-Forwarded-For: 10.0.0.1"``."""
    key = base64.b64encode(random.randbytes(16)).decode()
    more = "".join(f"{line}\r\n" for line in headers)
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{more}\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame."""
    return _ENCODER.frame(opcode, payload)


def text_frame(message: dict[str, Any]) -> bytes:
    return _ENCODER.frame(OP_TEXT, json.dumps(message, separators=(",", ":")).encode())


def close_reply(code: int) -> bytes:
    """The close frame answering a server's close with ``code`` (1005: it had none)."""
    return _ENCODER.frame(OP_CLOSE, b"" if code == 1005 else code.to_bytes(2, "big"))


class ServerFrames:
    """A server's frames from a byte stream: ``feed`` returns ``(kind, value)`` events
    (``core.ws_codec``: whole messages, pings, ``(OP_CLOSE, (code, reason))``, and
    ``(VIOLATION, (code, reason))`` if the server broke the protocol)."""

    __slots__ = ("decoder", "pending")

    def __init__(self) -> None:
        self.decoder = FrameDecoder(client_side=True, max_message_size=0)
        self.pending: list[Any] = []  # events decoded with the welcome, not yet handed out

    def feed(self, data: bytes) -> list[Any]:
        events = self.decoder.feed(data)
        if self.pending:
            events[:0] = self.pending
            self.pending = []
        return events

    @property
    def idle(self) -> bool:
        """Nothing held: the next read starts at a frame boundary."""
        return not self.pending and self.decoder.buffered == 0


def new_socket(source: str | None) -> socket.socket:
    """A TCP socket with Nagle off, bound to ``source`` (its port picked at connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    return sock


def open_ws(
    host: str,
    port: int,
    path: str = "/",
    *,
    welcome: bool = True,
    source: str | None = None,
    timeout: float = 30.0,
) -> tuple[socket.socket, ServerFrames, dict[str, Any] | None]:
    """A blocking client connection: connect (from ``source`` if given), upgrade, and with
    ``welcome`` read the server's welcome (it must be the first frame; frames that came
    with it stay in the decoder's ``pending``). Returns the socket (no timeout), its
    decoder and the welcome (None without ``welcome``: ``--app echo`` sends none)."""
    sock = new_socket(source)
    sock.settimeout(timeout)
    sock.connect((host, port))
    sock.sendall(handshake_request(host, port, path))
    buf = b""
    for _ in range(1000):  # a response head is a few hundred bytes
        if b"\r\n\r\n" in buf:
            break
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise ConnectionError(f"upgrade refused: {head[:60]!r}")
    frames = ServerFrames()
    events = frames.feed(rest) if rest else []
    greeting = None
    if welcome:
        for _ in range(1000):
            if events:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the welcome")
            events = frames.feed(chunk)
        kind, payload = events[0]
        greeting = json.loads(payload) if kind == OP_TEXT else {}
        if greeting.get("type") != "welcome":
            raise ConnectionError(f"first frame is not a welcome: {str(payload)[:80]!r}")
        events = events[1:]
    frames.pending = events
    sock.settimeout(None)
    return sock, frames, greeting


# ====================================================================== trio
class Closed(Exception):
    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class RawClient:
    """A WebSocket client on a bare trio socket, for tests where the bytes on the wire
    are the point: it can vanish without a close frame or stop reading (a lost phone),
    send any bytes (malformed frames included), and reports exactly what came back - the
    messages, the close frame's code, and whether the TCP connection ended after it.

    ``connect`` upgrades and leaves the welcome unread; ``open`` also reads the welcome.
    Pings are answered while reading; the server's close frame is answered, its FIN
    awaited (``eof``), and ``Closed`` raised with its code (1006 for a bare EOF)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(client_side=True, max_message_size=0)
        self.encoder = FrameEncoder(mask=True)
        self.close_code: int | None = None
        self.close_reason = ""
        self.eof = False
        self._events: list[tuple[int, Any]] = []
        self._head: bytes | None = None  # the response head while it is still awaited
        self._close_sent = False

    @classmethod
    async def connect(
        cls, port: int, path: str = "/", host: str = "127.0.0.1", headers: tuple[str, ...] = ()
    ) -> RawClient:
        """Connect and upgrade (the welcome, if any, is the next message)."""
        client = cls(await trio.open_tcp_stream(host, port))
        await client.upgrade(path, host, port, headers)
        with trio.fail_after(10):
            await client._read_head()
        return client

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/",
        host: str = "127.0.0.1",
        welcome: bool = True,
        headers: tuple[str, ...] = (),
    ) -> tuple[RawClient, dict[str, Any] | None]:
        """Connect, upgrade and (with ``welcome``) read the welcome, asserted to be one."""
        client = await cls.connect(port, path, host, headers)
        first = await client.receive() if welcome else None
        if first is not None:
            assert first["type"] == "welcome", first
        return client, first

    async def upgrade(
        self, path: str = "/", host: str = "127.0.0.1", port: int = 0, headers: tuple[str, ...] = ()
    ) -> None:
        """Send the upgrade request; its answer is read with the first message."""
        self._head = b""
        await self.stream.send_all(handshake_request(host, port or 80, path, headers))

    async def _read_head(self) -> None:
        head = self._head or b""
        while b"\r\n\r\n" not in head:
            chunk = await self.stream.receive_some(65536)
            assert chunk, f"closed during the handshake: {head!r}"
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        self._head = None
        if rest:
            self._events.extend(self.decoder.feed(rest))

    # ------------------------------------------------------------------ sending
    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON text message. Once the server's close frame has arrived nothing is
        sent (the server would never read it): the next receive raises ``Closed``, and so
        does this once that was reported."""
        if self.close_code is not None:
            raise Closed(self.close_code, self.close_reason)
        if any(kind == OP_CLOSE for kind, _ in self._events):
            return
        await self.stream.send_all(self.encoder.frame(OP_TEXT, json.dumps(message).encode()))

    async def echo(self, data: Any, timeout: float = 5.0) -> dict[str, Any]:
        """One echo round trip (skipping other traffic, e.g. says)."""
        await self.send({"type": "echo", "data": data})
        return await self.receive_until("echo", timeout, data=data)

    # ------------------------------------------------------------------ receiving
    async def next_frame(self, timeout: float = 10.0) -> tuple[int, Any]:
        """The next frame (pings answered); raises ``Closed`` at the server's close frame
        (``eof`` tells whether the TCP connection then ended) or at a bare EOF (1006)."""
        if self.close_code is not None:
            raise Closed(self.close_code, self.close_reason)
        with trio.fail_after(timeout):
            if self._head is not None:
                await self._read_head()
            while True:
                while self._events:
                    kind, value = self._events.pop(0)
                    if kind == OP_PING:
                        await self.stream.send_all(self.encoder.frame(OP_PONG, value))
                        continue
                    if kind == OP_CLOSE:
                        self.close_code, self.close_reason = value
                        with trio.CancelScope(shield=True):  # bounded: 5 s
                            await self._until_eof()
                        raise Closed(self.close_code, self.close_reason)
                    if kind == VIOLATION:
                        raise AssertionError(f"the server broke the protocol: {value}")
                    return kind, value
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.eof = True
                    self.close_code, self.close_reason = 1006, "no close frame"
                    raise Closed(1006, "connection ended without a close frame")
                self._events.extend(self.decoder.feed(data))

    async def _until_eof(self) -> None:
        """After the server's close frame: answer it, then expect the server's FIN."""
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(close_reply(self.close_code or 1005))
        with trio.move_on_after(5):
            try:
                while await self.stream.receive_some(65536):
                    pass
                self.eof = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.eof = True
        await self.stream.aclose()  # as a browser does once the server has closed

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON text message; raises ``Closed`` with the code when the server closes."""
        with trio.fail_after(timeout):
            while True:
                kind, payload = await self.next_frame(timeout)
                if kind == OP_TEXT:
                    return json.loads(payload)

    async def receive_until(
        self, type_: str, timeout: float = 10.0, **match: Any
    ) -> dict[str, Any]:
        """Skip messages until one of ``type_`` whose fields equal ``match``."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive()
                if message["type"] == type_ and all(message.get(k) == v for k, v in match.items()):
                    return message

    async def closed_with(self, timeout: float = 10.0) -> int:
        """Read until the server closes; its close code (1006 when there was none)."""
        try:
            while True:
                await self.next_frame(timeout)
        except Closed as closed:
            return closed.code

    # ------------------------------------------------------------------ leaving
    def vanish(self) -> None:
        """TCP reset, no close frame: the server sees a 1006."""
        sock = self.stream.socket
        if sock.fileno() < 0:  # closed already
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    async def close(self, code: int = 1000) -> None:
        """Close with ``code``, read until the server's answer (at most 5 s), end TCP."""
        if self.close_code is None and not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(self.encoder.close(code))
            with trio.move_on_after(5), contextlib.suppress(Closed):
                while True:
                    await self.next_frame(5)
        await self.stream.aclose()

    async def aclose(self) -> None:
        """Send a close 1000 and end TCP at once (no waiting for the answer)."""
        if self.close_code is None and not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(self.encoder.close(1000))
        await self.stream.aclose()
