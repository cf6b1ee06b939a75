"""The ``pool`` mode: thousands of idle clients in one epoll loop (``bench idle``, ``zombie``).

Normal clients answer every ping with a pong, read and drop every other frame, and answer
a close frame; ``--mute`` ones (zombies that keep TCP open) go silent after one echo.
Prints ``progress`` while connecting, ``connected`` once every connection is up or has
failed, ``stats`` for each ``stats`` line on stdin, and ``final`` at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import select
import socket
import time
from typing import Any

from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, VIOLATION
from lab.jsonproc import StdinCommands, emit, raise_nofile
from lab.rawws import (
    ServerFrames,
    client_frame,
    close_reply,
    handshake_request,
    new_socket,
    text_frame,
)


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=64, help="upgrades in flight")
    p.add_argument(
        "--connect-rate", type=float, default=0.0, help="connections started per s (0: no pace)"
    )
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--mute", action="store_true", help="zombies: silent after one echo")
    p.add_argument("--sessions", action="store_true", help="report open session ids")


def run(a: argparse.Namespace) -> None:
    Pool(a).run()


_CONNECTING, _UPGRADING, _WELCOME, _ECHO_WAIT, _OPEN, _MUTE, _CLOSED = range(7)


class _Conn:
    __slots__ = ("sock", "fd", "state", "head", "decoder", "out", "started", "session", "last")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _CONNECTING
        self.head = b""
        self.decoder = ServerFrames()
        self.out = b""
        self.started = started
        self.session = ""
        self.last = 0.0  # time.time() right after the last frame this client sent


class Pool:
    """Thousands of idle clients in one epoll loop.

    Normal clients answer every ping with a pong, read and drop every other frame, and
    answer a close frame. ``mute`` clients (zombies that keep TCP open) send one echo after
    the welcome, wait for its answer, then are never read or written again.

    Connections are opened at most ``--concurrency`` at a time (TCP connect + upgrade +
    welcome in flight) and, with ``--connect-rate`` R > 0, started at most R per second
    (a steady pace: a burst of SYNs would overflow the listen backlog and turn into
    1-3 s SYN retransmits).
    """

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        raise_nofile()
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.connecting: set[_Conn] = set()  # the ones the connect timeout applies to
        self.to_open = a.count
        self.started = 0
        self.in_flight = 0
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.pings = 0
        self.frames = 0
        self.bytes = 0
        self.request = handshake_request(a.host, a.port)
        self.reported = False
        self.zombies: list[dict[str, Any]] = []
        # said frames per text tag (its first 6 characters): [count, first, last] wall time
        self.said: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ bookkeeping
    def stats(self, type_: str = "stats") -> dict[str, Any]:
        open_ = sum(1 for c in self.conns.values() if c.state in (_OPEN, _MUTE))
        message: dict[str, Any] = {
            "type": type_,
            "ok": self.ok,
            "failed": self.failed,
            "open": open_,
            "closed": self.closed,
            "pings": self.pings,
            "frames": self.frames,
            "bytes": self.bytes,
            "said": self.said,
            "t": time.time(),
        }
        if self.a.sessions:
            message["sessions"] = [c.session for c in self.conns.values() if c.state == _OPEN]
        return message

    def _fail(self, conn: _Conn, why: str) -> None:
        self.failed[why] = self.failed.get(why, 0) + 1
        self.in_flight -= 1
        self.connecting.discard(conn)
        self._drop(conn)

    def _lost(self, conn: _Conn, why: str) -> None:
        if conn.state < _OPEN and conn.state != _CLOSED:
            self._fail(conn, why)
            return
        self.closed[why] = self.closed.get(why, 0) + 1
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn.state != _MUTE:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.ep.unregister(conn.fd)
        conn.state = _CLOSED
        self.conns.pop(conn.fd, None)
        conn.sock.close()

    def _open_one(self) -> None:
        self.to_open -= 1
        self.started += 1
        self.in_flight += 1
        try:
            sock = new_socket(self.a.source)
            sock.setblocking(False)
        except OSError as exc:
            self.failed[_errname(exc)] = self.failed.get(_errname(exc), 0) + 1
            self.in_flight -= 1
            return
        conn = _Conn(sock, time.monotonic())
        err = sock.connect_ex((self.a.host, self.a.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            why = errno.errorcode.get(err, str(err))
            self.failed[why] = self.failed.get(why, 0) + 1
            self.in_flight -= 1
            return
        self.conns[conn.fd] = conn
        self.connecting.add(conn)
        self.ep.register(conn.fd, select.EPOLLOUT)

    def _send(self, conn: _Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(conn, _errname(exc))
            return
        if sent < len(data):
            conn.out = data[sent:]
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    # ------------------------------------------------------------------ events
    def _writable(self, conn: _Conn) -> None:
        if conn.state == _CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, errno.errorcode.get(err, str(err)))
                return
            conn.state = _UPGRADING
            self.ep.modify(conn.fd, select.EPOLLIN)
            self._send(conn, self.request)
            return
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(conn, _errname(exc))
                return
            conn.out = conn.out[sent:]
        if not conn.out:
            self.ep.modify(conn.fd, select.EPOLLIN)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(conn, _errname(exc))
            return
        if not data:
            self._lost(conn, "eof")
            return
        self.bytes += len(data)
        if conn.state == _UPGRADING:
            data = conn.head + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                conn.head = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self._fail(conn, "upgrade refused")
                return
            conn.head = b""
            conn.state = _WELCOME
            data = data[end + 4 :]
            if not data:
                return
        for opcode, payload in conn.decoder.feed(data):
            self.frames += 1
            if opcode == OP_PING:
                self.pings += 1
                self._send(conn, client_frame(OP_PONG, payload))
                conn.last = time.time()
            elif opcode == OP_CLOSE:
                code = payload[0]
                self._send(conn, close_reply(code))
                self._lost(conn, f"close {code}")
                return
            elif opcode == VIOLATION:
                self._lost(conn, f"violation {payload[0]}")
                return
            elif conn.state == _OPEN and payload.startswith(b'{"type":"said"'):
                at = payload.find(b'"text":"')
                tag = payload[at + 8 : at + 14].decode()
                entry = self.said.get(tag)
                now = time.time()
                if entry is None:
                    self.said[tag] = [1, now, now]
                else:
                    entry[0] += 1
                    entry[2] = now
            elif conn.state == _WELCOME and opcode == OP_TEXT:
                conn.session = json.loads(payload)["session"]
                if self.a.mute:
                    conn.state = _ECHO_WAIT
                    self._send(conn, text_frame({"type": "echo", "data": "last words"}))
                    conn.last = time.time()
                else:
                    conn.state = _OPEN
                    self.ok += 1
                    self.in_flight -= 1
                    self.connecting.discard(conn)
            elif conn.state == _ECHO_WAIT and payload.startswith(b'{"type":"echo"'):
                # The zombie's last frame was answered: from now on it is silent.
                self.ep.unregister(conn.fd)
                conn.state = _MUTE
                self.ok += 1
                self.in_flight -= 1
                self.connecting.discard(conn)
                self.zombies.append(
                    {"session": conn.session, "last_send": conn.last, "kind": "mute"}
                )
                return
            if conn.state == _CLOSED:
                return

    def _handle_command(self, line: str) -> bool:
        command = line.strip()
        if command == "stats":
            emit(self.stats())
        elif command in ("close", ""):
            return False
        return True

    # ------------------------------------------------------------------ loop
    def _allowed(self, now: float, t0: float) -> int:
        """How many more connections may be started now (concurrency and pace)."""
        room = min(self.to_open, self.a.concurrency - self.in_flight)
        if self.a.connect_rate > 0:
            room = min(room, int((now - t0) * self.a.connect_rate) + 1 - self.started)
        return room

    def run(self) -> None:
        a = self.a
        t0 = time.monotonic()
        stop_at = t0 + a.max_seconds
        stdin = StdinCommands(self.ep)
        next_sweep = t0 + 1.0
        running = True
        while running and time.monotonic() < stop_at:
            for _ in range(max(0, self._allowed(time.monotonic(), t0))):
                self._open_one()
            # While paced, wake often enough to keep the pace; idle, twice a second.
            timeout = 0.005 if self.to_open > 0 and a.connect_rate > 0 else 0.5
            for fd, ev in self.ep.poll(timeout):
                if fd == stdin.fd:
                    running = stdin.dispatch(self._handle_command)
                    continue
                conn = self.conns.get(fd)
                if conn is None or conn.state in (_CLOSED, _MUTE):
                    continue
                if ev & select.EPOLLOUT:
                    self._writable(conn)
                    if conn.state == _CLOSED:
                        continue
                if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    self._readable(conn)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                if not self.reported:  # for a progress bar while connecting
                    emit({"type": "progress", "ok": self.ok, "failed": sum(self.failed.values())})
                for conn in list(self.connecting):
                    if conn.state < _OPEN and now - conn.started > a.connect_timeout:
                        self._fail(conn, "timeout")
            if not self.reported and self.to_open == 0 and self.in_flight == 0:
                self.reported = True
                message = self.stats("connected")
                if self.zombies:
                    message["zombies"] = self.zombies
                emit(message)
        emit(self.stats("final"))
        for conn in list(self.conns.values()):
            conn.sock.close()


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
