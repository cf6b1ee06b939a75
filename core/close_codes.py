"""Close codes of the wire contract and the classification of every disconnect.

The table is RFC 6455's registry (1000-1015) plus the project's application ranges:
4000-4499 are application closes after which a client may reconnect, 4500-4999 are
terminal. ``classify(code, how)`` turns what the shard observed into one of the
disconnect kinds that logs, metrics and the session machine use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015
    # Application codes (reconnectable range 4000-4499).
    SESSION_REPLACED = 4000  # another connection resumed this session (do not come back)
    COMING_BACK = 4001  # sent by a client: "I am coming back" (the session goes away)
    REDIRECT = 4002  # the room lives elsewhere: the first message said where
    RESYNC = 4003  # the shard missed broadcasts for this session: resume now (replay_gap)


APP_RECONNECT_RANGE = range(4000, 4500)
APP_TERMINAL_RANGE = range(4500, 5000)


class DisconnectKind(enum.StrEnum):
    GRACEFUL = "graceful"
    ABNORMAL = "abnormal"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    POLICY = "policy"
    SHUTDOWN = "shutdown"
    APPLICATION = "application"


class How(enum.StrEnum):
    """How the connection ended, as seen by the server."""

    CLIENT_CLOSED = "client_closed"  # the client sent a close frame with ``code``
    SERVER_CLOSED = "server_closed"  # the server sent a close frame with ``code``
    CONNECTION_LOST = "connection_lost"  # TCP ended without a close handshake
    HEARTBEAT_EXPIRED = "heartbeat_expired"  # the server gave up on a silent client


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The classification of one disconnect."""

    kind: DisconnectKind
    code: int
    reconnect: bool  # whether a well-behaved client should come back


# code -> (kind when the client sent it, kind when the server sent it, reconnect)
_TABLE: dict[int, tuple[DisconnectKind, DisconnectKind, bool]] = {
    1000: (DisconnectKind.GRACEFUL, DisconnectKind.GRACEFUL, False),
    1001: (DisconnectKind.GRACEFUL, DisconnectKind.SHUTDOWN, False),
    1002: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1003: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1005: (DisconnectKind.GRACEFUL, DisconnectKind.GRACEFUL, False),
    1006: (DisconnectKind.ABNORMAL, DisconnectKind.ABNORMAL, True),
    1007: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1008: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1009: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1010: (DisconnectKind.POLICY, DisconnectKind.POLICY, False),
    1011: (DisconnectKind.ABNORMAL, DisconnectKind.ABNORMAL, True),
    1012: (DisconnectKind.SHUTDOWN, DisconnectKind.SHUTDOWN, True),
    1013: (DisconnectKind.POLICY, DisconnectKind.POLICY, True),
    1014: (DisconnectKind.ABNORMAL, DisconnectKind.ABNORMAL, True),
    1015: (DisconnectKind.ABNORMAL, DisconnectKind.ABNORMAL, False),
}


def classify(code: int | None, how: How) -> Disconnect:
    """Classify a disconnect.

    ``code`` is the close code on the wire (``None`` when there was none). A lost
    connection is always ``abnormal``/1006 and a heartbeat expiry is always
    ``heartbeat_timeout``/1006, whatever code was passed: no close frame was exchanged.
    Server-sent 1001 means the server is going away (``shutdown``, reconnect); a
    client-sent 1001 is a graceful leave.
    """
    if how is How.CONNECTION_LOST:
        return Disconnect(DisconnectKind.ABNORMAL, 1006, True)
    if how is How.HEARTBEAT_EXPIRED:
        return Disconnect(DisconnectKind.HEARTBEAT_TIMEOUT, 1006, True)
    if code is None:
        code = 1005
    if code == CloseCode.SESSION_REPLACED:
        # Another connection owns the session now; reconnecting would steal it back.
        return Disconnect(DisconnectKind.APPLICATION, code, False)
    if code in APP_RECONNECT_RANGE:
        return Disconnect(DisconnectKind.APPLICATION, code, True)
    if code in APP_TERMINAL_RANGE:
        return Disconnect(DisconnectKind.APPLICATION, code, False)
    entry = _TABLE.get(code)
    if entry is None:
        # 3000-3999 (registered libraries) and anything else unknown: treat like a
        # protocol-level close the client chose; do not invite a reconnect loop.
        return Disconnect(DisconnectKind.POLICY, code, False)
    client_kind, server_kind, reconnect = entry
    kind = client_kind if how is How.CLIENT_CLOSED else server_kind
    if how is How.SERVER_CLOSED and code == 1001:
        reconnect = True
    return Disconnect(kind, code, reconnect)
