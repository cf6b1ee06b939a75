"""The directory: which shard holds which session and which shard owns which room.

A small interface so a Redis backend can implement it for several machines; the
supervisor uses ``InMemoryDirectory``. Ownership changes only through ``claim``
(a new session), ``move`` (a hand-off) and ``release`` (the session ended).

``RoomPlacements`` is the supervisor's bookkeeping around room ownership (sans-I/O, time
passed in): a room placed on a shard is *pending* until that shard reports it hosted, and
is released if it never is (the client left before its handshake); a room its shard let go
of lingers before it is released; both deadlines live in one heap. It also admits new
placements per client address (a cap on pending ones and a token bucket).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from core.rate_limit import TokenBucket


class SessionDirectory(Protocol):
    def claim(self, session: str, shard: int) -> None: ...

    def owner_of(self, session: str) -> int | None: ...

    def move(self, session: str, shard: int) -> None: ...

    def release(self, session: str, shard: int) -> bool: ...

    def drop_shard(self, shard: int) -> list[str]: ...

    def count(self, shard: int) -> int: ...

    def sessions(self) -> list[str]: ...

    def claim_room(self, room: str, shard: int) -> None: ...

    def room_owner(self, room: str) -> int | None: ...

    def release_room(self, room: str, shard: int) -> bool: ...

    def rooms_of(self, shard: int) -> list[str]: ...

    def room_count(self, shard: int) -> int: ...


class InMemoryDirectory:
    """A dict per direction; O(1) lookups and counts, O(sessions of the shard)
    ``drop_shard``; ``rooms_of`` sorts (for status, never on the routing path)."""

    def __init__(self) -> None:
        self._owner: dict[str, int] = {}
        self._by_shard: dict[int, set[str]] = {}
        self._room_owner: dict[str, int] = {}
        self._rooms_by_shard: dict[int, set[str]] = {}

    def claim(self, session: str, shard: int) -> None:
        self.move(session, shard)

    def owner_of(self, session: str) -> int | None:
        return self._owner.get(session)

    def move(self, session: str, shard: int) -> None:
        old = self._owner.get(session)
        if old is not None:
            self._by_shard.get(old, set()).discard(session)
        self._owner[session] = shard
        self._by_shard.setdefault(shard, set()).add(session)

    def release(self, session: str, shard: int) -> bool:
        """Forget ``session`` if ``shard`` still holds it (a stale release is ignored)."""
        if self._owner.get(session) != shard:
            return False
        del self._owner[session]
        self._by_shard.get(shard, set()).discard(session)
        return True

    def drop_shard(self, shard: int) -> list[str]:
        """A shard died: forget everything it held (rooms too); returns its sessions."""
        for room in self._rooms_by_shard.pop(shard, set()):
            if self._room_owner.get(room) == shard:
                del self._room_owner[room]
        sessions = self._by_shard.pop(shard, set())
        for session in sessions:
            if self._owner.get(session) == shard:
                del self._owner[session]
        return sorted(sessions)

    def count(self, shard: int) -> int:
        return len(self._by_shard.get(shard, ()))

    def sessions(self) -> list[str]:
        """Every session held by a live shard (O(sessions): after an outage, not per call)."""
        return list(self._owner)

    # ------------------------------------------------------------------ rooms
    def claim_room(self, room: str, shard: int) -> None:
        old = self._room_owner.get(room)
        if old is not None:
            self._rooms_by_shard.get(old, set()).discard(room)
        self._room_owner[room] = shard
        self._rooms_by_shard.setdefault(shard, set()).add(room)

    def room_owner(self, room: str) -> int | None:
        return self._room_owner.get(room)

    def release_room(self, room: str, shard: int) -> bool:
        if self._room_owner.get(room) != shard:
            return False
        del self._room_owner[room]
        self._rooms_by_shard.get(shard, set()).discard(room)
        return True

    def rooms_of(self, shard: int) -> list[str]:
        """O(r log r) in the shard's rooms: for status and tests, not for placing rooms."""
        return sorted(self._rooms_by_shard.get(shard, ()))

    def room_count(self, shard: int) -> int:
        """Rooms ``shard`` owns, O(1): what placement compares."""
        return len(self._rooms_by_shard.get(shard, ()))


