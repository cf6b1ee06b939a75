r"""Structured log lines: ``event=disconnect kind=heartbeat_timeout code=1006 shard=3``.

logfmt: space-separated ``key=value``; values with spaces, quotes, ``=``, backslashes or
any control character are quoted. Inside quotes ``\\``, ``\"``, ``\n``, ``\r``, ``\t`` and
``\uXXXX`` (every other control character, and the Unicode line separators U+0085,
U+2028, U+2029) are escaped, so a value a client chose (a close reason, a path) can never
start a second, forged line for a reader that splits on universal newlines.
Pure formatting, so tests can parse what the processes print with ``parse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Every C0/C1 control character and DEL, plus U+2028/U+2029 (str.splitlines breaks there).
_CONTROL = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_ESCAPES = str.maketrans({c: _NAMED.get(c, f"\\u{ord(c):04x}") for c in (*_CONTROL, "\\", '"')})
_NEEDS_QUOTES = frozenset(' "=\\') | _CONTROL
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t"}


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text == "" or not _NEEDS_QUOTES.isdisjoint(text):
        return f'"{text.translate(_ESCAPES)}"'
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
                    if nxt == "u" and i + 6 <= n:
                        try:
                            buf.append(chr(int(line[i + 2 : i + 6], 16)))
                            i += 6
                            continue
                        except ValueError:
                            pass
                    buf.append(_UNESCAPE.get(nxt, nxt))
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
