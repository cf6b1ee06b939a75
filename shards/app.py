"""The application API a game implements, and the default ``demo`` app.

An app is an object with these methods, all synchronous (they must not block; game state
updates are quick, and anything slow belongs in a task the app starts itself):

* ``start(server)`` - once per shard, before any connection; keep ``server``.
* ``on_connect(session)`` - after the session's ``welcome`` was queued.
* ``on_message(session, message)`` - one decoded client message (``core.protocol``).
* ``on_away(session, reason)`` - the connection died (``abnormal``, ``heartbeat_timeout``,
  ``shutdown``); the session keeps its seat for ``--grace`` seconds: let the AI play.
* ``on_back(session, gap)`` - the player resumed; ``gap`` True means some missed messages
  were no longer buffered: send a full-state snapshot.
* ``on_leave(session, reason)`` - the session ended: ``graceful`` (closed 1000/1001),
  ``policy`` (closed for bad input) or ``expired`` (the grace window ran out).
* ``on_handoff(session)`` (optional) - the session moved to another shard (a resume there).

``server.send(session, message)`` queues a stream message for one session (``seq`` is
stamped for you); ``server.broadcast(message)`` reaches every session on every shard.
``--app module:attr`` loads ``attr`` from ``module`` (a class is instantiated).
"""

from __future__ import annotations

import importlib
from typing import Protocol

from core.protocol import ClientMessage, Echo, EchoReply, Said, Say, StreamMessage, UserLeft
from core.session import Session


class AppServer(Protocol):
    shard_index: int

    def send(self, session: Session, message: StreamMessage) -> None: ...

    def broadcast(self, message: Said | UserLeft) -> None: ...


class App(Protocol):
    def start(self, server: AppServer) -> None: ...

    def on_connect(self, session: Session) -> None: ...

    def on_message(self, session: Session, message: ClientMessage) -> None: ...

    def on_away(self, session: Session, reason: str) -> None: ...

    def on_back(self, session: Session, gap: bool) -> None: ...

    def on_leave(self, session: Session, reason: str) -> None: ...


class DemoApp:
    """``echo`` answers the sender, ``say`` reaches everyone, a leave is announced."""

    def __init__(self) -> None:
        self.server: AppServer | None = None

    def start(self, server: AppServer) -> None:
        self.server = server

    def on_connect(self, session: Session) -> None:
        pass

    def on_message(self, session: Session, message: ClientMessage) -> None:
        assert self.server is not None
        if isinstance(message, Echo):
            self.server.send(session, EchoReply(data=message.data))
        elif isinstance(message, Say):
            self.server.broadcast(Said(from_=session.id, text=message.text))

    def on_away(self, session: Session, reason: str) -> None:
        pass  # the lobby holds no seat; rooms (the game) let the AI play here

    def on_back(self, session: Session, gap: bool) -> None:
        pass

    def on_leave(self, session: Session, reason: str) -> None:
        assert self.server is not None
        self.server.broadcast(UserLeft(session=session.id, reason=reason))


RAW_ECHO = "echo"


def load_app(spec: str) -> App | None:
    """``demo`` -> DemoApp; ``echo`` -> None (raw echo, no sessions); else ``module:attr``."""
    if spec == "demo":
        return DemoApp()
    if spec == RAW_ECHO:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must be demo, echo or module:attr, not {spec!r}")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target() if isinstance(target, type) else target  # type: ignore[return-value]
