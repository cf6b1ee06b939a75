"""Plain-HTTP pages: /client.js and /play from a shard; /dashboard, its vendored uPlot and
its history from the metrics port."""

from __future__ import annotations

import json

import trio

from lab.server import open_server


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


async def test_shard_serves_client_and_play_page_and_keeps_other_answers() -> None:
    async with open_server("--metrics-port", "0", shards=1, echo_logs=False) as server:
        status, headers, body = await http_get(server.port, "/client.js")
        assert status == 200
        assert headers["content-type"].startswith("application/javascript")
        assert int(headers["content-length"]) == len(body)
        assert headers["connection"] == "close"
        assert b"export class ReconnectingClient" in body
        status, headers, body = await http_get(server.port, "/play?room=x")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'from "/client.js"' in body
        status, headers, body = await http_get(server.port, "/play", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert (await http_get(server.port, "/"))[0] == 426
        assert (await http_get(server.port, "/rooms/abc"))[0] == 426
        assert (await http_get(server.port, "/nope"))[0] == 404
        assert (await http_get(server.port, "/dashboard"))[0] == 404
        metrics = int((await server.log.wait_for("metrics_ready"))["port"])
        status, headers, body = await http_get(metrics, "/dashboard")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'new EventSource("/dashboard/events")' in body
        assert b'src="/dashboard/uPlot.iife.min.js"' in body
        assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere


async def test_metrics_port_serves_the_vendored_charts_and_the_history() -> None:
    async with open_server("--metrics-port", "0", shards=1, echo_logs=False) as server:
        metrics = int((await server.log.wait_for("metrics_ready"))["port"])
        for path, content_type, start in (
            ("/dashboard/uPlot.iife.min.js", "application/javascript", b"/*! https://github"),
            ("/dashboard/uPlot.min.css", "text/css", b".uplot"),
            ("/dashboard/uPlot.LICENSE", "text/plain", b"The MIT License"),
        ):
            status, headers, body = await http_get(metrics, path)
            assert status == 200, path
            assert headers["content-type"].startswith(content_type), (path, headers)
            assert int(headers["content-length"]) == len(body) and body.startswith(start), path
        status, headers, body = await http_get(metrics, "/dashboard/history")
        assert status == 200 and headers["content-type"] == "application/json"
        history = json.loads(body)
        assert history["interval_s"] == 1 and history["capacity"] == 900
        assert history["labels"]["disconnect|abnormal"] == "abnormal (no close frame)"
        assert isinstance(history["samples"], list) and isinstance(history["markers"], list)
        status, _, body = await http_get(metrics, "/dashboard/history?since=99999999999")
        assert status == 200 and json.loads(body)["samples"] == []
        assert (await http_get(metrics, "/dashboard/history?since=soon"))[0] == 400
        assert (await http_get(metrics, "/dashboard/nope.js"))[0] == 404
