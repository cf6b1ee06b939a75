"""The metrics server: bound to loopback whatever ``--host`` says, and label values that
clients choose (close codes) cannot multiply the series."""

from __future__ import annotations

import json

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from lab.rawws import RawClient
from lab.server import ServerProcess, open_server
from supervisor.cli import build_parser
from tests.support import welcomed

pytestmark = pytest.mark.timeout(90)


async def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def refused(host: str, port: int) -> bool:
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def ready_line(server: ServerProcess) -> dict[str, str]:
    return await server.log.wait_for("metrics_ready")


def test_help_documents_the_metrics_host_and_its_loopback_default() -> None:
    text = build_parser().format_help()
    assert "--metrics-host" in text and "default 127.0.0.1" in text


async def test_metrics_stay_on_loopback_when_the_game_port_is_public() -> None:
    async with open_server("--host", "0.0.0.0", "--metrics-port", "0") as server:
        line = await ready_line(server)
        port = int(line["port"])
        assert line["host"] == "127.0.0.1"
        # The game port answers on every address (127.0.0.2 stands for a public one)...
        player = await RawClient.connect(server.port, host="127.0.0.2")
        assert (await player.receive())["type"] == "welcome"
        # ...the metrics port only on loopback.
        status, body = await get("127.0.0.1", port, "/status")
        assert status == 200 and json.loads(body)["port"] == server.port
        assert await refused("127.0.0.2", port)
        await player.close()


async def test_metrics_host_moves_the_metrics_server() -> None:
    async with open_server("--metrics-port", "0", "--metrics-host", "127.0.0.2") as server:
        line = await ready_line(server)
        port = int(line["port"])
        assert line["host"] == "127.0.0.2"
        status, _ = await get("127.0.0.2", port, "/metrics")
        assert status == 200
        assert await refused("127.0.0.1", port)


async def test_a_hundred_client_chosen_close_codes_make_one_other_app_label() -> None:
    async with open_server("--metrics-port", "0", shards=2, echo_logs=False) as server:
        port = int((await ready_line(server))["port"])
        for code in range(3000, 3100):
            client, _ = await welcomed(server)
            await client.close(code)
        # A documented code keeps its own label.
        client, _ = await welcomed(server)
        await client.close(1000)

        def codes(body: bytes) -> dict[str, float]:
            out: dict[str, float] = {}
            for family in text_string_to_metric_families(body.decode()):
                for sample in family.samples:
                    if sample.name == "ws_disconnects_total":
                        code = sample.labels["code"]
                        out[code] = out.get(code, 0) + sample.value
            return out

        with trio.fail_after(20):  # shards report once a second
            while True:
                status, body = await get("127.0.0.1", port, "/metrics")
                assert status == 200
                seen = codes(body)
                if seen.get("other_app", 0) >= 100 and seen.get("1000", 0) >= 1:
                    break
                await trio.sleep(0.2)
        assert seen == {"other_app": 100, "1000": 1}, seen
        _, body = await get("127.0.0.1", port, "/status")
        counters = json.loads(body)["counters"]
        disconnects = {k: v for k, v in counters.items() if k.startswith("disconnect|")}
        assert disconnects == {"disconnect|policy|other_app": 100, "disconnect|graceful|1000": 1}
