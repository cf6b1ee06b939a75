"""``python -m supervisor top``: the supervisor's last minute, live in a terminal.

Reads the dashboard feed's history over the control socket (``core.history`` has the
sample schema): one full ``history`` at start, then ``history <t of the last sample>``
every ``--interval`` seconds (default 1.0: one small answer a second, ~1 KB with 8
shards), kept in a local ring of ``RING_SAMPLES`` samples (2 minutes, ~120 KB) and
``MARKERS_KEPT`` markers. Ctrl-C, ``q`` or SIGTERM restores the terminal and exits 0.

Drawing is ``render`` (what was seen -> the lines of one frame, fitted to a width and a
height): a pure function, so the layout is tested with plain calls; ``main`` only polls,
writes ANSI (alternate screen, home, clear to end of line; no curses) and waits.
When stdout is not a terminal, or with ``--once``, one frame is printed without escapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from core.close_codes import DisconnectKind
from core.config import ServerConfig
from supervisor import control_socket

SPARKS = "▁▂▃▄▅▆▇█"
SPARK_SAMPLES = 60  # a sparkline shows at most the last minute
RING_SAMPLES = 120  # samples kept locally (~1 KB each with 8 shards)
MARKERS_KEPT = 50
MARKERS_SHOWN = 5  # at most; fewer when the terminal is short
REQUEST_TIMEOUT = 3.0  # a supervisor that does not answer within this is reported, not awaited
DISCONNECT_KINDS = tuple(str(kind) for kind in DisconnectKind)
RESUME_RESULTS = ("ok", "recovered", "invalid", "expired")  # others are listed when seen
MIN_SPARK = 5  # narrower than this, a sparkline is left out
BAR_WIDTH = 24  # the roll progress bar, at most

# ANSI: the alternate screen keeps the shell's scrollback as it was; the cursor is hidden
# while drawing and shown again on the way out, whatever ended the loop.
ENTER = "\x1b[?1049h\x1b[?25l\x1b[2J"
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_EOL = "\x1b[K"
CLEAR_BELOW = "\x1b[J"

Sample = Mapping[str, Any]


class Seen:
    """What ``top`` has read from the supervisor: the last ``RING_SAMPLES`` samples and
    ``MARKERS_KEPT`` markers (a marker comes again while no newer sample has arrived;
    it is kept once)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.samples: deque[Sample] = deque(maxlen=RING_SAMPLES)
        self.markers: deque[Sample] = deque(maxlen=MARKERS_KEPT)
        self.error: str | None = None  # the last poll's failure, shown until one succeeds

    @property
    def since(self) -> float | None:
        """The ``t`` of the newest sample (what the next ``history`` asks after)."""
        return float(self.samples[-1]["t"]) if self.samples else None

    def take(self, answer: Mapping[str, Any]) -> None:
        """Add a ``history`` answer's samples (newer than the last one) and new markers."""
        since = self.since
        for sample in answer.get("samples", []):
            if since is None or float(sample["t"]) > since:
                self.samples.append(sample)
                since = float(sample["t"])
        known = {_marker_key(m) for m in self.markers}
        for marker in answer.get("markers", []):
            if _marker_key(marker) not in known:
                self.markers.append(marker)
                known.add(_marker_key(marker))


def _marker_key(marker: Sample) -> str:
    return json.dumps(marker, sort_keys=True)


# ====================================================================== drawing
def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> str:
    """The last ``width`` values as block characters, 0 -> ▁ and ``top`` (default: their
    largest) -> █; a missing value (None) is a space."""
    if width <= 0:
        return ""
    shown = list(values)[-width:]
    if top is None:
        top = max((v for v in shown if v is not None), default=0.0)
    out = []
    for value in shown:
        if value is None:
            out.append(" ")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            level = round(max(0.0, min(value, top)) / top * (len(SPARKS) - 1))
            out.append(SPARKS[level])
    return "".join(out)


def progress_bar(done: int, steps: int, width: int) -> str:
    """``done`` of ``steps`` as ``width`` cells (█ done, ░ to do)."""
    if width <= 0:
        return ""
    filled = 0 if steps <= 0 else round(width * max(0, min(done, steps)) / steps)
    return "█" * filled + "░" * (width - filled)


