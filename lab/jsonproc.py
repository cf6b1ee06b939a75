"""The JSON-lines protocol between a scenario and its load processes.

A load process prints one JSON object a line on stdout (``emit``) and reads command lines
(``stats``, ``close``, ...) on stdin (``StdinCommands``, inside its epoll loop); the parent
holds it as a ``JsonProcess``. Every load process is bounded in time and killed by pid
if it does not exit when told.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ====================================================================== the child's side
def emit(message: dict[str, Any]) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    """Soft open-files limit up to the hard one (a load child holds thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StdinCommands:
    """The parent's command lines on a load child's stdin, read in the child's epoll loop:
    ``fd`` is registered in ``ep``; ``read`` (when it is ready) returns the whole lines
    that came, or None once the parent closed stdin."""

    def __init__(self, ep: select.epoll) -> None:
        self.fd = sys.stdin.fileno()
        os.set_blocking(self.fd, False)
        ep.register(self.fd, select.EPOLLIN)
        self._buf = b""

    def read(self) -> list[str] | None:
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        return [line.decode() for line in lines]

    def dispatch(self, command: Callable[[str], bool]) -> bool:
        """Hand every line that came to ``command``; False once the parent closed stdin or
        a command returned False (time to stop)."""
        lines = self.read()
        if lines is None:
            return False
        return all([command(line) for line in lines])  # every line, even after a stop


# ====================================================================== the parent's side
class JsonProcess:
    """A load subprocess that prints JSON lines on stdout and takes commands on stdin.

    ``messages`` fills from a reader thread; ``expect`` waits for one type (dropping the
    others), ``pending`` takes what has come without waiting. ``stop`` asks it to close
    (``close`` on stdin, then EOF) and kills it by pid if it does not exit.
    """

    def __init__(self, cmd: list[str]) -> None:
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                self.messages.put(json.loads(raw))
            except ValueError:
                print(f"[child {self.pid}] {raw.decode(errors='replace').rstrip()}")
        self.messages.put({"type": "eof"})

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def pending(self) -> list[dict[str, Any]]:
        """Every message received and not yet taken, without waiting."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.messages.get_nowait())
        return out

    def expect(self, type_: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"child {self.pid}: no {type_!r} within {timeout:g} s")
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if message.get("type") == type_:
                return message
            if message.get("type") == "eof":
                raise RuntimeError(f"child {self.pid} exited before sending {type_!r}")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask it to close its sockets and exit; SIGCONT + SIGKILL if it does not (a
        SIGSTOPped zombie cannot exit)."""
        if self.process.poll() is None:
            self.send("close")
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._thread.join(timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
                os.kill(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
