"""Resume tokens: opaque, HMAC-signed, carrying the session id, a use counter and an expiry.

Layout (before base64url): 8-byte session id | 4-byte epoch | 8-byte expiry (unix seconds)
| 16-byte HMAC-SHA256 prefix over the first 20 bytes with the shared secret. The epoch is
the session's token counter: every ``welcome`` issues the token for the next epoch, and a
session only accepts the token of its current epoch, so each token works once.
Signatures are compared with ``hmac.compare_digest`` (constant time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path

_BODY = struct.Struct(">8sIQ")
_MAC_BYTES = 16
TOKEN_TTL = 24 * 3600.0  # a token older than a day is expired whatever the session does
SECRET_BYTES = 32


class TokenError(Exception):
    """``reason`` is the wire's ``resume_error``: ``invalid`` or ``expired``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    session_id: str
    epoch: int
    expires_at: float
    issued_at: float  # expires_at - the signer's ttl (whole seconds: up to 1 s early)


class TokenSigner:
    """Issues and verifies tokens with one secret shared by every shard."""

    def __init__(self, secret: bytes, ttl: float = TOKEN_TTL) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl = ttl

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, session_id: str, epoch: int, now: float) -> str:
        """A token for ``session_id`` at ``epoch``; ``now`` is unix time."""
        body = _BODY.pack(bytes.fromhex(session_id), epoch, int(now + self.ttl))
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode()

    def verify(self, token: str, now: float) -> TokenClaims:
        """The claims of a genuine, unexpired token, else ``TokenError``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise TokenError("invalid", "not base64") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            raise TokenError("invalid", "not the canonical spelling")  # one token, one form
        if len(raw) != _BODY.size + _MAC_BYTES:
            raise TokenError("invalid", "wrong length")
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise TokenError("invalid", "bad signature")
        sid, epoch, expires = _BODY.unpack(body)
        if now >= expires:
            raise TokenError("expired", "token expired")
        return TokenClaims(sid.hex(), epoch, float(expires), float(expires) - self.ttl)


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the shared secret; create it (32 random bytes, mode 0600) if absent.

    Creation uses O_EXCL so two processes racing to create it agree on one secret.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(SECRET_BYTES).hex().encode())
    text = p.read_bytes().strip()
    try:
        secret = bytes.fromhex(text.decode())
    except ValueError:
        secret = text
    if len(secret) < 16:
        raise ValueError(f"secret file {p} holds fewer than 16 bytes")
    return secret
