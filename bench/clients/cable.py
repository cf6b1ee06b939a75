"""The ``cable`` mode: well-behaved clients in a network namespace until pulled (``bench zombie``).

Run as ``ip netns exec NS python -m bench.clients cable --host H --port P --count N
[--control 1]`` (``bench._cable.CableClients``): N + control raw-socket clients that read
everything and answer every ping until told on stdin ``pull K``: client K then sends one
last ``echo``, prints ``{"type": "last", "port": ..., "last_send": ...}`` and never reads
or writes again; the parent cuts its port. ``stats`` prints the control clients' state
(they are never cut and must stay open); ``close`` or the end of stdin makes it close
everything and exit; it exits by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import time
from typing import Any

from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG
from lab.jsonproc import StdinCommands, emit
from lab.rawws import client_frame, close_reply, open_ws, text_frame


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=5, help="clients to pull, one by one")
    p.add_argument("--control", type=int, default=1, help="clients never pulled")


def run(a: argparse.Namespace) -> None:
    """Well-behaved clients until pulled; see the module docstring."""
    conns: list[dict[str, Any]] = []
    for index in range(a.count + a.control):
        sock, frames, welcome = open_ws(a.host, a.port, timeout=10.0)
        sock.setblocking(False)
        conns.append(
            {
                "index": index,
                "sock": sock,
                "frames": frames,
                "session": welcome["session"],
                "port": sock.getsockname()[1],
                "state": "open",  # open -> pulled | closed
                "control": index >= a.count,
            }
        )
    emit(
        {
            "type": "connected",
            "clients": [
                {"index": c["index"], "session": c["session"], "port": c["port"]}
                for c in conns
                if not c["control"]
            ],
            "control": [c["session"] for c in conns if c["control"]],
        }
    )
    ep = select.epoll()
    by_fd = {c["sock"].fileno(): c for c in conns}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin = StdinCommands(ep)
    counts: dict[str, Any] = {"pings": 0, "closed": {}}

    def drop(c: dict[str, Any], why: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(c["sock"].fileno())
        if c["state"] == "open":
            counts["closed"][why] = counts["closed"].get(why, 0) + 1
        c["state"] = "closed"
        c["sock"].close()

    def pull(index: int) -> None:
        c = conns[index]
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(c["sock"].fileno())  # never read (so never answered) again
        c["sock"].send(text_frame({"type": "echo", "data": "last words"}))
        last_send = time.time()
        c["state"] = "pulled"
        emit(
            {
                "type": "last",
                "index": index,
                "session": c["session"],
                "port": c["port"],
                "last_send": last_send,
            }
        )

    def command(line: str) -> bool:
        words = line.split()
        if not words or words[0] == "close":
            return False
        if words[0] == "pull":
            pull(int(words[1]))
        elif words[0] == "stats":
            control = [c for c in conns if c["control"]]
            emit(
                {
                    "type": "stats",
                    "control": len(control),
                    "open": sum(1 for c in control if c["state"] == "open"),
                    "pings": counts["pings"],
                    "closed": counts["closed"],
                }
            )
        return True

    stop_at = time.monotonic() + a.max_seconds
    running = True
    while running and time.monotonic() < stop_at:
        for fd, _ev in ep.poll(0.5):
            if fd == stdin.fd:
                running = stdin.dispatch(command)
                continue
            c = by_fd.get(fd)
            if c is None or c["state"] != "open":
                continue
            try:
                data = c["sock"].recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                drop(c, type(exc).__name__)
                continue
            if not data:
                drop(c, "eof")
                continue
            for opcode, payload in c["frames"].feed(data):
                if opcode == OP_PING:
                    counts["pings"] += 1
                    with contextlib.suppress(OSError):
                        c["sock"].send(client_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    code = payload[0]
                    with contextlib.suppress(OSError):
                        c["sock"].send(close_reply(code))
                    drop(c, f"close {code}")
                    break
    for c in conns:
        with contextlib.suppress(OSError):
            c["sock"].close()
