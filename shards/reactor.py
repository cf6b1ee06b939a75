"""One reactor per shard: every open connection's frames, on one trio task.

The reactor owns a private, level-triggered epoll holding the socket of every connection
past its handshake, and awaits it with ``trio.lowlevel.wait_readable(epoll_fd)``. On each
wake it takes a bounded batch of ready sockets (``READ_BATCH``, 256): ``recv`` -> the
Cython frame decoder (``core.ws_codec``) -> a touch of the heartbeat wheel -> the
connection's handler (per-message rules and the app, synchronous) -> replies queued on the
connection. Then it writes the connections with queued frames (``FLUSH_BATCH``, 512 of
them, one ``sendmsg`` each) and yields to trio, so the heartbeat, control-channel, accept
and drain tasks get their turn between batches. One batch is bounded by those two counts:
about 2-5 ms of CPU at most on this machine's cores (a 10,000-recipient broadcast is
written over ~20 batches, so an echo never waits behind all of it).

Per message that is 2 system calls (``recv``, ``sendmsg``) and no task switch; trio sees
the reactor wake once per batch. A connection whose kernel buffer is full keeps its
pending frames (``Link.out``) and is watched for ``EPOLLOUT``; pending bytes over
``max_out`` (``--max-outbound-bytes``, 1 MiB by default) make it a slow consumer: its
queued frames are dropped and it is closed 1008 (the close frame goes after whatever
frame was half-written, if the client ever reads again).

Closing follows RFC 6455 7.1: the side that closes sends a close frame; the server then
shuts down its write side (FIN after the close frame, so the frame is on the wire before
the TCP connection ends) and reads until the client's close frame or EOF - a socket closed
with unread input would send a RST that can destroy the close frame in flight. The
connection's own task bounds that wait (``close_timeout``) and closes the socket: the
reactor never closes a file descriptor, it only unregisters it and sets ``Link.ended``.

Every handler call is guarded: an exception ends that connection with 1011, is logged once
with its traceback and counted (``ws_connection_errors_total``); the reactor goes on.
"""

from __future__ import annotations

import enum
import os
import select
import socket
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from core.close_codes import CloseCode, How
from core.heartbeat_wheel import HeartbeatWheel
from core.rate_limit import TokenBucket
from core.ws_codec import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    close_frame,
    ping_frame,
    pong_frame,
    stamped_text_frame,
)
from shards import stats
from shards.log import log

READ_BATCH = 256  # ready sockets handled per wake
FLUSH_BATCH = 512  # connections written per wake
RECV_SIZE = 256 * 1024  # one shared receive buffer; a read takes at most this
MAX_IOV = 256  # frames per sendmsg
LAZY_OVERHEAD = 24  # budget bytes of a lazily stamped frame besides its body
PING_PAYLOAD = b"hb"
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR


class LinkState(enum.IntEnum):
    OPEN = 0
    CLOSING = 1  # a close frame was sent or received; waiting for the other side
    ENDED = 2  # unregistered: the connection's task closes the socket


class Handler(Protocol):
    def on_data(self, link: Link, payload: bytes, text: bool, now: float) -> None: ...


