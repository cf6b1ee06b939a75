"""Peer echo servers for ``python -m bench echo``.

Each is run as ``python -m bench.peers.<name> --port 0``, binds 127.0.0.1, echoes every
text/binary frame back unchanged and prints ``ready port=P`` on stdout once listening.
"""

from __future__ import annotations

import argparse


def address() -> tuple[str, int]:
    """``--host`` (127.0.0.1) and ``--port`` (0: a free one) from the command line."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    return a.host, a.port


def ready(port: int) -> None:
    """The line ``bench.echo.PeerProcess`` waits for."""
    print(f"ready port={port}", flush=True)
