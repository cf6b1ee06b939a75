"""The Python side of ``driver.js``: run N of the field report's clients in one Node process
and wait on the JSON events it prints.

``node_problem()`` says why they cannot run here (no Node, Node too old, the pinned ``ws``
package not installed: ``npm ci --prefix tests/field_report``, which ``.ci/run`` does), or
None. The Node process is killed by its pid when the block ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.js"
MIN_NODE = 18  # util.parseArgs (18.3); ws 8 itself needs 10


def node_problem() -> str | None:
    """Why the report's client cannot run on this machine, or None."""
    node = shutil.which("node")
    if node is None:
        return "Node.js is not installed (.ci/run installs it: apt-get install nodejs npm)"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return f"node --version failed: {exc!r}"
    if major < MIN_NODE:
        return f"Node {version} is too old: the driver needs {MIN_NODE}.3 or newer"
    if not (HERE / "node_modules" / "ws" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is not None:
            # The pinned version from package-lock.json, as .ci/run installs it.
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(HERE)],
                capture_output=True,
                timeout=180,
                check=False,
            )
    if not (HERE / "node_modules" / "ws" / "package.json").is_file():
        return (
            "the ws package is not installed and npm ci failed: npm ci --no-audit --no-fund "
            "--prefix tests/field_report (it needs npm and the npm registry)"
        )
    return None


class ReportClients:
    """The events printed by one ``driver.js`` process, with waiting on a condition."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, client: int, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """``client``'s events (of kind ``event`` whose fields equal ``match``), in order."""
        return [
            e
            for e in self.events
            if e.get("client") == client
            and (event is None or e["event"] == event)
            and all(e.get(k) == v for k, v in match.items())
        ]

    def connects(self, client: int) -> int:
        return len(self.of(client, "connected"))

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Wait until ``condition()`` holds (checked at every new event)."""
        with trio.move_on_after(timeout):
            while not condition():
                await self._changed.wait()
            return
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    async def all_connected(self, times: int = 1, timeout: float = 20.0) -> None:
        """Every client's onConnect has run at least ``times`` times."""
        await self.until(
            lambda: all(self.connects(i) >= times for i in range(self.count)),
            f"every client connected {times}x",
            timeout,
        )


async def _pump(stream: trio.abc.ReceiveStream, clients: ReportClients) -> None:
    buf = b""
    async for chunk in stream:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                clients.add(json.loads(line))


async def _echo(stream: trio.abc.ReceiveStream) -> None:
    async for chunk in stream:
        sys.stderr.write(chunk.decode(errors="replace"))


@asynccontextmanager
async def report_clients(
    url: str,
    count: int,
    *,
    heartbeat_interval_ms: int | None = None,
    heartbeat_timeout_ms: int | None = None,
    base_delay_ms: int | None = None,
    max_retries: int | None = None,
    heartbeat_field: str = "timestamp",
) -> AsyncIterator[ReportClients]:
    """``count`` report clients on ``url`` (options unset: the report's defaults)."""
    cmd = ["node", str(DRIVER), "--url", url, "--clients", str(count)]
    for flag, value in (
        ("--heartbeat-interval", heartbeat_interval_ms),
        ("--heartbeat-timeout", heartbeat_timeout_ms),
        ("--base-delay", base_delay_ms),
        ("--max-retries", max_retries),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--heartbeat-field", heartbeat_field]
    clients = ReportClients(count)
    process = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE
    )
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(_pump, process.stdout, clients)
            nursery.start_soon(_echo, process.stderr)
            try:
                yield clients
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        with trio.move_on_after(10):
            await process.wait()
