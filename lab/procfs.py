"""/proc readings: a process' CPU, memory and sockets, its liveness, the machine's load,
and the CPU of a whole process tree sampled while it runs (``TreeCpu``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def system_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from field 3 (state) on: the command name may hold spaces."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(") ", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (clock-tick resolution)."""
    fields = stat_fields(pid)
    # fields[0] is field 3 (state): utime/stime are fields 14/15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_each(pids: list[int]) -> list[float]:
    """``cpu_seconds`` of each pid, 0.0 for one that is gone."""
    out = []
    for pid in pids:
        try:
            out.append(cpu_seconds(pid))
        except (OSError, IndexError):
            out.append(0.0)
    return out


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


def open_sockets(pid: int) -> int:
    """Open sockets of ``pid`` (its connections, plus a few of its own)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline_has(pid: int, *needles: bytes) -> bool:
    """Whether ``pid``'s command line holds any of ``needles`` (guards a kill by pid
    against the pid having been reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(n in cmdline for n in needles)


class TreeCpu:
    """CPU used by this process and everything it started, and by the rest of the machine.

    A thread reads ``/proc`` every ``period`` seconds (default 0.5; a scan of a few
    hundred processes costs well under a millisecond) and keeps, per descendant, the
    last utime+stime seen: a server tree that was SIGKILLed never reports back through
    ``getrusage``, so it is sampled instead. What a process used in its last ``period``
    before it exited is missed.
    """

    def __init__(self, period: float = 0.5) -> None:
        self.started = time.monotonic()
        self.busy0 = system_busy_s()
        self.me = os.getpid()
        self.base: dict[int, float] = {}  # pid -> CPU seconds when first seen
        self.last: dict[int, float] = {}
        self._lock = threading.Lock()  # the sampler thread and summary() both scan
        self._stop = threading.Event()
        self._scan(first=True)
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _scan(self, first: bool = False) -> None:
        with self._lock:
            self._scan_locked(first)

    def _scan_locked(self, first: bool) -> None:
        parent: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            pid = int(entry)
            parent[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        for pid, seconds in cpu.items():
            p, depth = pid, 0
            while p not in (self.me, 0, 1) and depth < 64:
                p, depth = parent.get(p, 0), depth + 1
            if p != self.me:
                continue
            if pid not in self.base:
                # Present at the start: count only from now. Born later: all of it.
                self.base[pid] = seconds if first or pid == self.me else 0.0
            self.last[pid] = seconds

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self._scan()

    def ours_s(self) -> float:
        with self._lock:
            return sum(self.last[p] - self.base[p] for p in self.last)

    def summary(self) -> dict[str, float]:
        self._scan()
        wall = time.monotonic() - self.started
        busy = system_busy_s() - self.busy0
        ours = self.ours_s()
        return {
            "cpu_all_pct": round(100 * busy / wall, 1),
            "cpu_ours_pct": round(100 * ours / wall, 1),
            "cpu_of_other_processes_pct": round(100 * max(0.0, busy - ours) / wall, 1),
        }

    def close(self) -> dict[str, float]:
        """The summary, and stop sampling."""
        s = self.summary()
        self._stop.set()
        return s

    def text(self) -> str:
        s = self.close()
        return (
            f"CPU during the run, in % of one core: all processes {s['cpu_all_pct']:.0f},"
            f" this benchmark and what it started {s['cpu_ours_pct']:.0f},"
            f" other processes {s['cpu_of_other_processes_pct']:.0f};"
            f" loadavg at end {loadavg()}"
        )
