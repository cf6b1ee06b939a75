"""Connections passed between shards before their handshake: a room's connections go to
the shard that owns the room, a resume to the shard holding the session.

The accepting shard has read the request head (``shards.connection``); if another shard
must serve it, the socket's fd travels over this shard's SOCK_SEQPACKET pair to the
supervisor (SCM_RIGHTS), with a ``PassConnection`` note carrying the head already read, and
the supervisor forwards it to the owner. One datagram = one note + one fd. The receiving
shard counts it like an accepted connection (``--max-connections`` applies: over it, the
client gets HTTP 503 at once) and serves it from the head in the note.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Awaitable, Callable

import msgspec
import trio

from core.control import PassConnection
from core.handshake import http_response
from shards.log import log

NOTE_BYTES = 16 * 1024  # a note: the routing fields plus a head of at most 8 KiB
_PASS_ENCODER = msgspec.msgpack.Encoder()
_PASS_DECODER = msgspec.msgpack.Decoder(PassConnection)


async def send_connection(
    handoff: trio.socket.SocketType, conn_fd: int, message: PassConnection
) -> None:
    """Send one connection fd with its routing note. The caller closes its own copy."""
    await handoff.sendmsg(
        [_PASS_ENCODER.encode(message)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn_fd]))],
    )


async def receive_connection(
    handoff: trio.socket.SocketType,
) -> tuple[PassConnection | None, list[int]] | None:
    """One routed connection: (note or None if unreadable, fds). None at EOF."""
    data, ancdata, _flags, _addr = await handoff.recvmsg(NOTE_BYTES, socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None
    try:
        note = _PASS_DECODER.decode(data)
    except msgspec.DecodeError:
        note = None
    return note, fds


class Router:
    """This shard's end of the hand-off pair."""

    def __init__(self, sock: socket.socket, shard_index: int) -> None:
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._lock = trio.Lock()
        self.shard_index = shard_index

    async def pass_connection(self, sock: socket.socket, note: PassConnection) -> bool:
        """Hand ``sock`` to the shard the supervisor picks; False if the supervisor is gone
        (then this shard serves it). On True the caller still closes its own copy."""
        try:
            # One writer at a time: trio refuses a second task waiting on the same fd
            # (BusyResourceError) once the socket's buffer is full, as in a resume storm.
            async with self._lock:
                await send_connection(self._sock, sock.fileno(), note)
        except OSError as exc:
            log("route_failed", shard=self.shard_index, error=repr(exc), room=note.room)
            return False
        log(
            "routed",
            shard=self.shard_index,
            room=note.room,
            session=note.session,
            peer=note.peer,
        )
        return True

    async def receive(
        self,
        serve: Callable[[socket.socket, str, PassConnection], Awaitable[None]],
        refusal: Callable[[], str | None],
        refuse: Callable[[socket.socket, str, str, trio.Nursery], None],
        nursery: trio.Nursery,
    ) -> None:
        """Serve every connection passed here: ``refusal()`` names why not (over capacity),
        then ``refuse(sock, why, peer, nursery)``; else ``serve(sock, peer, note)`` runs in
        ``nursery``."""
        while True:
            try:
                received = await receive_connection(self._sock)
            except OSError as exc:
                log("handoff_socket_error", shard=self.shard_index, error=repr(exc))
                return
            if received is None:
                return
            note, fds = received
            if note is None or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                log("handoff_bad_message", shard=self.shard_index, fds=len(fds))
                continue
            sock = socket.socket(fileno=fds[0])
            why = refusal()
            if why is not None:
                refuse(sock, why, note.peer, nursery)
                continue
            nursery.start_soon(serve, sock, note.peer, note)


def refuse_now(sock: socket.socket, why: str) -> None:
    """HTTP 503 + ``Retry-After`` and close, without waiting: the response fits an empty
    socket buffer, and what the client already sent is read first (unread input would
    turn the close into a reset that can destroy the response)."""
    try:
        sock.setblocking(False)
        sock.send(http_response(503, why))
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()
