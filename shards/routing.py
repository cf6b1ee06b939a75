"""Route a fresh TCP connection to the shard that owns its room or session, before the
WebSocket handshake: peek the request line (MSG_PEEK, nothing consumed), and if another
shard must serve it, pass the socket fd (SCM_RIGHTS) through the supervisor.

The peek is bounded by the handshake timeout (a slowloris that dribbles half a request
line is dropped when it runs out). Request lines nearly always arrive in one segment;
while one is incomplete the shard re-peeks with a short backoff instead of spinning on a
socket that stays readable.
"""

from __future__ import annotations

import array
import re
import socket
import urllib.parse
from dataclasses import dataclass

import msgspec
import trio

from core.control import PassConnection

MAX_REQUEST_LINE = 8192
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PASS_ENCODER = msgspec.msgpack.Encoder()
_PASS_DECODER = msgspec.msgpack.Decoder(PassConnection)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request wants to go: a room, a resumed session, or the lobby."""

    path: str
    room: str | None
    token: str | None
    last_seq: int


class BadRequest(Exception):
    """Answer with this HTTP status and close (nothing reaches trio-websocket)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def peek_request_head(
    sock: trio.socket.SocketType, timeout: float
) -> tuple[bytes, dict[str, str]] | None:
    """Request line and headers (lower-cased names) without consuming them; None if the
    client closed or did not send a whole head within ``timeout`` (a slowloris)."""
    delay = 0.002
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await sock.recv(MAX_REQUEST_LINE, socket.MSG_PEEK)
            except OSError:
                return None
            if not data:
                return None
            end = data.find(b"\r\n\r\n")
            if end != -1:
                return _split_head(data[:end])
            if len(data) >= MAX_REQUEST_LINE:
                if b"\r\n" not in data:
                    raise BadRequest(414, "request line too long")
                raise BadRequest(431, "request headers too large")
            await trio.sleep(delay)
            delay = min(delay * 2, 0.05)
    return None


def _split_head(head: bytes) -> tuple[bytes, dict[str, str]]:
    line, _, rest = head.partition(b"\r\n")
    headers: dict[str, str] = {}
    for raw in rest.split(b"\r\n"):
        name, sep, value = raw.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return line, headers


def check_upgrade(headers: dict[str, str], allowed_origins: tuple[str, ...]) -> None:
    """BadRequest unless this is a WebSocket upgrade from an allowed origin."""
    if headers.get("upgrade", "").lower() != "websocket":
        raise BadRequest(426, "this endpoint only speaks WebSocket")
    if allowed_origins and headers.get("origin") not in allowed_origins:
        raise BadRequest(403, "origin not allowed")


def parse_target(line: bytes) -> Target:
    """``GET /rooms/<id>?resume=T&last_seq=N HTTP/1.1`` -> Target, or BadRequest."""
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise BadRequest(400, "malformed request line")
    if parts[0] != b"GET":
        raise BadRequest(405, "only GET can upgrade to a WebSocket")
    try:
        path = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "non-ASCII request target") from None
    return target_of(path)


def target_of(path: str) -> Target:
    """``/rooms/<id>?resume=T&last_seq=N`` -> Target, or BadRequest (404) for other paths."""
    split = urllib.parse.urlsplit(path)
    room = None
    if split.path.startswith("/rooms/"):
        room = split.path[len("/rooms/") :]
        if not ROOM_ID.fullmatch(room):
            raise BadRequest(404, "room ids are 1-64 of A-Z a-z 0-9 _ -")
    elif split.path != "/":
        raise BadRequest(404, "no such path")
    params = urllib.parse.parse_qs(split.query)
    token = params.get("resume", [None])[0] or None
    try:
        last_seq = int(params.get("last_seq", ["0"])[0])
    except ValueError:
        last_seq = -1  # refused by Session.resume: the resume fails as "invalid"
    return Target(path=path, room=room, token=token, last_seq=last_seq)


def http_error(status: int, reason: str) -> bytes:
    body = f"{status} {reason}\n".encode()
    titles = {
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        414: "URI Too Long",
        426: "Upgrade Required",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }
    extra = {426: "Upgrade: websocket\r\n", 503: "Retry-After: 1\r\n"}.get(status, "")
    return (
        f"HTTP/1.1 {status} {titles.get(status, 'Error')}\r\n{extra}"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def send_connection(
    handoff: trio.socket.SocketType, conn_fd: int, message: PassConnection
) -> None:
    """Send one connection fd with its routing note. The caller closes its own copy."""
    await handoff.sendmsg(
        [_PASS_ENCODER.encode(message)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn_fd]))],
    )


async def receive_connection(
    handoff: trio.socket.SocketType,
) -> tuple[PassConnection | None, list[int]] | None:
    """One routed connection: (note or None if unreadable, fds). None at EOF."""
    data, ancdata, _flags, _addr = await handoff.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None
    try:
        note = _PASS_DECODER.decode(data)
    except msgspec.DecodeError:
        note = None
    return note, fds
