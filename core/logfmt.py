"""Structured log lines: ``event=disconnect kind=heartbeat_timeout code=1006 shard=3``.

logfmt: space-separated ``key=value``; values with spaces, quotes or ``=`` are quoted.
Pure formatting, so tests can parse what the processes print with ``parse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def format_line(event: str, **fields: Any) -> str:
    """One log line; ``event`` first, the other fields in the order given."""
    parts = [f"event={_value(event)}"]
    parts.extend(f"{key}={_value(val)}" for key, val in fields.items())
    return " ".join(parts)


def matches(fields: Mapping[str, str], event: str, **match: Any) -> bool:
    """Whether a parsed line is ``event`` with each field of ``match`` (compared as text, so
    ``shard=3`` matches ``"3"``)."""
    return fields.get("event") == event and all(fields.get(k) == str(v) for k, v in match.items())


def parse(line: str) -> dict[str, str]:
    """Inverse of ``format_line`` (for tests and tools). Ignores a leading timestamp."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        eq = line.find("=", i)
        if eq == -1:
            break
        key = line[i:eq]
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            buf: list[str] = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    buf.append("\n" if nxt == "n" else nxt)
                    i += 2
                    continue
                buf.append(line[i])
                i += 1
            i += 1
            out[key] = "".join(buf)
        else:
            end = line.find(" ", i)
            end = n if end == -1 else end
            out[key] = line[i:end]
            i = end
        if " " in key:
            # Not logfmt (e.g. a traceback line): give up on this line.
            return {}
    return out
