"""An app with bugs on purpose (``--app tests.adversarial.faulty_app:FaultyApp``): it
raises when told to, so the tests can check that one connection's failure ends only that
connection."""

from __future__ import annotations

from typing import Any

from core.protocol import Echo, EchoReply, Said, Say
from core.session import Session
from shards.app import AppServer


class FaultyApp:
    def __init__(self) -> None:
        self.server: AppServer | None = None

    def start(self, server: AppServer) -> None:
        self.server = server

    def on_connect(self, session: Session) -> None:
        if session.room == "crash-on-connect":
            raise RuntimeError("a bug in on_connect")

    def on_message(self, session: Session, message: Any) -> None:
        assert self.server is not None
        if isinstance(message, Echo):
            if message.data == "boom":
                raise ZeroDivisionError("a bug in on_message")
            if message.data == "send-unencodable":
                self.server.send(session, EchoReply(data=object()))  # not serialisable
            self.server.send(session, EchoReply(data=message.data))
        elif isinstance(message, Say):
            self.server.broadcast(Said(from_=session.id, text=message.text), session)

    def on_away(self, session: Session, reason: str) -> None:
        raise RuntimeError("a bug in on_away")

    def on_back(self, session: Session, gap: bool) -> None:
        pass

    def on_leave(self, session: Session, reason: str) -> None:
        raise RuntimeError("a bug in on_leave")
