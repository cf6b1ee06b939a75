"""A ``python -m supervisor`` tree under test: start it, read its log, kill it by pid.

The supervisor is started with ``--port 0`` and its own control socket (so two runs, or a
run and the tests, can share the machine); the port comes from its ``ready`` line and
each shard's pid from ``event=shard_spawn ... pid=P``. Every pid started or reported is
killed at the end (``kill_tree``: one abrupt crash). Two drivers, one for each kind of
caller: ``open_server`` (trio, for tests and the trio scenarios) reads the log in a task;
``Server`` (blocking, for the load scenarios) reads it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from core.logfmt import matches, parse
from lab.procfs import cmdline_has, pid_alive

ROOT = Path(__file__).resolve().parent.parent
# Where the load lab runs the server from (``python -m supervisor`` with it as the working
# directory, so its packages win over the installed ones): by default this checkout; set
# BENCH_SERVER_ROOT to benchmark another tree, e.g. a ``git archive`` export.
SERVER_ROOT = Path(os.environ.get("BENCH_SERVER_ROOT") or ROOT)

Predicate = Callable[[dict[str, str]], bool] | None


def supervisor_command(
    *args: str, shards: int, host: str = "127.0.0.1", control_socket: str | None = None
) -> list[str]:
    """``python -m supervisor`` on a free port of ``host`` (and its own control socket,
    unless ``args`` names one)."""
    cmd = [sys.executable, "-m", "supervisor", "--host", host, "--port", "0"]
    cmd += ["--shards", str(shards), *args]
    if control_socket and "--control-socket" not in args:
        cmd += ["--control-socket", control_socket]
    return cmd


def kill_tree(supervisor: int | None, pids: Iterable[int]) -> None:
    """SIGKILL a supervisor and every shard it spawned (``pids``), as one abrupt crash.

    The supervisor is SIGSTOPped first: were a shard killed while it still ran, it would
    log ``shard_exit`` and respawn the shard (a process outside ``pids``); were it killed
    first, its shards would see the control socket close and drain politely. ``None``:
    the supervisor has been reaped already (its pid may be another process' by now)."""
    if supervisor is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGSTOP)
    for pid in pids:
        if pid != supervisor and pid_alive(pid) and cmdline_has(pid, b"shards"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if supervisor is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGKILL)


class LogLines:
    """A server's stderr lines: every one raw, the logfmt ones parsed."""

    def __init__(self) -> None:
        self.lines: list[dict[str, str]] = []
        self.raw: list[str] = []

    def add(self, raw: str) -> None:
        self.raw.append(raw)
        fields = parse(raw)
        if fields:
            self.lines.append(fields)
        self.changed()

    def changed(self) -> None:
        """Called after every line (a subclass wakes its waiters)."""

    def events(self, event: str, after: int = 0, **match: Any) -> list[dict[str, str]]:
        return [f for f in self.lines[after:] if matches(f, event, **match)]

    def scan(
        self, start: int, event: str, predicate: Predicate, match: Any
    ) -> tuple[dict[str, str] | None, int]:
        """(the first line from index ``start`` that fits, or None; the index to go on from)."""
        i = start
        while i < len(self.lines):
            f = self.lines[i]
            i += 1
            if matches(f, event, **match) and (predicate is None or predicate(f)):
                return f, i
        return None, i

    def shard_pids(self) -> dict[int, int]:
        """Latest pid of each shard index, from ``event=shard_spawn``."""
        return {int(f["shard"]): int(f["pid"]) for f in self.events("shard_spawn")}

    def spawned(self) -> list[int]:
        """Every shard pid ever spawned, in order."""
        return [int(f["pid"]) for f in self.events("shard_spawn")]


# ====================================================================== trio
class TrioLog(LogLines):
    """Log lines with an awaitable ``wait_for``."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(
        self,
        event: str,
        predicate: Predicate = None,
        *,
        timeout: float = 20.0,
        after: int = 0,
        **match: Any,
    ) -> dict[str, str]:
        """The first line (from index ``after``) with this event, fields and predicate."""
        with trio.fail_after(timeout):
            i = after
            while True:
                found, i = self.scan(i, event, predicate, match)
                if found is not None:
                    return found
                await self._changed.wait()


class ServerProcess:
    """A running ``python -m supervisor`` (trio) and what it has logged."""

    def __init__(self, process: trio.Process, log: TrioLog) -> None:
        self.process = process
        self.log = log
        self.port = 0
        self.host = "127.0.0.1"
        self.control_socket = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def shard_pids(self) -> dict[int, int]:
        """Current pid of each shard index (latest spawn wins)."""
        return self.log.shard_pids()

    def all_pids(self) -> set[int]:
        return {self.pid, *self.log.spawned()}

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    async def command(self, *args: str) -> str:
        """``python -m supervisor <args>`` against this supervisor's control socket."""
        cmd = [sys.executable, "-m", "supervisor", *args, "--control-socket", self.control_socket]

        def run() -> str:
            return subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
            ).stdout

        return await trio.to_thread.run_sync(run)