def render(seen: Seen, width: int, height: int | None = None) -> list[str]:
    """One frame: the lines to draw, none longer than ``width``; at most ``height`` lines
    (None: as many as it takes). The newest sample is the "now" of every number."""
    width = max(1, width)
    samples = list(seen.samples)
    latest = samples[-1] if samples else None
    head = [_header(seen, latest, width)]
    if seen.error:
        head.append(f"! {seen.error}")
    if latest is None:
        body = ["", "no samples yet (the supervisor takes one a second)"]
        return _fit([*head, *body], width, height)
    recent = samples[-SPARK_SAMPLES:]
    body = ["", *_shard_table(recent, width)]
    body += ["", *_rate_block(recent, width)]
    if latest.get("roll"):
        body += ["", *_roll_lines(latest["roll"], width)]
    if latest.get("cluster"):
        body += ["", *_cluster_lines(latest["cluster"])]
    lines = [*head, *body]
    room = MARKERS_SHOWN if height is None else min(MARKERS_SHOWN, height - len(lines) - 2)
    if seen.markers and room > 0:
        lines += ["", "markers", *(_marker_line(m) for m in list(seen.markers)[-room:])]
    return _fit(lines, width, height)


def _fit(lines: list[str], width: int, height: int | None) -> list[str]:
    fitted = [line[:width].rstrip() for line in lines]
    return fitted if height is None else fitted[: max(0, height)]


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _header(seen: Seen, latest: Sample | None, width: int) -> str:
    parts = [f"supervisor pid {seen.pid if seen.pid is not None else '?'}"]
    if latest is not None:
        roll = latest.get("roll")
        rolling = f"rolling {roll.get('done', 0)}/{roll.get('steps', 0)}" if roll else "roll: none"
        parts += [
            f"players {latest.get('players', 0)}",
            f"away {latest.get('away', 0)}",
            rolling,
            _clock(float(latest["t"])),
        ]
    line = parts[0]
    for part in parts[1:]:  # whole parts only: a narrow terminal drops the clock first
        if len(line) + 3 + len(part) > width:
            break
        line += " · " + part
    return line


SHARD_COLUMNS = (  # (heading, width)
    ("slot", 4),
    ("pid", 8),
    ("state", 9),
    ("players", 8),
    ("sessions", 9),
    ("rooms", 6),
    ("gc p99 ms", 10),
)


def _shard_table(recent: list[Sample], width: int) -> list[str]:
    latest = recent[-1]
    slots = sorted(latest.get("shards", {}), key=int)
    series = {
        slot: [_shard_value(s, slot, "players") for s in recent] for slot in slots
    }  # one scale for every shard: a shard that lost its players reads low next to the rest
    top = max((v for values in series.values() for v in values if v is not None), default=0)
    fixed = sum(w for _, w in SHARD_COLUMNS) + len(SHARD_COLUMNS) + 1
    spark = min(SPARK_SAMPLES, width - fixed)
    heading = " ".join(
        name.ljust(w) if name == "state" else name.rjust(w) for name, w in SHARD_COLUMNS
    )
    if spark >= MIN_SPARK:
        heading += f"  players, last {len(recent)} s"
    lines = [heading]
    for slot in slots:
        row = latest["shards"][slot]
        gc = row.get("gc_p99_ms")
        cells = (
            slot,
            _dash(row.get("pid")),
            str(row.get("state", "-")),
            _dash(row.get("players")),
            _dash(row.get("sessions")),
            _dash(row.get("rooms")),
            "-" if gc is None else f"{gc:.2f}",
        )
        line = " ".join(
            cell.ljust(w) if name == "state" else cell.rjust(w)
            for cell, (name, w) in zip(cells, SHARD_COLUMNS, strict=True)
        )
        if spark >= MIN_SPARK:
            line += "  " + sparkline(series[slot], spark, top)
        lines.append(line)
    return lines


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _shard_value(sample: Sample, slot: str, key: str) -> float | None:
    row = sample.get("shards", {}).get(slot)
    return None if row is None else row.get(key)


def _rate(sample: Sample, key: str) -> float:
    return float((sample.get("rates") or {}).get(key, 0.0))


RATE_LABEL = 19  # "  heartbeat_timeout" and the like
RATE_NUMBER = 9


