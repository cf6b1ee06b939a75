"""What every scenario writes: machine facts, a progress display, a JSON result, PNG plots.

A scenario makes one ``Report`` at its start and calls ``finish`` at its end::

    report = Report("idle", args, client="raw sockets")  # settings: vars(args) + these
    with report.progress() as bar:
        task = bar.add("connecting", total=50_000)
        bar.update(task, completed=n)
        bar.wait(10, "idle window")          # a measuring window with a time bar
    report.finish(data, charts={"rtt": draw_rtt})

``finish`` writes ``bench/results/<scenario>-<UTC stamp>.json`` with the command line,
the machine (CPU model, cores, Python, load average at start and end, and the CPU other
processes used meanwhile: the machine may be shared), the settings and the scenario's
data, then one PNG per chart next to it (``<scenario>-<stamp>-<chart>.png``). A chart is
a function taking ``matplotlib.pyplot`` and returning a figure. Without matplotlib the
JSON is still written and the missing plots are named; without ``rich`` the progress
display falls back to one line per stage on stderr. Both come with ``pip install -e
'.[bench]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lab.procfs import TreeCpu, loadavg
from lab.server import ROOT

# BENCH_RESULTS=DIR writes elsewhere (the smoke tests use a temporary directory).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
Chart = Callable[[Any], Any]  # (matplotlib.pyplot) -> Figure


def scenario_parser(
    name: str, doc: str | None, shards: int | None = None, raw: bool = True
) -> argparse.ArgumentParser:
    """The command line of ``python -m bench NAME``; its help is ``doc`` (kept as written
    with ``raw``, re-wrapped without). With ``shards``, it has ``--shards N`` (the
    server's shard count, at least 1) defaulting to that."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )
    if shards is not None:
        parser.add_argument(
            "--shards", type=_at_least_one, default=shards, help=f"server shards ({shards})"
        )
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_server_arg(parser: argparse.ArgumentParser, example: str) -> None:
    """``--server-arg ARG`` (repeatable, into ``server_arg``): one more argument for the
    supervisor a scenario starts. Values that start with -- need the = form, e.g.
    ``example``."""
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more supervisor argument, repeatable; values that start with -- need the"
        f" = form: {example}",
    )


def table_head(columns: str) -> None:
    """Print a table's column titles and a rule as wide."""
    print(columns)
    print("-" * len(columns))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def machine() -> dict[str, Any]:
    """Facts about the machine the run is on (and how loaded it is at the moment)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg_start": loadavg(),
    }


def command_line() -> str:
    """The command as a user would type it: ``python -m bench <scenario> ...``."""
    prog = sys.argv[0]
    if prog.startswith("python -m "):  # set by bench.__main__
        return " ".join([prog.replace("bench.", "bench ", 1), *map(shlex.quote, sys.argv[1:])])
    name = Path(prog).stem if prog.endswith(".py") else prog
    return " ".join(["python -m bench", name, *map(shlex.quote, sys.argv[1:])])


class Report:
    """One run of one scenario: prints its header, collects and writes its results."""

    def __init__(
        self, scenario: str, args: argparse.Namespace, title: str = "", **described: Any
    ) -> None:
        """The run's settings are its parsed command line (``vars(args)``, so every option
        is recorded under its own name) and ``described``: what the scenario derived
        from it or fixed (the client used, a default it resolved)."""
        self.scenario = scenario
        self.settings: dict[str, Any] = {**vars(args), **described}
        self.command = command_line()
        self.machine = machine()
        self.started_utc = datetime.datetime.now(datetime.UTC)
        self.started = time.monotonic()
        self.cpu = TreeCpu()
        print(title or f"{scenario} ({self.command})")
        for line in self.header_lines():
            print(line)
        sys.stdout.flush()

    def header_lines(self) -> list[str]:
        m = self.machine
        return [
            f"date:     {self.started_utc:%Y-%m-%d %H:%M UTC}",
            f"machine:  {m['platform']} | {m['cpu']} | {m['cpus']} CPUs | "
            f"{m['mem_gib']:g} GiB | {m['python']}",
            f"loadavg:  {m['loadavg_start']} (1/5/15 min, at start)",
            "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
        ]

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        bar = Progress()
        try:
            yield bar
        finally:
            bar.close()

    def finish(self, data: dict[str, Any], charts: dict[str, Chart] | None = None) -> Path:
        """Write the JSON and the PNGs; print where they are. Returns the JSON's path."""
        stamp = self.started_utc.strftime("%Y%m%d-%H%M%S")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{self.scenario}-{stamp}.json"
        doc = {
            "scenario": self.scenario,
            "command": self.command,
            "date": self.started_utc.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self.started, 1),
            "machine": {
                **self.machine,
                "loadavg_end": loadavg(),
                **self.cpu.summary(),
            },
            "settings": self.settings,
            "data": data,
        }
        out.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
        print(f"\n{self.cpu.text()}")
        print(f"total {doc['duration_s']:.0f} s")
        print(f"results:  {_shown(out)}")
        for name, draw in (charts or {}).items():
            print(save_chart(draw, out.with_name(f"{out.stem}-{name}.png")))
        sys.stdout.flush()
        return out


def save_chart(draw: Chart, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot {path.name}: matplotlib is not installed (pip install -e '.[bench]')"
    fig = draw(plt)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return f"plot:     {_shown(path)}"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class Progress:
    """Progress bars on stderr (rich); one line per stage when rich is not installed.

    Safe to update from the thread that made it; rich redraws from its own thread.
    """

    def __init__(self) -> None:
        self._rich: Any = None
        self._names: dict[int, str] = {}
        self._next = 0
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._rich = RichProgress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._rich.start()

    def add(self, description: str, total: float | None = None) -> int:
        if self._rich is not None:
            return int(self._rich.add_task(description, total=total))
        self._next += 1
        self._names[self._next] = description
        print(f"... {description}", file=sys.stderr, flush=True)
        return self._next

    def update(
        self, task: int, *, completed: float | None = None, description: str | None = None
    ) -> None:
        if self._rich is not None:
            self._rich.update(task, completed=completed, description=description)  # type: ignore[arg-type]

    def advance(self, task: int, amount: float = 1) -> None:
        if self._rich is not None:
            self._rich.advance(task, amount)

    def done(self, task: int) -> None:
        if self._rich is not None:
            total = self._rich.tasks[[t.id for t in self._rich.tasks].index(task)].total
            if total is not None:
                self._rich.update(task, completed=total)

    def stop(self, task: int) -> None:
        """Freeze a bar's clock where it is (a stage that ended short of its total)."""
        if self._rich is not None:
            self._rich.stop_task(task)

    def wait(self, seconds: float, description: str) -> None:
        """Sleep through a measuring window (a fixed length is the point here), with a bar."""
        task = self.add(f"{description} ({seconds:g} s)", total=max(1, math.ceil(seconds)))
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.2, left))
            self.update(task, completed=int(seconds - max(0.0, left)))
        self.done(task)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
