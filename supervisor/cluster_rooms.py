"""Cluster mode: a room's game and players moving to another node through Redis when the
node that owns it leaves (``python -m supervisor drain``, SIGTERM, a node-by-node roll).

Leaving: each shard evacuates its rooms as in a rolling restart (``Evacuate`` parts: the
app's exported room state, then the room's sessions with their replay buffers). The
supervisor gathers a room's parts (``RoomExports``), stores them as one ``StoredRoom`` in
Redis and gives up the room in the same script (``RELEASE_ROOM``: only while this node's
claim and fence still hold - a fenced node's copy never reaches anyone), and only then
tells the shard ``Evacuated(ok=True)``; the room's players get ``server_shutdown`` + 1012
and come back through any node. If Redis does not take it, the shard ends the room's
sessions instead (``room_moved``), as when the lease is lost.

Arriving: the first connection for the room on another node claims it (``CLAIM_ROOM``,
fence + 1) and gets the stored room in the same step - exactly one claimer can. The
supervisor has a shard adopt it (``Adopt`` parts, as the replacement in a roll) before the
connection is routed there, so the player's resume finds its session and the game state.

Cost: one Redis write of the room's sessions and state per room when a node leaves (the
size of their checkpoints), kept ``keep_s`` (the grace window) if nobody claims the room.
"""

from __future__ import annotations

import msgspec

from core.control import Evacuate
from core.session import SnapshotBatch


class StoredRoom(msgspec.Struct, kw_only=True):
    """A room as a leaving node left it in Redis: ``applied_n`` is the says stream entry
    its sessions had applied (each node numbers says its own way: ``BroadcastBus.offset``)."""

    room: str
    app_state: bytes | None
    applied_n: int
    batches: list[SnapshotBatch]

    def sessions(self) -> list[str]:
        return [snap.id for batch in self.batches for snap in batch.sessions]


encode_room = msgspec.json.Encoder().encode
decode_room = msgspec.json.Decoder(StoredRoom).decode


class RoomExports:
    """A leaving node's rooms, gathered part by part from its shards' ``Evacuate`` frames."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, int], StoredRoom] = {}  # (generation, unit) -> so far

    def on_evacuate(self, generation: int, message: Evacuate, offset: int) -> StoredRoom | None:
        """One part; the whole room after its ``final`` part, else None. ``offset``: this
        node's ``bseq`` -> says stream entry number."""
        key = (generation, message.unit)
        stored = self._parts.get(key)
        if stored is None:
            stored = self._parts[key] = StoredRoom(
                room=message.room or "",
                app_state=message.app_state,
                applied_n=message.applied_bseq + offset,
                batches=[],
            )
        stored.batches.append(message.batch)
        if not message.final:
            return None
        return self._parts.pop(key)

    def __len__(self) -> int:
        return len(self._parts)
