"""The control channel between the supervisor and its shards.

One Unix socketpair per shard carries length-prefixed (4-byte big-endian) msgspec
msgpack frames, each one member of the ``ControlMessage`` tagged union.
``FrameReader`` is the sans-I/O decoder: feed it bytes, get messages.
"""

from __future__ import annotations

import struct

import msgspec

from core.protocol import Said, UserLeft
from core.session import SessionSnapshot

MAX_FRAME = 64 * 1024 * 1024  # a hand-off of a big shard's sessions fits; garbage does not
_LEN = struct.Struct(">I")


class _Control(msgspec.Struct, tag_field="kind", kw_only=True):
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
    message: Said | UserLeft
    bseq: int = 0


class BroadcastGap(_Control, tag="broadcast_gap", kw_only=True):
    """Supervisor -> shard: broadcasts ``first``..``last`` (``bseq``) will never reach this
    shard (it fell further behind than the supervisor's broadcast log reaches). The shard
    counts it and marks every session it holds with ``replay_gap``; the next Broadcast it
    gets is ``last + 1``."""

    first: int
    last: int


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
    """Supervisor -> holder: hand ``session`` over if ``epoch`` is its current token epoch."""

    request: int
    session: str
    epoch: int


class Handoff(_Control, tag="handoff", kw_only=True):
    """Holder -> supervisor -> requester: the session (``snapshot`` None = refused)."""

    request: int
    session: str
    snapshot: SessionSnapshot | None
    applied_bseq: int = 0
    error: str | None = None  # "invalid" | "expired" when refused
    recovered: bool = False  # from a checkpoint of a shard that died, not from a live holder


class Drain(_Control, tag="drain", kw_only=True):
    """Supervisor -> shard: stop accepting, tell clients, close 1012, exit.

    With ``evacuate`` (a rolling restart) the shard first hands every room and session to
    its siblings (``Evacuate``), so clients resume elsewhere with nothing lost. Clients are
    told to come back after ``reconnect_after_ms`` plus a share of ``window_ms`` each.
    """

    reason: str
    reconnect_after_ms: int
    timeout: float
    evacuate: bool = False
    window_ms: int = 0


class Evacuate(_Control, tag="evacuate", kw_only=True):
    """Draining shard -> supervisor: a room (with the app's exported state) or a batch of
    lobby sessions, to be adopted by a sibling."""

    shard: int
    room: str | None
    app_state: bytes | None
    sessions: list[SessionSnapshot]
    applied_bseq: int


class Adopt(_Control, tag="adopt", kw_only=True):
    """Supervisor -> sibling: take over these sessions (and room) from a draining shard."""

    room: str | None
    app_state: bytes | None
    sessions: list[SessionSnapshot]
    applied_bseq: int


class Checkpoint(_Control, tag="checkpoint", kw_only=True):
    """Shard -> supervisor, every checkpoint interval: sessions changed since the last one
    (their replay buffer cut to the newest messages). A shard that dies leaves these."""

    shard: int
    sessions: list[SessionSnapshot]


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
    | SessionResumed
    | Checkpoint
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


class ControlFrameError(Exception):
    """The peer sent something that is not a control frame; the channel is unusable."""


def encode_frame(message: ControlMessage) -> bytes:
    payload = _encoder.encode(message)
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Reassembles control frames from a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ControlMessage]:
        self._buf += data
        out: list[ControlMessage] = []
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ControlFrameError(f"control frame of {size} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < 4 + size:
                break
            payload = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                out.append(_decoder.decode(payload))
            except msgspec.DecodeError as exc:
                raise ControlFrameError(str(exc)) from None
        return out
