"""The load processes' modes, one module each; ``python -m bench.clients MODE ...``.

Every mode is a separate process (never the server's), prints JSON lines on stdout and
reads commands on stdin (``lab.jsonproc``), and is bounded in time (``--max-seconds``
or ``--seconds``):

- ``pool``: thousands of idle raw-socket clients in one epoll loop (``idle``, ``zombie``);
- ``active``: echo clients at a steady rate plus one ``say`` client (``idle``);
- ``zombie``: one client that goes silent, to be SIGSTOPped (``zombie``);
- ``recv``: broadcast receivers stamping each ``said`` (``broadcast``);
- ``reconnecting``: library clients through a crash, welcomes timed (``storm``);
- ``cable``: clients in a network namespace, pulled one by one (``zombie``);
- ``setups``: timed connection setups, several at a time (``routing``).

The parent holds each as a ``Child``; ``wait_all`` polls several until each said ``ready``
(or sent its ``result``), for a progress bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from lab.jsonproc import JsonProcess


class Child(JsonProcess):
    """A ``python -m bench.clients MODE`` process and what it has reported: the latest
    ``progress`` fields, whether it said ``ready``, its ``result``, and its end (``eof``)."""

    def __init__(self, mode: str, *args: str, prefix: tuple[str, ...] = ()) -> None:
        super().__init__([*prefix, sys.executable, "-m", "bench.clients", mode, *args])
        self.progress: dict[str, Any] = {}
        self.ready = False
        self.result: dict[str, Any] | None = None
        self.eof = False

    def poll(self) -> None:
        """Take in whatever it printed since the last call."""
        for m in self.pending():
            kind = m.get("type")
            if kind == "progress":
                self.progress = m
            elif kind == "ready":
                self.ready = True
            elif kind == "result":
                self.result = m
            elif kind == "eof":
                self.eof = True

    def finish(self) -> None:
        """Tell it to stop and print its result (it exits after that)."""
        self.send("stop")


def wait_all(
    children: list[Child],
    what: str,
    seconds: float,
    progress: Callable[[Child], int] | None = None,
    bar: Any = None,
    task: int = 0,
) -> bool:
    """Poll the children until each is ``ready``/has a ``result`` (``what``), showing the
    sum of ``progress`` on ``bar``; False at ``seconds`` or when one exited without it."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.05) + 2):
        for c in children:
            c.poll()
        if bar is not None and progress is not None:
            bar.update(task, completed=sum(progress(c) for c in children))
        have = [c.ready if what == "ready" else c.result is not None for c in children]
        if all(have):
            return True
        if any(c.eof and not h for c, h in zip(children, have, strict=True)):
            return False  # exited without it
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return False
