"""The reconnecting client against the real supervisor, its TCP connection cut again and
again by a proxy: nothing lost, nothing doubled, in either direction."""

from __future__ import annotations

import pytest

from bench.resume_cuts import run_cuts

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(("cuts", "interval"), [(15, 0.2), (30, 0.05)])
async def test_repeated_cuts_lose_and_double_nothing(cuts: int, interval: float) -> None:
    report = await run_cuts(cuts=cuts, shards=4, interval=interval, rate=100.0)
    summary = report.summary()
    missing = [j for j in range(1, report.says_sent + 1) if report.saids_seen[j] == 0]
    print(summary, "gaps", report.client_gaps, "missing said", missing, report.server_events)
    assert summary["cuts"] == cuts
    assert summary["resumed"] >= cuts // 2  # most cuts hit a live connection
    assert summary["sessions_lost"] == 0
    assert summary["client_to_server_sent"] > 0 and summary["server_to_client_sent"] > 0
    for key in (
        "client_to_server_lost",
        "client_to_server_doubled",
        "server_to_client_lost",
        "server_to_client_doubled",
    ):
        assert summary[key] == 0, summary
