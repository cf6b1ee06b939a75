"""``python -m bench <scenario> [options]``: run one benchmark scenario.

``python -m bench`` (or ``python -m bench list``) lists the scenarios. Each scenario is
also runnable on its own as ``python -m bench.<name>``; this only dispatches to it, with
the remaining arguments, as if it had been run that way.
"""

from __future__ import annotations

import runpy
import sys

# name -> one-line description (static, so listing imports nothing)
SCENARIOS: dict[str, str] = {
    "wheel": "Cython heartbeat wheel vs two pure-Python alternatives (micro-benchmark)",
    "idle": "idle connections (50k, up to 200k): RSS each, shard CPU per ping/pong, echo p99.9",
    "zombie": "zombie detection time per heartbeat preset",
    "resume_cuts": "cut a reconnecting client's TCP again and again; count lost/doubled",
    "routing": "connection setup rate and latency, lobby (direct) vs room (routed)",
    "balance": "connections per shard, kernel-only vs load-aware accepting",
    "rolling": "rolling restart (SIGHUP) under load: sessions lost, reconnect latency",
    "respawn": "SIGKILL one shard at a time: seconds until its replacement is ready",
    "echo": "echo msgs/s and round-trip p50/p99/p99.9 at 1, 100 and 1000 connections vs peers",
    "broadcast": "one say to N clients vs websockets' broadcast(): last/first receiver, echo wait",
    "storm": "SIGKILL + restart, N reconnecting clients: time until all back, jitter full/none",
    "cluster": "N nodes on one Redis: kill -9 one node, roll another; sessions/messages lost, time back, say latency, Redis cost",  # noqa: E501
}


def usage() -> str:
    width = max(map(len, SCENARIOS))
    lines = ["usage: python -m bench <scenario> [options]", "", "scenarios:"]
    lines += [f"  {name:{width}}  {text}" for name, text in SCENARIOS.items()]
    lines += ["", "options: python -m bench <scenario> --help"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("list", "-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SCENARIOS:
        print(f"python -m bench: unknown scenario {name!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    sys.argv = [f"python -m bench.{name}", *rest]
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
