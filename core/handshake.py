"""The HTTP side of a WebSocket connection, sans-I/O: the request head, where it wants to
go, and the upgrade's answer.

``head_end`` finds the end of a request head in the bytes read so far (at most
``MAX_HEAD`` = 8 KiB, else 414/431). ``parse_head`` parses it strictly - the grammar of
RFC 9112 as h11 reads it, and stricter where h11 is lenient: CRLF line ends only, no
obsolete line folding, no control characters in a field value, one ``Host``, no request
body - and ``route`` reads the target: ``/`` (the lobby) or ``/rooms/<id>``, with
``resume`` and ``last_seq`` in the query. ``upgrade`` checks a WebSocket opening
handshake (RFC 6455 4.2.1: ``GET``, ``Upgrade: websocket``, ``Connection: upgrade``, a
16-byte ``Sec-WebSocket-Key``, version 13, an allowed ``Origin``), picks the subprotocol and
builds the ``101`` response. Everything a client can send ends in a ``Request``, a
``Target``, an ``Upgrade`` or an ``HttpError`` with the status to answer; nothing else is
raised (the property tests feed arbitrary bytes).

Cost: one pass of a few compiled regular expressions over the head (~10 us for a
browser's 400-byte upgrade, against ~90 us for h11 and ~220 us for wsproto's handshake).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
from dataclasses import dataclass

MAX_HEAD = 8192  # bytes of request line + headers
MAX_HEADERS = 100
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]{1,128}")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MSGPACK_SUBPROTOCOL = "msgpack"

_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(
    rb"(?P<method>" + _TCHAR + rb"+) (?P<target>[\x21-\x7e]+) HTTP/(?P<version>[0-9]\.[0-9])"
)
_FIELD = re.compile(
    rb"(?P<name>" + _TCHAR + rb"+):[ \t]*"
    rb"(?P<value>(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)
_DIGITS = re.compile(r"[0-9]{1,19}")
# origin-form (RFC 9112 3.2.1 / RFC 3986): a path of pchars, then an optional query
_PCHARS = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_ORIGIN_FORM = re.compile(rf"(?:/{_PCHARS}*)+(?:\?(?:{_PCHARS}|[/?])*)?")

TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


# status -> the readable label of a refusal (log field ``reason``, metric label)
KINDS = {
    400: "bad_request",
    403: "origin_not_allowed",
    404: "not_found",
    405: "method_not_allowed",
    414: "uri_too_long",
    426: "not_websocket",
    429: "too_many_requests",
    431: "headers_too_large",
    503: "over_capacity",
    505: "http_version",
}


class HttpError(Exception):
    """Answer with this HTTP status (and ``headers``) and close. ``kind`` is a readable
    label for logs and metrics (default by status, see ``KINDS``)."""

    def __init__(
        self, status: int, reason: str, headers: tuple[str, ...] = (), kind: str = ""
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.kind = kind or KINDS.get(status, f"http_{status}")

    def response(self) -> bytes:
        return http_response(self.status, self.reason, self.headers)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head. Header names are lower-case; repeated fields are joined
    with ``", "`` (RFC 9110 5.3)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    def header_tokens(self, name: str) -> list[str]:
        """A comma-separated header's elements, lower-cased and stripped."""
        return [t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request wants to go: a room or the lobby, maybe resuming a session.

    ``token`` is None when absent or not even token-shaped (such a resume fails as
    ``invalid`` later, like a forged one); ``last_seq`` is -1 when it is not an integer in
    0 .. 2^63-1 (also refused by the resume)."""

    path: str
    room: str | None
    token: str | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An accepted opening handshake: the ``101`` response to send and the subprotocol."""

    response: bytes
    subprotocol: str | None


def head_end(data: bytes | bytearray) -> int:
    """The length of the request head in ``data`` (through its blank line), or -1 while
    incomplete. ``HttpError`` 414/431 once ``MAX_HEAD`` bytes hold no complete head."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end != -1:
        return end + 4
    if len(data) >= MAX_HEAD:
        if b"\r\n" not in data[:MAX_HEAD]:
            raise HttpError(414, "request line too long")
        raise HttpError(431, "request headers too large")
    return -1


def parse_head(head: bytes) -> Request:
    """A request head (``head_end`` bytes of it) -> ``Request``, or ``HttpError`` 400/505."""
    if not head.endswith(b"\r\n\r\n"):
        raise HttpError(400, "incomplete request head")
    lines = head[:-4].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise HttpError(400, "malformed request line")
    version = line["version"].decode()
    if version not in ("1.0", "1.1"):
        raise HttpError(505, f"HTTP/{version} is not supported")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        field = _FIELD.fullmatch(raw)
        if field is None:
            if raw[:1] in (b" ", b"\t"):
                raise HttpError(400, "obsolete line folding")
            raise HttpError(400, "malformed header field")
        name = field["name"].decode().lower()
        value = field["value"].decode("latin-1")
        if name in headers:
            if name in ("host", "sec-websocket-key", "content-length"):
                raise HttpError(400, f"more than one {name} header")
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    if version == "1.1" and "host" not in headers:
        raise HttpError(400, "missing Host header")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise HttpError(400, "a request body is not allowed here")
    return Request(line["method"].decode(), line["target"].decode(), version, headers)


def route(target: str) -> Target:
    """``/rooms/<id>?resume=T&last_seq=N`` -> ``Target``; ``HttpError`` 404 for another
    path, 400 for a target that is not a path (absolute-form, asterisk-form) or a query
    that cannot be read."""
    if not _ORIGIN_FORM.fullmatch(target):
        raise HttpError(400, "the request target must be a path (RFC 3986 characters)")
    path, _, query = target.partition("?")
    room = None
    if path.startswith("/rooms/"):
        room = path[len("/rooms/") :]
        if not ROOM_ID.fullmatch(room):
            raise HttpError(404, "room ids are 1-64 of A-Z a-z 0-9 _ -")
    elif path != "/":
        raise HttpError(404, "no such path")
    try:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=32))
    except ValueError:
        raise HttpError(400, "unreadable query") from None
    token = params.get("resume") or None
    if token is not None and not TOKEN_TEXT.fullmatch(token):
        token = "!"  # not a token: the resume is refused as invalid
    raw_seq = params.get("last_seq", "0")
    last_seq = int(raw_seq) if _DIGITS.fullmatch(raw_seq) else -1
    if last_seq > 2**63 - 1:
        last_seq = -1
    return Target(path=target, room=room, token=token, last_seq=last_seq)


def is_upgrade(request: Request) -> bool:
    """Whether the client asks for a WebSocket at all (else: plain HTTP)."""
    return "websocket" in request.header_tokens("upgrade")


def upgrade(
    request: Request,
    allowed_origins: tuple[str, ...] = (),
    subprotocols: tuple[str, ...] = (MSGPACK_SUBPROTOCOL,),
) -> Upgrade:
    """Check an opening handshake; the ``101`` response, or ``HttpError``."""
    if request.method != "GET":
        raise HttpError(405, "only GET can upgrade to a WebSocket")
    if not is_upgrade(request):
        raise HttpError(426, "this endpoint only speaks WebSocket", ("Upgrade: websocket",))
    if request.version != "1.1":
        raise HttpError(400, "a WebSocket upgrade needs HTTP/1.1")
    if "upgrade" not in request.header_tokens("connection"):
        raise HttpError(400, "Connection header lacks 'upgrade'")
    if request.headers.get("sec-websocket-version", "").strip() != "13":
        raise HttpError(
            426,
            "unsupported Sec-WebSocket-Version",
            ("Sec-WebSocket-Version: 13",),
            kind="unsupported_version",
        )
    key = request.headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HttpError(400, "Sec-WebSocket-Key is not 16 bytes of base64") from None
    if allowed_origins and request.headers.get("origin") not in allowed_origins:
        raise HttpError(403, "origin not allowed")
    offered = request.header_tokens("sec-websocket-protocol")
    chosen = next((p for p in subprotocols if p in offered), None)
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
        + (f"Sec-WebSocket-Protocol: {chosen}\r\n" if chosen else "")
        + "\r\n"
    )
    return Upgrade(response.encode(), chosen)


def http_response(status: int, reason: str, headers: tuple[str, ...] = ()) -> bytes:
    """A complete plain-text error response that closes the connection (``503`` always
    says ``Retry-After: 1``)."""
    body = f"{status} {reason}\n".encode()
    extra = "".join(f"{h}\r\n" for h in headers)
    if status == 503 and "Retry-After" not in extra:
        extra += "Retry-After: 1\r\n"
    return (
        f"HTTP/1.1 {status} {TITLES.get(status, 'Error')}\r\n{extra}"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