# ====================================================================== placements
PLACEMENT_SLACK = 5.0  # default placement timeout = the handshake timeout + this
ROOM_LINGER = 5.0  # seconds an emptied room stays with its shard before it may move
ADDRESS_TABLE_SIZE = 16_384  # client addresses remembered for admission (LRU), ~3 MiB


class PlacementRefused(Exception):
    """A new room refused for its client address. ``reason``: ``pending_cap`` (too many of
    its placements are not hosted yet) or ``rate`` (placing rooms too fast); ``refused``
    counts this address's refusals so far (for sampled logging)."""

    def __init__(self, reason: str, address: str, refused: int) -> None:
        super().__init__(f"room placement refused ({reason}) for {address}")
        self.reason = reason
        self.address = address
        self.refused = refused


@dataclass(frozen=True, slots=True)
class ExpiredPlacement:
    """A placement whose owner never reported the room hosted within the timeout."""

    room: str
    shard: int
    address: str  # the admission key of the client that caused it ("" = unknown)
    released: bool  # False when the directory named another owner by then


class _Address:
    __slots__ = ("pending", "bucket", "refused")

    def __init__(self, bucket: TokenBucket | None) -> None:
        self.pending = 0  # this address's placements not hosted yet
        self.bucket = bucket
        self.refused = 0


class _Pending:
    __slots__ = ("shard", "address", "seq")

    def __init__(self, shard: int, address: str, seq: int) -> None:
        self.shard = shard
        self.address = address
        self.seq = seq


def address_key(peer: str) -> str:
    """What one client is, for admission: an IPv4 address, or an IPv6 /64 (one subscriber
    usually holds a whole /64). "" (unknown) stays "" and is never capped. A trailing
    ``:port`` is dropped (``1.2.3.4:5``, ``[::1]:5``)."""
    if not peer:
        return ""
    if peer.startswith("["):
        peer = peer[1 : peer.find("]")] if "]" in peer else peer[1:]
    if peer.startswith("::ffff:") and "." in peer:
        return peer[len("::ffff:") :]
    if ":" not in peer:
        return peer
    if peer.count(":") == 1 and "." in peer:
        return peer.partition(":")[0]
    try:
        net = ipaddress.IPv6Network(f"{peer.strip('[]')}/64", strict=False)
    except ValueError:
        return peer
    return f"{net.network_address}/64"


