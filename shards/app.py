"""The application API a game implements, and how ``--app`` finds one.

An app is an object with these methods, all synchronous (they must not block; game state
updates are quick, and anything slow belongs in a task the app starts itself):

* ``messages`` (optional attribute) - the app's own client message types: msgspec Structs
  subclassing ``core.protocol.ClientMessage`` with a ``tag`` (the ``type`` on the wire);
  the transport ones (``Echo``, ``Say``, ``Heartbeat``) are always understood.
* ``start(server)`` - once per shard, before any connection; keep ``server``.
* ``on_connect(session)`` - after the session's ``welcome`` was queued.
* ``on_message(session, message)`` - one decoded client message.
* ``on_away(session, reason)`` - the connection died (``abnormal``, ``heartbeat_timeout``,
  ``shutdown``); the session keeps its seat for ``--grace`` seconds: let the AI play.
* ``on_back(session, gap)`` - the player resumed; ``gap`` True means some missed messages
  were no longer buffered: send a full-state snapshot.
* ``on_leave(session, reason)`` - the session ended: ``graceful`` (closed 1000/1001),
  ``policy`` (closed for bad input) or ``expired`` (the grace window ran out).
* ``on_handoff(session)`` (optional) - the session moved to another shard (a resume there).
* ``export_room(room_id) -> bytes | None`` and ``import_room(room_id, data, sessions)``
  (optional) - a room moves with its players: to the replacement shard in a rolling
  restart, or in cluster mode to whichever node claims it after its node left (through
  Redis, possibly on another machine: put no monotonic times or process-local ids in
  ``data``; ``shards/demo.py`` sends a turn's deadline as the time left). Without them a
  moved room's game starts afresh; its players' sessions move either way.

``server.send(session, message)`` queues a stream message (a ``core.protocol.StreamMessage``
subclass) for one session: ``seq`` is stamped for you and it is kept for replay.
``server.broadcast(message, sender=None)`` reaches every session on every shard; pass the
``sender`` session when a client asked for it, so the shard's broadcast budget applies
(False: refused). ``server.notify(session, message)`` sends a message outside the stream
(not numbered, not replayed: an ``Error`` answer, say) if the session is connected.
A callback that raises closes only that client (1011) and is logged with its traceback.
``--app module:attr`` loads ``attr`` from ``module`` (a class is instantiated).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from core.protocol import ServerMessage, StreamMessage
from core.session import Session
from shards.timers import TimerHandle


class AppServer(Protocol):
    shard_index: int

    def send(self, session: Session, message: StreamMessage) -> None: ...

    def broadcast(self, message: StreamMessage, sender: Session | None = None) -> bool: ...

    def notify(self, session: Session, message: ServerMessage) -> None: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class App(Protocol):
    def start(self, server: AppServer) -> None: ...

    def on_connect(self, session: Session) -> None: ...

    def on_message(self, session: Session, message: Any) -> None: ...

    def on_away(self, session: Session, reason: str) -> None: ...

    def on_back(self, session: Session, gap: bool) -> None: ...

    def on_leave(self, session: Session, reason: str) -> None: ...


RAW_ECHO = "echo"


def load_app(spec: str, **demo_options: float) -> App | None:
    """``demo`` -> DemoApp; ``echo`` -> None (raw echo, no sessions); else ``module:attr``."""
    if spec == "demo":
        from shards.demo import DemoApp

        return DemoApp(**demo_options)  # type: ignore[arg-type]
    if spec == RAW_ECHO:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must be demo, echo or module:attr, not {spec!r}")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target() if isinstance(target, type) else target  # type: ignore[return-value]
