"""Accepting from the listening socket every shard shares: load-aware, capped, never fatal.

Every shard waits on the one listening socket the supervisor bound (DESIGN.md decision 1)
and accepts in batches when it is readable. Load-aware: a shard well above the mean
connection count (the shared ``LoadTable``) lets its siblings take the next connections
for a moment (``core.balance``). Capped: over ``--max-connections`` (handshakes in flight
included) or ``--max-pending-handshakes`` a new connection gets HTTP 503 + ``Retry-After``
at once, so silent sockets cannot pile up to the process's fd limit. Never fatal: running
out of fds (EMFILE...) is logged and retried after a pause; the kernel keeps the
connection queued meanwhile.
"""

from __future__ import annotations

import errno
import socket

import trio

from core import balance
from shards.connection import Connections, peer_of
from shards.load_table import LoadTable
from shards.log import log

ACCEPT_BATCH = 64  # connections accepted per wake
RESOURCE_PAUSE = 0.1  # seconds to wait after EMFILE and friends
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Acceptor:
    def __init__(
        self,
        listen_sock: socket.socket,
        connections: Connections,
        load_table: LoadTable | None,
        shard_index: int,
    ) -> None:
        listen_sock.setblocking(False)
        self._listen = listen_sock
        self._connections = connections
        self._load_table = load_table
        self.shard_index = shard_index
        self.scope = trio.CancelScope()
        self.publish = load_table is not None

    def publish_load(self) -> None:
        """Write this shard's live count to the shared table (the siblings balance on it)."""
        if self._load_table is not None and self.publish:
            self._load_table.set(self.shard_index, self._connections.live)

    async def run(self, nursery: trio.Nursery) -> None:
        """Accept until ``scope`` is cancelled (a drain)."""
        listen = self._listen
        connections = self._connections
        with self.scope:
            while True:
                await self._yield_if_busiest()
                await trio.lowlevel.wait_readable(listen)
                for _ in range(ACCEPT_BATCH):
                    try:
                        sock, address = listen.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        log(
                            "accept_error",
                            shard=self.shard_index,
                            error=errno.errorcode.get(exc.errno or 0, repr(exc)),
                        )
                        if exc.errno in _RESOURCE_ERRORS:
                            await trio.sleep(RESOURCE_PAUSE)
                        break
                    peer = peer_of(address)
                    why = connections.admit()
                    if why is not None:
                        connections.refuse(sock, why, peer, nursery)
                        continue
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(connections.serve, sock, peer)

    async def _yield_if_busiest(self) -> None:
        """Let siblings take the next connection while this shard is well above the mean."""
        table = self._load_table
        if table is None:
            return
        waited = 0.0
        while waited < balance.MAX_PAUSE and balance.should_yield(
            self._connections.live, table.loads()
        ):
            await trio.sleep(balance.PAUSE)
            waited += balance.PAUSE
