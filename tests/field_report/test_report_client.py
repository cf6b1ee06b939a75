"""The field report's own browser client against our server, unchanged.

``report_client.js`` holds the report's ``ReconnectManager`` and ``ClientHeartbeat`` (the
few gaps of its snippets filled, listed at its top), run in Node 20 on the ``ws`` package
by ``driver.js``. Real supervisor, real Node process; both are killed by pid at the end.
Skipped, saying why, only where Node or the pinned ``ws`` cannot be had.

The raw-message side of the same rules (an unknown well-formed message answered with
``error``, bytes that are not JSON closed 1007) is covered in tests/shards/test_shard.py
and tests/core/test_inbound.py.
"""

from __future__ import annotations

import signal

import pytest
import trio

from core.protocol import SHUTDOWN_MESSAGE
from lab.server import open_server
from tests.field_report.report_clients import ReportClients, node_problem, report_clients
from tests.field_report.roll_timing import roll_with_report_clients

PROBLEM = node_problem()
pytestmark = [
    pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or ""),
    pytest.mark.timeout(90),
]


def acks(clients: ReportClients, client: int) -> list[dict]:
    return clients.of(client, "message", type="heartbeat_ack")


def opened_closes(clients: ReportClients, client: int) -> list[dict]:
    """Closes of connections that had opened (not the failed connects of a backoff)."""
    return [e for e in clients.of(client, "close") if e["opened"]]


async def test_the_report_client_stays_connected_and_its_timestamp_heartbeats_are_acked() -> None:
    # The server pings after 0.3 s of silence and gives up 0.3 s later; the client sends
    # its heartbeat every 0.4 s: both mechanisms run, for 8 client intervals (> 5 x 0.6 s).
    async with open_server("--heartbeat-interval", "0.3", "--heartbeat-timeout", "0.3") as server:
        async with report_clients(server.url(), 3, heartbeat_interval_ms=400) as clients:
            await clients.until(
                lambda: all(len(acks(clients, i)) >= 8 for i in range(3)),
                "8 heartbeat_acks per client",
            )
            for i in range(3):
                assert clients.of(i, "close") == [], clients.of(i, "close")
                assert clients.connects(i) == 1
                (welcome,) = clients.of(i, "message", type="welcome")
                assert welcome["message"]["heartbeat"] == {"interval_ms": 300, "timeout_ms": 300}
                sent = {e["message"]["timestamp"] for e in clients.of(i, "sent")}
                for ack in acks(clients, i):
                    # The ack echoes the field the report's client sent, and only that one.
                    assert "ts" not in ack["message"], ack
                    assert ack["message"]["timestamp"] in sent, ack
            assert not server.log.events("disconnect")
            assert not server.log.events("bad_message")


async def test_sigterm_sends_server_shutdown_then_1012_and_the_clients_return_after_restart() -> (
    None
):
    # baseDelay 200 ms (the report's own option; its default is 1 s) keeps the backoff
    # short while the server is down; the jitter is the report's fixed 0-1 s.
    async with open_server() as first:
        async with report_clients(first.url(), 3, base_delay_ms=200) as clients:
            await clients.all_connected()
            first.signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await first.process.wait() == 0
            await clients.until(
                lambda: all(opened_closes(clients, i) for i in range(3)), "every client closed"
            )
            for i in range(3):
                events = clients.of(i)
                at = next(k for k, e in enumerate(events) if e.get("type") == "server_shutdown")
                message = events[at]["message"]
                assert message["message"] == SHUTDOWN_MESSAGE, message
                assert message["reason"] == "server shutting down", message
                assert message["reconnect_after_ms"] > 0, message
                # the close that follows it is the connection's end, with 1012
                close = next(e for e in events[at:] if e["event"] == "close")
                assert close["opened"] and close["code"] == 1012, events[at:]

            async with open_server("--port", str(first.port)) as second:
                assert second.port == first.port
                await clients.all_connected(times=2)
                for i in range(3):
                    welcome = clients.of(i, "message", type="welcome")[-1]["message"]
                    assert welcome["resumed"] is False  # the report's client never resumes
                    # the report's own backoff brought it back, not the server's hint
                    assert clients.of(i, "reconnect_scheduled", attempt=1)


async def test_a_rolling_restart_brings_every_report_client_back_without_waiting_for_resumes() -> (
    None
):
    # 20 clients with the report's defaults (1 s base delay, 30 s heartbeat); they never
    # resume: each opens a new session after its backoff. The roll must not wait for them
    # (before: each step waited reconnect window + hint + 5 s, ~10 s per shard).
    async with open_server(shards=2, echo_logs=False) as server:
        async with report_clients(server.url(), 20) as clients:
            result = await roll_with_report_clients(server, clients)
            print("ROLL with the report's clients:", result)
            # "returns_stopped": nobody resumed, the step ended once returns stopped coming
            # ("all_back" if a shard happened to hold no session); never "timeout".
            assert len(result["steps"]) == 2, result
            for step in result["steps"]:
                assert step["ended"] in ("returns_stopped", "all_back"), result
            for i in range(20):
                closes = opened_closes(clients, i)
                assert closes and {c["code"] for c in closes} == {1012}, closes
                assert clients.of(i, "message", type="server_shutdown")
                assert not clients.of(i, "gave_up")
            assert not server.log.events("roll_aborted")