class RoomPlacements:
    """Rooms placed and not yet hosted (*pending*) and rooms released by their shard
    (*lingering*), each with a deadline in one heap; and per-address admission of new
    placements. Sans-I/O: ``now`` is passed in; the directory is updated here.

    ``timeout``: seconds a placed room waits for ``hosted`` before ``expire`` releases it
    (the supervisor passes ``--placement-timeout``, default the handshake timeout + 5 s:
    shorter frees an abandoned placement sooner but could release a room whose slow client
    is still in its handshake). ``linger``: seconds a room ``released`` by its shard keeps
    its owner (default 5 s: a connection for it may be in flight there). ``max_pending``:
    placements not yet hosted per address, 0 = no cap (default 16); ``rate``/``burst``:
    new placements per address per second and at once, ``rate`` None = no limit (default
    20/s, 50). Costs: O(log n) per placement, release and expiry, n = heap entries, kept
    under twice the live pending + lingering rooms + 1024 (stale entries are compacted
    away); about 200 bytes per address, at most ``max_addresses`` (default 16,384: the
    least recently seen is evicted and its counts forgotten).
    """

    def __init__(
        self,
        directory: SessionDirectory,
        *,
        timeout: float,
        linger: float = ROOM_LINGER,
        max_pending: int = 16,
        rate: float | None = 20.0,
        burst: float = 50.0,
        max_addresses: int = ADDRESS_TABLE_SIZE,
    ) -> None:
        self.directory = directory
        self.timeout = timeout
        self.linger = linger
        self.max_pending = max_pending
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._pending: dict[str, _Pending] = {}
        self._lingering: dict[str, tuple[int, int]] = {}  # room -> (shard, seq)
        self._heap: list[tuple[float, int, str]] = []  # (deadline, seq, room)
        self._seq = 0
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def lingering(self) -> int:
        return len(self._lingering)

    def pending_of(self, peer: str) -> int:
        entry = self._addresses.get(address_key(peer))
        return entry.pending if entry is not None else 0

    def is_pending(self, room: str) -> bool:
        return room in self._pending

    def next_deadline(self) -> float | None:
        """When ``expire`` may next have work (possibly a stale entry: then it has none)."""
        return self._heap[0][0] if self._heap else None

    def place(self, room: str, shard: int, peer: str, now: float) -> None:
        """Give ``room`` to ``shard`` in the directory, pending until ``hosted``; raises
        ``PlacementRefused`` (and changes nothing) when ``peer``'s address is over a cap."""
        key = address_key(peer)
        if key:
            self._admit(key, now)
        old = self._pending.pop(room, None)
        if old is not None:
            self._unpend(old)
        self._lingering.pop(room, None)
        self.directory.claim_room(room, shard)
        self._seq += 1
        self._pending[room] = _Pending(shard, key, self._seq)
        self._push(now + self.timeout, room)

    def hosted(self, room: str, shard: int) -> None:
        """``shard`` hosts ``room``: its pending placement there is confirmed and any
        linger of the room is cancelled."""
        self._lingering.pop(room, None)
        pending = self._pending.get(room)
        if pending is not None and pending.shard == shard:
            del self._pending[room]
            self._unpend(pending)

    def released(self, room: str, shard: int, now: float) -> None:
        """``shard``'s last session of ``room`` ended: release the room after ``linger``
        unless it is hosted again meanwhile (``hosted`` cancels this)."""
        pending = self._pending.get(room)
        if pending is not None and pending.shard == shard:
            del self._pending[room]
            self._unpend(pending)
        self._seq += 1
        self._lingering[room] = (shard, self._seq)
        self._push(now + self.linger, room)

    def expire(self, now: float) -> list[ExpiredPlacement]:
        """Release every room whose deadline passed; returns the expired placements
        (lingering rooms are released silently, as they always were)."""
        out: list[ExpiredPlacement] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, room = heapq.heappop(heap)
            pending = self._pending.get(room)
            if pending is not None and pending.seq == seq:
                del self._pending[room]
                self._unpend(pending)
                released = self.directory.release_room(room, pending.shard)
                out.append(ExpiredPlacement(room, pending.shard, pending.address, released))
                continue
            linger = self._lingering.get(room)
            if linger is not None and linger[1] == seq:
                del self._lingering[room]
                self.directory.release_room(room, linger[0])
        return out

    # ------------------------------------------------------------------ internals
    def _admit(self, key: str, now: float) -> None:
        entry = self._addresses.get(key)
        if entry is None:
            if len(self._addresses) >= self.max_addresses:
                self._addresses.popitem(last=False)
            bucket = TokenBucket(self.rate, self.burst, now) if self.rate else None
            entry = self._addresses[key] = _Address(bucket)
        else:
            self._addresses.move_to_end(key)
        if self.max_pending and entry.pending >= self.max_pending:
            reason = "pending_cap"
        elif entry.bucket is not None and not entry.bucket.take(now):
            reason = "rate"
        else:
            entry.pending += 1
            return
        entry.refused += 1
        raise PlacementRefused(reason, key, entry.refused)

    def _unpend(self, pending: _Pending) -> None:
        if pending.address:
            entry = self._addresses.get(pending.address)
            if entry is not None and entry.pending > 0:
                entry.pending -= 1

    def _push(self, deadline: float, room: str) -> None:
        heapq.heappush(self._heap, (deadline, self._seq, room))
        live = len(self._pending) + len(self._lingering)
        if len(self._heap) > 2 * live + 1024:
            # Entries of hosted or replaced placements are stale: drop them in one pass
            # (amortised O(1) per push, since at least live + 1024 pushes come between).
            self._heap = [e for e in self._heap if self._current(e)]
            heapq.heapify(self._heap)

    def _current(self, entry: tuple[float, int, str]) -> bool:
        _, seq, room = entry
        pending = self._pending.get(room)
        if pending is not None and pending.seq == seq:
            return True
        linger = self._lingering.get(room)
        return linger is not None and linger[1] == seq
