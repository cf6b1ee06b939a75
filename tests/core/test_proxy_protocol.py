"""``core.proxy_protocol``: a PROXY header (v2 binary, v1 text) is read exactly, refused
when the spec says so, and no input raises anything but ``ProxyHeaderError``."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.proxy_protocol import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    Header,
    NeedMore,
    ProxyHeaderError,
    encode_v2,
    parse,
    sniff,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def v2(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header written out by hand (the fixed 16 bytes, then ``body``)."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, size) + body


# 192.0.2.1:54321 -> 203.0.113.5:80, as the spec lays it out
TCP4_BLOCK = bytes([192, 0, 2, 1, 203, 0, 113, 5]) + struct.pack("!HH", 54321, 80)


# ---------------------------------------------------------------------- version 2
def test_v2_tcp4_gives_the_source_and_the_bytes_to_strip() -> None:
    data = v2(0x21, 0x11, TCP4_BLOCK) + REQUEST
    header = parse(data)
    assert header == Header(version=2, local=False, source=("192.0.2.1", 54321), length=28)
    assert data[header.length :] == REQUEST


def test_v2_tcp6_gives_the_source() -> None:
    src = ipaddress.IPv6Address("2001:db8::7").packed
    dst = ipaddress.IPv6Address("2001:db8::1").packed
    header = parse(v2(0x21, 0x21, src + dst + struct.pack("!HH", 40000, 443)) + REQUEST)
    assert header == Header(version=2, local=False, source=("2001:db8::7", 40000), length=52)


def test_v2_an_ipv4_mapped_source_is_the_ipv4_address() -> None:
    src = ipaddress.IPv6Address("::ffff:198.51.100.9").packed
    header = parse(v2(0x21, 0x21, src + bytes(16) + struct.pack("!HH", 1, 2)))
    assert isinstance(header, Header) and header.source == ("198.51.100.9", 1)


def test_v2_local_is_a_health_check_without_an_address_whatever_its_block() -> None:
    assert parse(v2(0x20, 0x00, b"") + REQUEST) == Header(2, True, None, 16)
    # The block (and the family, even an unknown one) is skipped, not assumed empty.
    assert parse(v2(0x20, 0x11, TCP4_BLOCK)) == Header(2, True, None, 28)
    assert parse(v2(0x20, 0x77, b"xyz")) == Header(2, True, None, 19)


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    tlvs = bytes([0x04, 0, 3]) + b"abc" + bytes([0x05, 0, 2]) + b"id"  # NOOP, UNIQUE_ID
    data = v2(0x21, 0x11, TCP4_BLOCK + tlvs) + REQUEST
    header = parse(data)
    assert header == Header(2, False, ("192.0.2.1", 54321), 28 + len(tlvs))
    assert data[header.length :] == REQUEST
    assert parse(encode_v2(("192.0.2.1", 54321), ("203.0.113.5", 80), tlvs)) == header


@pytest.mark.parametrize(
    ("family", "block"),
    [(0x00, b""), (0x00, b"ignored"), (0x12, TCP4_BLOCK), (0x22, bytes(36)), (0x31, bytes(216))],
)
def test_v2_unspec_udp_and_unix_name_no_client_address(family: int, block: bytes) -> None:
    assert parse(v2(0x21, family, block)) == Header(2, False, None, 16 + len(block))


def test_v2_a_truncated_header_needs_more_up_to_its_last_byte() -> None:
    whole = v2(0x21, 0x11, TCP4_BLOCK + bytes([0x04, 0, 1, 0]))
    for n in range(len(whole)):
        got = parse(whole[:n])
        assert isinstance(got, NeedMore) and got.at_least > n, (n, got)
    assert isinstance(parse(whole), Header)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (v2(0x11, 0x11, TCP4_BLOCK), "version 1, not 2"),
        (v2(0x31, 0x11, TCP4_BLOCK), "version 3, not 2"),
        (v2(0x22, 0x11, TCP4_BLOCK), "unknown command"),
        (v2(0x21, 0x41, TCP4_BLOCK), "unknown address family"),
        (v2(0x21, 0x13, TCP4_BLOCK), "unknown address family"),
        (v2(0x21, 0x11, TCP4_BLOCK[:8]), "cannot hold the 12-byte"),
        (v2(0x21, 0x21, TCP4_BLOCK), "cannot hold the 36-byte"),
    ],
)
def test_v2_what_the_spec_says_to_drop_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_v2_too_long_is_refused_from_the_fixed_bytes_alone() -> None:
    # Refused before the rest arrives: a peer cannot make the reader wait for 64 KiB.
    with pytest.raises(ProxyHeaderError, match=f"over {MAX_V2_LENGTH}"):
        parse(v2(0x21, 0x11, b"", length=MAX_V2_LENGTH + 1))
    longest = v2(0x21, 0x11, TCP4_BLOCK + bytes(MAX_V2_LENGTH - len(TCP4_BLOCK)))
    assert parse(longest) == Header(2, False, ("192.0.2.1", 54321), 16 + MAX_V2_LENGTH)


# ---------------------------------------------------------------------- version 1
def test_v1_tcp4_and_tcp6() -> None:
    data = b"PROXY TCP4 192.0.2.1 203.0.113.5 54321 80\r\n" + REQUEST
    header = parse(data)
    assert header == Header(1, False, ("192.0.2.1", 54321), 43)
    assert data[header.length :] == REQUEST
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n"
    assert parse(line) == Header(1, False, ("2001:db8::7", 0), len(line))
    mapped = b"PROXY TCP6 ::ffff:198.51.100.9 ::1 1 2\r\n"
    assert parse(mapped) == Header(1, False, ("198.51.100.9", 1), len(mapped))


def test_v1_unknown_names_no_address_and_the_rest_of_its_line_is_ignored() -> None:
    assert parse(b"PROXY UNKNOWN\r\n" + REQUEST) == Header(1, False, None, 15)
    v6 = b":".join([b"ffff"] * 8)
    worst = b"PROXY UNKNOWN " + v6 + b" " + v6 + b" 65535 65535\r\n"  # the spec's worst case
    assert len(worst) == MAX_V1_LENGTH
    assert parse(worst) == Header(1, False, None, MAX_V1_LENGTH)


def test_v1_a_line_without_its_crlf_needs_more_until_107_bytes() -> None:
    line = b"PROXY TCP4 192.0.2.1 203.0.113.5 54321 80\r\n"
    for n in range(len(line)):
        got = parse(line[:n])
        assert isinstance(got, NeedMore) and got.at_least > n, (n, got)
    with pytest.raises(ProxyHeaderError, match="no CRLF in the first 107 bytes"):
        parse(b"PROXY UNKNOWN " + b"f" * 200)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 54321 80\n", "lone CR or LF"),
        (b"PROXY TCP4 192.0.2.1\r 203.0.113.5 54321 80\r\n", "lone CR or LF"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 54321\r\n", "not 'PROXY TCP4"),
        (b"PROXY TCP4  192.0.2.1 203.0.113.5 54321 80\r\n", "not 'PROXY TCP4"),
        (b"PROXY UDP4 192.0.2.1 203.0.113.5 54321 80\r\n", "not 'PROXY TCP4"),
        (b"PROXYTCP4 192.0.2.1 203.0.113.5 54321 80\r\n", "one space"),
        (b"PROXY\r\n", "one space"),
        (b"PROXY TCP4 192.0.2.01 203.0.113.5 54321 80\r\n", "not an IP address"),
        (b"PROXY TCP4 2001:db8::7 203.0.113.5 54321 80\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 192.0.2.1 ::1 54321 80\r\n", "not an IPv6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 54321 80\r\n", "not an IP address"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.\xff 54321 80\r\n", "not an IP address"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 054321 80\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 65536 80\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 -1 80\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.1 203.0.113.5 1 \xd9\xa1\r\n", "not a port"),
    ],
)
def test_v1_anything_not_exactly_the_format_is_refused(line: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(line + REQUEST)


# ---------------------------------------------------------------------- telling them apart
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (REQUEST, None),
        (b"POST / HTTP/1.1\r\n", None),
        (b"\x16\x03\x01", None),  # a TLS ClientHello
        (b"\r\nGET", None),
        (b"", NeedMore(12)),
        (b"\r\n\r\n", NeedMore(12)),
        (b"P", NeedMore(5)),
        (b"PROX", NeedMore(5)),
        (b"PROXY", 1),
        (V2_SIGNATURE, 2),
    ],
)
def test_sniff_tells_a_proxy_header_from_a_request(
    data: bytes, expected: int | NeedMore | None
) -> None:
    assert sniff(data) == expected


def test_parse_refuses_data_without_a_signature() -> None:
    with pytest.raises(ProxyHeaderError, match="no PROXY protocol signature"):
        parse(REQUEST)


# ---------------------------------------------------------------------- properties
def _check_outcome(data: bytes) -> None:
    try:
        got = parse(data)
    except ProxyHeaderError:
        return
    assert isinstance(got, Header | NeedMore)
    if isinstance(got, Header):
        assert got.length <= len(data)
        assert got.length <= (16 + MAX_V2_LENGTH if got.version == 2 else MAX_V1_LENGTH)
    else:
        assert got.at_least > len(data)


@settings(max_examples=500, deadline=None)
@given(
    prefix=st.sampled_from([b"", V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 "]),
    rest=st.binary(max_size=300),
)
def test_any_bytes_give_a_header_need_more_or_a_proxy_header_error(
    prefix: bytes, rest: bytes
) -> None:
    _check_outcome(prefix + rest)


@settings(max_examples=300, deadline=None)
@given(
    ver_cmd=st.integers(0, 255),
    family=st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]) | st.integers(0, 255),
    body=st.binary(max_size=260),
    length=st.none() | st.integers(0, 0xFFFF),
)
def test_any_v2_fixed_bytes_give_a_header_need_more_or_a_proxy_header_error(
    ver_cmd: int, family: int, body: bytes, length: int | None
) -> None:
    _check_outcome(v2(ver_cmd, family, body, length))


@settings(max_examples=200, deadline=None)
@given(
    address=st.ip_addresses(),
    port=st.integers(0, 65535),
    tlvs=st.binary(max_size=64),
)
def test_what_encode_v2_writes_parses_back(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, tlvs: bytes
) -> None:
    destination = "203.0.113.5" if address.version == 4 else "2001:db8::1"
    data = encode_v2((str(address), port), (destination, 443), tlvs)
    mapped = getattr(address, "ipv4_mapped", None)
    assert parse(data + REQUEST) == Header(2, False, (str(mapped or address), port), len(data))
