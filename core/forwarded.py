"""Which address a connection comes from when it arrives through a proxy we trust.

Behind a load balancer every player arrives from the balancer's address, so the
per-address caps (pending rooms, room placement rate, away sessions) would count all
players as one. With ``--trusted-proxy CIDR`` (repeatable; none by default) a connection
*from* one of those networks is attributed to the address its ``X-Forwarded-For`` header
names: the header is read from the right, skipping addresses that are themselves trusted
proxies, and the first other one is the client (what the outermost trusted proxy saw).
From any other peer the header is ignored - anyone can write it. A header that is
malformed, or names only trusted addresses, leaves the peer as it is. Pure; O(entries).

A trusted proxy may instead (or as well) put a PROXY protocol header before the request
(HAProxy ``send-proxy-v2``, ``core.proxy_protocol``; from anyone else it is refused with
HTTP 400). That header comes first: the connection's peer becomes the address it names,
and ``X-Forwarded-For`` is then read only if that address is itself a trusted proxy (a
chain of balancers), as for any other peer. A header naming no address (``LOCAL``, a
health check) leaves the peer, and so the X-Forwarded-For rule, as they were.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(specs: tuple[str, ...]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values as networks (a bare address is a /32 or /128); raises
    ValueError naming the bad one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or network") from None
    return tuple(out)


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` (no port) is in one of ``networks``; False if it is no address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer_host: str, forwarded_for: str | None, networks: tuple[Network, ...]) -> str:
    """The address to count ``peer_host``'s connection under (see the module text)."""
    if not networks or not forwarded_for or not is_trusted(peer_host, networks):
        return peer_host
    for entry in reversed(forwarded_for.split(",")):
        address = entry.strip()
        if address.startswith("[") and "]" in address:  # [v6]:port
            address = address[1 : address.index("]")]
        elif address.count(":") == 1:  # v4:port
            address = address.partition(":")[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return peer_host  # a malformed entry: trust nothing of it
        if not is_trusted(address, networks):
            return address
    return peer_host
