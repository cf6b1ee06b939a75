"""One client connection on a shard, from its first byte to its classified end.

Each connection has one trio task for what is not per-message (``Connections.serve``):

1. read the request head - awaiting readability, keeping what was read, at most 8 KiB,
   within ``--handshake-timeout`` - so a client dribbling bytes costs nothing between
   them (no polling); a PROXY protocol header before it (``core.proxy_protocol``) is
   stripped and names the peer when it comes from a ``--trusted-proxy``, and is refused
   (400) from anyone else;
2. answer plain-HTTP pages and refusals (``core.handshake``: 400/403/404/405/414/426/431/
   505) with a lingering close, or pass the socket to the shard owning the room or
   session (``shards.routing``) with the head already read;
3. write the ``101`` answer, open or resume the session (which may fetch it from another
   shard), and hand the socket to the shard's reactor;
4. sleep until the connection ends (a close started by either side is bounded by
   ``--close-timeout``), then classify the end, log one ``disconnect`` line and tell the
   session host (away, or left).

Every frame in between is the reactor's (``shards.reactor``): it calls the connection's
handler - ``SessionConnection.on_data`` (the per-message rules of ``core.inbound``, then
the app); with ``--app echo`` the reactor answers each frame with itself. One
connection's failure - a bad request, a bug in routing, an exception in the app - ends
that connection only: the task catches it, answers 400/1011, logs it once with its
traceback and counts it.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from core import handshake, proxy_protocol
from core.close_codes import CloseCode, Disconnect, How, classify
from core.cluster import redirect_url
from core.control import PassConnection
from core.forwarded import client_address, is_trusted, trusted_networks
from core.handshake import HttpError, http_response
from core.inbound import CLOSE, DELIVER, REPLY, InboundRules
from core.protocol import Codec, Error, Redirect, ServerMessage, StreamMessage
from core.ws_codec import binary_frame, close_frame, stamped_text_frame, text_frame
from shards import static, stats
from shards.log import log
from shards.reactor import Link, Reactor
from shards.routing import refuse_now

if TYPE_CHECKING:
    from core.config import ServerConfig
    from core.heartbeat_wheel import HeartbeatWheel
    from core.session import Session
    from shards.routing import Router
    from shards.session_host import SessionHost

LINGER = 2.0  # seconds an HTTP refusal waits for the client to read it and close
MAX_LINGERING = 256  # refusals lingering at once; past it a refused socket closes at once


class SessionConnection:
    """A connection of a session app: its link, its session, the per-message rules."""

    __slots__ = ("link", "host", "codec", "rules", "session", "session_id", "peer", "shard")

    def __init__(
        self, link: Link, host: SessionHost, codec: Codec, rules: InboundRules, peer: str
    ) -> None:
        self.link = link
        self.host = host
        self.codec = codec
        self.rules = rules
        self.session: Session | None = None  # None once detached (replaced, evacuated)
        self.session_id: str | None = None  # for the log, kept after a detach
        self.peer = peer
        self.shard = host.shard_index

    @property
    def binary(self) -> bool:
        return self.codec.binary

    @property
    def closing(self) -> bool:
        return self.link.closing

    # ------------------------------------------------------------------ inbound
    def on_data(self, link: Link, payload: bytes, text: bool, now: float) -> None:
        session = self.session
        if session is None:
            # Detached (replaced, or evacuated by a rolling restart): discard until the
            # server's close reaches it; the client re-sends what was not acknowledged.
            return
        confirmed = session.token_confirmed
        action, value = self.rules.on_data(session, payload, text, now)
        if session.token_confirmed and not confirmed:
            self.host.token_confirmed(session)
        if action == DELIVER:
            self.host.deliver(self, session, value)  # marks it processed
        elif action == REPLY:
            if type(value) is Error:
                stats.count(f"bad_message|{value.code}")
            self.send_message(value)
        elif action == CLOSE:
            code, reason = value
            if code != CloseCode.POLICY_VIOLATION:
                log("bad_message", shard=self.shard, session=session.id, code=code, reason=reason)
            else:
                log("rate_limited", shard=self.shard, session=session.id)
            link.close(code, reason)

    # ------------------------------------------------------------------ outbound
    def send_message(self, message: ServerMessage) -> bool:
        """A message outside the session stream (welcome, acks, errors, shutdown)."""
        data = self.codec.encode(message)
        return self.link.send(binary_frame(data) if self.codec.binary else text_frame(data))

    def send_stream(self, message: StreamMessage, body: bytes, seq: int) -> bool:
        """A stream message just recorded with ``seq`` (``body``: its JSON body)."""
        if not self.codec.binary:
            return self.link.send(stamped_text_frame(body, seq))
        data = self.codec.encode(msgspec.structs.replace(message, seq=seq))
        return self.link.send(binary_frame(data))

    def send_body(self, body: bytes, seq: int, msgpack_body: bytes | None = None) -> bool:
        """A recorded stream body (a broadcast, a replay): JSON links stamp it when it is
        written; msgpack links get it converted (``msgpack_body`` if already done)."""
        if not self.codec.binary:
            return self.link.send_stamped(body, seq)
        data = msgpack_body if msgpack_body is not None else self.codec.body_from_json(body)
        return self.link.send(binary_frame(self.codec.stamp(data, seq)))

    def close(self, code: int, reason: str) -> None:
        self.link.close(code, reason)


class Connections:
    """The shard's connections: counts (``live`` includes handshakes in flight and
    connections passed here by siblings), and the task each one runs."""

    def __init__(
        self,
        shard_index: int,
        config: ServerConfig,
        reactor: Reactor,
        wheel: HeartbeatWheel,
        host: SessionHost | None,
        router: Router | None,
        app_messages: tuple[type, ...] = (),
    ) -> None:
        self.shard_index = shard_index
        self.config = config
        self.reactor = reactor
        self.wheel = wheel
        self.host = host
        self.router = router
        self.live = 0  # accepted/received and not yet finished (the --max-connections count)
        self.pending = 0  # of those, still before their upgrade (--max-pending-handshakes)
        self.links: dict[int, Link] = {}  # serving (past the upgrade), by wheel slot
        self.handlers: dict[int, SessionConnection] = {}  # the same, for session apps
        self.on_count: Callable[[], None] | None = None  # the load table's publisher
        self.all_closed = trio.Event()
        self.handshake_timeouts = 0
        self.closing_reason: str | None = None  # set: every new connection gets HTTP 503
        self._trusted = trusted_networks(config.trusted_proxies)
        self._lingering = 0
        self._codecs = {
            False: Codec(binary=False, messages=app_messages),
            True: Codec(binary=True, messages=app_messages),
        }

    def __len__(self) -> int:
        """Connections past their upgrade (being served by the reactor)."""
        return len(self.links)

    # ------------------------------------------------------------------ admission
    def over_capacity(self) -> str | None:
        """Why a new connection must be refused now (HTTP 503), or None."""
        if self.closing_reason is not None:
            return self.closing_reason
        limit = self.config.max_connections
        if limit is not None and self.live >= limit:
            return f"over capacity ({limit} connections per shard)"
        if self.pending >= self.config.max_pending_handshakes:
            return f"too many handshakes in flight ({self.config.max_pending_handshakes})"
        return None

    def admit(self) -> str | None:
        """Count a new connection now (before its task starts, so a batch of accepts cannot
        overshoot the caps); or why it must be refused. ``serve`` uncounts it."""
        why = self.over_capacity()
        if why is None:
            self.pending += 1
            self._count(+1)
        return why

    def refuse(self, sock: socket.socket, why: str, peer: str, nursery: trio.Nursery) -> None:
        """HTTP 503 + ``Retry-After`` for a connection over the caps, logged and counted;
        answered with a lingering close while few are (so the client reads the answer),
        closed at once under a flood (so the fds come back now)."""
        log(
            "rejected",
            shard=self.shard_index,
            reason="over_capacity",
            status=503,
            detail=why,
            peer=peer,
        )
        if self._lingering >= MAX_LINGERING:
            refuse_now(sock, why)
            return
        self._lingering += 1
        nursery.start_soon(self._linger, sock, http_response(503, why))

    async def _linger(self, sock: socket.socket, response: bytes) -> None:
        try:
            sock.setblocking(False)
            await _answer(sock, response)
        finally:
            sock.close()
            self._lingering -= 1

    def _count(self, delta: int) -> None:
        self.live += delta
        if self.on_count is not None:
            self.on_count()

    # ------------------------------------------------------------------ the task
    async def serve(
        self, sock: socket.socket, peer: str, note: PassConnection | None = None
    ) -> None:
        """Serve one accepted (or passed) socket to its end, once ``admit`` counted it.
        Never raises (but for cancellation): a failure ends this connection only."""
        pending = True
        link: Link | None = None
        try:
            sock.setblocking(False)
            prepared = await self._prepare(sock, peer, note)
            self.pending -= 1
            pending = False
            if prepared is None:
                return
            target, subprotocol, extra, peer = prepared
            link = await self._open(sock, peer, target, subprotocol, extra)
            if link is not None:
                await self._until_ended(link)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not end the shard
            stats.count("connection_error")
            log(
                "connection_error",
                shard=self.shard_index,
                peer=peer,
                error=repr(exc)[:200],
                traceback="".join(traceback.format_exception(exc))[-2000:],
            )
            if link is not None and not link.closing:
                link.close(CloseCode.INTERNAL_ERROR, "server error")
                with trio.move_on_after(self.config.close_timeout):
                    await self._until_ended(link)
        finally:
            if pending:
                self.pending -= 1
            if link is not None:
                self._finish(link)
            sock.close()
            self._count(-1)
            if not self.links:
                self.all_closed.set()

    async def _prepare(
        self, sock: socket.socket, peer: str, note: PassConnection | None
    ) -> tuple[handshake.Target, str | None, bytes, str] | None:
        """Head, checks and routing: (target, subprotocol, bytes after the head, the peer
        to count it under) to serve here, or None when answered (refused, a page, passed
        on) or timed out."""
        config = self.config
        with trio.move_on_after(config.handshake_timeout):
            try:
                if note is not None and note.head:
                    end = handshake.head_end(note.head)
                    head, extra = note.head[:end], note.head[end:]
                    if end == -1:
                        raise HttpError(400, "incomplete request head")
                else:
                    # A passed socket's head was read (and any PROXY header stripped) by
                    # the shard that accepted it; only that shard may trust one.
                    trusted = note is None and is_trusted(host_of(peer), self._trusted)
                    got = await _read_head(sock, proxy_trusted=trusted)
                    if got is None:
                        log("handshake_failed", shard=self.shard_index, peer=peer, reason="closed")
                        return None
                    head, extra, proxied = got
                    if proxied is not None and proxied.source is not None:
                        peer = peer_of(proxied.source)
                request = handshake.parse_head(head)
                if note is None and self._trusted:
                    peer = self._forwarded_peer(peer, request)
                page = static.response(request)
                if page is not None:
                    await _answer(sock, page)
                    return None
                target = handshake.route(request.target)
                upgrade = handshake.upgrade(request, config.allowed_origins)
                if note is not None and note.redirect:
                    await self._redirect(sock, peer, request.target, upgrade, note.redirect)
                    return None
            except HttpError as exc:
                log(
                    "rejected",
                    shard=self.shard_index,
                    reason=exc.kind,
                    status=exc.status,
                    detail=exc.reason,
                    peer=peer,
                )
                await _answer(sock, exc.response())
                return None
            if note is None and self.router is not None and self.host is not None:
                owner = self._owner_note(target, peer, head + extra)
                if owner is not None and await self.router.pass_connection(sock, owner):
                    return None
            try:
                await _send_all(sock, upgrade.response)
            except OSError:
                log("handshake_failed", shard=self.shard_index, peer=peer, reason="client gone")
                return None
            return target, upgrade.subprotocol, extra, peer
        self.handshake_timeouts += 1
        log(
            "handshake_failed",
            shard=self.shard_index,
            peer=peer,
            reason="no upgrade within the handshake timeout",
        )
        return None

    def _forwarded_peer(self, peer: str, request: handshake.Request) -> str:
        """``peer``, or the client its trusted proxy names (``--trusted-proxy``)."""
        proxy = host_of(peer)
        client = client_address(proxy, request.headers.get("x-forwarded-for"), self._trusted)
        if client == proxy:
            return peer
        return f"[{client}]:0" if ":" in client else f"{client}:0"

    async def _redirect(
        self,
        sock: socket.socket,
        peer: str,
        target: str,
        upgrade: handshake.Upgrade,
        public_url: str,
    ) -> None:
        """The room lives on another node: complete the upgrade (a browser cannot follow
        an HTTP redirect on one), send ``redirect`` with the owner's URL for this very
        target (so a resume query follows too), close 4002 and linger for the client's
        close (bounded)."""
        url = redirect_url(public_url, target)
        codec = self._codecs[upgrade.subprotocol == handshake.MSGPACK_SUBPROTOCOL]
        body = codec.encode(Redirect(url=url))
        frame = binary_frame(body) if codec.binary else text_frame(body)
        log("redirect", shard=self.shard_index, peer=peer, url=url, code=CloseCode.REDIRECT)
        stats.count("redirect")
        await _answer(sock, upgrade.response + frame + close_frame(CloseCode.REDIRECT, "redirect"))

    def _owner_note(
        self, target: handshake.Target, peer: str, head: bytes
    ) -> PassConnection | None:
        """A note for the supervisor when another shard must serve this connection."""
        host = self.host
        assert host is not None
        if target.room is not None:
            if host.hosts_room(target.room):
                return None
            return PassConnection(room=target.room, origin=self.shard_index, peer=peer, head=head)
        if target.token is not None and self.config.route_resumes:
            session_id = host.session_of_token(target.token)
            if session_id is not None and session_id not in host.sessions:
                return PassConnection(
                    session=session_id, origin=self.shard_index, peer=peer, head=head
                )
        return None

    async def _open(
        self,
        sock: socket.socket,
        peer: str,
        target: handshake.Target,
        subprotocol: str | None,
        extra: bytes,
    ) -> Link | None:
        config = self.config
        host = self.host
        opened = None
        if host is not None:
            opened = await host.open(target.token, target.last_seq, target.room, host_of(peer))
        now = trio.current_time()
        link = Link(
            self.reactor,
            sock,
            slot=self.wheel.add(now),
            max_message_size=config.max_message_size,
            # A resume queues its whole replay at once: room for it on top of the budget.
            max_out=config.max_outbound_bytes + config.replay_buffer_bytes,
            rate=config.max_message_rate,
            burst=config.message_burst,
            now=now,
        )
        self.links[link.slot] = link
        trio.lowlevel.notify_closing(sock)  # trio's own epoll lets go of it: the reactor's now
        if host is None:
            self.reactor.add(link)  # no handler: the reactor echoes every frame
        else:
            assert opened is not None
            codec = self._codecs[subprotocol == handshake.MSGPACK_SUBPROTOCOL]
            # The link is the connection's rate bucket (Link.take).
            conn = SessionConnection(
                link, host, codec, InboundRules(codec, link, config.max_say_bytes), peer
            )
            link.handler = conn
            self.handlers[link.slot] = conn
            self.reactor.add(link)
            host.attach(conn, opened)
        if extra:
            self.reactor.inject(link, extra)
        return link

    async def _until_ended(self, link: Link) -> None:
        """Sleep until the link ends; a close in progress gets ``--close-timeout``."""
        await link.wakeup.wait()
        if link.ended:
            return
        link.wakeup = trio.Event()
        if link.ended:
            return
        with trio.move_on_after(self.config.close_timeout):
            await link.wakeup.wait()
        if not link.ended:
            link.abort(link.how or How.SERVER_CLOSED, link.reason or "close timeout")

    def _finish(self, link: Link) -> None:
        if not link.ended:
            # Cancelled (the shard is stopping) or failed before the end: drop it now.
            link.abort(How.SERVER_CLOSED, link.reason or "shard stopped")
        self.links.pop(link.slot, None)
        conn = self.handlers.pop(link.slot, None)
        if link.slot in self.wheel:
            self.wheel.remove(link.slot)
        disconnect, reason = outcome(link)
        log(
            "disconnect",
            kind=disconnect.kind,
            code=disconnect.code,
            reason=reason,
            session=conn.session_id if conn is not None else None,
            shard=self.shard_index,
            duration_s=link.age(),
            silent_s=link.silent_s,
            reconnect=disconnect.reconnect,
            peer=conn.peer if conn is not None else None,
        )
        if conn is not None and self.host is not None:
            self.host.detach(conn, disconnect)

    # ------------------------------------------------------------------ ending others
    def expire(self, slot: int, silent_s: float) -> None:
        link = self.links.get(slot)
        if link is not None:
            link.expire(silent_s)

    def ping(self, slots: list[int]) -> None:
        links = self.links
        for slot in slots:
            link = links.get(slot)
            if link is not None:
                link.ping()


def outcome(link: Link) -> tuple[Disconnect, str]:
    """How a link ended, classified, with a short reason for the log."""
    how = link.how or How.CONNECTION_LOST
    reason = link.reason or ("connection lost" if how is How.CONNECTION_LOST else "")
    return classify(link.code, how), reason


async def _read_head(
    sock: socket.socket, proxy_trusted: bool
) -> tuple[bytes, bytes, proxy_protocol.Header | None] | None:
    """The request head, whatever followed it, and the PROXY protocol header that came
    before it (stripped: the head starts after it), or None if the client closed first.
    Waits for readability between reads (a slow client costs nothing meanwhile) and keeps
    what it read; ``HttpError`` 414/431 past 8 KiB (a PROXY header counts against them),
    400 for a PROXY header when not ``proxy_trusted``, or a malformed one."""
    buf = bytearray()
    start: int | None = None  # where the request head begins, once known
    proxied: proxy_protocol.Header | None = None
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            chunk = sock.recv(handshake.MAX_HEAD - len(buf) or 1)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        if start is None:
            found = _proxy_header(buf, proxy_trusted)
            if isinstance(found, proxy_protocol.NeedMore):
                continue
            proxied = found
            start = found.length if found is not None else 0
        end = _head_end(buf, start)
        if end != -1:
            return bytes(buf[start:end]), bytes(buf[end:]), proxied


def _proxy_header(
    data: bytearray, trusted: bool
) -> proxy_protocol.Header | proxy_protocol.NeedMore | None:
    """The PROXY protocol header ``data`` begins with, None if it begins with anything
    else (a request), ``NeedMore`` until that is known. ``HttpError`` 400 for a header from
    a peer not trusted (anyone can write one) or a malformed one."""
    version = proxy_protocol.sniff(data)
    if version is None or isinstance(version, proxy_protocol.NeedMore):
        return version
    if not trusted:
        raise HttpError(
            400, "PROXY protocol header from an untrusted peer", kind="proxy_header_untrusted"
        )
    try:
        return proxy_protocol.parse(data)
    except proxy_protocol.ProxyHeaderError as exc:
        raise HttpError(400, f"bad PROXY protocol header: {exc}", kind="bad_proxy_header") from None


def _head_end(buf: bytearray, start: int) -> int:
    """The end of the request head that begins at ``start`` (after a PROXY header), -1
    while incomplete; 414/431 once ``MAX_HEAD`` bytes, the PROXY header's included, hold
    none."""
    end = handshake.head_end(buf[start:])
    if end != -1:
        return start + end
    if len(buf) >= handshake.MAX_HEAD:  # head_end saw fewer bytes when a header was cut off
        if b"\r\n" not in buf[start:]:
            raise HttpError(414, "request line too long")
        raise HttpError(431, "request headers too large")
    return -1


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _answer(sock: socket.socket, response: bytes) -> None:
    """Send a whole HTTP response, then a lingering close: FIN, and read until the client
    closes (bounded by ``LINGER``), so unread request bytes cannot turn the close into a
    reset that destroys the response before the client reads it."""
    with trio.move_on_after(LINGER):
        try:
            await _send_all(sock, response)
            sock.shutdown(socket.SHUT_WR)
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    if not sock.recv(65536):
                        return
                except BlockingIOError:
                    continue
        except OSError:
            return


def peer_of(address: Any) -> str:
    """A socket address as logs show it: ``host:port`` (``[v6]:port``); "" when unknown."""
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return ""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def host_of(peer: str) -> str:
    """The address part of ``peer_of``'s text (what per-address caps count)."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    return peer.rpartition(":")[0] or peer
