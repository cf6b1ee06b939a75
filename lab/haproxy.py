"""A real HAProxy (Debian's ``haproxy``) in front of test servers: its config in a
temporary directory, its frontend on a free port of 127.0.0.1, killed by pid at the end.

``run_haproxy`` yields a ``HAProxy`` whose ``wait_for_line`` awaits what it prints - each
health check that changes a server's state (``option log-health-checks``: "Health check
for server nodes/a succeeded", the sign that the frontend listens and the server passed
its first check); ``open_haproxy`` is the same, yielding only the players' URL.
``server_options`` go on every ``server`` line (e.g. ``send-proxy-v2``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from lab.redis import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

CONFIG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout check 1s
    option redispatch
    option forwardfor
    option log-health-checks
    retries 2
frontend game
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""


def haproxy_available() -> str | None:
    """Why HAProxy tests cannot run here, or None."""
    if not os.access(HAPROXY, os.X_OK):
        return "haproxy is not installed (apt-get install haproxy)"
    return None


class HAProxy:
    """A running HAProxy: where players connect, and the lines it printed."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_line(self, text: str, timeout: float = 20.0) -> str:
        """The first line printed (ever) that contains ``text``."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                await self._changed.wait()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        buf = b""
        async for chunk in stream:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.add(line.decode(errors="replace"))


@asynccontextmanager
async def run_haproxy(backends: dict[str, int], server_options: str = "") -> AsyncIterator[HAProxy]:
    """HAProxy in front of ``backends`` (name -> port on 127.0.0.1), each checked with
    ``GET /healthz``. Killed by pid at the end."""
    front = free_port()
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{port} check {server_options}".rstrip()
        for name, port in backends.items()
    )
    workdir = tempfile.mkdtemp(prefix="ws-haproxy-")
    config = os.path.join(workdir, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=front, servers=servers))
    process = await trio.lowlevel.open_process(
        [HAPROXY, "-f", config, "-db"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    haproxy = HAProxy(process, front)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(haproxy.pump, process.stderr)
            try:
                yield haproxy
            finally:
                nursery.cancel_scope.cancel()
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def open_haproxy(backends: dict[str, int], server_options: str = "") -> AsyncIterator[str]:
    """``run_haproxy``, yielding only the players' URL."""
    async with run_haproxy(backends, server_options) as haproxy:
        yield haproxy.url
