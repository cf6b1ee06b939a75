"""Structured log output of a shard or the supervisor: one logfmt line per event on stderr.

``listeners`` lets in-process code (tests, metrics) observe events as they are logged.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from core.logfmt import format_line

listeners: list[Callable[[str, dict[str, Any]], None]] = []


def log(event: str, **fields: Any) -> None:
    """Write one line with a single ``write`` so lines from several processes never interleave."""
    line = f"ts={time.time():.3f} {format_line(event, **fields)}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode(errors="backslashreplace"))
    except OSError:
        pass
    for listener in listeners:
        listener(event, fields)
