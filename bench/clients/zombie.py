"""The ``zombie`` mode: one client that goes silent; the parent SIGSTOPs it (``bench zombie``)."""

from __future__ import annotations

import argparse
import time

from core.ws_codec import OP_TEXT
from lab.jsonproc import emit
from lab.rawws import open_ws, text_frame


def arguments(p: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(a: argparse.Namespace) -> None:
    """Connect, read the welcome, send one echo and read its answer, then go silent.

    The parent SIGSTOPs this process once it printed its line, so TCP stays open (the
    kernel still ACKs) but nothing is ever answered. Bounded by ``--max-seconds``.
    """
    sock, frames, welcome = open_ws(a.host, a.port, source=a.source, timeout=10.0)
    sock.sendall(text_frame({"type": "echo", "data": "last words"}))
    last_send = time.time()
    deadline = time.monotonic() + 10
    answered = False
    while not answered and time.monotonic() < deadline:
        for opcode, payload in frames.feed(sock.recv(4096)):
            if opcode == OP_TEXT and payload.startswith(b'{"type":"echo"'):
                answered = True
    emit(
        {
            "type": "zombie",
            "session": welcome["session"],
            "last_send": last_send,
            "answered": answered,
            "kind": "stopped",
        }
    )
    time.sleep(a.max_seconds)
    sock.close()
