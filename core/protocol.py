"""The transport messages of the wire protocol, and the codecs of both wire formats.

Transport messages are what every app speaks: ``welcome``, ``heartbeat``/``heartbeat_ack``,
``server_shutdown``, ``error``, and the lobby's ``echo``/``say``/``said``/``user_left``. An
app brings its own client and server messages as msgspec Structs subclassing
``ClientMessage`` and ``StreamMessage`` (the demo game's live in ``shards/race21.py``); the
codec decodes the union of both.

Formats: JSON text frames by default; msgpack binary frames when the client offered the
``msgpack`` subprotocol.

**Strict on bytes, lenient on shape.** A payload that is not JSON (not msgpack on that
subprotocol), or a frame of the wrong kind, raises ``ProtocolError`` (close 1007 / 1003):
the client is broken. A well-formed message the schema does not know - an unknown
``type``, a field of the wrong type, a missing field - raises ``BadMessage``: the server
answers ``{"type":"error",...}`` and keeps the connection, because during a rolling
deploy old and new clients and servers meet, and a newer client's message must not cost
the player their connection. Unknown extra fields are ignored for the same reason.

**Integers are range-checked at the edge.** ``cseq`` is 0 .. 2^63-1; heartbeat stamps fit a
signed 64-bit integer; an integer anywhere in free-form data (``echo``'s ``data``) that
msgpack cannot carry (outside -2^63 .. 2^64-1) is refused as a ``BadMessage``. Nothing a
client sends can make a later msgpack encode (checkpoints, hand-offs) raise.

Stream messages (those with ``seq``) are kept in replay buffers as their JSON body without
``seq`` (``encode_body``); each recipient's copy only gets its ``seq`` spliced in
(``stamp``), so a broadcast to 10,000 sessions is one encode plus 10,000 small splices.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from core.close_codes import CloseCode

MSGPACK_SUBPROTOCOL = "msgpack"
MAX_REASON_BYTES = 120  # a close frame's reason must fit in 123 bytes
INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A client counter must fit every wire format (msgpack ints are 64-bit).
Cseq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
SHUTDOWN_MESSAGE = "Server is restarting, please reconnect later"


class ProtocolError(Exception):
    """Bytes the server cannot accept; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = short_reason(reason)


