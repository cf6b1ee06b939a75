"""One client connection on a shard: the bounded outbox, its writer task, and how it ended.

The session task (in ``shard.py``) reads; the writer task owns every send, so a slow
client never blocks the code that queues for it. The outbox holds at most
``max_outbound_queue`` frames; a client that falls further behind is a slow consumer
and is dropped with 1008 rather than growing the shard's memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio
import wsproto.connection
import wsproto.events
from trio_websocket import ConnectionClosed, WebSocketConnection

from core.close_codes import CloseCode, Disconnect, How, classify
from core.protocol import Codec
from shards import stats

if TYPE_CHECKING:
    from core.session import Session
    from shards.activity import ActivityStream

_PING = object()
_PING_PAYLOAD = b"hb"


class _CloseRequest:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Connection:
    """A live WebSocket connection and everything the shard needs to end it honestly."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: ActivityStream,
        codec: Codec,
        *,
        slot: int,
        path: str,
        max_outbound_queue: int,
        close_timeout: float,
        accepted_at: float,
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.codec = codec
        self.slot = slot
        self.path = path
        self.accepted_at = accepted_at
        self.session: Session | None = None  # None once replaced by a newer connection
        self.session_id: str | None = None  # for the log, kept after a replacement
        self.peer = "-"
        self.close_timeout = close_timeout
        self._out_send, self._out_recv = trio.open_memory_channel[object](max_outbound_queue)
        self.writer_done = trio.Event()
        # Set when the server decided how this connection ends.
        self._how: How | None = None
        self._code: int | None = None
        self._reason: str = ""
        self.silent_s: float | None = None  # for heartbeat timeouts: silence before closing
        # The close code trio-websocket sent by itself (1002 protocol error, 1007 bad UTF-8,
        # 1009 too big): seen by wrapping its wsproto send, since it only reports a 1006.
        self.sent_close: tuple[int, str] | None = None
        wsproto_send = ws._wsproto.send

        def send(event: wsproto.events.Event) -> bytes:
            if (
                isinstance(event, wsproto.events.CloseConnection)
                and self._how is None
                and ws._wsproto.state is wsproto.connection.ConnectionState.OPEN
            ):  # initiated here (a reply to the client's close happens in REMOTE_CLOSING)
                self.sent_close = (event.code, event.reason or "")
            return wsproto_send(event)

        ws._wsproto.send = send  # type: ignore[method-assign]

    # ------------------------------------------------------------------ sending
    def send(self, frame: str | bytes) -> bool:
        """Queue one frame; False (and the connection is dropped 1008) if the outbox is full."""
        if self._how is not None:
            return False
        try:
            self._out_send.send_nowait(frame)
        except trio.WouldBlock:
            self.abort(How.SERVER_CLOSED, CloseCode.POLICY_VIOLATION, "slow consumer")
            return False
        except trio.ClosedResourceError:
            return False
        stats.count_out()
        return True

    def ping(self) -> None:
        """Queue a WebSocket ping; skipped when the outbox is full (the timeout will judge)."""
        if self._how is None:
            try:
                self._out_send.send_nowait(_PING)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` after the frames already queued have been sent."""
        if self._how is not None:
            return
        self._how, self._code, self._reason = How.SERVER_CLOSED, code, reason
        try:
            self._out_send.send_nowait(_CloseRequest(code, reason))
        except trio.WouldBlock:
            self.stream.abort()
        except trio.ClosedResourceError:
            pass

    def abort(self, how: How, code: int | None, reason: str) -> None:
        """Drop the TCP connection now (no close handshake): heartbeat expiry, slow consumer."""
        if self._how is None:
            self._how, self._code, self._reason = how, code, reason
        self.stream.abort()

    def expire(self, silent_s: float) -> None:
        """The heartbeat wheel found this client silent past the timeout."""
        self.silent_s = silent_s
        self.abort(How.HEARTBEAT_EXPIRED, None, "heartbeat timeout")

    @property
    def closing(self) -> bool:
        return self._how is not None

    async def run_writer(self) -> None:
        """Send queued frames in order until a close request or a dead connection."""
        try:
            async for item in self._out_recv:
                if item is _PING:
                    # trio-websocket's public ping() waits for the pong; one task per
                    # ping is what the wheel exists to avoid, so send the frame only.
                    await self.ws._send(wsproto.events.Ping(payload=_PING_PAYLOAD))
                elif isinstance(item, _CloseRequest):
                    with trio.move_on_after(self.close_timeout):
                        await self.ws.aclose(item.code, item.reason)
                    self.stream.abort()
                    return
                else:
                    await self.ws.send_message(item)  # type: ignore[arg-type]
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.writer_done.set()

    async def wait_closed(self) -> None:
        """After the reader stopped: let a server-initiated close handshake finish (bounded)."""
        if self._how is How.SERVER_CLOSED:
            with trio.move_on_after(self.close_timeout + 1):
                await self.writer_done.wait()

    # ------------------------------------------------------------------ outcome
    def outcome(self) -> tuple[Disconnect, str]:
        """How the connection ended, classified, with a short reason for the log."""
        if self._how is not None:
            return classify(self._code, self._how), self._reason
        if self.sent_close is not None:
            code, reason = self.sent_close
            return classify(code, How.SERVER_CLOSED), reason or "protocol error"
        closed = self.ws.closed
        if closed is None or closed.code == CloseCode.ABNORMAL:
            return classify(None, How.CONNECTION_LOST), "connection lost"
        if closed.code == CloseCode.MESSAGE_TOO_BIG and (closed.reason or "").startswith(
            "Exceeded maximum"
        ):
            return classify(closed.code, How.SERVER_CLOSED), closed.reason or ""
        return classify(closed.code, How.CLIENT_CLOSED), closed.reason or ""


def duration(since: float) -> float:
    d = trio.current_time() - since
    return d if math.isfinite(d) else 0.0
