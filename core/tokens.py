"""Resume tokens: opaque, HMAC-signed, carrying the session id, a use counter and an expiry.

Layout (before base64url): 8-byte session id | 4-byte epoch | 8-byte expiry (unix seconds)
| 16-byte HMAC-SHA256 prefix over the first 20 bytes with the shared secret. The epoch is
the session's token counter: every ``welcome`` issues the token for the next epoch, and a
session only accepts the token of its current epoch, so each token works once.
Signatures are compared with ``hmac.compare_digest`` (constant time).

The key lives in ``--secret-file``: only the supervisor opens it, once, refusing a file
that anyone else could have read or planted (``load_or_create_secret``), and hands it to
every shard it spawns through an inherited sealed memfd (``share_secret`` /
``read_shared_secret``).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import hmac
import os
import stat
import struct
from dataclasses import dataclass

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


class SecretFileError(ValueError):
    """The key file cannot be trusted or used: ``problem`` says why, ``fix`` what to do."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"resume-token key file {path}: {problem}; fix: {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the shared secret; create it (32 random bytes, hex, mode 0600) if absent.

    Creation uses O_EXCL so two processes racing to create it agree on one secret. The
    file is opened with O_NOFOLLOW and refused (``SecretFileError``, a ``ValueError``) when
    it is a symlink, not a regular file, not owned by the effective user, has any group or
    other permission bit (someone else could read it, and forge every resume token, or
    plant a key of their choosing), or holds fewer than 16 bytes.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(SECRET_BYTES).hex().encode())
    try:
        # O_NONBLOCK: a FIFO planted in its place must not block the open.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecretFileError(
                name, "is a symbolic link", f"replace it with the file itself (rm {name})"
            ) from None
        raise SecretFileError(name, exc.strerror or str(exc), "check the path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(name, "is not a regular file", f"remove it (rm -r {name})")
        if st.st_uid != os.geteuid():
            raise SecretFileError(
                name,
                f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})",
                f"rm {name} (a new key is made at start) or, if you wrote it, "
                f"chown {os.geteuid()} {name}",
            )
        if st.st_mode & 0o077:
            raise SecretFileError(
                name,
                f"has group/other permissions (mode {stat.S_IMODE(st.st_mode):04o})",
                f"chmod 600 {name} if you trust its content, else rm {name}",
            )
        text = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text.decode())
    except ValueError:
        secret = text
    if len(secret) < 16:
        raise SecretFileError(name, "holds fewer than 16 bytes", f"remove it (rm {name})")
    return secret


def share_secret(secret: bytes) -> int:
    """A file descriptor holding ``secret`` for child processes to inherit (``pass_fds``):
    a sealed memfd (no write, grow, shrink or further seals), close-on-exec. Neither the
    command line nor the environment of a shard ever carries the key. Cost: one page."""
    fd = os.memfd_create("ws-secret", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, secret)
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_shared_secret(fd: int) -> bytes:
    """The secret behind an inherited ``share_secret`` fd (read with pread: the file offset
    is shared with every other holder), then closes this process's copy."""
    try:
        secret = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    if len(secret) < 16:
        raise ValueError(f"secret fd {fd} holds fewer than 16 bytes")
    return secret