def _rate_rows(
    title: str, keys: list[tuple[str, str]], recent: list[Sample], width: int
) -> list[str]:
    """``title`` then one row per (label, rate key): now, and a sparkline when it fits."""
    spark = min(SPARK_SAMPLES, width - RATE_LABEL - RATE_NUMBER - 1)
    lines = [title.ljust(RATE_LABEL) + "now".rjust(RATE_NUMBER)]
    if spark >= MIN_SPARK:
        lines[0] += f" last {len(recent)} s"
    for label, key in keys:
        values = [_rate(s, key) for s in recent]
        line = f"  {label}"[:RATE_LABEL].ljust(RATE_LABEL) + f"{values[-1]:.1f}".rjust(RATE_NUMBER)
        if spark >= MIN_SPARK:
            line += " " + sparkline(values, spark)
        lines.append(line)
    return lines


def _rate_block(recent: list[Sample], width: int) -> list[str]:
    """Disconnects by kind beside resumes by result and messages in/out (stacked when the
    terminal is too narrow for two columns)."""
    seen_results = sorted(
        {
            k.split("|", 1)[1]
            for s in recent
            for k in (s.get("rates") or {})
            if k.startswith("resume|")
        }
        - set(RESUME_RESULTS)
    )
    left = ("disconnects/s", [(kind, f"disconnect|{kind}") for kind in DISCONNECT_KINDS])
    results = [*RESUME_RESULTS, *seen_results]
    right = [
        ("resumes/s", [(r, f"resume|{r}") for r in results]),
        ("messages/s", [("in", "messages_in"), ("out", "messages_out")]),
    ]
    column = (width - 2) // 2
    if column >= RATE_LABEL + RATE_NUMBER + 1 + MIN_SPARK:
        left_lines = _rate_rows(*left, recent, column)
        right_lines = [
            line for title, keys in right for line in _rate_rows(title, keys, recent, column)
        ]
        rows = max(len(left_lines), len(right_lines))
        left_lines += [""] * (rows - len(left_lines))
        right_lines += [""] * (rows - len(right_lines))
        return [f"{a:<{column}}  {b}" for a, b in zip(left_lines, right_lines, strict=True)]
    lines = _rate_rows(*left, recent, width)
    for title, keys in right:
        lines += _rate_rows(title, keys, recent, width)
    return lines


def _roll_lines(roll: Mapping[str, Any], width: int) -> list[str]:
    done, steps = int(roll.get("done") or 0), int(roll.get("steps") or 0)
    text = f" {done}/{steps} replaced"
    if roll.get("shard") is not None:
        text += f" · draining shard {roll['shard']}"
    text += f" · back {roll.get('back', 0)}/{roll.get('moved', 0)} moved"
    bar = min(BAR_WIDTH, width - len("roll [] ") - len(text))
    if bar < MIN_SPARK:
        return ["roll" + text]
    return [f"roll [{progress_bar(done, steps, bar)}]" + text]


def _cluster_lines(cluster: Mapping[str, Any]) -> list[str]:
    reachable = "reachable" if cluster.get("reachable") else "UNREACHABLE"
    rtt = cluster.get("rtt_ms")
    rtt_text = "-" if rtt is None else f"{rtt:.2f} ms"
    lease = cluster.get("lease_s")
    lines = [
        f"cluster node {cluster.get('node')} · redis {reachable}, rtt {rtt_text}"
        + ("" if lease is None else f" · lease {lease:.1f} s")
        + (" · FENCED" if cluster.get("fenced") else "")
    ]
    nodes = cluster.get("nodes") or []
    name = max([4, *(len(str(n.get("node"))) for n in nodes)])
    lines.append(f"{'node':<{name}}  alive  lease ms  rooms  players")
    for n in nodes:
        alive = "yes" if n.get("alive") else "no"
        lines.append(
            f"{str(n.get('node')):<{name}}  {alive:<5}  {_dash(n.get('lease_ms')):>8}"
            f"  {_dash(n.get('rooms')):>5}  {_dash(n.get('players')):>7}"
        )
    return lines


def _marker_line(marker: Sample) -> str:
    shard = marker.get("shard")
    detail = " ".join(
        f"{k}={v}" for k, v in marker.items() if k not in ("t", "kind", "shard") and v is not None
    )
    where = f"shard {shard}" if shard is not None else ""
    return f"  {_clock(float(marker['t']))}  {marker.get('kind', '?'):<15} {where:<9} {detail}"


