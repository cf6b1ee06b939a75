"""Plain-HTTP pages: /client.js and /play from a shard, /dashboard from the metrics port."""

from __future__ import annotations

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
        assert b'fetch("/status"' in body