async def _pump(stream: trio.abc.ReceiveStream, log: LogLines, echo: bool) -> None:
    buf = b""
    async for chunk in stream:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if echo:
                print(text, file=sys.stderr)
            log.add(text)


async def _wait_ready(process: trio.Process, log: TrioLog) -> int:
    """The port from the ``ready`` line; fail at once if the supervisor exits first."""
    port = 0

    async def ready(cancel: trio.CancelScope) -> None:
        nonlocal port
        port = int((await log.wait_for("ready", timeout=60))["port"])
        cancel.cancel()

    async def died(cancel: trio.CancelScope) -> None:
        code = await process.wait()
        raise AssertionError(f"supervisor exited with {code} before it was ready")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ready, nursery.cancel_scope)
        nursery.start_soon(died, nursery.cancel_scope)
    return port


@asynccontextmanager
async def open_server(
    *args: str, shards: int = 2, ready: bool = True, echo_logs: bool = True, root: Path = ROOT
) -> AsyncIterator[ServerProcess]:
    """Start the supervisor (from the source tree ``root``) with ``--port 0``; kill exactly
    its processes on the way out."""
    control = tempfile.mkdtemp(prefix="ws-test-") + "/supervisor.sock"
    cmd = supervisor_command(*args, shards=shards, control_socket=control)
    log = TrioLog()
    process = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root
    )
    server = ServerProcess(process, log)
    server.control_socket = control
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(_pump, process.stderr, log, echo_logs)
            if ready:
                server.port = await _wait_ready(process, log)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        kill_tree(process.pid if process.returncode is None else None, log.spawned())
        with trio.move_on_after(10):
            await process.wait()


# ====================================================================== blocking
class Server:
    """A running ``python -m supervisor`` whose log a thread reads (for blocking callers)."""

    def __init__(self, *args: str, shards: int = 1, host: str = "127.0.0.1") -> None:
        self.host = host
        self._dir = tempfile.mkdtemp(prefix="bench-supervisor-")
        control = os.path.join(self._dir, "control.sock")
        self.cmd = supervisor_command(*args, shards=shards, host=host, control_socket=control)
        self.shards = shards
        # The whole log, next to the control socket: ``kill`` removes both unless
        # ``keep_log`` was set (a scenario sets it when something failed, and prints it).
        self.log_path = os.path.join(self._dir, "server.log")
        self.keep_log = False
        self.process: subprocess.Popen[bytes] | None = None
        self.log = LogLines()
        self.port = 0
        self._cond = threading.Condition()  # guards ``log``; notified at every line
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=SERVER_ROOT,
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        try:
            ready = self.wait_for("ready", timeout=timeout)
            self.port = int(ready["port"])
            for index in range(self.shards):
                self.wait_for("shard_ready", timeout=timeout, shard=index)
        except (TimeoutError, RuntimeError) as exc:
            if self.process.poll() is not None and self._thread is not None:
                self._thread.join(timeout=2)  # the rest of its stderr
            tail = self.snapshot()[1][-8:]
            raise RuntimeError(
                f"{exc}; {' '.join(self.cmd[1:4])} ... said:\n  " + "\n  ".join(tail)
            ) from None

    def _pump(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stderr:
                text = raw.decode(errors="replace").rstrip("\n")
                log.write(text + "\n")
                with self._cond:
                    self.log.add(text)
                    self._cond.notify_all()

    def snapshot(self) -> tuple[list[dict[str, str]], list[str]]:
        """Copies of (the parsed lines, every raw line) so far."""
        with self._cond:
            return list(self.log.lines), list(self.log.raw)

    def exits(self) -> list[str]:
        """The log lines of shards that exited, for a failure message."""
        return [line for line in self.snapshot()[1] if "event=shard_exit" in line]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def shard_pids(self) -> dict[int, int]:
        """Latest pid of each shard index, from ``event=shard_spawn``."""
        with self._cond:
            return self.log.shard_pids()

    def all_pids(self) -> list[int]:
        with self._cond:
            pids = self.log.spawned()
        return pids + ([self.process.pid] if self.process is not None else [])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL whatever of ours is still alive."""
        if self.process is None:
            return None
        code = None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor and every shard it spawned, as one abrupt crash."""
        if self.process is None:
            return
        with self._cond:
            shards = self.log.spawned()
        kill_tree(self.process.pid if self.process.poll() is None else None, shards)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.keep_log:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------ the log
    def count(self) -> int:
        with self._cond:
            return len(self.log.lines)

    def events(self, event: str, after: int = 0, **match: Any) -> list[dict[str, str]]:
        with self._cond:
            return self.log.events(event, after, **match)

    def wait_for(self, event: str, predicate: Predicate = None, **options: Any) -> dict[str, str]:
        """``TrioLog.wait_for``, blocking: ``timeout`` (20 s), ``after`` (0), then the fields
        to match; raises ``RuntimeError`` at once if the supervisor exits."""
        timeout, after = options.pop("timeout", 20.0), options.pop("after", 0)
        match = options
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                found, i = self.log.scan(i, event, predicate, match)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event={event} {match} within {timeout:g} s")
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"supervisor exited ({self.process.returncode}) waiting for {event}"
                    )
                self._cond.wait(min(left, 0.5))
