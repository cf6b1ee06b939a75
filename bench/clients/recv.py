"""The ``recv`` mode: N lobby receivers that stamp each ``said``'s arrival (``bench broadcast``).

Connects ``--conns`` (welcome each) from ``--source``; stamps every ``said`` with
``time.monotonic()`` (one clock for every process of the machine) until a line on stdin or
``--seconds``. JSON lines: ``progress`` (connected so far) every 0.2 s while connecting,
``ready``, then ``result`` ``{"times": {k: [t, ...]}, "errors": ..., "cpu_s": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import select
import socket
import sys
import time

from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from lab.jsonproc import emit, raise_nofile
from lab.rawws import ServerFrames, client_frame, open_ws

TAG_BYTES = b"bcast-"  # a said's text is this tag + the say's number, found in the bytes
PROGRESS_S = 0.2
CLOSE_NORMAL = (1000).to_bytes(2, "big")


class _Conn:
    __slots__ = ("sock", "frames")

    def __init__(self, sock: socket.socket, frames: ServerFrames) -> None:
        self.sock = sock
        self.frames = frames


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60.0)


def run(a: argparse.Namespace) -> None:
    """Connect ``--conns`` (welcome each) from ``--source``; stamp every ``said`` until a
    line on stdin or ``--seconds``. JSON lines on stdout: ``progress`` (connected so far)
    every 0.2 s while connecting, ``ready``, then ``result`` ``{"times": {k: [t, ...]}}``."""
    raise_nofile()
    conns = []
    last = time.monotonic()
    for i in range(a.conns):
        sock, frames, _ = open_ws(a.host, a.port, source=a.source)
        conns.append(_Conn(sock, frames))
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            emit({"type": "progress", "connected": i + 1})
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin_fd = sys.stdin.fileno()
    ep.register(stdin_fd, select.EPOLLIN)
    emit({"type": "progress", "connected": len(conns)})
    emit({"type": "ready"})
    times: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + a.seconds
    now = time.monotonic
    running = True
    while running and now() < deadline:
        for fd, _ in ep.poll(0.5):
            if fd == stdin_fd:
                running = False
                break
            c = by_fd[fd]
            try:
                data = c.sock.recv(4096)  # small: a 64 KiB buffer costs more to allocate
            except OSError as exc:
                data = b""
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            t = now()
            if not data:
                errors["closed"] = errors.get("closed", 0) + 1
                ep.unregister(fd)
                continue
            # The common case, one whole small text frame per read, without the parser;
            # the tag is found in the bytes (no JSON decode): the receivers share the cores
            # with the server, so their cost per frame is part of every time measured.
            small = len(data) > 1 and data[0] == 0x81 and data[1] < 126
            if small and c.frames.idle and len(data) == 2 + data[1]:
                frames: list[tuple[int, bytes]] | tuple[tuple[int, bytes]] = ((OP_TEXT, data[2:]),)
            else:
                frames = c.frames.feed(data)
            for op, body in frames:
                if op == OP_TEXT:
                    at = body.find(TAG_BYTES)
                    if at >= 0:
                        start = at + len(TAG_BYTES)
                        key = body[start : body.find(b'"', start)].decode()
                        bucket = times.get(key)
                        if bucket is None:
                            times[key] = [t]
                        else:
                            bucket.append(t)
                elif op == OP_PING:
                    c.sock.sendall(client_frame(OP_PONG, body))
                elif op == OP_CLOSE:
                    errors["close_frame"] = errors.get("close_frame", 0) + 1
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    close = client_frame(OP_CLOSE, CLOSE_NORMAL)  # a clean 1000, not a dropped connection
    for c in conns:
        with contextlib.suppress(OSError):
            c.sock.send(close)
            c.sock.close()
    emit(
        {
            "type": "result",
            "times": times,
            "errors": errors,
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        }
    )