class Link:
    """One connection's socket as the reactor sees it: decoder, pending output, state.

    ``how``/``code``/``reason`` say how it ended once it ends (or is ending): who closed,
    with what close code (None: no close frame, e.g. a lost connection)."""

    __slots__ = (
        "sock",
        "fd",
        "reactor",
        "decoder",
        "handler",
        "bucket",
        "slot",
        "out",
        "out_bytes",
        "max_out",
        "state",
        "watching_out",
        "scheduled",
        "shut",
        "close_queued",
        "awaiting_pong",
        "partial",
        "paused",
        "opened",
        "how",
        "code",
        "reason",
        "silent_s",
        "wakeup",
    )

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        *,
        slot: int,
        max_message_size: int,
        max_out: int,
        bucket: TokenBucket,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reactor = reactor
        self.decoder = FrameDecoder(max_message_size=max_message_size)
        self.handler: Handler | None = None
        self.bucket = bucket
        self.slot = slot
        self.out: deque[bytes | tuple[bytes, int]] = deque()
        self.out_bytes = 0
        self.max_out = max_out
        self.state = LinkState.OPEN
        self.watching_out = False
        self.scheduled = False
        self.shut = False
        self.close_queued = False
        self.awaiting_pong = False
        self.partial = False  # out[0] is the rest of a frame that was partly written
        self.paused = False  # not read for now (its unit is moving to another shard)
        self.opened = trio.current_time()
        self.how: How | None = None
        self.code: int | None = None
        self.reason = ""
        self.silent_s: float | None = None
        # Set when a close starts (either side) and again when the link ends: the
        # connection's task bounds the close with --close-timeout, then closes the socket.
        self.wakeup = trio.Event()

    # ------------------------------------------------------------------ output
    def send(self, frame: bytes) -> bool:
        """Queue one complete data frame (written at once when nothing is pending); False
        once the connection is closing or it just overflowed (a slow consumer)."""
        if self.state is not LinkState.OPEN:
            return False
        stats.messages_out += 1
        return self._push(frame)

    def _push(self, frame: bytes) -> bool:
        if not self.out and not self.reactor.batching:
            try:
                sent = self.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.lost()
                return False
            if sent == len(frame):
                return True
            if sent:
                frame = frame[sent:]
                self.partial = True
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes > self.max_out:
            self.overflow()
            return False
        self.reactor.schedule(self)
        return True

    def send_stamped(self, body: bytes, seq: int) -> bool:
        """Queue a JSON stream body to be stamped with ``seq`` when it is written (a
        broadcast's body is shared by every recipient's queue until then)."""
        if self.state is not LinkState.OPEN:
            return False
        stats.messages_out += 1
        self.out.append((body, seq))
        self.out_bytes += len(body) + LAZY_OVERHEAD
        if self.out_bytes > self.max_out:
            self.overflow()
            return False
        self.reactor.schedule(self)
        return True

    def ping(self) -> None:
        """A WebSocket ping; skipped while output is pending (the timeout will judge)."""
        if self.state is LinkState.OPEN and not self.out:
            self.awaiting_pong = True
            self._push(ping_frame(PING_PAYLOAD))

    # ------------------------------------------------------------------ ending
    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` after the frames already queued (RFC 6455 7.1.2)."""
        if self.state is not LinkState.OPEN:
            return
        self.how, self.code, self.reason = How.SERVER_CLOSED, code, reason
        self._queue_close(code, reason)

    def overflow(self) -> None:
        """Pending output over budget: drop what was not started, close 1008."""
        if self.state is not LinkState.OPEN:
            return
        self.how = How.SERVER_CLOSED
        self.code = int(CloseCode.POLICY_VIOLATION)
        self.reason = "slow consumer"
        kept = self.out[0] if self.partial and self.out else None
        self.out.clear()
        self.out_bytes = 0
        if kept is not None:
            self.out.append(kept)
            self.out_bytes = len(kept)
        self._queue_close(self.code, self.reason)

    def _queue_close(self, code: int, reason: str) -> None:
        self.state = LinkState.CLOSING
        frame = close_frame(code, reason)
        self.out.append(frame)
        self.out_bytes += len(frame)
        self.close_queued = True
        self.reactor.schedule(self)
        self.wakeup.set()

    def abort(self, how: How, reason: str, code: int | None = None) -> None:
        """End now, without a close handshake (heartbeat expiry, a frozen peer, a drain's
        deadline). A close already in progress keeps its own ``how`` and code."""
        if self.how is None or self.state is LinkState.OPEN:
            self.how, self.code, self.reason = how, code, reason
        self.reactor.end(self)

    def expire(self, silent_s: float) -> None:
        """The heartbeat wheel found this client silent past the timeout."""
        self.silent_s = silent_s
        self.abort(How.HEARTBEAT_EXPIRED, "heartbeat timeout")

    def lost(self) -> None:
        """TCP ended or failed without a close handshake."""
        if self.state is LinkState.OPEN:
            self.how, self.code, self.reason = How.CONNECTION_LOST, None, "connection lost"
        self.reactor.end(self)

    def pause(self, paused: bool) -> None:
        """Stop (or resume) reading this connection: what it sends waits in the kernel."""
        if self.paused is not paused and self.state is not LinkState.ENDED:
            self.paused = paused
            self.reactor.update(self)

    def age(self) -> float:
        return trio.current_time() - self.opened

    @property
    def closing(self) -> bool:
        return self.state is not LinkState.OPEN


class Reactor:
    """The shard's reactor (see the module docstring). ``wheel`` is touched on every read;
    ``now`` is trio's clock, read once per batch."""

    def __init__(self, wheel: HeartbeatWheel, shard_index: int) -> None:
        self.wheel = wheel
        self.shard_index = shard_index
        self._epoll = select.epoll()
        self._epfd = self._epoll.fileno()
        self._links: dict[int, Link] = {}
        self._pending: deque[Link] = deque()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakeup, _EPOLLIN)
        self._parked = False
        self._woken = False
        self.batching = False
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    def __len__(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------------ membership
    def add(self, link: Link) -> None:
        """Start serving ``link`` (its socket must be nonblocking and released from trio's
        own epoll)."""
        self._links[link.fd] = link
        self._epoll.register(link.fd, _EPOLLIN)

    def end(self, link: Link) -> None:
        """Stop serving ``link`` and tell its task (which closes the socket)."""
        if link.state is LinkState.ENDED:
            return
        link.state = LinkState.ENDED
        if self._links.get(link.fd) is link:
            del self._links[link.fd]
            try:
                self._epoll.unregister(link.fd)
            except (OSError, ValueError):
                pass
        link.out.clear()
        link.out_bytes = 0
        link.wakeup.set()

    def update(self, link: Link) -> None:
        """Re-arm ``link``'s epoll events from its state (reading unless paused, writing
        while output waits for the kernel)."""
        mask = (0 if link.paused else _EPOLLIN) | (_EPOLLOUT if link.watching_out else 0)
        try:
            self._epoll.modify(link.fd, mask)
        except OSError:
            link.lost()

    def inject(self, link: Link, data: bytes) -> None:
        """Bytes that arrived with the request head (a client that did not wait for the
        ``101``): handled as if just read."""
        self._guarded(self._consume, link, data, trio.current_time())

    # ------------------------------------------------------------------ output
    def schedule(self, link: Link) -> None:
        """``link`` has queued output: write it in the next batch."""
        if link.scheduled or link.watching_out:
            return
        link.scheduled = True
        self._pending.append(link)
        if self._parked and not self._woken:
            self._woken = True
            os.eventfd_write(self._wakeup, 1)

    def _write(self, link: Link) -> None:
        out = link.out
        sock = link.sock
        while out:
            frames = []
            for item in out:
                frames.append(item if type(item) is bytes else stamped_text_frame(*item))
                if len(frames) >= MAX_IOV:
                    break
            try:
                sent = sock.sendmsg(frames) if len(frames) > 1 else sock.send(frames[0])
            except BlockingIOError:
                sent = 0
            except OSError:
                link.lost()
                return
            for frame in frames:
                item = out.popleft()
                link.out_bytes -= len(item) if type(item) is bytes else len(item[0]) + LAZY_OVERHEAD
                size = len(frame)
                if sent >= size:
                    sent -= size
                    link.partial = False
                    continue
                # A partly written frame stays at the head as the bytes still to send.
                rest = frame[sent:]
                out.appendleft(rest)
                link.out_bytes += len(rest)
                link.partial = link.partial or sent > 0
                break
            if out:
                if not link.watching_out:
                    link.watching_out = True
                    self.update(link)
                return
        if link.watching_out:
            link.watching_out = False
            self.update(link)
        if link.close_queued and not link.shut:
            link.shut = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                link.lost()
                return
            if link.how is How.CLIENT_CLOSED:
                self.end(link)  # the client closed first: our reply is out, we are done

    def _flush(self) -> None:
        pending = self._pending
        for _ in range(min(len(pending), FLUSH_BATCH)):
            link = pending.popleft()
            link.scheduled = False
            if link.state is not LinkState.ENDED and link.out:
                self._guarded(self._write, link)

    # ------------------------------------------------------------------ input
    def _read(self, link: Link, now: float) -> None:
        try:
            n = link.sock.recv_into(self._buf)
        except BlockingIOError:
            return
        except OSError:
            link.lost()
            return
        if n == 0:
            if link.state is LinkState.OPEN:
                link.lost()
            else:
                self.end(link)
            return
        self.wheel.touch(link.slot, now)
        self._consume(link, self._view[:n], now)

    def _consume(self, link: Link, data: Any, now: float) -> None:
        for kind, value in link.decoder.feed(data):
            if kind == OP_TEXT or kind == OP_BINARY:
                if link.state is not LinkState.OPEN:
                    continue  # closing: data after our close frame is discarded
                stats.messages_in += 1
                link.handler.on_data(link, value, kind == OP_TEXT, now)  # type: ignore[union-attr]
            elif kind == OP_PING:
                if link.state is LinkState.OPEN:
                    if not link.bucket.take(now):
                        link.close(CloseCode.POLICY_VIOLATION, "message rate limit")
                        return
                    link.send(pong_frame(value))
            elif kind == OP_PONG:
                if link.awaiting_pong:
                    link.awaiting_pong = False
                elif link.state is LinkState.OPEN and not link.bucket.take(now):
                    link.close(CloseCode.POLICY_VIOLATION, "message rate limit")
                    return
            elif kind == OP_CLOSE:
                self._peer_closed(link, value)
                return
            else:  # a protocol violation: (code, reason)
                code, reason = value
                link.close(code, reason)
                return
            if link.state is LinkState.ENDED:
                return

    def _peer_closed(self, link: Link, value: tuple[int, str]) -> None:
        code, reason = value
        if link.state is LinkState.OPEN:
            link.how, link.code, link.reason = How.CLIENT_CLOSED, code, reason
            link.state = LinkState.CLOSING
            reply = close_frame(CloseCode.NORMAL if code == CloseCode.NO_STATUS else code, "")
            link.out.append(reply)
            link.out_bytes += len(reply)
            link.close_queued = True
            self.schedule(link)
            link.wakeup.set()
        else:
            self.end(link)  # the answer to our close: done

    def _guarded(self, fn: Callable[..., None], link: Link, *args: Any) -> None:
        try:
            fn(link, *args)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not stop the reactor
            stats.count("connection_error")
            log(
                "connection_error",
                shard=self.shard_index,
                error=repr(exc)[:200],
                traceback="".join(traceback.format_exception(exc))[-2000:],
            )
            if link.state is LinkState.OPEN:
                link.close(CloseCode.INTERNAL_ERROR, "server error")
            else:
                self.end(link)

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Serve until cancelled."""
        epoll = self._epoll
        links = self._links
        wakeup = self._wakeup
        while True:
            if self._pending:
                await trio.lowlevel.checkpoint()
            else:
                self._parked = True
                try:
                    await trio.lowlevel.wait_readable(self._epfd)
                finally:
                    self._parked = False
            events = epoll.poll(0, READ_BATCH)
            if events:
                now = trio.current_time()
                self.batching = True
                try:
                    for fd, mask in events:
                        link = links.get(fd)
                        if link is None:
                            if fd == wakeup:
                                self._woken = False
                                try:
                                    os.eventfd_read(wakeup)
                                except BlockingIOError:
                                    pass
                            continue
                        if mask & _EPOLLOUT and link.watching_out:
                            self._guarded(self._write, link)
                        if mask & _READABLE and link.state is not LinkState.ENDED:
                            self._guarded(self._read, link, now)
                finally:
                    self.batching = False
            if self._pending:
                self._flush()

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wakeup)
