"""The supervisor's control socket: ``python -m supervisor status|reload|drain|top``.

A Unix stream socket (``--control-socket``, default ``.ws-supervisor.sock`` in the working
directory, mode 0600). A request is one line (``status``, ``reload``, ``drain``, or
``history [SINCE]`` - the dashboard's samples after unix time SINCE, what ``top`` polls);
the answer is one JSON line, then the connection closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from core.history import parse_since
from shards.log import log

MAX_REQUEST = 64


def bind(path: str) -> socket.socket:
    """Bind the control socket; a stale file from a dead supervisor is replaced, a live
    supervisor's socket is not."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        raise OSError(f"another supervisor answers on {path}; pass another --control-socket")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(16)
    return sock


async def serve(
    sock: socket.socket,
    status: Callable[[], dict[str, Any]],
    reload: Callable[[], dict[str, Any]],
    drain: Callable[[], dict[str, Any]] | None = None,
    history: Callable[[float | None], bytes] | None = None,
) -> None:
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(5):
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = await stream.receive_some(MAX_REQUEST)
                    if not chunk:
                        break
                    data += chunk
            command = data.split(b"\n", 1)[0].strip().decode(errors="replace")
            name, _, argument = command.partition(" ")
            if name == "history" and history is not None:
                try:
                    since = parse_since(argument) if argument.strip() else None
                    answer = history(since) + b"\n"
                except ValueError:
                    answer = b'{"error": "history takes a unix time or nothing"}\n'
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(answer)
                return  # polled every second by `top`: not logged
            if command == "status":
                reply = status()
            elif command == "reload":
                reply = reload()
            elif command == "drain" and drain is not None:
                reply = drain()
            else:
                reply = {
                    "error": f"unknown command {command!r}; use status, reload, drain or history"
                }
            log("control_command", command=command[:20])
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    await trio.serve_listeners(answer, [listener])


def request(path: str, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Client side (blocking): send one command, return the JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def format_status(status: dict[str, Any]) -> str:
    rows = [("shard", "pid", "gen", "state", "conns", "sessions", "rooms", "uptime_s")]
    for s in status.get("shards", []):
        rows.append(
            tuple(
                str(s.get(k, "-"))
                for k in (
                    "shard",
                    "pid",
                    "generation",
                    "state",
                    "connections",
                    "sessions",
                    "rooms",
                    "uptime_s",
                )
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = (
        f"supervisor pid {status.get('pid')} port {status.get('port')} "
        f"rolling={status.get('rolling')} stopping={status.get('stopping')}"
    )
    cluster = status.get("cluster")
    if cluster:
        head += (
            f"\ncluster node {cluster['node']} ({cluster['public_url']}) redis {cluster['redis']}"
            f" reachable={cluster['reachable']} rtt_ms={cluster['rtt_ms']}"
            f" lease_s={cluster['lease_s']} fenced={cluster['fenced']}"
        )
        for m in cluster.get("members", []):
            head += (
                f"\n  node {m['node']} {m['url'] or '-'} alive={m['alive']}"
                f" lease_ms={m['lease_ms']} rooms={m['rooms']}"
            )
    return "\n".join([head, *lines])
