"""python-websockets (asyncio) broadcast peer for ``python -m bench broadcast``.

``python -m bench.peers.websockets_broadcast --port 0``: one process. Every connection first
gets ``{"type":"welcome"}``; a ``{"type":"say","text":T}`` is sent to every connection
(sender included) as ``{"type":"said","from":N,"text":T}`` with ``websockets.broadcast``
(one encode, then a non-blocking write per connection, like our shards' fan-out). An
``{"type":"echo","data":X}`` is answered ``{"type":"echo","data":X}`` to its sender only
(the bystanders' echoes of ``python -m bench broadcast``: how long one waits during a
broadcast).
"""

from __future__ import annotations

import asyncio
import itertools
import json

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.peers import address, ready

CLIENTS: set[ServerConnection] = set()
IDS = itertools.count(1)


async def handler(ws: ServerConnection) -> None:
    me = next(IDS)
    CLIENTS.add(ws)
    try:
        await ws.send('{"type":"welcome"}')
        async for message in ws:
            try:
                msg = json.loads(message)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "say":
                said = {"type": "said", "from": me, "text": msg.get("text", "")}
                out = json.dumps(said, separators=(",", ":"))  # as compact as ours
                broadcast(CLIENTS, out)
            elif msg.get("type") == "echo":
                echo = {"type": "echo", "data": msg.get("data")}
                await ws.send(json.dumps(echo, separators=(",", ":")))
    finally:
        CLIENTS.discard(ws)


async def main(host: str, port: int) -> None:
    # No compression and no pings: the same frames on the wire as our server sends.
    async with serve(
        handler, host, port, compression=None, ping_interval=None, backlog=4096
    ) as server:
        ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*address()))
