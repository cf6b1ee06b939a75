"""Shared helpers of the load benchmarks (every scenario).

Server side: ``Server`` starts ``python -m supervisor --port 0``, reads its logfmt stderr
(the shards inherit it) in a thread, and kills exactly the pids it started or was told
about (``event=shard_spawn ... pid=P``) on ``stop``.

Client side: a minimal raw-socket WebSocket client (HTTP upgrade, masked client frames,
pongs for the server's pings) driven by ``select.epoll``, so one process holds thousands
of idle connections for a few percent of a core. Run as a subprocess:

    python -m bench._load pool   --port P --count N [--source 127.0.0.2] [--mute]
    python -m bench._load active --port P --echo-clients 4 --echo-rate 50 --say-rate 1 ...
    python -m bench._load zombie --port P

Every mode prints JSON lines on stdout and is bounded in time (``--max-seconds``);
``pool`` also reads commands (``stats``, ``close``) on stdin and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import queue
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.logfmt import matches, parse

ROOT = Path(__file__).resolve().parent.parent
# The server under test runs from this directory (``python -m supervisor`` with it as the
# working directory, so its packages win over the installed ones): by default this
# checkout; set BENCH_SERVER_ROOT to benchmark another tree, e.g. a ``git archive`` export.
SERVER_ROOT = Path(os.environ.get("BENCH_SERVER_ROOT") or ROOT)
CLK_TCK = os.sysconf("SC_CLK_TCK")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


# ====================================================================== machine and /proc
def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _system_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    # fields[0] is field 3 (state): utime/stime are fields 14/15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline_has(pid: int, needles: tuple[bytes, ...]) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(n in cmdline for n in needles)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


# ====================================================================== the server
class Server:
    """A running ``python -m supervisor`` and its parsed log lines."""

    def __init__(self, *args: str, shards: int = 1, host: str = "127.0.0.1") -> None:
        self.host = host
        self.cmd = [
            sys.executable,
            "-m",
            "supervisor",
            "--host",
            host,
            "--port",
            "0",
            "--shards",
            str(shards),
            *args,
        ]
        # Its own control socket, so two benchmarks (or a benchmark and the tests) can run
        # at once: the default one is in the working directory.
        self._dir = tempfile.mkdtemp(prefix="bench-supervisor-")
        if "--control-socket" not in args:
            self.cmd += ["--control-socket", os.path.join(self._dir, "control.sock")]
        self.shards = shards
        # The whole log, next to the control socket: ``kill`` removes both unless
        # ``keep_log`` was set (a scenario sets it when something failed, and prints it).
        self.log_path = os.path.join(self._dir, "server.log")
        self.keep_log = False
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, str]] = []
        self.raw: list[str] = []
        self.port = 0
        self._cond = threading.Condition()
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
            with self._cond:
                tail = self.raw[-8:]
            raise RuntimeError(
                f"{exc}; {' '.join(self.cmd[1:4])} ... said:\n  " + "\n  ".join(tail)
            ) from None

    def _pump(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stderr:
                text = raw.decode(errors="replace").rstrip("\n")
                log.write(text + "\n")
                fields = parse(text)
                with self._cond:
                    self.raw.append(text)
                    if fields:
                        self.lines.append(fields)
                    self._cond.notify_all()

    def exits(self) -> list[str]:
        """The log lines of shards that exited, for a failure message."""
        with self._cond:
            return [line for line in self.raw if "event=shard_exit" in line]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def shard_pids(self) -> dict[int, int]:
        """Latest pid of each shard index, from ``event=shard_spawn``."""
        out: dict[int, int] = {}
        for f in self.events("shard_spawn"):
            out[int(f["shard"])] = int(f["pid"])
        return out

    def all_pids(self) -> list[int]:
        pids = [int(f["pid"]) for f in self.events("shard_spawn")]
        if self.process is not None:
            pids.append(self.process.pid)
        return pids

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
        """SIGKILL the supervisor and every shard it spawned, as one abrupt crash.

        The supervisor is SIGSTOPped first: were a shard killed while it still ran, it would
        log ``shard_exit`` and respawn the shard (a process outside ``all_pids``); were it
        killed first, its shards would see the control socket close and drain politely."""
        if self.process is None:
            return
        supervisor = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGSTOP)
        for pid in self.all_pids():
            if pid != supervisor and pid_alive(pid) and _cmdline_has(pid, (b"shards",)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.keep_log:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------ the log
    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def events(self, event: str, after: int = 0, **match: Any) -> list[dict[str, str]]:
        with self._cond:
            lines = self.lines[after:]
        return [f for f in lines if matches(f, event, **match)]

    def wait_for(
        self,
        event: str,
        predicate: Callable[[dict[str, str]], bool] | None = None,
        *,
        timeout: float = 20.0,
        after: int = 0,
        **match: Any,
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.lines):
                    f = self.lines[i]
                    i += 1
                    if matches(f, event, **match) and (predicate is None or predicate(f)):
                        return f
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event={event} {match} within {timeout:g} s")
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"supervisor exited ({self.process.returncode}) waiting for {event}"
                    )
                self._cond.wait(min(left, 0.5))


# ====================================================================== client subprocesses
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


class Child(JsonProcess):
    """A ``python -m bench._load MODE`` subprocess."""

    def __init__(self, mode: str, *args: str) -> None:
        super().__init__([sys.executable, "-m", "bench._load", mode, *args])


# ====================================================================== raw WebSocket client
def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` -> (host, port, path); for ``--url`` of a running server."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws://host:port/ URL: {url!r} (wss is not supported here)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def handshake_request(host: str, port: int, path: str = "/") -> bytes:
    key = base64.b64encode(random.randbytes(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    mask = random.randbytes(4)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + payload


def text_frame(message: dict[str, Any]) -> bytes:
    return client_frame(OP_TEXT, json.dumps(message, separators=(",", ":")).encode())


class FrameParser:
    """Server frames (unmasked) from a byte stream: ``feed`` returns ``(opcode, payload)``."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out: list[tuple[int, bytes]] = []
        i, n = 0, len(buf)
        while n - i >= 2:
            b1 = buf[i + 1]
            length = b1 & 0x7F
            h = 2
            if length == 126:
                if n - i < 4:
                    break
                length = int.from_bytes(buf[i + 2 : i + 4], "big")
                h = 4
            elif length == 127:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2 : i + 10], "big")
                h = 10
            mask = b""
            if b1 & 0x80:
                if n - i < h + 4:
                    break
                mask = buf[i + h : i + h + 4]
                h += 4
            end = i + h + length
            if end > n:
                break
            payload = buf[i + h : end]
            if mask:
                key = (mask * (length // 4 + 1))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
                    length, "big"
                )
            out.append((buf[i] & 0x0F, payload))
            i = end
        self.buf = buf[i:]
        return out


def _raise_nofile() -> None:
    """Soft open-files limit up to the hard one (a load child holds thousands of sockets)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _new_socket(source: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    return sock


class StdinCommands:
    """The parent's command lines (``stats``, ``close``, ...) on a load child's stdin, read
    in the child's epoll loop: ``fd`` is registered in ``ep``; ``read`` (when it is
    ready) returns the whole lines that came, or None once the parent closed stdin."""

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


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- pool mode
_CONNECTING, _UPGRADING, _WELCOME, _ECHO_WAIT, _OPEN, _MUTE, _CLOSED = range(7)


class _Conn:
    __slots__ = ("sock", "fd", "state", "head", "parser", "out", "started", "session", "last")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _CONNECTING
        self.head = b""
        self.parser = FrameParser()
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
        _raise_nofile()
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
            sock = _new_socket(self.a.source)
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
        for opcode, payload in conn.parser.feed(data):
            self.frames += 1
            if opcode == OP_PING:
                self.pings += 1
                self._send(conn, client_frame(OP_PONG, payload))
                conn.last = time.time()
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send(conn, client_frame(OP_CLOSE, payload[:2]))
                self._lost(conn, f"close {code}")
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
            _emit(self.stats())
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
                    lines = stdin.read()
                    if lines is None:
                        running = False
                        break
                    for line in lines:
                        if not self._handle_command(line):
                            running = False
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
                    _emit({"type": "progress", "ok": self.ok, "failed": sum(self.failed.values())})
                for conn in list(self.connecting):
                    if conn.state < _OPEN and now - conn.started > a.connect_timeout:
                        self._fail(conn, "timeout")
            if not self.reported and self.to_open == 0 and self.in_flight == 0:
                self.reported = True
                message = self.stats("connected")
                if self.zombies:
                    message["zombies"] = self.zombies
                _emit(message)
        _emit(self.stats("final"))
        for conn in list(self.conns.values()):
            conn.sock.close()


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# ---------------------------------------------------------------------- active mode
def open_ws(
    host: str,
    port: int,
    path: str = "/",
    *,
    welcome: bool = True,
    source: str | None = None,
    timeout: float = 30.0,
) -> tuple[socket.socket, FrameParser, dict[str, Any] | None]:
    """A blocking client connection: connect (from ``source`` if given), upgrade, and with
    ``welcome`` read the server's welcome (it must be the first frame; frames that came
    with it stay in the parser). Returns the socket (no timeout), its parser and the
    welcome (None without ``welcome``: ``--app echo`` sends none)."""
    sock = _new_socket(source)
    sock.settimeout(timeout)
    sock.connect((host, port))
    sock.sendall(handshake_request(host, port, path))
    buf = b""
    for _ in range(1000):  # a response head is a few hundred bytes
        if b"\r\n\r\n" in buf:
            break
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise ConnectionError(f"upgrade refused: {head[:60]!r}")
    parser = FrameParser()
    frames = parser.feed(rest) if rest else []
    greeting = None
    if welcome:
        for _ in range(1000):
            if frames:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the welcome")
            frames = parser.feed(chunk)
        opcode, payload = frames[0]
        greeting = json.loads(payload) if opcode == OP_TEXT else {}
        if greeting.get("type") != "welcome":
            raise ConnectionError(f"first frame is not a welcome: {payload[:80]!r}")
        if len(frames) > 1:
            parser.buf = b"".join(_reframe(op, p) for op, p in frames[1:]) + parser.buf
    sock.settimeout(None)
    return sock, parser, greeting


def _reframe(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame again (to push back frames read together with the welcome)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def run_active(a: argparse.Namespace) -> None:
    """Echo clients at a steady rate (round trips measured) plus one ``say`` client.

    Open loop: sends follow a fixed schedule whatever the replies do, so a server stall
    shows up as late replies, not as fewer samples. Says start ``--say-after`` seconds in.
    After the ``result`` line the clients stay connected (answering pings and the close
    frame) until stdin says ``close`` or closes, so their leaving is not part of the run.
    """
    ep = select.epoll()
    clients = []
    n_echo = a.echo_clients
    n_say = 1 if a.say_rate > 0 else 0
    for _ in range(n_echo + n_say):
        sock, parser, welcome = open_ws(a.host, a.port, source=a.source, timeout=10.0)
        sock.setblocking(False)
        clients.append(
            {
                "sock": sock,
                "parser": parser,
                "session": welcome["session"],
                "shard": welcome.get("shard"),
            }
        )
        ep.register(sock.fileno(), select.EPOLLIN)
    by_fd = {c["sock"].fileno(): i for i, c in enumerate(clients)}
    _emit({"type": "connected", "clients": len(clients)})

    period = 1.0 / a.echo_rate
    t0 = time.perf_counter() + 0.2
    end = t0 + a.duration
    per_client = int(a.echo_rate * a.duration)
    # client i sends its k-th echo at t0 + (k + i / n_echo) * period
    next_k = [0] * n_echo
    sent: dict[tuple[int, int], float] = {}
    # (send time since t0 in s, round trip in ms, echo client index)
    rtts: list[tuple[float, float, int]] = []
    say_period = 1.0 / a.say_rate if n_say else 0.0
    say_start = t0 + min(a.say_after, a.duration)
    say_total = int(a.say_rate * (end - say_start)) if n_say else 0
    say_k = 0
    say_sent: dict[str, float] = {}
    say_wall: dict[str, float] = {}  # tag -> time.time() when sent
    say_rtts: list[tuple[float, float]] = []
    counts = {"said": 0, "pongs": 0}
    text = "x" * a.say_bytes
    errors: list[str] = []

    def on_frames(i: int, data: bytes, received: float) -> None:
        c = clients[i]
        for opcode, payload in c["parser"].feed(data):
            if opcode == OP_PING:
                c["sock"].send(client_frame(OP_PONG, payload))
                counts["pongs"] += 1
            elif opcode == OP_CLOSE:
                with contextlib.suppress(OSError):
                    c["sock"].send(client_frame(OP_CLOSE, payload[:2]))
                errors.append(f"client {i}: close frame {payload[:2].hex()}")
            elif opcode == OP_TEXT:
                if payload.startswith(b'{"type":"echo"'):
                    n = json.loads(payload)["data"]
                    started = sent.pop((i, n), None)
                    if started is not None:
                        rtts.append((started - t0, (received - started) * 1000.0, i))
                elif payload.startswith(b'{"type":"said"'):
                    counts["said"] += 1
                    if i == n_echo:
                        message = json.loads(payload)
                        if message.get("from") == c["session"]:
                            started = say_sent.pop(message["text"][:6], None)
                            if started is not None:
                                say_rtts.append((started - t0, (received - started) * 1000.0))

    def poll(timeout: float) -> None:
        for fd, _ev in ep.poll(timeout):
            i = by_fd[fd]
            try:
                data = clients[i]["sock"].recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                errors.append(f"client {i}: {exc!r}")
                data = b""
            if not data:
                errors.append(f"client {i}: connection closed")
                ep.unregister(fd)
                continue
            on_frames(i, data, time.perf_counter())

    grace_end = end + a.grace
    while True:
        now = time.perf_counter()
        if now > grace_end or (now > end and not sent and not say_sent):
            break
        nxt = grace_end
        for i in range(n_echo):
            k = next_k[i]
            if k >= per_client:
                continue
            due = t0 + (k + i / n_echo) * period
            if due <= now:
                n = i * per_client + k
                try:
                    clients[i]["sock"].send(text_frame({"type": "echo", "data": n}))
                except OSError as exc:
                    errors.append(f"echo send: {exc!r}")
                sent[(i, n)] = time.perf_counter()
                next_k[i] = k + 1
                due = t0 + (k + 1 + i / n_echo) * period
            nxt = min(nxt, due)
        if say_k < say_total:
            due = say_start + (say_k + 0.5) * say_period
            if due <= now:
                tag = f"{say_k:06d}"
                try:
                    clients[n_echo]["sock"].send(
                        text_frame({"type": "say", "text": tag + text[len(tag) :]})
                    )
                except OSError as exc:
                    errors.append(f"say send: {exc!r}")
                say_sent[tag] = time.perf_counter()
                say_wall[tag] = time.time()
                say_k += 1
                due = say_start + (say_k + 0.5) * say_period
            nxt = min(nxt, due)
        poll(max(0.0, nxt - time.perf_counter()))
    _emit(
        {
            "type": "result",
            "rtts": rtts,
            "client_shards": [c["shard"] for c in clients[:n_echo]],
            "lost": len(sent),
            "t0": t0,
            "say_after": say_start - t0,
            "say_wall": say_wall,
            "say_rtts": say_rtts,
            "say_lost": len(say_sent),
            "said": counts["said"],
            "pongs": counts["pongs"],
            "errors": errors[:20],
        }
    )
    # Linger until told to go (bounded), still answering pings and close frames.
    stdin = StdinCommands(ep)
    by_fd[stdin.fd] = -1
    stop_at = time.monotonic() + a.max_seconds
    while time.monotonic() < stop_at:
        events = ep.poll(0.5)
        if any(fd == stdin.fd for fd, _ in events):
            lines = stdin.read()
            if lines is None or "close" in lines:
                break
        for fd, _ev in events:
            i = by_fd[fd]
            if i < 0:
                continue
            try:
                data = clients[i]["sock"].recv(262144)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                continue
            on_frames(i, data, time.perf_counter())
    for c in clients:
        c["sock"].close()


# ---------------------------------------------------------------------- zombie mode
def run_zombie(a: argparse.Namespace) -> None:
    """Connect, read the welcome, send one echo and read its answer, then go silent.

    The parent SIGSTOPs this process once it printed its line, so TCP stays open (the
    kernel still ACKs) but nothing is ever answered. Bounded by ``--max-seconds``.
    """
    sock, parser, welcome = open_ws(a.host, a.port, source=a.source, timeout=10.0)
    sock.sendall(text_frame({"type": "echo", "data": "last words"}))
    last_send = time.time()
    deadline = time.monotonic() + 10
    answered = False
    while not answered and time.monotonic() < deadline:
        for opcode, payload in parser.feed(sock.recv(4096)):
            if opcode == OP_TEXT and payload.startswith(b'{"type":"echo"'):
                answered = True
    _emit(
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


# ====================================================================== entry point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._load")
    parser.add_argument("mode", choices=["pool", "active", "zombie"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default=None, help="local address to bind")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    # pool
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64, help="upgrades in flight")
    parser.add_argument(
        "--connect-rate", type=float, default=0.0, help="connections started per s (0: no pace)"
    )
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--mute", action="store_true", help="zombies: silent after one echo")
    parser.add_argument("--sessions", action="store_true", help="report open session ids")
    # active
    parser.add_argument("--echo-clients", type=int, default=4)
    parser.add_argument("--echo-rate", type=float, default=50.0)
    parser.add_argument("--say-rate", type=float, default=1.0)
    parser.add_argument("--say-bytes", type=int, default=64)
    parser.add_argument("--say-after", type=float, default=0.0, help="seconds before says")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=5.0)
    a = parser.parse_args(argv)
    a.max_seconds = min(a.max_seconds, 3600.0)
    a.duration = min(a.duration, 3600.0)
    if a.mode == "pool":
        Pool(a).run()
    elif a.mode == "active":
        run_active(a)
    else:
        run_zombie(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
