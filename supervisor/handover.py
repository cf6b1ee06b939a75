"""One step of a rolling restart: the draining shard's units move to its replacement.

The old shard sends each unit (a room with its players, or a slice of the lobby) as
``Evacuate`` parts; each part is forwarded to the replacement as ``Adopt``. When the
replacement answers ``Adopted`` for a unit, the directory points the unit's sessions (and
room) at the replacement and the old shard is told ``Evacuated(ok=True)``: only then does it
close that unit's clients with 1012, so a client that comes straight back always finds its
session where the directory says it is.

A hand-off that cannot complete - the replacement dies, or a unit is not adopted within
``timeout`` (the fetch timeout) - fails the whole step: every unit still in flight is
answered ``Evacuated(ok=False)``, the old shard keeps serving what it still holds, and the
roll stops (``roll_aborted``). Units already adopted stay with the replacement; if it died,
their snapshots (kept as checkpoints of its generation) let their players resume with
``recovered: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from core.control import Adopt, Adopted, Evacuate, Evacuated, encode_frame
from core.directory import SessionDirectory
from core.session import SessionSnapshot, SnapshotBatch
from shards.log import log

if TYPE_CHECKING:
    from supervisor.arbiter import ShardHandle


Keep = Callable[[int, SessionSnapshot, list[bytes], int], None]
Arriving = Callable[[int, SnapshotBatch], None]


def give(new: ShardHandle, part: Adopt, keep: Keep, arriving: Arriving) -> None:
    """Send ``new`` one part of a unit to adopt. Its sessions are kept first as checkpoints
    of ``new`` (``keep``; should ``new`` die, they resume from them) and announced to the
    session park (``arriving``: ``new``'s journal will say when they arrived)."""
    for snap in part.batch.sessions:
        keep(new.generation, snap, part.batch.bodies, part.applied_bseq)
    arriving(new.generation, part.batch)
    new.send_frame(encode_frame(part))


class Handover:
    """``old``'s units to ``new``. ``keep(generation, snapshot, bodies, applied_bseq)`` stores
    a session's snapshot as a checkpoint, ``arriving(generation, batch)`` tells the session
    park what the replacement's journal will say arrived; ``returning`` collects the
    sessions whose players must come back before the roll moves on."""

    def __init__(
        self,
        old: ShardHandle,
        new: ShardHandle,
        directory: SessionDirectory,
        timeout: float,
        keep: Keep,
        arriving: Arriving,
        returning: set[str],
    ) -> None:
        self.old = old
        self.new = new
        self.directory = directory
        self.timeout = timeout
        self._keep = keep
        self._arriving = arriving
        self.returning = returning
        self._pending: dict[int, tuple[str | None, list[str], float]] = {}
        self._parts: dict[int, list[str]] = {}
        self.evacuated = 0  # sessions adopted by the replacement
        self.failed: str | None = None
        self.failed_event = trio.Event()
        self.changed = trio.Event()

    def on_evacuate(self, message: Evacuate) -> None:
        """One part of a unit from the old shard: forward it to the replacement."""
        if self.failed is not None:
            self.old.send_frame(encode_frame(Evacuated(unit=message.unit, ok=False)))
            return
        self._parts.setdefault(message.unit, []).extend(s.id for s in message.batch.sessions)
        give(
            self.new,
            Adopt(
                unit=message.unit,
                room=message.room,
                app_state=message.app_state,
                batch=message.batch,
                applied_bseq=message.applied_bseq,
                final=message.final,
            ),
            self._keep,
            self._arriving,
        )
        if message.final:
            deadline = trio.current_time() + self.timeout
            self._pending[message.unit] = (message.room, self._parts.pop(message.unit), deadline)

    def on_adopted(self, message: Adopted) -> None:
        """The replacement holds a unit: point the directory at it, release the clients."""
        entry = self._pending.pop(message.unit, None)
        if entry is None:
            return
        room, ids, _ = entry
        if room is not None:
            self.directory.claim_room(room, self.new.generation)
        for sid in ids:
            self.directory.move(sid, self.new.generation)
        self.returning.update(ids)
        self.evacuated += len(ids)
        log(
            "evacuated",
            room=room,
            sessions=len(ids),
            from_shard=self.old.index,
            to_shard=self.new.index,
            to_pid=self.new.pid,
        )
        self.old.send_frame(encode_frame(Evacuated(unit=message.unit, ok=True)))
        self.changed.set()

    def fail(self, why: str) -> None:
        """Stop the step: the old shard keeps every unit not yet adopted."""
        if self.failed is not None:
            return
        self.failed = why
        log(
            "handover_failed",
            shard=self.old.index,
            reason=why,
            units_in_flight=len(self._pending) + len(self._parts),
        )
        for unit in [*self._pending, *self._parts]:
            self.old.send_frame(encode_frame(Evacuated(unit=unit, ok=False)))
        self._pending.clear()
        self._parts.clear()
        self.failed_event.set()
        self.changed.set()

    async def watch(self) -> None:
        """Fail the step when the replacement dies or a unit is not adopted in time."""
        while self.failed is None:
            if self.new.exited.is_set():
                self.fail("the replacement exited")
                return
            now = trio.current_time()
            if any(deadline < now for _, _, deadline in self._pending.values()):
                self.fail(f"a unit was not adopted within {self.timeout:g} s")
                return
            with trio.move_on_after(0.25):
                await self.new.exited.wait()
