"""The PROXY protocol header a load balancer puts before the request, read sans-I/O.

HAProxy's ``send-proxy-v2`` (or ``send-proxy``) makes the balancer open each connection to
a server with one header naming the client's address, before any of the client's bytes
(spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt). ``sniff(data)`` says
whether a connection's first bytes begin with one at all; ``parse(data)`` reads it: a
``Header`` (the client's address, and how many bytes to strip before the HTTP request),
``NeedMore`` while it is incomplete, or ``ProxyHeaderError`` for anything the spec says to
reject. Whether to *believe* it is the caller's decision (``--trusted-proxy``).

- Version 2 (binary): the 12-byte signature, version 2 only, command ``PROXY`` or
  ``LOCAL`` (the balancer's own connection, a health check: no client address). TCP over
  IPv4/IPv6 gives the source address and port (an IPv4-mapped IPv6 address is given as
  the IPv4 one, so it is counted as the same client); UNSPEC, UDP and UNIX give none
  (``source`` None: keep the connection's own address). Other family bytes, versions and
  commands are refused. What follows the 16 fixed bytes is at most ``MAX_V2_LENGTH``
  (1024) bytes, else refused, so a header is at most 1040 bytes; TLVs after the address
  block are skipped, not read.
- Version 1 (text) is supported too: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``
  or ``PROXY UNKNOWN ...\\r\\n`` (no address), at most 107 bytes with its CRLF, read
  strictly: canonical addresses of the family named, ports without leading zeroes, no
  lone CR or LF.

Pure; O(header length).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_SIGNATURE = b"PROXY"
MAX_V1_LENGTH = 107  # "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n", the spec's worst case
MAX_V2_LENGTH = 1024  # bytes after the 16 fixed ones: addresses (<= 216) and TLVs

LOCAL, PROXY = 0x0, 0x1
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
# family/transport byte -> the length of its address block
ADDRESS_LENGTHS = {
    UNSPEC: 0,
    TCP4: 12,
    UDP4: 12,
    TCP6: 36,
    UDP6: 36,
    UNIX_STREAM: 216,
    UNIX_DGRAM: 216,
}


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header the spec allows; the message says why."""


@dataclass(frozen=True, slots=True)
class Header:
    """One parsed header. ``source``: the client's (address, port), or None when the
    header names none (``LOCAL``, UNSPEC/UDP/UNIX, v1 ``UNKNOWN``): the connection's own
    peer stands. ``length``: how many bytes of the data the header took."""

    version: int
    local: bool
    source: tuple[str, int] | None
    length: int


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not enough bytes to decide: ``at_least`` bytes are needed (more may be, after)."""

    at_least: int


def sniff(data: bytes | bytearray) -> int | NeedMore | None:
    """The PROXY protocol version ``data`` begins with (1 or 2), None if it begins with
    anything else, ``NeedMore`` while it is a prefix of a signature (empty data too)."""
    for version, signature in ((2, V2_SIGNATURE), (1, V1_SIGNATURE)):
        n = min(len(data), len(signature))
        if data[:n] == signature[:n]:
            return version if n == len(signature) else NeedMore(len(signature))
    return None


def parse(data: bytes | bytearray) -> Header | NeedMore:
    """The header at the start of ``data`` (see the module text); ``ProxyHeaderError`` if
    ``data`` does not begin with a valid one - as soon as that is certain, so a bad
    header is refused before the rest of it arrives."""
    version = sniff(data)
    if version is None:
        raise ProxyHeaderError("no PROXY protocol signature")
    if isinstance(version, NeedMore):
        return version
    return _parse_v2(data) if version == 2 else _parse_v1(data)


def encode_v2(source: tuple[str, int], destination: tuple[str, int], tlvs: bytes = b"") -> bytes:
    """A version 2 ``PROXY`` header over TCP, what a balancer sends (``tlvs``: raw bytes
    after the addresses): for tools and tests that stand in for one."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    family = TCP4 if src.version == 4 else TCP6
    ports = source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    body = src.packed + dst.packed + ports + tlvs
    return V2_SIGNATURE + bytes((0x20 | PROXY, family)) + len(body).to_bytes(2, "big") + body


def _parse_v2(data: bytes | bytearray) -> Header | NeedMore:
    if len(data) < 16:
        return NeedMore(16)
    version, command, family = data[12] >> 4, data[12] & 0x0F, data[13]
    length = int.from_bytes(data[14:16], "big")
    if version != 2:
        raise ProxyHeaderError(f"version {version}, not 2")
    if command not in (LOCAL, PROXY):
        raise ProxyHeaderError(f"unknown command {command:#x}")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"{length} bytes of addresses and TLVs, over {MAX_V2_LENGTH}")
    if command == PROXY:  # LOCAL: the family is ignored, as the spec says
        if family not in ADDRESS_LENGTHS:
            raise ProxyHeaderError(f"unknown address family/transport {family:#04x}")
        if length < ADDRESS_LENGTHS[family]:
            raise ProxyHeaderError(
                f"{length} bytes cannot hold the {ADDRESS_LENGTHS[family]}-byte address block"
            )
    total = 16 + length
    if len(data) < total:
        return NeedMore(total)
    if command == LOCAL or family not in (TCP4, TCP6):
        return Header(version=2, local=command == LOCAL, source=None, length=total)
    size = 4 if family == TCP4 else 16
    address = ipaddress.ip_address(bytes(data[16 : 16 + size]))
    port = int.from_bytes(data[16 + 2 * size : 18 + 2 * size], "big")
    return Header(version=2, local=False, source=(_unmapped(address), port), length=total)


def _parse_v1(data: bytes | bytearray) -> Header | NeedMore:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end == -1:
        seen = bytes(data[:MAX_V1_LENGTH])
        if b"\n" in seen or b"\r" in seen[:-1]:
            raise ProxyHeaderError("a lone CR or LF in the PROXY line")
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyHeaderError(f"no CRLF in the first {MAX_V1_LENGTH} bytes")
        return NeedMore(len(data) + 1)
    line = bytes(data[:end])
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("a lone CR or LF in the PROXY line")
    fields = line.split(b" ")
    if fields[0] != V1_SIGNATURE or len(fields) < 2:
        raise ProxyHeaderError("PROXY must be followed by one space and a protocol")
    if fields[1] == b"UNKNOWN":  # the rest of the line is to be ignored
        return Header(version=1, local=False, source=None, length=end + 2)
    if fields[1] not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise ProxyHeaderError("not 'PROXY TCP4|TCP6 <src> <dst> <sport> <dport>'")
    family = 4 if fields[1] == b"TCP4" else 6
    source = _v1_address(fields[2], family)
    _v1_address(fields[3], family)
    port = _v1_port(fields[4])
    _v1_port(fields[5])
    return Header(version=1, local=False, source=(source, port), length=end + 2)


def _v1_address(field: bytes, family: int) -> str:
    try:
        text = field.decode("ascii")
        if "%" in text:  # a scope id is no client address
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"{field[:48]!r} is not an IP address") from None
    if address.version != family:
        raise ProxyHeaderError(f"{text} is not an IPv{family} address")
    return _unmapped(address)


def _v1_port(field: bytes) -> int:
    if not (field.isdigit() and len(field) <= 5) or (field[:1] == b"0" and field != b"0"):
        raise ProxyHeaderError(f"{field[:48]!r} is not a port")
    port = int(field)
    if port > 65535:
        raise ProxyHeaderError(f"{port} is not a port")
    return port


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
