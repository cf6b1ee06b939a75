"""A player's session as the demo app sees it: identity, resume token, outbound ``seq``.

Issue "sessions" grows this into the connected -> away -> resumed | expired | left
machine with a replay buffer; for now a session lives exactly as long as its connection.
"""

from __future__ import annotations

import secrets


def new_session_id() -> str:
    """A globally unique id (64 random bits): shards need no coordination to mint one."""
    return secrets.token_hex(8)


class Session:
    """Per-session stream state. ``next_seq`` numbers server->client stream messages."""

    __slots__ = ("id", "token", "last_seq", "last_cseq")

    def __init__(self, session_id: str | None = None) -> None:
        self.id = session_id or new_session_id()
        self.token = secrets.token_urlsafe(24)
        self.last_seq = 0  # seq of the last stream message sent
        self.last_cseq = 0  # highest client cseq processed

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def saw_cseq(self, cseq: int | None) -> None:
        if cseq is not None and cseq > self.last_cseq:
            self.last_cseq = cseq
