"""The client wire protocol: msgspec Structs, one tagged union per direction, and codecs.

JSON text frames by default; msgpack binary frames when the client offered the
``msgpack`` subprotocol. Every decode failure raises ``ProtocolError`` carrying the
close code of the wire contract: 1007 for malformed JSON/msgpack or a schema violation,
1003 for a frame of the wrong kind (binary under JSON, text under msgpack).

Server messages that belong to a session's stream (``echo``, ``said``, ``user_left``)
carry a per-session ``seq``. A broadcast is encoded once (``Codec.encode_body``) and
each recipient's copy only gets its ``seq`` spliced in (``Codec.stamp``), so sending
``said`` to 10,000 sessions is one encode plus 10,000 small concatenations.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from core.close_codes import CloseCode

MSGPACK_SUBPROTOCOL = "msgpack"
MAX_REASON_BYTES = 120  # a close frame's reason must fit in 123 bytes


class ProtocolError(Exception):
    """A frame the server cannot accept; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = _short(reason)


def _short(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


# ---------------------------------------------------------------- client -> server
# A client counter must fit every wire format (msgpack ints are 64-bit).
Cseq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _ClientMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    cseq: Cseq | None = None  # the client's own sequence number, echoed in welcome.last_cseq


class Echo(_ClientMessage, tag="echo", kw_only=True):
    data: Any = None


class Say(_ClientMessage, tag="say", kw_only=True):
    text: str


class Heartbeat(_ClientMessage, tag="heartbeat", kw_only=True):
    ts: int | float


class Move(_ClientMessage, tag="move", kw_only=True):
    """Race to 21 (rooms of the default app): add ``n`` (1-3) to the total on your turn."""

    n: int


ClientMessage = Echo | Say | Heartbeat | Move


# ---------------------------------------------------------------- server -> client
class _ServerMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class HeartbeatInfo(msgspec.Struct):
    interval_ms: int
    timeout_ms: int


class Welcome(_ServerMessage, tag="welcome", kw_only=True):
    session: str
    token: str
    resumed: bool
    shard: int
    heartbeat: HeartbeatInfo
    last_cseq: int
    resume_error: str | None = None  # "invalid" | "expired": a resume failed, new session
    replay_gap: bool = False  # resumed, but older missed messages were no longer buffered
    recovered: bool = False  # resumed from a checkpoint after a shard crash: see replay_gap


class HeartbeatAck(_ServerMessage, tag="heartbeat_ack", kw_only=True):
    ts: int | float
    last_cseq: int = 0  # highest client cseq processed: the client may drop older outbox entries


class ServerShutdown(_ServerMessage, tag="server_shutdown", kw_only=True):
    reason: str
    reconnect_after_ms: int


class _StreamMessage(_ServerMessage):
    """A message of the session stream: ``seq`` is stamped per recipient (0 = unset)."""

    seq: int = 0


class EchoReply(_StreamMessage, tag="echo", kw_only=True):
    data: Any  # no default: ``"data": null`` is on the wire, not omitted


class Said(_StreamMessage, tag="said", kw_only=True):
    from_: str = msgspec.field(name="from")
    text: str


class UserLeft(_StreamMessage, tag="user_left", kw_only=True):
    session: str
    reason: str


# ---------------------------------------------------------------- rooms (default app)
class Joined(_StreamMessage, tag="joined", kw_only=True):
    session: str
    seat: int
    players: list[str]


class PlayerAway(_StreamMessage, tag="player_away", kw_only=True):
    session: str
    ai: bool  # always true: the server's AI plays this seat meanwhile


class PlayerBack(_StreamMessage, tag="player_back", kw_only=True):
    session: str
    ai: bool  # always false: the player plays again


class Turn(_StreamMessage, tag="turn", kw_only=True):
    session: str
    total: int
    round: int
    deadline_ms: int  # milliseconds left for this move before the AI plays it


class Moved(_StreamMessage, tag="moved", kw_only=True):
    session: str
    n: int
    total: int
    by_ai: bool


class RoundOver(_StreamMessage, tag="round_over", kw_only=True):
    winner: str
    round: int
    wins: dict[str, int]


class MoveRejected(_StreamMessage, tag="move_rejected", kw_only=True):
    reason: str


class SeatInfo(msgspec.Struct):
    session: str
    away: bool


class RoomState(_StreamMessage, tag="room_state", kw_only=True):
    """A full snapshot, sent on join and on a resume with ``replay_gap``."""

    room: str
    seats: list[SeatInfo]
    total: int
    turn: str | None
    round: int
    wins: dict[str, int]


RoomEvent = Joined | PlayerAway | PlayerBack | Turn | Moved | RoundOver | MoveRejected | RoomState
StreamMessage = EchoReply | Said | UserLeft | RoomEvent
ServerMessage = Welcome | HeartbeatAck | ServerShutdown | StreamMessage


class Codec:
    """Encode/decode for one connection's negotiated format (JSON or msgpack)."""

    __slots__ = ("binary", "_decoder", "_server_decoder", "_encode")

    def __init__(self, binary: bool = False) -> None:
        self.binary = binary
        if binary:
            self._decoder: Any = msgspec.msgpack.Decoder(ClientMessage)
            self._server_decoder: Any = msgspec.msgpack.Decoder(ServerMessage)
            self._encode = msgspec.msgpack.Encoder().encode
        else:
            self._decoder = msgspec.json.Decoder(ClientMessage)
            self._server_decoder = msgspec.json.Decoder(ServerMessage)
            self._encode = msgspec.json.Encoder().encode

    @classmethod
    def for_subprotocol(cls, subprotocol: str | None) -> Codec:
        return cls(binary=subprotocol == MSGPACK_SUBPROTOCOL)

    def decode(self, frame: str | bytes) -> ClientMessage:
        """Decode one client frame or raise ``ProtocolError`` (1003 or 1007)."""
        if self.binary:
            if isinstance(frame, str):
                raise ProtocolError(
                    CloseCode.UNSUPPORTED_DATA, "text frame on a msgpack connection"
                )
        elif isinstance(frame, bytes):
            raise ProtocolError(
                CloseCode.UNSUPPORTED_DATA,
                "binary frame without the msgpack subprotocol",
            )
        try:
            return self._decoder.decode(frame)
        except msgspec.ValidationError as exc:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid message: {exc}") from None
        except msgspec.DecodeError as exc:
            kind = "msgpack" if self.binary else "JSON"
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid {kind}: {exc}") from None
        except RecursionError:
            # msgspec decodes ``Any`` recursively: ~1000 nested arrays (a 2 KB frame)
            # would otherwise escape as RecursionError instead of closing 1007.
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "message nested too deeply") from None
        except UnicodeError:
            # A msgpack str that is not UTF-8 (UnicodeDecodeError escapes msgspec), or
            # a Python str with lone surrogates given to the JSON decoder.
            kind = "msgpack" if self.binary else "JSON"
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid {kind}: not UTF-8") from None

    def encode(self, message: _ServerMessage) -> str | bytes:
        """One frame: ``str`` (text frame) for JSON, ``bytes`` for msgpack."""
        data = self._encode(message)
        return data if self.binary else data.decode()

    def encode_body(self, message: _StreamMessage) -> str | bytes:
        """Encode a stream message once, without ``seq``, for ``stamp``."""
        if message.seq:
            raise ValueError("encode_body takes a message without seq")
        return self.encode(message)

    def stamp(self, body: str | bytes, seq: int) -> str | bytes:
        """Splice ``"seq": seq`` into a body from ``encode_body`` (no re-encode)."""
        if not self.binary:
            assert isinstance(body, str)
            return f'{body[:-1]},"seq":{seq}}}'
        assert isinstance(body, bytes)
        return _msgpack_add_field(body, b"\xa3seq", msgspec.msgpack.encode(seq))

    def decode_server(self, frame: str | bytes) -> ServerMessage:
        """Decode a server frame (clients and tests)."""
        return self._server_decoder.decode(frame)


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


def encode_json(message: _ServerMessage) -> str:
    """A server message as a JSON text frame (for tests and tools)."""
    return msgspec.json.encode(message).decode()
