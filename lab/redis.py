"""A real ``redis-server`` for cluster tests and scenarios: a free port on 127.0.0.1, a
temporary directory, killed by pid at the end.

``open_redis()`` starts it (``appendonly=True``: AOF with ``appendfsync always``, the
durability the README promises) and waits until it answers ``PING`` on a real
connection; ``RedisServer.kill()`` is a SIGKILL (a crash), ``restart()`` starts it again
on the same port and directory (with AOF, its data comes back).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from lab.rawws import first_line

REDIS_SERVER = "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick; may be taken by the
    time it is used, which on a test machine it is not in practice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def redis_available() -> str | None:
    """Why Redis tests cannot run here, or None."""
    if shutil.which(REDIS_SERVER) is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import coredis  # noqa: F401
    except ImportError:
        return "coredis is not installed (pip install -e '.[cluster]')"
    return None


class RedisServer:
    def __init__(self, appendonly: bool) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ws-redis-")
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dir", self.dir, "--save", "", "--protected-mode", "no"]
        if self.appendonly:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    async def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with trio.fail_after(10):
            while not await self._pong():
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                await trio.sleep(0.02)

    async def _pong(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            with trio.move_on_after(1):
                return (await stream.receive_some(64)).startswith(b"+PONG")
        return False

    async def query(self, *args: str) -> bytes:
        """One command over a fresh connection (RESP); the raw first reply line, e.g.
        ``b":1"`` - for tests that look at what the cluster keeps."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return await first_line(self.port, b"".join(parts), timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash; waits for the pid to be reaped."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def restart(self) -> None:
        self.kill()
        await self.start()


@asynccontextmanager
async def open_redis(appendonly: bool = False) -> AsyncIterator[RedisServer]:
    server = RedisServer(appendonly)
    try:
        await server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)
