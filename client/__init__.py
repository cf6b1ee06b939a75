"""The reconnecting client library: one server session kept alive across reconnects."""

from client.reconnecting import (
    Away,
    Connected,
    Event,
    GaveUp,
    Message,
    ReconnectingClient,
    Resumed,
    SessionLost,
    StreamGapError,
    open_reconnecting_client,
)
from core.backoff import Backoff

__all__ = [
    "Away",
    "Backoff",
    "Connected",
    "Event",
    "GaveUp",
    "Message",
    "ReconnectingClient",
    "Resumed",
    "SessionLost",
    "StreamGapError",
    "open_reconnecting_client",
]
