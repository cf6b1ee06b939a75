"""RFC 6455 frames, sans-I/O: the decoder of what a peer sends and the server's encoders.

Events returned by ``FrameDecoder.feed`` are 2-tuples ``(kind, value)``:
``(OP_TEXT, bytes)`` (UTF-8 validated), ``(OP_BINARY, bytes)``, ``(OP_PING, bytes)``,
``(OP_PONG, bytes)``, ``(OP_CLOSE, (code, reason))`` and ``(VIOLATION, (code, reason))``
with code 1002, 1007 or 1009. A close or a violation is the last event ever.
"""

from typing import Final, TypeAlias

OP_CONT: Final[int]  # 0
OP_TEXT: Final[int]  # 1
OP_BINARY: Final[int]  # 2
OP_CLOSE: Final[int]  # 8
OP_PING: Final[int]  # 9
OP_PONG: Final[int]  # 10
VIOLATION: Final[int]  # -1

Buffer: TypeAlias = bytes | bytearray | memoryview  # any C-contiguous bytes-like object
Event: TypeAlias = tuple[int, bytes] | tuple[int, tuple[int, str]]

class FrameDecoder:
    """Decodes the frames a peer sent into whole messages, control frames and verdicts."""

    max_message_size: Final[int]
    """Bound on a data message (1009 beyond it, decided from the header); <= 0: none."""
    client_side: Final[bool]
    """True: decode a server's frames (must be unmasked); False: a client's (masked)."""

    def __init__(self, *, max_message_size: int = 65536, client_side: bool = False) -> None:
        """A decoder holding at most ``max_message_size + 125`` bytes between calls."""
    def feed(self, data: Buffer) -> list[Event]:
        """Decode ``data`` (any bytes-like); return the events it completed, in wire order."""
    @property
    def finished(self) -> bool:
        """True once a close frame or a violation was reported: input is then ignored."""
    @property
    def buffered(self) -> int:
        """Bytes held: a partial header or control payload plus the unfinished message."""
    @property
    def in_message(self) -> bool:
        """True while a fragmented message is in progress (a frame without FIN arrived)."""

class FrameEncoder:
    """Builds client frames for test and benchmark clients, masked unless ``mask=False``."""

    mask: Final[bool]
    """Whether frames are masked (with a fresh xorshift key per frame)."""

    def __init__(self, mask: bool = True) -> None:
        """An encoder whose key generator is seeded from ``os.urandom``."""
    def frame(self, opcode: int, payload: Buffer, fin: bool = True, rsv1: bool = False) -> bytes:
        """One frame, as told (0 <= opcode <= 15; no other rule is enforced)."""
    def close(self, code: int, reason: str = "") -> bytes:
        """A close frame; same code rules and reason truncation as ``close_frame``."""

def encode_frame(opcode: int, payload: Buffer) -> bytes:
    """A server frame (FIN, unmasked); ValueError for a bad opcode or control over 125."""

def text_frame(payload: Buffer) -> bytes:
    """A server text frame of UTF-8 ``payload`` (not re-validated)."""

def binary_frame(payload: Buffer) -> bytes:
    """A server binary frame."""

def ping_frame(payload: Buffer = b"") -> bytes:
    """A server ping; ValueError when ``payload`` is over 125 bytes."""

def pong_frame(payload: Buffer = b"") -> bytes:
    """A server pong; ValueError when ``payload`` is over 125 bytes."""

def close_frame(code: int, reason: str = "") -> bytes:
    """A server close; reason cut at a character boundary; ValueError for 1005/1006/1015
    and codes outside 1000-4999."""

def stamped_text_frame(body: bytes, seq: int) -> bytes:
    """The text frame of JSON object ``body`` with ``"seq":seq`` appended, one allocation."""