class BadMessage(Exception):
    """A well-formed message the schema does not accept: answer ``error``, keep the
    connection. ``code`` is ``unknown_type`` or ``invalid_message``; ``cseq`` is the
    message's own ``cseq`` when it carried a valid one (echoed in the error)."""

    def __init__(self, code: str, reason: str, cseq: int | None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = short_reason(reason)
        self.cseq = cseq


def short_reason(text: str) -> str:
    """``text`` cut at a character boundary to fit a close frame (``MAX_REASON_BYTES``)."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


# ---------------------------------------------------------------- client -> server
class ClientMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every client message (``type`` is the tag): an app subclasses it with
    ``tag="..."``. ``cseq`` is the client's own counter, echoed in ``welcome.last_cseq``."""

    cseq: Cseq | None = None


class Echo(ClientMessage, tag="echo", kw_only=True):
    data: Any = None


class Say(ClientMessage, tag="say", kw_only=True):
    text: str


class Heartbeat(ClientMessage, tag="heartbeat", kw_only=True):
    """``ts`` is the documented field; ``timestamp`` is accepted too (the field report's
    own client sends ``{"type":"heartbeat","timestamp":Date.now()}``). The ack echoes
    whichever was sent."""

    ts: INT64 | float | None = None
    timestamp: INT64 | float | None = None


TRANSPORT_MESSAGES: tuple[type[ClientMessage], ...] = (Echo, Say, Heartbeat)


# ---------------------------------------------------------------- server -> client
class ServerMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every server message."""


class HeartbeatInfo(msgspec.Struct):
    interval_ms: int
    timeout_ms: int


class Welcome(ServerMessage, tag="welcome", kw_only=True):
    session: str
    token: str
    resumed: bool
    shard: int
    heartbeat: HeartbeatInfo
    last_cseq: int
    resume_error: str | None = None  # "invalid" | "expired": a resume failed, new session
    replay_gap: bool = False  # resumed, but older missed messages were no longer buffered
    recovered: bool = False  # resumed from a checkpoint after a shard crash: see replay_gap


class Redirect(ServerMessage, tag="redirect", kw_only=True):
    """Cluster mode: the room is owned by another node, at ``url`` (the client's own path
    and query on the owner's public URL). The first and only message; close 4002 follows."""

    url: str


class HeartbeatAck(ServerMessage, tag="heartbeat_ack", kw_only=True):
    ts: int | float | None = None
    timestamp: int | float | None = None
    last_cseq: int = 0  # highest client cseq processed: the client may drop older outbox entries


class ServerShutdown(ServerMessage, tag="server_shutdown", kw_only=True):
    reason: str
    reconnect_after_ms: int
    message: str  # human-readable, as the field report's client shows it


class Error(ServerMessage, tag="error", kw_only=True):
    """A message the server did not accept (the connection stays open). Not part of the
    session stream (no ``seq``): it answers one message, named by its ``cseq``."""

    code: str
    reason: str
    cseq: int | None = None


class StreamMessage(ServerMessage):
    """Base of the session stream's messages: ``seq`` is stamped per recipient (0 = unset).
    An app's own server messages subclass it with ``tag="..."``."""

    seq: int = 0


class EchoReply(StreamMessage, tag="echo", kw_only=True):
    data: Any  # no default: ``"data": null`` is on the wire, not omitted


class Said(StreamMessage, tag="said", kw_only=True):
    from_: str = msgspec.field(name="from")
    text: str


class UserLeft(StreamMessage, tag="user_left", kw_only=True):
    session: str
    reason: str


class _Probe(msgspec.Struct):
    """What can be read off a message that failed its schema (for the error reply)."""

    type: Any = None
    cseq: Any = None


_JSON_PROBE = msgspec.json.Decoder(_Probe)
_MSGPACK_PROBE = msgspec.msgpack.Decoder(_Probe)
_json_encode = msgspec.json.Encoder().encode
_msgpack_encode = msgspec.msgpack.Encoder().encode
_json_any = msgspec.json.Decoder()


class Codec:
    """Decode client payloads and encode server messages for one connection's format.

    ``messages`` are the app's client message types beyond the transport ones. Build one
    per (format, app) and share it between connections: it holds no connection state.
    """

    __slots__ = ("binary", "_decoder", "_tags", "_encode")

    def __init__(
        self, binary: bool = False, messages: tuple[type[ClientMessage], ...] = ()
    ) -> None:
        self.binary = binary
        types = tuple(dict.fromkeys((*TRANSPORT_MESSAGES, *messages)))
        union: Any = types[0] if len(types) == 1 else _union(types)
        self._tags = frozenset(t.__struct_config__.tag for t in types)
        if binary:
            self._decoder: Any = msgspec.msgpack.Decoder(union)
            self._encode = _msgpack_encode
        else:
            self._decoder = msgspec.json.Decoder(union)
            self._encode = _json_encode

    @classmethod
    def for_subprotocol(
        cls, subprotocol: str | None, messages: tuple[type[ClientMessage], ...] = ()
    ) -> Codec:
        return cls(binary=subprotocol == MSGPACK_SUBPROTOCOL, messages=messages)

    # ---------------------------------------------------------------- inbound
    def decode(self, payload: bytes, text: bool) -> ClientMessage:
        """One client message from a data frame's payload (``text``: a text frame).

        ``ProtocolError`` (1003 wrong frame kind, 1007 not JSON/msgpack) or
        ``BadMessage`` (well-formed, wrong shape). Never any other exception."""
        if text == self.binary:
            raise ProtocolError(
                CloseCode.UNSUPPORTED_DATA,
                "text frame on a msgpack connection"
                if self.binary
                else "binary frame without the msgpack subprotocol",
            )
        kind = "msgpack" if self.binary else "JSON"
        try:
            message = self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise self._bad(payload, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid {kind}: {exc}") from None
        except RecursionError:
            # msgspec decodes ``Any`` recursively: ~1000 nested arrays (a 2 KB frame)
            # would otherwise escape as RecursionError instead of closing 1007.
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "message nested too deeply") from None
        except UnicodeError:
            # A msgpack str that is not UTF-8 (UnicodeDecodeError escapes msgspec).
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid {kind}: not UTF-8") from None
        if type(message) is Echo and not self._storable(message.data):
            raise BadMessage("invalid_message", "data cannot be kept for replay", message.cseq)
        return message

    def _storable(self, data: Any) -> bool:
        """Whether echo data survives both formats: stream messages are kept as JSON for
        replay (a msgpack ext value or a non-string map key cannot be), and are sent as
        msgpack to msgpack clients (an integer beyond 64 bits cannot be)."""
        if not self.binary:
            return _msgpack_safe(data)
        if type(data) in (str, int, float, bool) or data is None:
            return True
        try:
            _json_encode(data)
        except (TypeError, ValueError, OverflowError):
            return False
        return True

    def _bad(self, payload: bytes, detail: str) -> BadMessage:
        try:
            probe = (_MSGPACK_PROBE if self.binary else _JSON_PROBE).decode(payload)
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            probe = _Probe()
        cseq = probe.cseq
        if not (type(cseq) is int and 0 <= cseq <= 2**63 - 1):
            cseq = None
        if isinstance(probe.type, str) and probe.type not in self._tags:
            return BadMessage("unknown_type", f"unknown message type {probe.type!r}", cseq)
        return BadMessage("invalid_message", f"invalid message: {detail}", cseq)

    # ---------------------------------------------------------------- outbound
    def encode(self, message: ServerMessage) -> bytes:
        """One frame's payload: JSON (a text frame) or msgpack (a binary frame)."""
        return self._encode(message)

    def stamp(self, body: bytes, seq: int) -> bytes:
        """Splice ``seq`` into a body from ``encode_body`` in this codec's format."""
        if self.binary:
            return _msgpack_add_field(body, b"\xa3seq", _msgpack_encode(seq))
        return b'%s,"seq":%d}' % (body[:-1], seq) if body != b"{}" else b'{"seq":%d}' % seq

    def body_from_json(self, body: bytes) -> bytes:
        """A JSON stream body (as replay buffers keep them) in this codec's format."""
        if not self.binary:
            return body
        return _msgpack_encode(_json_any.decode(body))


def encode_body(message: StreamMessage) -> bytes:
    """A stream message as JSON without ``seq``: what replay buffers keep and what a
    JSON recipient's frame is stamped from. Encode once, stamp per recipient."""
    if message.seq:
        raise ValueError("encode_body takes a message without seq")
    return _json_encode(message)


def encode_json(message: ServerMessage) -> bytes:
    """A server message as JSON (for tests and tools)."""
    return _json_encode(message)


def decode_server(payload: bytes | str, binary: bool = False) -> Any:
    """A server frame as plain Python values (clients and tests)."""
    if binary:
        return msgspec.msgpack.decode(payload)
    return msgspec.json.decode(payload)


def _union(types: tuple[type, ...]) -> Any:
    union: Any = types[0]
    for t in types[1:]:
        union = union | t
    return union


def _msgpack_safe(value: Any) -> bool:
    """Whether every integer in a decoded JSON value fits msgpack (-2^63 .. 2^64-1).

    A scalar costs one type check; containers are walked (bounded by the message size)."""
    t = type(value)
    if t is int:
        return -(2**63) <= value <= 2**64 - 1
    if t is not list and t is not dict:
        return True
    stack = [value]
    while stack:
        item = stack.pop()
        for v in item.values() if type(item) is dict else item:
            tv = type(v)
            if tv is int:
                if not -(2**63) <= v <= 2**64 - 1:
                    return False
            elif tv is list or tv is dict:
                stack.append(v)
    return True


def _msgpack_add_field(body: bytes, key: bytes, value: bytes) -> bytes:
    head = body[0]
    if 0x80 <= head <= 0x8E:  # fixmap with room for one more key
        return bytes((head + 1,)) + body[1:] + key + value
    if head == 0x8F:
        return b"\xde\x00\x10" + body[1:] + key + value
    if head == 0xDE:
        count = int.from_bytes(body[1:3], "big") + 1
        if count > 0xFFFF:
            return b"\xdf" + count.to_bytes(4, "big") + body[3:] + key + value
        return b"\xde" + count.to_bytes(2, "big") + body[3:] + key + value
    if head == 0xDF:
        count = int.from_bytes(body[1:5], "big") + 1
        return b"\xdf" + count.to_bytes(4, "big") + body[5:] + key + value
    raise ValueError("not a msgpack map")
