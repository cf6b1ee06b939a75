"""How long a rolling restart takes with the field report's clients connected.

The report's clients never resume: after the 1012 each opens a new session, after its own
backoff. ``roll_with_report_clients`` sends SIGHUP to a running supervisor once every client
is connected and returns the roll's duration (the supervisor's ``roll_done``), its steps,
and when every client was connected again. Run as a script it starts a supervisor from any
source tree - this one, or an older commit exported elsewhere - to compare:

    python -m tests.field_report.roll_timing                       # this tree, 20 clients
    git archive e767e0f | tar -x -C /tmp/before                    # then build it there
    python -m tests.field_report.roll_timing --root /tmp/before --heartbeat-field ts

(``--heartbeat-field ts``: servers before the ``timestamp`` alias close the report's own
heartbeat with 1007; only the field's name changes.)
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import trio

from lab.server import ROOT, ServerProcess, open_server
from tests.field_report.report_clients import ReportClients, node_problem, report_clients


def back_after_roll(clients: ReportClients, client: int, since: float) -> bool:
    """``client`` was closed 1012 after ``since`` (ms) and has connected since its last close."""
    events = [e for e in clients.of(client) if e["t"] >= since]
    closes = [i for i, e in enumerate(events) if e["event"] == "close" and e.get("opened")]
    if not any(events[i]["code"] == 1012 for i in closes):
        return False
    return any(e["event"] == "connected" for e in events[closes[-1] + 1 :])


async def roll_with_report_clients(
    server: ServerProcess, clients: ReportClients, timeout: float = 120.0
) -> dict[str, Any]:
    """SIGHUP once every client is connected; wait for ``roll_done`` and every client back."""
    await clients.all_connected()
    mark = len(server.log.lines)
    hup_ms = time.time() * 1000  # the driver stamps events with Date.now()
    started = trio.current_time()
    server.signal(signal.SIGHUP)
    done = await server.log.wait_for("roll_done", after=mark, timeout=timeout)
    await clients.until(
        lambda: all(back_after_roll(clients, i, hup_ms) for i in range(clients.count)),
        "every client closed 1012 and connected again",
        timeout,
    )
    steps = [f for f in server.log.lines[mark:] if f.get("event") == "roll_step"]
    return {
        "clients": clients.count,
        "shards": int(done["shards"]),
        "roll_s": round(float(done["duration_s"]), 2),
        "all_back_s": round(trio.current_time() - started, 2),
        "steps": [
            {k: f.get(k) for k in ("shard", "duration_s", "ended", "not_back", "evacuated")}
            for f in steps
        ],
    }


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.field_report.roll_timing")
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree to run")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--heartbeat-field", choices=("timestamp", "ts"), default="timestamp")
    parser.add_argument("server_args", nargs="*", help="more supervisor flags (after --)")
    args = parser.parse_args(argv)
    problem = node_problem()
    if problem:
        raise SystemExit(problem)
    async with open_server(
        *args.server_args, shards=args.shards, root=args.root, echo_logs=False
    ) as server:
        async with report_clients(
            server.url(), args.clients, heartbeat_field=args.heartbeat_field
        ) as clients:
            result = await roll_with_report_clients(server, clients)
            closed_1007 = sum(1 for e in clients.events if e.get("code") == 1007)
    print(json.dumps({"root": str(args.root), **result, "closes_1007": closed_1007}))


if __name__ == "__main__":
    trio.run(main)
