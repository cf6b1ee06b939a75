"""python-websockets (asyncio) echo peer: ``python -m bench.peers.websockets_echo --port 0``."""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve

from bench.peers import address, ready


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    # No compression and no pings: the same frames on the wire as every other server.
    async with serve(echo, host, port, compression=None, ping_interval=None) as server:
        ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*address()))
