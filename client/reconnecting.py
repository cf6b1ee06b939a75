"""A trio client that keeps one server session alive across dropped connections.

It speaks the wire contract of ``docs/PROTOCOL.md``:

* every connection starts with ``welcome``; the client resumes its session with
  ``?resume=<token>&last_seq=<n>`` (the token rotates on every welcome);
* stream messages (those with ``seq``) are delivered to the application exactly once,
  in ``seq`` order: replayed duplicates (``seq <= last_seq``) are dropped;
* every message the application sends gets a ``cseq`` and stays in an outbox until the
  server acknowledges it (``welcome.last_cseq`` / ``heartbeat_ack.last_cseq``); after a
  resume the unacknowledged ones are re-sent, in order, before anything new;
* heartbeats every ``interval_ms / 2`` and client-side dead-server detection after
  ``interval_ms + timeout_ms`` of silence;
* reconnects with jittered exponential backoff (``core.backoff.Backoff``), at the time
  a ``server_shutdown`` asks for, later after 1013, and never after a terminal close;
* follows a cluster ``redirect`` (first message ``{"type":"redirect","url":URL}``, then
  close 4002) at once: no backoff, no retry counted, the client's own resume state in the
  query. At most ``MAX_REDIRECTS`` (5) in a row; see ``open_reconnecting_client``.

Usage::

    async with open_reconnecting_client("ws://127.0.0.1:8080/") as client:
        await client.send({"type": "say", "text": "hi"})
        async for event in client.events():
            if isinstance(event, Message):
                print(event.message)
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from core.backoff import Backoff, retry_after_hint
from core.close_codes import CloseCode, How, classify
from core.protocol import MSGPACK_SUBPROTOCOL

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
MIN_HEARTBEAT_PERIOD = 0.05  # seconds; bounds the heartbeat rate whatever the server says
# Redirects followed at once, in a row, without a welcome; the next one is a failed attempt.
MAX_REDIRECTS = 5
# Messages that are not part of the session stream and never reach the application.
_CONTROL_TYPES = frozenset({"welcome", "heartbeat_ack", "server_shutdown", "redirect"})
# Close codes that confirm a redirect (4002, or the link just ended after the message).
_REDIRECT_CLOSES = frozenset({None, CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.REDIRECT})
# HTTP statuses of a rejected upgrade that are worth retrying (others are terminal).
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


# ------------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class Connected:
    """A new session started (first connection, or the old session could not be
    resumed: then a ``SessionLost`` came just before). ``welcome`` is the raw message."""

    welcome: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resumed:
    """The session survived a reconnect. Every stream message missed while away follows
    as ``Message`` events (the wire has no end-of-replay marker, so the client cannot
    count them). ``replayed_count``: how many of this client's own unacknowledged
    messages (``cseq > welcome.last_cseq``) are being re-sent before anything new."""

    welcome: dict[str, Any]
    replayed_count: int

    @property
    def replay_gap(self) -> bool:
        """True when the server no longer had every missed message: the app will send a
        full-state snapshot, and ``seq`` jumps once."""
        return bool(self.welcome.get("replay_gap"))


@dataclass(frozen=True, slots=True)
class Message:
    """A server message for the application. Stream messages (with ``seq``) arrive
    exactly once and in ``seq`` order; messages without ``seq`` are passed through."""

    message: dict[str, Any]

    @property
    def seq(self) -> int | None:
        return self.message.get("seq")


@dataclass(frozen=True, slots=True)
class Away:
    """The connection dropped; the client is reconnecting. ``code`` is the close code
    (1006 when the link died without a close frame or the server went silent; ``None``
    when none applies).

    Only a welcomed connection's end is an ``Away``. A cluster ``redirect`` (close 4002)
    is part of connecting, not a drop, and emits no event: the client connects to the
    room's owner at once (``ReconnectingClient.redirects_followed`` counts them). A
    redirect loop cut by ``MAX_REDIRECTS`` is a failed attempt; when the retries run
    out the ``GaveUp`` reason says ``redirect loop``."""

    reason: str
    code: int | None


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The client stopped for good: a terminal close code, a session replaced by a newer
    connection (4000), a first message that is neither a good ``welcome`` nor a good
    ``redirect`` (a redirect URL that is not ``ws://`` or ``wss://`` with a host: reason
    ``bad redirect: …``, code 1002), or the retry budget ran out. ``events()`` ends
    after this."""

    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class SessionLost:
    """A resume came back with a new session (``resume_error``: ``"invalid"`` or
    ``"expired"``); the old session's state is gone. ``unacked`` holds the messages the
    server never acknowledged, without ``cseq``: the client does NOT re-send them to the
    new session (they referred to the old one); ``send`` them again if they still apply."""

    old_session: str
    resume_error: str
    unacked: tuple[dict[str, Any], ...] = ()


