"""The per-message rules of one session's connection, sans-I/O: what to do with a frame.

``InboundRules.on_data`` takes one client data frame (its payload, and whether it was a
text frame) and the time, and returns an action for the caller to carry out:

* ``DELIVER, message`` - hand it to the app, then ``session.processed(message.cseq)``;
* ``REPLY, message`` - send this server message (``heartbeat_ack``, or ``error`` for a
  message the schema does not accept: the connection stays, see ``core.protocol``);
* ``CLOSE, (code, reason)`` - close the connection: bytes that are not the wire format
  (1007/1003), or a client over its rate (1008);
* ``SKIP, None`` - a re-send of a message already processed (``cseq`` at or below the
  session's high-water mark: exactly once, client to server).

Every data frame - error replies included - costs a token of the connection's rate bucket
(``--max-message-rate`` / ``--message-burst``), so a client that sends nothing but bad
messages is closed like any flood; ``on_control`` applies the same bucket to pings and to
pongs that do not answer the server's own ping. A ``say`` longer than ``max_say_bytes``
(default 4 KiB of UTF-8: it is copied to every session) is refused with ``error``
``too_long``. Cost per message: one bucket update, one msgspec decode, a few compares.
"""

from __future__ import annotations

from typing import Any

from core.close_codes import CloseCode
from core.protocol import (
    BadMessage,
    Codec,
    Error,
    Heartbeat,
    HeartbeatAck,
    ProtocolError,
    Say,
)
from core.rate_limit import TokenBucket
from core.session import Session

DELIVER = 0
REPLY = 1
CLOSE = 2
SKIP = 3
DEFAULT_MAX_SAY_BYTES = 4096

RATE_LIMITED = (int(CloseCode.POLICY_VIOLATION), "message rate limit")


class InboundRules:
    """Rules for one connection of a session (the caller counts the ``error`` replies)."""

    __slots__ = ("codec", "bucket", "max_say_bytes")

    def __init__(
        self, codec: Codec, bucket: TokenBucket, max_say_bytes: int = DEFAULT_MAX_SAY_BYTES
    ) -> None:
        self.codec = codec
        self.bucket = bucket
        self.max_say_bytes = max_say_bytes

    def on_data(self, session: Session, payload: bytes, text: bool, now: float) -> tuple[int, Any]:
        if not self.bucket.take(now):
            return CLOSE, RATE_LIMITED
        try:
            message = self.codec.decode(payload, text)
        except ProtocolError as exc:
            return CLOSE, (exc.code, exc.reason)
        except BadMessage as exc:
            message = Error(code=exc.code, reason=exc.reason, cseq=exc.cseq)
        if not session.token_confirmed:
            # A data frame the connection survives: the client read its welcome, so the
            # older token dies (see core.session).
            session.confirm_token()
        if type(message) is Error:
            return REPLY, message
        if type(message) is Heartbeat:
            return REPLY, HeartbeatAck(
                ts=message.ts, timestamp=message.timestamp, last_cseq=session.last_cseq
            )
        if session.is_duplicate(message.cseq):
            return SKIP, None
        if type(message) is Say and len(message.text) * 4 > self.max_say_bytes:
            size = len(message.text.encode())
            if size > self.max_say_bytes:
                reason = f"say text of {size} bytes exceeds {self.max_say_bytes}"
                return REPLY, Error(code="too_long", reason=reason, cseq=message.cseq)
        return DELIVER, message

    def on_control(self, now: float) -> bool:
        """A ping, or a pong the server did not ask for: False when over the rate."""
        return self.bucket.take(now)
