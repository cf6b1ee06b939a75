"""The control channel between the supervisor and its shards.

One Unix socketpair per shard carries length-prefixed (4-byte big-endian) msgspec
msgpack frames, each one member of the ``ControlMessage`` tagged union.
``FrameReader`` is the sans-I/O decoder: feed it bytes, get messages.

Frames are bounded: whatever carries sessions (checkpoints, hand-offs, evacuations) is
split into batches of about ``FRAME_BUDGET`` (1 MiB) by ``core.session.pack``, with each
shared broadcast body carried once per batch. A frame over ``MAX_FRAME`` (16 MiB), or
one that does not decode (a peer of other code during a rolling restart), is skipped and
reported by the reader - never a reason to drop the channel or kill its shard. Memory: the
reader holds at most one frame (``MAX_FRAME``) plus one read.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from core.session import SnapshotBatch

MAX_FRAME = 16 * 1024 * 1024
FRAME_BUDGET = 1024 * 1024  # what a sender packs into one frame of sessions
_LEN = struct.Struct(">I")


class _Control(msgspec.Struct, tag_field="kind", kw_only=True, omit_defaults=True):
    pass


class Ready(_Control, tag="ready", kw_only=True):
    """Shard -> supervisor: listening and serving."""

    shard: int
    pid: int
    generation: int


class Broadcast(_Control, tag="broadcast", kw_only=True):
    """A stream message for every session on every shard.

    Shards send it with ``bseq`` 0; the supervisor numbers broadcasts in one total order
    and relays them to every shard, the origin included. A session handed between shards
    records the last ``bseq`` applied to it, so nothing is lost or doubled in transit.
    """

    origin: int
    body: bytes  # the stream message's JSON body without seq (core.protocol.encode_body)
    bseq: int = 0
    # The client message that asked for it (a say): its session and cseq, so the holder of
    # a durable journal marks it processed in the same frame as its effect.
    sender: str | None = None
    cseq: int | None = None


class BroadcastGap(_Control, tag="broadcast_gap", kw_only=True):
    """Supervisor -> shard: broadcasts ``first``..``last`` (``bseq``) will never reach this
    shard (it fell further behind than the supervisor's broadcast log reaches). The shard
    counts it and marks every session it holds with ``replay_gap``; the next Broadcast it
    gets is ``last + 1``."""

    first: int
    last: int


class Journal(_Control, tag="journal", kw_only=True):
    """Shard -> supervisor (``--durability stream``): changes of the shard's sessions, in
    order, written before the bytes they describe reach any client (``core.journal``)."""

    shard: int
    entries: list[Any]


class Claim(_Control, tag="claim", kw_only=True):
    """Shard -> supervisor: this shard now holds ``session``."""

    shard: int
    session: str


class Release(_Control, tag="release", kw_only=True):
    """Shard -> supervisor: ``session`` ended (left or expired) on this shard."""

    shard: int
    session: str


class Fetch(_Control, tag="fetch", kw_only=True):
    """Shard -> supervisor: a client resumes ``session`` here; get it from its holder."""

    request: int
    shard: int
    session: str
    epoch: int


class Surrender(_Control, tag="surrender", kw_only=True):
    """Supervisor -> holder: hand ``session`` over if ``epoch`` is its current token epoch.
    ``force``: whatever the epoch (cluster mode: another node took the session while this
    node was cut off from Redis; this copy is stale)."""

    request: int
    session: str
    epoch: int
    force: bool = False


class Handoff(_Control, tag="handoff", kw_only=True):
    """Holder -> supervisor -> requester: the session (``batch`` None = refused)."""

    request: int
    session: str
    batch: SnapshotBatch | None
    applied_bseq: int = 0
    error: str | None = None  # "invalid" | "expired" when refused
    recovered: bool = False  # from a checkpoint of a shard that died, not from a live holder
    exact: bool = False  # ...from its journal (--durability stream): resume it as it was
    # Recovered in cluster mode: the last broadcast (this shard's bseq) the dead node can
    # have delivered (it had read no further); those after it are new to the client.
    seen_until_bseq: int | None = None


class Drain(_Control, tag="drain", kw_only=True):
    """Supervisor -> shard: stop accepting, tell clients, close 1012, exit.

    With ``evacuate`` (a rolling restart) the shard hands its rooms and sessions to the
    replacement one unit at a time (a room with its players, or a slice of the lobby),
    paced across ``window_ms``: ``Evacuate`` frames, then - once the supervisor answers
    ``Evacuated(ok=True)`` - ``server_shutdown`` and 1012 to that unit's clients, who
    come back after ``reconnect_after_ms``. Until its unit's turn a connection is served
    as usual. ``Evacuated(ok=False)`` aborts: the shard keeps serving everything it holds.
    """

    reason: str
    reconnect_after_ms: int
    timeout: float
    evacuate: bool = False
    window_ms: int = 0
    # Cluster mode, a node leaving: new connections get HTTP 503 (so a load balancer's
    # health check takes the node out of rotation at once), rooms are evacuated (with
    # ``evacuate``; their state goes through Redis to the node that claims each room next)
    # or else their sessions end, and once every connection is closed the shard keeps its
    # away sessions up to this long so the nodes their players come back to can fetch them.
    hold_s: float = 0.0


class EvictRooms(_Control, tag="evict_rooms", kw_only=True):
    """Supervisor -> shard (cluster mode): this node lost its lease, another node may own
    its rooms now. End every room session here and tell its client to come back
    (``server_shutdown`` + 1012) to be seated by the room's new owner."""

    reason: str
    reconnect_after_ms: int


class Evacuate(_Control, tag="evacuate", kw_only=True):
    """Draining shard -> supervisor: part of one unit (a room with the app's exported
    state in its first part, or a slice of lobby sessions) for the replacement to adopt.
    ``final`` marks the unit's last part."""

    shard: int
    unit: int
    room: str | None
    app_state: bytes | None
    batch: SnapshotBatch
    applied_bseq: int
    final: bool = True


class Adopt(_Control, tag="adopt", kw_only=True):
    """Supervisor -> replacement: take over these sessions (and room). After the ``final``
    part the replacement answers ``Adopted``."""

    unit: int
    room: str | None
    app_state: bytes | None
    batch: SnapshotBatch
    applied_bseq: int
    final: bool = True


class Adopted(_Control, tag="adopted", kw_only=True):
    """Replacement -> supervisor: it holds every session of ``unit`` now."""

    shard: int
    unit: int


class Evacuated(_Control, tag="evacuated", kw_only=True):
    """Supervisor -> draining shard: ``unit`` is held by the replacement (``ok``): tell
    its clients to come back; or the hand-off failed (not ``ok``): stop draining and keep
    serving everything still held."""

    unit: int
    ok: bool


class Checkpoint(_Control, tag="checkpoint", kw_only=True):
    """Shard -> supervisor, every checkpoint interval: sessions changed since the last one
    (their replay buffer cut to the newest messages) and the ``bseq`` the shard had applied.
    A shard that dies leaves these; its sessions are parked from them and catch up with
    every broadcast numbered after ``applied_bseq``."""

    shard: int
    batch: SnapshotBatch
    applied_bseq: int = 0


class SessionResumed(_Control, tag="session_resumed", kw_only=True):
    """Shard -> supervisor: a client resumed ``session`` here (rolls wait for these)."""

    shard: int
    session: str


class Drained(_Control, tag="drained", kw_only=True):
    """Shard -> supervisor: every connection is closed (``forced`` of them by the deadline)."""

    shard: int
    closed: int
    forced: int


# Upper bounds (seconds) of the GC pause histogram buckets in ``Load.gc_pause_buckets``
# (a last, +Inf bucket follows). Changing them needs a full restart, not a rolling one.
GC_PAUSE_BOUNDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Load(_Control, tag="load", kw_only=True):
    """Shard -> supervisor, every second: what it carries (placement, status, metrics).

    The fields after ``rooms`` are optional so old and new shards and supervisors
    interoperate; they are totals since the shard started (``shards/stats.py``).
    """

    shard: int
    connections: int
    sessions: int
    rooms: int
    sessions_away: int = 0  # of ``sessions``, those without a connection (grace running)
    # "name" or "name|label value|...": the keys are listed in shards/stats.py
    counters: dict[str, float] = {}
    # per GC generation: collections per GC_PAUSE_BOUNDS bucket (not cumulative, +Inf last)
    gc_pause_buckets: list[list[int]] = []
    gc_pause_sum: list[float] = []  # per GC generation: seconds paused in total


class RoomHosted(_Control, tag="room_hosted", kw_only=True):
    """Shard -> supervisor: ``room`` has its first session here (it owns the room)."""

    shard: int
    room: str


class RoomReleased(_Control, tag="room_released", kw_only=True):
    """Shard -> supervisor: the last session of ``room`` ended here."""

    shard: int
    room: str


class PassConnection(msgspec.Struct, kw_only=True):
    """Sent with one fd (SCM_RIGHTS) over a shard's SOCK_SEQPACKET hand-off socket:
    shard -> supervisor "route this", supervisor -> owner "serve this"."""

    room: str | None = None
    session: str | None = None
    origin: int = -1
    peer: str = ""  # the client's address ("host" without the port), for per-address caps
    head: bytes = b""  # the request head the origin already read off the socket (<= 8 KiB)
    # Cluster mode, supervisor -> shard: another node owns the room; answer the upgrade,
    # send a redirect to this public URL (+ the request's target) and close 4002.
    redirect: str = ""


ControlMessage = (
    Ready
    | Broadcast
    | BroadcastGap
    | Drain
    | Drained
    | Claim
    | Release
    | Fetch
    | Surrender
    | Handoff
    | Load
    | RoomHosted
    | RoomReleased
    | Evacuate
    | Adopt
    | Adopted
    | Journal
    | Evacuated
    | SessionResumed
    | Checkpoint
    | EvictRooms
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


class ControlFrameError(Exception):
    """A frame that was skipped: over ``MAX_FRAME``, or not a control message."""


def encode_frame(message: ControlMessage) -> bytes:
    payload = _encoder.encode(message)
    if len(payload) > MAX_FRAME:
        raise ControlFrameError(f"control frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(payload)) + payload


def decode_frame(frame: bytes) -> ControlMessage:
    """One whole frame from ``encode_frame`` back to its message."""
    return _decoder.decode(memoryview(frame)[4:])


class FrameReader:
    """Reassembles control frames from a byte stream. A frame that is too big or does not
    decode is skipped (its bytes discarded as they arrive, never buffered) and described in
    ``skipped`` for the caller to log; the frames around it are read as usual."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discard = 0  # bytes of an oversized frame still to throw away
        self.skipped: list[str] = []

    def feed(self, data: bytes) -> list[ControlMessage]:
        if self._discard:
            n = min(self._discard, len(data))
            self._discard -= n
            data = data[n:]
        self._buf += data
        out: list[ControlMessage] = []
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > MAX_FRAME:
                self.skipped.append(f"control frame of {size} bytes exceeds {MAX_FRAME}")
                n = min(size, len(self._buf) - 4)
                del self._buf[: 4 + n]
                self._discard = size - n
                continue
            if len(self._buf) < 4 + size:
                break
            payload = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                out.append(_decoder.decode(payload))
            except (msgspec.DecodeError, RecursionError) as exc:  # deep nesting recurses
                self.skipped.append(f"undecodable control frame: {str(exc)[:120]}")
        return out
