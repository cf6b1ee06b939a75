"""python-websockets (asyncio) echo peer: ``python -m bench.peers.websockets_echo --port 0``."""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    # No compression and no pings: the same frames on the wire as every other server.
    async with serve(echo, host, port, compression=None, ping_interval=None) as server:
        print(f"ready port={server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    asyncio.run(main(a.host, a.port))