Event = Connected | Resumed | Message | Away | GaveUp | SessionLost


class StreamGapError(Exception):
    """A stream ``seq`` skipped ahead without ``replay_gap``: a server bug."""


class _BadFrame(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _BadRedirect(Exception):
    """A ``redirect`` message whose ``url`` the client cannot follow."""


# --------------------------------------------------------------------- internals
@dataclass(slots=True)
class _Ended:
    """Why one connection attempt or one connection ended."""

    reason: str
    code: int | None = None
    welcomed: bool = False
    terminal: bool = False
    overloaded: bool = False  # 1013: back off at least ``base``
    retry_after: float | None = None  # from a 1013 reason "retry_after_ms=N"
    reconnect_after: float | None = None  # from server_shutdown
    redirect: str | None = None  # redirected (4002): connect here next, at once

    def __post_init__(self) -> None:
        if self.code is not None:
            self.code = int(self.code)  # plain ints in events, not CloseCode/wsproto enums


@dataclass(slots=True)
class _Link:
    """One WebSocket connection and its per-connection state."""

    ws: WebSocketConnection | None = None
    binary: bool = False
    ready: bool = False  # welcome processed and link up: sends go out
    welcomed: bool = False  # a welcome arrived on this link (stays True after it ends)
    sent_upto: int = 0  # highest cseq written on this link
    last_inbound: float = 0.0
    silent_limit: float = math.inf
    dead: bool = False  # the watchdog gave up on a silent server
    shutdown: tuple[str, float] | None = None  # server_shutdown (reason, seconds)
    redirect: str | None = None  # the first message was a redirect to this URL
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def encode(self, message: dict[str, Any]) -> str | bytes:
        if self.binary:
            return msgspec.msgpack.encode(message)
        return msgspec.json.encode(message).decode()

    def decode(self, frame: str | bytes) -> Any:
        if self.binary != isinstance(frame, bytes):
            raise _BadFrame(CloseCode.UNSUPPORTED_DATA, "frame type does not match subprotocol")
        try:
            if self.binary:
                return msgspec.msgpack.decode(frame)
            return msgspec.json.decode(frame)
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            raise _BadFrame(CloseCode.INVALID_PAYLOAD, f"undecodable frame: {exc}") from None


class _HandshakeAborted(Exception):
    """The connection closed before the WebSocket handshake finished."""


class _ReaderWatch:
    """Stands in for the nursery ``connect_websocket_url`` starts its reader task in.

    trio-websocket waits for the handshake on an event that a connection reset during
    the handshake never sets; its reader task just ends. Raising when the reader ends
    before the handshake completed turns that hang into an immediate failure.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.opened = False

    def start_soon(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self._nursery.start_soon(self._watch, fn, *args)

    async def _watch(self, fn: Any, *args: Any) -> None:
        await fn(*args)
        # The reader is ``connection._reader_task``; if the server accepted and then
        # closed at once, the handshake did complete and the close code must win.
        handshake = getattr(getattr(fn, "__self__", None), "_open_handshake", None)
        completed = handshake.is_set() if isinstance(handshake, trio.Event) else False
        if not (self.opened or completed):
            raise _HandshakeAborted("connection closed during the WebSocket handshake")


_CONNECT_ERRORS = (
    HandshakeError,
    ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    _HandshakeAborted,
)
_SEND_ERRORS = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, _HandshakeAborted):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redirect_target(message: dict[str, Any]) -> str:
    """The ``url`` of a ``redirect`` message; ``_BadRedirect`` unless it is a ``ws://``
    or ``wss://`` URL with a host (and, if any, a valid port)."""
    url = message.get("url")
    if not isinstance(url, str):
        raise _BadRedirect(f"url is {url!r}, not a string")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        host = None
    else:
        if parts.scheme not in ("ws", "wss"):
            host = None
    if not host:
        raise _BadRedirect(f"url {url[:200]!r} is not ws:// or wss:// with a host")
    return url


def _where(url: str) -> str:
    """``url`` without its query (which may hold a resume token), for logs and reasons."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def _describe(code: int | None, reason: str | None) -> str:
    name = ""
    if code is not None:
        try:
            name = " " + CloseCode(code).name.lower()
        except ValueError:
            pass
    text = f"closed by server: {code}{name}"
    return f"{text} ({reason})" if reason else text


# ------------------------------------------------------------------------ client
class ReconnectingClient:
    """A session that survives reconnects. Create it with ``open_reconnecting_client``."""

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff,
        connect_timeout: float,
        subprotocol: str | None,
        heartbeat: bool,
        rng: random.Random | None,
    ) -> None:
        if subprotocol not in (None, MSGPACK_SUBPROTOCOL):
            raise ValueError(f"subprotocol must be None or {MSGPACK_SUBPROTOCOL!r}")
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be positive seconds")
        urlsplit(url)  # fail early on garbage
        self.url = url
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.subprotocol = subprotocol
        self.heartbeat = heartbeat
        self._rng = rng if rng is not None else random.Random()
        self._session: str | None = None
        self._token: str | None = None
        self._last_seq = 0
        self._allow_jump = False  # after a replay_gap welcome: the next seq may skip
        self._next_cseq = 1
        self._outbox: deque[tuple[int, dict[str, Any]]] = deque()
        self._send_lock = trio.Lock()
        self._link: _Link | None = None
        self._closing = False
        self._run_scope = trio.CancelScope()
        self._close_done = trio.Event()
        self._events_send, self._events_receive = trio.open_memory_channel[Event](math.inf)
        self._redirect: str | None = None  # where the next attempt goes, if redirected
        self._redirects = 0  # redirects followed in a row (no welcome, no wait between)
        self.duplicates_dropped = 0
        self.gaps = 0
        self.redirects_followed = 0

    # ----------------------------------------------------------------- public API
    @property
    def session(self) -> str | None:
        """The current session id (``None`` before the first welcome)."""
        return self._session

    @property
    def last_seq(self) -> int:
        """The highest stream ``seq`` delivered (0 before any, and for a new session)."""
        return self._last_seq

    @property
    def connected(self) -> bool:
        """True while a welcomed connection is up."""
        return self._link is not None and self._link.ready

    @property
    def outbox_size(self) -> int:
        """Messages sent (or queued) that the server has not acknowledged yet."""
        return len(self._outbox)

    def events(self) -> trio.MemoryReceiveChannel[Event]:
        """The event stream (one consumer): ``async for event in client.events()``.

        Unbounded, so the network is never held up by a slow consumer; an application
        that never reads events keeps them all in memory. Ends after ``GaveUp`` or
        ``close``.
        """
        return self._events_receive

    async def send(self, message: dict[str, Any]) -> int:
        """Send ``message`` (a dict with ``"type"``) and return the ``cseq`` it got.

        The message goes into the outbox first and stays there until the server
        acknowledges it, so it is never lost: when not connected it goes out right after
        the next (re)connect, and after a resume it is re-sent unless the server had
        processed it. When connected this waits until the frame is written (back-
        pressure). Raises ``trio.ClosedResourceError`` after ``close`` or ``GaveUp``.
        """
        if self._closing:
            raise trio.ClosedResourceError("the client is closed")
        if not isinstance(message, dict) or "type" not in message:
            raise TypeError("message must be a dict with a 'type'")
        cseq = self._next_cseq
        self._next_cseq += 1
        self._outbox.append((cseq, {**message, "cseq": cseq}))
        link = self._link
        if link is not None and link.ready:
            await self._flush(link)
        return cseq

    async def close(self) -> None:
        """Close with 1000 (the server ends the session at once) and stop reconnecting.

        Waits at most ``connect_timeout`` for the closing handshake. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        link = self._link
        try:
            if link is not None and link.ws is not None:
                with trio.move_on_after(self.connect_timeout):
                    await link.ws.aclose(CloseCode.NORMAL, "client closed")
                await trio.aclose_forcefully(link.ws)
        finally:
            self._close_done.set()
            self._run_scope.cancel()
            self._events_send.close()

    # ---------------------------------------------------------------- reconnecting
    async def _run(self) -> None:
        with self._run_scope:
            attempt = 0  # consecutive failed attempts since the last welcome
            while not self._closing:
                ended = await self._connect_once()
                if self._closing:
                    return
                if ended.redirect is not None:
                    self._redirects += 1
                    if self._redirects <= MAX_REDIRECTS:
                        # Not a failure: the room lives on another node. Go there now,
                        # without a backoff and without counting a retry.
                        self._redirect = ended.redirect
                        self.redirects_followed += 1
                        log.info(
                            "redirected to %s (%d in a row): connecting there now",
                            _where(ended.redirect),
                            self._redirects,
                        )
                        continue
                    ended = _Ended(
                        f"redirect loop: more than {MAX_REDIRECTS} redirects without a welcome"
                        f" (the last to {_where(ended.redirect)})",
                        ended.code,
                    )
                # Anything but a redirect (a welcomed link that ended, a failed attempt,
                # a cut redirect loop): the next attempt goes to the original URL (the
                # owner may have died; the load balancer knows the new one).
                self._redirect = None
                self._redirects = 0
                if ended.welcomed:
                    attempt = 0
                if ended.terminal:
                    self._give_up(ended.reason, ended.code)
                    return
                if ended.reconnect_after is not None:
                    delay = ended.reconnect_after
                else:
                    if self.backoff.exhausted(attempt):
                        self._give_up(
                            f"gave up after {attempt} retries; last: {ended.reason}", ended.code
                        )
                        return
                    if ended.overloaded:
                        delay = self.backoff.overloaded_delay(attempt, self._rng, ended.retry_after)
                    else:
                        delay = self.backoff.delay(attempt, self._rng)
                    attempt += 1
                if ended.welcomed:
                    self._emit(Away(ended.reason, ended.code))
                log.info("reconnecting in %.3f s (%s)", delay, ended.reason)
                await trio.sleep(delay)

    def _give_up(self, reason: str, code: int | None) -> None:
        log.warning("giving up: %s", reason)
        self._closing = True
        self._emit(GaveUp(reason, code))
        self._events_send.close()

    def _resume_url(self) -> str:
        """The URL of the next attempt: ``self.url`` (or, after a redirect, its target's
        scheme, host, port and path) with the client's own query and resume state: a
        redirect's query is never used, so a stale token in it cannot win."""
        if self._token is None and self._redirect is None:
            return self.url
        parts = urlsplit(self.url)
        if self._redirect is not None:
            target = urlsplit(self._redirect)
            parts = parts._replace(
                scheme=target.scheme, netloc=target.netloc, path=target.path or "/"
            )
        if self._token is None:
            return urlunsplit(parts)
        query = [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("resume", "last_seq")
        ]
        query += [("resume", self._token), ("last_seq", str(self._last_seq))]
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _connect_once(self) -> _Ended:
        link = _Link()
        ended = _Ended("connection ended")
        try:
            async with trio.open_nursery() as nursery:
                try:
                    ended = await self._drive(link, nursery)
                finally:
                    if self._closing and link.ws is not None:
                        # close() is doing the closing handshake; trio-websocket's reader
                        # task (in this nursery) must live to receive the server's answer.
                        with trio.move_on_after(self.connect_timeout):
                            await self._close_done.wait()
                    nursery.cancel_scope.cancel()
                    self._link = None
                    link.ready = False
                    if link.ws is not None:
                        await trio.aclose_forcefully(link.ws)
        except BaseExceptionGroup as group:
            matched, rest = group.split(_CONNECT_ERRORS)
            if matched is None or (rest is not None and rest.split(trio.Cancelled)[1]):
                raise
            ended = self._connect_failure(_first_leaf(matched), link)
        return ended

    def _connect_failure(self, exc: BaseException, link: _Link) -> _Ended:
        if isinstance(exc, ConnectionRejected):
            status = exc.status_code
            return _Ended(
                f"handshake rejected: HTTP {status}",
                terminal=status not in _RETRYABLE_STATUSES,
                overloaded=status in (429, 503),
            )
        if isinstance(exc, ConnectionClosed):
            return self._closed(exc, link)
        return _Ended(f"connect failed: {_error_text(exc)}", welcomed=link.welcomed)

    async def _drive(self, link: _Link, nursery: trio.Nursery) -> _Ended:
        url = self._resume_url()
        watch = _ReaderWatch(nursery)
        subprotocols = [self.subprotocol] if self.subprotocol else None
        deadline = trio.current_time() + self.connect_timeout
        try:
            with trio.fail_at(deadline):
                ws = await connect_websocket_url(watch, url, subprotocols=subprotocols)  # type: ignore[arg-type]
                watch.opened = True
                link.ws = ws
                link.binary = ws.subprotocol == MSGPACK_SUBPROTOCOL
                frame = await ws.get_message()
        except trio.TooSlowError:
            return _Ended(f"no welcome within {self.connect_timeout:g} s (connect timeout)")
        except ConnectionClosed as exc:
            return self._closed(exc, link)
        except (HandshakeError, OSError) as exc:
            return _Ended(f"connect failed: {_error_text(exc)}")
        try:
            welcome = link.decode(frame)
            if isinstance(welcome, dict) and welcome.get("type") == "redirect":
                link.redirect = _redirect_target(welcome)
            elif not (isinstance(welcome, dict) and welcome.get("type") == "welcome"):
                raise _BadFrame(CloseCode.PROTOCOL_ERROR, "first message is not a welcome")
            else:
                self._on_welcome(welcome, link)
        except _BadRedirect as exc:
            await self._close_bad(ws, CloseCode.PROTOCOL_ERROR, f"bad redirect: {exc}")
            return _Ended(f"bad redirect: {exc}", CloseCode.PROTOCOL_ERROR, terminal=True)
        except (_BadFrame, KeyError, TypeError, ValueError) as exc:
            code = exc.code if isinstance(exc, _BadFrame) else CloseCode.PROTOCOL_ERROR
            await self._close_bad(ws, code, f"bad welcome: {exc}")
            return _Ended(f"bad welcome: {exc}", code, terminal=True)
        if link.redirect is not None:
            return await self._redirected(link, ws, deadline)

        link.last_inbound = trio.current_time()
        link.welcomed = link.ready = True
        self._link = link
        heartbeat = welcome.get("heartbeat") or {}
        interval = heartbeat.get("interval_ms", 0) / 1000.0
        timeout = heartbeat.get("timeout_ms", 0) / 1000.0
        if self.heartbeat and interval > 0:
            link.silent_limit = interval + timeout
            nursery.start_soon(self._heartbeat_loop, link, max(MIN_HEARTBEAT_PERIOD, interval / 2))
            nursery.start_soon(self._watchdog, link)
        nursery.start_soon(self._flush, link)
        return await self._read_loop(link, ws)

    async def _redirected(self, link: _Link, ws: WebSocketConnection, deadline: float) -> _Ended:
        """After a ``redirect`` the server closes (4002) before the connect deadline; a
        further message is a protocol error (terminal), no close in time a failed
        attempt. ``_closed`` decides whether the close confirms the redirect."""
        assert link.redirect is not None
        try:
            with trio.fail_at(deadline):
                await ws.get_message()
        except trio.TooSlowError:
            return _Ended(
                f"redirected to {_where(link.redirect)} but not closed within "
                f"{self.connect_timeout:g} s (connect timeout)"
            )
        except ConnectionClosed as exc:
            return self._closed(exc, link)
        reason = "bad redirect: a message followed it"
        await self._close_bad(ws, CloseCode.PROTOCOL_ERROR, reason)
        return _Ended(reason, CloseCode.PROTOCOL_ERROR, terminal=True)

    async def _read_loop(self, link: _Link, ws: WebSocketConnection) -> _Ended:
        with link.scope:
            try:
                while True:
                    frame = await ws.get_message()
                    link.last_inbound = trio.current_time()
                    self._dispatch(link.decode(frame), link)
            except ConnectionClosed as exc:
                return self._closed(exc, link)
            except _BadFrame as exc:
                await self._close_bad(ws, exc.code, exc.reason)
                return _Ended(exc.reason, exc.code, welcomed=True, terminal=True)
        log.warning("server silent for %.3f s: aborting the connection", link.silent_limit)
        return _Ended(
            f"server silent for {link.silent_limit:g} s (heartbeat timeout)",
            CloseCode.ABNORMAL,
            welcomed=True,
        )

    async def _close_bad(self, ws: WebSocketConnection, code: int, reason: str) -> None:
        with trio.move_on_after(self.connect_timeout):
            await ws.aclose(code, reason.encode()[:120].decode(errors="ignore"))

    def _closed(self, exc: ConnectionClosed, link: _Link) -> _Ended:
        close = exc.reason
        code = int(close.code) if close is not None else None  # wsproto hands out an enum
        text = close.reason if close is not None else None
        welcomed = link.welcomed
        if link.redirect is not None and code in _REDIRECT_CLOSES:
            # Any other close after a redirect is the server's last word: classified below.
            where = _where(link.redirect)
            return _Ended(f"redirected to {where}", CloseCode.REDIRECT, redirect=link.redirect)
        if code in (None, CloseCode.ABNORMAL):
            reason = "connection lost"
            if link.shutdown is not None:  # told to come back later, then TCP ended
                reason = f"server shutdown: {link.shutdown[0]}"
                return _Ended(reason, code, welcomed, reconnect_after=link.shutdown[1])
            return _Ended(reason, code, welcomed)
        if code == CloseCode.SESSION_REPLACED:
            return _Ended(
                f"session replaced by a newer connection ({code})", code, welcomed, terminal=True
            )
        if not classify(code, How.SERVER_CLOSED).reconnect:
            return _Ended(_describe(code, text), code, welcomed, terminal=True)
        if link.shutdown is not None:
            reason = f"server shutdown: {link.shutdown[0]}"
            return _Ended(reason, code, welcomed, reconnect_after=link.shutdown[1])
        if code == CloseCode.TRY_AGAIN_LATER:
            return _Ended(
                _describe(code, text),
                code,
                welcomed,
                overloaded=True,
                retry_after=retry_after_hint(text),
            )
        return _Ended(_describe(code, text), code, welcomed)

    # ------------------------------------------------------------------- welcome
    def _on_welcome(self, welcome: dict[str, Any], link: _Link) -> None:
        session = str(welcome["session"])
        token = str(welcome["token"])
        last_cseq = int(welcome.get("last_cseq") or 0)
        old = self._session
        if welcome.get("resumed") and old is not None:
            if session != old:
                log.error("resumed welcome for session %s, expected %s", session, old)
            self._ack(last_cseq)
            link.sent_upto = last_cseq
            # Never number a new message at or below what the server already processed.
            self._next_cseq = max(self._next_cseq, last_cseq + 1)
            self._allow_jump = bool(welcome.get("replay_gap"))
            self._session, self._token = session, token
            self._emit(Resumed(welcome, len(self._outbox)))
            return
        if old is not None:
            unacked = tuple(
                {k: v for k, v in message.items() if k != "cseq"} for _, message in self._outbox
            )
            self._outbox.clear()
            self._next_cseq = 1
            error = str(welcome.get("resume_error") or "not_resumed")
            log.warning("session %s lost (%s); new session %s", old, error, session)
            self._emit(SessionLost(old, error, unacked))
        self._last_seq = 0
        self._allow_jump = False
        link.sent_upto = 0
        self._session, self._token = session, token
        self._emit(Connected(welcome))

    # ------------------------------------------------------------------- inbound
    def _dispatch(self, message: Any, link: _Link) -> None:
        if not isinstance(message, dict):
            raise _BadFrame(CloseCode.INVALID_PAYLOAD, "server message is not a map")
        kind = message.get("type")
        seq = message.get("seq")
        if kind == "heartbeat_ack":
            last_cseq = message.get("last_cseq")
            if isinstance(last_cseq, int):
                self._ack(last_cseq)
        elif kind == "server_shutdown":
            after = message.get("reconnect_after_ms")
            delay = max(0.0, after / 1000.0) if isinstance(after, int | float) else 0.0
            link.shutdown = (str(message.get("reason", "")), delay)
            log.info("server shutting down: reconnect in %.3f s", delay)
        elif kind in _CONTROL_TYPES:
            log.warning("unexpected %s message ignored", kind)
        elif isinstance(seq, int) and not isinstance(seq, bool):
            self._stream(message, seq)
        else:
            self._emit(Message(message))

    def _stream(self, message: dict[str, Any], seq: int) -> None:
        if seq <= self._last_seq:
            self.duplicates_dropped += 1
            log.debug("duplicate seq %d <= %d dropped", seq, self._last_seq)
            return
        if seq != self._last_seq + 1 and not self._allow_jump:
            # The server promised contiguous seqs: this is a server bug. Deliver anyway
            # (dropping would lose data too) but say so loudly.
            self.gaps += 1
            log.error(
                "stream gap: seq %d after %d (missing %d messages) on session %s",
                seq,
                self._last_seq,
                seq - self._last_seq - 1,
                self._session,
                exc_info=StreamGapError(f"seq {seq} after {self._last_seq}"),
            )
        self._allow_jump = False
        self._last_seq = seq
        self._emit(Message(message))

    def _emit(self, event: Event) -> None:
        try:
            self._events_send.send_nowait(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closed, or the application closed its receive side

    # ------------------------------------------------------------------ outbound
    def _ack(self, last_cseq: int) -> None:
        while self._outbox and self._outbox[0][0] <= last_cseq:
            self._outbox.popleft()

    async def _flush(self, link: _Link) -> None:
        """Write every outbox message this link has not written yet, in cseq order.

        Called by ``send`` and once per connection; the lock keeps re-sends ahead of new
        messages. A dead link leaves everything in the outbox for the next one.
        """
        try:
            async with self._send_lock:
                while link.ready and link.ws is not None and link.sent_upto < self._next_cseq - 1:
                    if not self._outbox:
                        break
                    first = self._outbox[0][0]
                    cseq = max(link.sent_upto + 1, first)
                    index = cseq - first  # cseqs in the outbox are contiguous
                    if index >= len(self._outbox):
                        break
                    await link.ws.send_message(link.encode(self._outbox[index][1]))
                    link.sent_upto = cseq
        except _SEND_ERRORS:
            pass  # the read loop sees the close and reconnects

    async def _heartbeat_loop(self, link: _Link, period: float) -> None:
        assert link.ws is not None
        while True:
            await trio.sleep(period)
            ts = round(trio.current_time() * 1000)
            try:
                await link.ws.send_message(link.encode({"type": "heartbeat", "ts": ts}))
            except _SEND_ERRORS:
                return

    async def _watchdog(self, link: _Link) -> None:
        """Abort the connection when nothing at all arrived for ``interval + timeout``."""
        while True:
            deadline = link.last_inbound + link.silent_limit
            if trio.current_time() >= deadline:
                link.dead = True
                link.scope.cancel()
                return
            await trio.sleep_until(deadline)


@asynccontextmanager
async def open_reconnecting_client(
    url: str,
    *,
    backoff: Backoff = Backoff(),  # noqa: B008 - frozen, safe to share
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    subprotocol: str | None = None,
    heartbeat: bool = True,
    rng: random.Random | None = None,
) -> AsyncIterator[ReconnectingClient]:
    """Run a ``ReconnectingClient`` for the duration of the ``async with`` block.

    ``url``: ``ws://HOST:PORT/`` or ``ws://HOST:PORT/rooms/<id>``; the client adds
    ``resume``/``last_seq`` itself when reconnecting.

    Cluster redirects: a connection whose first message is ``{"type":"redirect",
    "url":URL}`` and which then closes with 4002 (or just ends) is followed at once: no
    backoff, no retry counted, no event. The next attempt goes to URL's scheme, host,
    port and path with the client's own query and current ``resume``/``last_seq`` (the
    query in URL is ignored, so a stale token there cannot override a newer one). URL
    must be ``ws://`` or ``wss://`` with a host, else the client gives up (``GaveUp``,
    reason ``bad redirect: …``, code 1002); a message after the redirect also gives up.
    More than ``MAX_REDIRECTS`` (5) redirects without a welcome: the next one counts as
    a failed attempt (backoff and ``max_retries`` apply; reason ``redirect loop: …``).
    Any attempt that is not redirected (a welcome, a failure, a cut loop) makes the
    next one go to ``url`` again and restarts the count, so after a redirect target
    fails (its node may have died) the client backs off and asks ``url`` again.

    ``backoff`` (default ``Backoff()``: 1 s base, 30 s cap, 10 retries, full jitter):
    delays between reconnect attempts; the retry count restarts after every welcome.

    ``connect_timeout`` (default 10.0 s): bound on TCP connect + WebSocket handshake +
    ``welcome`` together; an attempt that takes longer counts as a failed attempt. Also
    bounds the closing handshake of ``close``.

    ``subprotocol`` (default ``None``: JSON text frames): ``"msgpack"`` offers msgpack
    binary frames; the format the server accepts is used.

    ``heartbeat`` (default ``True``): send ``heartbeat`` every ``interval_ms / 2`` of the
    welcome (at least 50 ms apart) and abort the connection when nothing arrives for
    ``interval_ms + timeout_ms``. Its acks also trim the outbox; with ``False`` the
    outbox is only trimmed by welcomes and a dead server is noticed only when TCP is.

    ``rng`` (default ``None``: a fresh ``random.Random()``): the jitter source; pass a
    seeded one for reproducible delays.

    The client connects in the background: the block starts at once, and ``send``
    queues until the first welcome. Leaving the block closes with 1000.
    """
    client = ReconnectingClient(
        url,
        backoff=backoff,
        connect_timeout=connect_timeout,
        subprotocol=subprotocol,
        heartbeat=heartbeat,
        rng=rng,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                await client.close()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            exc = group.exceptions[0]
            context = exc.__context__
            try:
                raise exc
            finally:
                exc.__context__ = context
                del exc, context
        raise