# ====================================================================== I/O
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor top",
        description="The supervisor's shards, disconnects, resumes, roll and markers, "
        "redrawn every --interval seconds until Ctrl-C or q.",
    )
    parser.add_argument("--control-socket", default=ServerConfig().control_socket)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between polls (default 1.0: the supervisor samples once a second, "
        "so shorter only redraws sooner after a sample)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame and exit (also when not a TTY)"
    )
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error("--interval must be a positive number of seconds")
    seen = Seen()
    try:
        try:
            _fetch_all(args.control_socket, seen)
        except (OSError, ValueError) as exc:
            print(f"no supervisor answers on {args.control_socket}: {exc}", file=sys.stderr)
            return 1
        if args.once or not sys.stdout.isatty():
            print("\n".join(render(seen, shutil.get_terminal_size().columns)))
            return 0
    except KeyboardInterrupt:  # Ctrl-C before the live view took SIGINT over
        return 0
    return _live(args.control_socket, seen, args.interval, sys.stdout)


def _fetch_all(path: str, seen: Seen) -> None:
    """The supervisor's pid and everything its history holds (a fresh ``seen``)."""
    status = control_socket.request(path, "status", timeout=REQUEST_TIMEOUT)
    answer = control_socket.request(path, "history", timeout=REQUEST_TIMEOUT)
    if "error" in answer:
        raise ValueError(f"history not served: {answer['error']}")
    seen.pid = status.get("pid")
    seen.samples.clear()
    seen.markers.clear()
    seen.take(answer)
    seen.error = None


def _poll(path: str, seen: Seen) -> None:
    """New samples and markers; after a failure, everything again (it may be a new
    supervisor, with a new pid and its own history)."""
    try:
        if seen.error is not None or seen.since is None:
            _fetch_all(path, seen)
            return
        answer = control_socket.request(path, f"history {seen.since!r}", timeout=REQUEST_TIMEOUT)
        if "error" in answer:
            raise ValueError(answer["error"])
        seen.take(answer)
    except (OSError, ValueError) as exc:
        seen.error = f"no answer from {path}: {exc} (retrying)"


def _live(path: str, seen: Seen, interval: float, out: TextIO) -> int:
    """Redraw until SIGINT/SIGTERM or ``q``. The signal handlers only set a flag; the
    wakeup fd ends the wait at once (and SIGWINCH redraws at the new size). A terminal on
    stdin is put in cbreak mode (no echo over the frame; Ctrl-C still signals) and given
    back as it was."""
    stop = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    keys = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(keys) if keys is not None else None
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    old_wakeup = signal.set_wakeup_fd(wake_write)
    old = {
        signum: signal.signal(signum, handler)
        for signum, handler in (
            (signal.SIGINT, on_stop),
            (signal.SIGTERM, on_stop),
            (signal.SIGWINCH, lambda signum, frame: None),
        )
    }
    try:
        if keys is not None:
            tty.setcbreak(keys)
        out.write(ENTER)
        next_poll = time.monotonic() + interval
        while not stop:
            size = shutil.get_terminal_size()
            frame = render(seen, size.columns, size.lines)
            out.write(HOME + "".join(line + CLEAR_EOL + "\n" for line in frame[:-1]))
            out.write((frame[-1] + CLEAR_EOL if frame else "") + CLEAR_BELOW)
            out.flush()
            left = next_poll - time.monotonic()
            if left > 0 and not stop:
                waiting = [wake_read] if keys is None else [wake_read, keys]
                readable, _, _ = select.select(waiting, [], [], left)
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
                if keys in readable:
                    try:
                        typed = os.read(keys, 64)
                    except OSError:  # the terminal hung up
                        typed = b""
                    stop = not typed or b"q" in typed.lower()
            if not stop and time.monotonic() >= next_poll:
                _poll(path, seen)
                next_poll = time.monotonic() + interval
    finally:
        with contextlib.suppress(OSError):
            out.write(LEAVE)
            out.flush()
        if keys is not None and saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(keys, termios.TCSADRAIN, saved)
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in old.items():
            signal.signal(signum, handler)
        os.close(wake_read)
        os.close(wake_write)
    return 0
