"""HMAC resume tokens and the shared secret file."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core.tokens
from core.tokens import (
    SECRET_BYTES,
    TOKEN_TTL,
    SecretFileError,
    TokenClaims,
    TokenError,
    TokenSigner,
    load_or_create_secret,
    read_shared_secret,
    share_secret,
)

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
SID = "0123456789abcdef"
NOW = 1_700_000_000.0

session_ids = st.binary(min_size=8, max_size=8).map(bytes.hex)
epochs = st.integers(0, 2**32 - 1)


def decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ===================================================================== round trip
def test_issue_verify_round_trip() -> None:
    signer = TokenSigner(SECRET, ttl=60.0)
    token = signer.issue(SID, 7, NOW)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # URL-safe, no padding
    assert signer.verify(token, NOW) == TokenClaims(SID, 7, NOW + 60.0, NOW)


@settings(max_examples=200, deadline=None)
@given(sid=session_ids, epoch=epochs)
def test_round_trip_any_session_and_epoch(sid: str, epoch: int) -> None:
    signer = TokenSigner(SECRET)
    claims = signer.verify(signer.issue(sid, epoch, NOW), NOW)
    assert claims.session_id == sid
    assert re.fullmatch(r"[0-9a-f]{16}", claims.session_id)
    assert claims.epoch == epoch


def test_each_epoch_gets_its_own_token() -> None:
    signer = TokenSigner(SECRET)
    tokens = {signer.issue(SID, epoch, NOW) for epoch in range(100)}
    assert len(tokens) == 100


def test_another_signer_with_the_same_secret_verifies() -> None:
    """Every shard has its own signer over the one shared secret."""
    token = TokenSigner(SECRET).issue(SID, 3, NOW)
    assert TokenSigner(bytes(SECRET)).verify(token, NOW).epoch == 3


# ===================================================================== forgeries
@settings(max_examples=200, deadline=None)
@given(
    sid=session_ids,
    epoch=epochs,
    index=st.integers(0, 35),
    mask=st.integers(1, 255),
)
def test_a_tampered_token_is_invalid(sid: str, epoch: int, index: int, mask: int) -> None:
    signer = TokenSigner(SECRET)
    raw = bytearray(decode(signer.issue(sid, epoch, NOW)))
    assert len(raw) == 36
    raw[index] ^= mask
    with pytest.raises(TokenError) as info:
        signer.verify(encode(bytes(raw)), NOW)
    assert info.value.reason == "invalid"


def test_a_token_from_another_secret_is_invalid() -> None:
    token = TokenSigner(OTHER_SECRET).issue(SID, 1, NOW)
    with pytest.raises(TokenError) as info:
        TokenSigner(SECRET).verify(token, NOW)
    assert info.value.reason == "invalid"


def test_an_invalid_token_is_invalid_even_when_expired() -> None:
    """The signature is checked first: a forgery never learns about expiry."""
    token = TokenSigner(OTHER_SECRET, ttl=1.0).issue(SID, 1, NOW)
    with pytest.raises(TokenError) as info:
        TokenSigner(SECRET).verify(token, NOW + 10**6)
    assert info.value.reason == "invalid"


@pytest.mark.parametrize(
    "token",
    ["", "=", "a", "abc", "!!!!", "not a token", "é" * 48, "\x00" * 48, "A" * 47, "A" * 48],
)
def test_garbage_is_invalid(token: str) -> None:
    with pytest.raises(TokenError) as info:
        TokenSigner(SECRET).verify(token, NOW)
    assert info.value.reason == "invalid"


def test_truncated_and_extended_tokens_are_invalid() -> None:
    signer = TokenSigner(SECRET)
    raw = decode(signer.issue(SID, 1, NOW))
    for bad in (raw[:-1], raw + b"\x00", raw[:20], b""):
        with pytest.raises(TokenError) as info:
            signer.verify(encode(bad), NOW)
        assert info.value.reason == "invalid"


@settings(max_examples=200, deadline=None)
@given(token=st.text())
def test_arbitrary_text_only_raises_token_error_invalid(token: str) -> None:
    with pytest.raises(TokenError) as info:
        TokenSigner(SECRET).verify(token, NOW)
    assert info.value.reason == "invalid"


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=36, max_size=36))
def test_arbitrary_bytes_of_the_right_length_are_invalid(raw: bytes) -> None:
    with pytest.raises(TokenError) as info:
        TokenSigner(SECRET).verify(encode(raw), NOW)
    assert info.value.reason == "invalid"


# ===================================================================== expiry
def test_expired_at_and_after_expires_at() -> None:
    signer = TokenSigner(SECRET, ttl=60.0)
    token = signer.issue(SID, 1, NOW)
    expires_at = signer.verify(token, NOW).expires_at
    assert expires_at == NOW + 60.0
    assert signer.verify(token, expires_at - 0.001).epoch == 1
    for later in (expires_at, expires_at + 0.5, expires_at + 10**6):
        with pytest.raises(TokenError) as info:
            signer.verify(token, later)
        assert info.value.reason == "expired"


@pytest.mark.parametrize("ttl", [1.0, 30.0, 3600.0, TOKEN_TTL])
@pytest.mark.parametrize("now", [NOW, NOW + 0.25, NOW + 0.999])
def test_ttl_is_respected(ttl: float, now: float) -> None:
    signer = TokenSigner(SECRET, ttl=ttl)
    claims = signer.verify(signer.issue(SID, 1, now), now)
    # Whole seconds on the wire, never longer than the ttl.
    assert now + ttl - 1 < claims.expires_at <= now + ttl
    assert claims.expires_at == int(claims.expires_at)


def test_default_ttl_is_a_day() -> None:
    signer = TokenSigner(SECRET)
    assert signer.ttl == TOKEN_TTL == 86400.0
    token = signer.issue(SID, 1, NOW)
    assert signer.verify(token, NOW + TOKEN_TTL - 1).epoch == 1
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, NOW + TOKEN_TTL)


# ===================================================================== secrets
@pytest.mark.parametrize("length", [0, 1, 15])
def test_a_short_secret_is_refused(length: int) -> None:
    with pytest.raises(ValueError):
        TokenSigner(b"x" * length)


def test_a_16_byte_secret_is_enough() -> None:
    signer = TokenSigner(b"x" * 16)
    assert signer.verify(signer.issue(SID, 0, NOW), NOW).epoch == 0


def test_verify_compares_signatures_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = core.tokens.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(core.tokens.hmac, "compare_digest", spy)
    signer = TokenSigner(SECRET)
    token = signer.issue(SID, 1, NOW)
    signer.verify(token, NOW)
    assert len(calls) == 1
    given_mac, expected_mac = calls[0]
    assert given_mac == expected_mac
    assert len(given_mac) == 16

    raw = bytearray(decode(token))
    raw[-1] ^= 1
    with pytest.raises(TokenError):
        signer.verify(encode(bytes(raw)), NOW)
    assert len(calls) == 2
    assert calls[1][0] != calls[1][1]


def test_load_or_create_secret_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert len(first) == SECRET_BYTES
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    content = path.read_bytes()
    assert bytes.fromhex(content.decode()) == first

    second = load_or_create_secret(str(path))
    assert second == first
    assert path.read_bytes() == content  # not rewritten
    # Two signers from the file agree.
    token = TokenSigner(first).issue(SID, 1, NOW)
    assert TokenSigner(second).verify(token, NOW).epoch == 1


def test_different_files_get_different_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def write_private(path: Path, content: bytes) -> Path:
    """A key file as an operator would make it: 0600."""
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("content", [b"", b"\n", b"abcd", b"00" * 15, b"short secret"])
def test_a_file_with_a_short_secret_raises(tmp_path: Path, content: bytes) -> None:
    path = write_private(tmp_path / "secret", content)
    with pytest.raises(ValueError):
        load_or_create_secret(path)
    assert path.read_bytes() == content  # never replaced


def test_a_hex_secret_file_written_by_hand_is_read(tmp_path: Path) -> None:
    path = write_private(tmp_path / "secret", b"ab" * 16 + b"\n")
    assert load_or_create_secret(path) == b"\xab" * 16


def test_a_raw_secret_file_is_used_as_is(tmp_path: Path) -> None:
    path = write_private(tmp_path / "secret", b"not hex but long enough")
    assert load_or_create_secret(path) == b"not hex but long enough"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o610])
def test_a_key_file_open_to_group_or_others_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = write_private(tmp_path / "secret", b"ab" * 16)
    path.chmod(mode)
    with pytest.raises(SecretFileError) as info:
        load_or_create_secret(path)
    assert f"mode {mode:04o}" in info.value.problem
    assert info.value.fix.startswith(f"chmod 600 {path}")
    assert str(path) in str(info.value)


def test_a_symlinked_key_file_is_refused_even_to_a_private_target(tmp_path: Path) -> None:
    target = write_private(tmp_path / "real", b"ab" * 16)
    link = tmp_path / "secret"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match="symbolic link"):
        load_or_create_secret(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SecretFileError, match="symbolic link"):
        load_or_create_secret(dangling)  # O_EXCL does not create through it either
    assert not (tmp_path / "nowhere").exists()


def test_a_key_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="not a regular file"):
        load_or_create_secret(tmp_path / "dir")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="not a regular file"):
        load_or_create_secret(fifo)  # and the open did not block


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write_private(tmp_path / "secret", b"ab" * 16)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(SecretFileError, match="owned by uid 65534"):
        load_or_create_secret(path)


def test_a_shared_secret_fd_is_sealed_and_read_back_by_an_heir() -> None:
    fd = share_secret(b"k" * 32)
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"x")  # sealed: nobody can change the key behind the shards
        os.lseek(fd, 7, os.SEEK_SET)  # a moved shared offset does not matter (pread)
        assert read_shared_secret(os.dup(fd)) == b"k" * 32
        assert read_shared_secret(os.dup(fd)) == b"k" * 32
        assert os.get_inheritable(fd) is False  # only pass_fds hands it to a child
    finally:
        os.close(fd)


def test_a_token_has_exactly_one_accepted_spelling() -> None:
    signer = TokenSigner(b"s" * 32)
    token = signer.issue("0123456789abcdef", 1, 1_000.0)
    signer.verify(token, 1_000.0)
    for variant in (token + "!!", token.replace("-", "+").replace("_", "/") + "=", token + "="):
        if variant == token:
            continue
        with pytest.raises(TokenError) as info:
            signer.verify(variant, 1_000.0)
        assert info.value.reason == "invalid"
