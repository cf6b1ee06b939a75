"""The few plain-HTTP pages a shard answers itself: the browser client and ``/play``.

A request without ``Upgrade: websocket`` for one of ``PAGES`` gets ``200`` and the file
from ``shards/web/`` (package data, so it is there installed or not); every other
plain-HTTP request keeps its usual answer (426, 404, ...). The files are read once, at
import, i.e. when the shard starts: new files need a (rolling) restart.
"""

from __future__ import annotations

from pathlib import Path

from core.handshake import Request, is_upgrade

WEB = Path(__file__).resolve().parent / "web"
# path -> (file in WEB, content type)
PAGES: dict[str, tuple[str, str]] = {
    "/client.js": ("client.js", "application/javascript; charset=utf-8"),
    "/play": ("play.html", "text/html; charset=utf-8"),
}


def read(name: str) -> bytes | None:
    """A file of ``shards/web/``, or None when it is missing."""
    try:
        return (WEB / name).read_bytes()
    except OSError:
        return None


def ok(body: bytes, content_type: str, head_only: bool = False) -> bytes:
    """A complete ``200 OK`` response that closes the connection."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


def _load() -> dict[str, tuple[bytes, str]]:
    out = {}
    for path, (name, content_type) in PAGES.items():
        body = read(name)
        if body is not None:
            out[path] = (body, content_type)
    return out


_FILES = _load()


def response(request: Request) -> bytes | None:
    """The whole HTTP response for a plain ``GET``/``HEAD`` of a page, else None (the
    request goes on to the WebSocket checks)."""
    if is_upgrade(request) or request.method not in ("GET", "HEAD"):
        return None
    path = request.target.split("?", 1)[0]
    if path == "/healthz":  # a load balancer's check: 503 instead while the node drains
        return ok(b"ok\n", "text/plain; charset=utf-8", head_only=request.method == "HEAD")
    page = _FILES.get(path)
    if page is None:
        return None
    return ok(*page, head_only=request.method == "HEAD")
