"""``--metrics-port``: /metrics (Prometheus text) and /status (JSON) of a real supervisor.

Shards report their counts once a second, so every check polls the endpoint (bounded)
until the numbers arrive rather than sleeping.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from collections.abc import Callable

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from core.control import Load
from lab.server import ServerProcess, open_server
from shards.stats import ShardStats
from supervisor import metrics
from tests.support import resume_path, welcomed

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One raw HTTP/1.1 GET over trio: (status, body)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            await stream.send_all(request.encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    assert status_line[0] == b"HTTP/1.1", head
    headers = dict(
        line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
    )
    assert int(headers["Content-Length"]) == len(body)
    return int(status_line[1]), body


async def raw_request(port: int, data: bytes, eof: bool = False) -> bytes:
    """Send ``data`` as is (then EOF if ``eof``); the status line of the answer."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            if eof:
                await stream.send_eof()
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer.split(b"\r\n", 1)[0]


async def scrape(port: int) -> Samples:
    status, body = await http_get(port, "/metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: object) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = {k: str(v) for k, v in labels.items()}
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and want.items() <= dict(sample_labels).items()
    )


def has(samples: Samples, name: str, **labels: object) -> bool:
    want = {k: str(v) for k, v in labels.items()}
    return any(
        sample == name and want.items() <= dict(sample_labels).items()
        for sample, sample_labels in samples
    )


async def poll(
    port: int, condition: Callable[[Samples], bool], timeout: float = 10.0, what: str = ""
) -> Samples:
    """Scrape until ``condition`` holds (the next Load reports arrive once a second)."""
    samples: Samples = {}
    try:
        with trio.fail_after(timeout):
            while True:
                samples = await scrape(port)
                if condition(samples):
                    return samples
                await trio.sleep(0.1)
    except trio.TooSlowError:
        interesting = {k: v for k, v in samples.items() if v and k[0].startswith("ws_")}
        raise AssertionError(f"metrics never showed {what}: {interesting}") from None


async def metrics_port(server: ServerProcess) -> int:
    return int((await server.log.wait_for("metrics_ready"))["port"])


def counters(samples: Samples) -> Samples:
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(("_total", "_count", "_sum", "_bucket"))
    }


