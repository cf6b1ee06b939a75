"""Structured log output of a shard or the supervisor: one logfmt line per event on stderr."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from core.logfmt import format_line


def log(event: str, **fields: Any) -> None:
    """Write one line with a single ``write`` so lines from several processes never interleave."""
    line = f"ts={time.time():.3f} {format_line(event, **fields)}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode())
    except OSError:
        pass