async def test_connections_disconnects_resumes_messages_and_endpoints() -> None:
    async with open_server("--metrics-port", "0", shards=2) as server:
        port = await metrics_port(server)
        leaver, _ = await welcomed(server)
        player, welcome = await welcomed(server)
        await poll(port, lambda s: total(s, "ws_connections") == 2, what="2 connections")

        await player.send({"type": "echo", "data": "hi"})
        await player.receive_until("echo")
        await leaver.close(1000)
        player.vanish()
        samples = await poll(
            port,
            lambda s: (
                total(s, "ws_disconnects_total", kind="abnormal", code=1006) >= 1
                and total(s, "ws_disconnects_total", kind="graceful", code=1000) >= 1
                and total(s, "ws_sessions", state="away") == 1
            ),
            what="a graceful and an abnormal disconnect, one away session",
        )
        assert total(samples, "ws_connections") == 0
        assert total(samples, "ws_sessions", state="connected") == 0
        assert total(samples, "ws_messages_in_total") >= 1
        assert total(samples, "ws_messages_out_total") >= 3  # two welcomes and the echo

        back, again = await welcomed(server, resume_path(welcome, 0))
        assert again["resumed"] is True
        forged, refused = await welcomed(server, "/?resume=forged.token&last_seq=0")
        assert refused.get("resume_error") == "invalid"
        samples = await poll(
            port,
            lambda s: (
                total(s, "ws_resumes_total", result="ok") >= 1
                and total(s, "ws_resumes_total", result="invalid") >= 1
                and total(s, "ws_connections") == 2
            ),
            what="one ok and one invalid resume",
        )
        assert total(samples, "ws_replayed_messages_total") >= 1  # the echo, seq 1
        assert total(samples, "ws_sessions", state="away") == 0

        # A request the WebSocket port refuses counts as rejected.
        status, _ = await http_get(server.port, "/nowhere")
        assert status == 404
        samples = await poll(
            port,
            lambda s: total(s, "ws_rejected_total", reason="not_found") >= 1,
            what="the rejected request",
        )
        for shard in (0, 1):  # a GC pause histogram per shard and generation
            for generation in (0, 1, 2):
                assert has(samples, "ws_gc_pause_seconds_count", shard=shard, generation=generation)
                assert has(samples, "ws_gc_pause_seconds_bucket", shard=shard, le="+Inf")

        status, body = await http_get(port, "/status")
        assert status == 200
        report = json.loads(body)
        assert [s["shard"] for s in report["shards"]] == [0, 1]
        assert report["port"] == server.port
        assert report["counters"]["resume|ok"] >= 1
        assert report["counters"]["disconnect|graceful|1000"] >= 1
        assert sum(s["connections"] for s in report["shards"]) == 2

        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/metrics/extra"))[0] == 404
        assert await raw_request(port, b"BREW /metrics HTTP/1.1\r\n\r\n") == (
            b"HTTP/1.1 405 Method Not Allowed"
        )
        assert (await raw_request(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        cut = await raw_request(port, b"GET /metrics HTTP/1.1\r\n", eof=True)
        assert cut.startswith(b"HTTP/1.1 400")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 10_000 + b"\r\n\r\n"
        assert (await raw_request(port, huge)).startswith(b"HTTP/1.1 431")
        await back.close()
        await forged.close()


async def test_counters_survive_a_killed_shard_and_count_a_rolling_restart() -> None:
    async with open_server(
        "--metrics-port", "0", "--checkpoint-interval", "0.2", shards=2
    ) as server:
        port = await metrics_port(server)
        player, welcome = await welcomed(server)
        shard = welcome["shard"]
        for i in range(3):
            await player.send({"type": "echo", "data": i})
            await player.receive_until("echo")
        with trio.fail_after(10):
            while json.loads((await http_get(port, "/status"))[1])["checkpointed_sessions"] < 1:
                await trio.sleep(0.1)
        before = await poll(
            port,
            lambda s: total(s, "ws_messages_in_total", shard=shard) >= 3,
            what="the echoes counted",
        )

        mark = len(server.log.lines)
        os.kill(server.shard_pids()[shard], signal.SIGKILL)
        ready = trio.Event()

        async def respawned() -> None:
            await server.log.wait_for("shard_ready", shard=shard, after=mark)
            ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(respawned)
            # Scrape all through the crash and the respawn: no counter ever goes back.
            last = counters(before)
            with trio.fail_after(20):
                while True:
                    now = counters(await scrape(port))
                    dropped = {k: (v, now.get(k)) for k, v in last.items() if now.get(k, 0) < v}
                    assert not dropped, f"counters went backwards: {dropped}"
                    last = now
                    if ready.is_set() and total(now, "ws_shard_exits_total", shard=shard) == 1:
                        break
                    await trio.sleep(0.05)

        # The crashed shard's player comes back from the checkpoint: a recovered resume.
        back, again = await welcomed(server, resume_path(welcome, 3))
        assert again["resumed"] is True and again["recovered"] is True
        samples = await poll(
            port,
            lambda s: total(s, "ws_resumes_total", result="recovered") >= 1,
            what="the recovered resume",
        )
        assert total(samples, "ws_resumes_total", result="ok") == 0
        assert total(samples, "ws_messages_in_total", shard=shard) >= 3  # kept after the kill
        await back.close(1000)  # nobody to wait for during the roll

        server.signal(signal.SIGHUP)
        await server.log.wait_for("roll_done", timeout=30)
        samples = await poll(
            port,
            lambda s: (
                total(s, "ws_rolling_restarts_total", result="done") == 1
                and total(s, "ws_drains_total") >= 2
            ),
            what="a rolling restart and two drains",
        )
        assert total(samples, "ws_drain_duration_seconds_count") >= 2
        assert total(samples, "ws_drain_duration_seconds_sum") > 0
        assert total(samples, "ws_messages_in_total", shard=shard) >= 3
        for key, value in counters(before).items():
            assert samples.get(key, 0) >= value, key


def test_shard_stats_counts_events_and_times_gc_pauses_by_generation() -> None:
    stats = ShardStats()
    stats("disconnect", {"kind": "heartbeat_timeout", "code": 1006})
    stats("resume_failed", {"error": "expired"})
    stats("resume", {"session": "s", "replayed": 4})
    stats("rejected", {"status": 414, "reason": "uri_too_long"})
    stats("drain_done", {"duration_s": 0.25})
    stats("unrelated", {"kind": "x"})
    assert stats.counters == {
        "disconnect|heartbeat_timeout|1006": 1,
        "heartbeat_timeout": 1,
        "resume|expired": 1,
        "resume|ok": 1,
        "replayed": 4,
        "rejected|uri_too_long": 1,
        "drain": 1,
        "drain_seconds": 0.25,
    }
    gc.callbacks.append(stats.gc_callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(stats.gc_callback)
    assert sum(stats.gc_buckets[2]) == 1 and stats.gc_sum[2] > 0
    assert sum(stats.gc_buckets[0]) == 0
    report = stats.report(None)
    assert report["gc_pause_buckets"] == stats.gc_buckets
    assert report["gc_pause_buckets"] is not stats.gc_buckets  # a copy: encoded later
    assert {"messages_in", "messages_out"} <= report["counters"].keys()


@pytest.mark.parametrize(
    ("key", "bounded"),
    [
        ("disconnect|graceful|1000", "disconnect|graceful|1000"),
        ("disconnect|abnormal|1006", "disconnect|abnormal|1006"),
        ("disconnect|abnormal|1015", "disconnect|abnormal|1015"),
        ("disconnect|application|4000", "disconnect|application|4000"),
        ("disconnect|application|4001", "disconnect|application|4001"),
        ("disconnect|application|4002", "disconnect|application|4002"),
        ("disconnect|policy|1016", "disconnect|policy|other_app"),
        ("disconnect|policy|3000", "disconnect|policy|other_app"),
        ("disconnect|application|4003", "disconnect|application|4003"),
        ("disconnect|application|4004", "disconnect|application|other_app"),
        ("disconnect|application|4999", "disconnect|application|other_app"),
        ("disconnect|made_up|1000", "disconnect|other|other_app"),
        ("resume|ok", "resume|ok"),
        ("rejected|not_found", "rejected|not_found"),
    ],
)
def test_client_chosen_close_codes_are_bucketed_into_one_label(key: str, bounded: str) -> None:
    assert metrics.bounded_key(key) == bounded


def test_retired_and_live_totals_sum_bucketed_codes() -> None:
    totals = metrics._SlotTotals()
    counters = {f"disconnect|policy|{code}": 1.0 for code in range(3000, 3100)}
    totals.add(Load(shard=0, connections=0, sessions=0, rooms=0, counters=counters))
    merged = totals.merged(
        [Load(shard=0, connections=0, sessions=0, rooms=0, counters={"disconnect|policy|3050": 2})]
    )
    assert merged.counters == {"disconnect|policy|other_app": 102}
