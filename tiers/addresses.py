"""Which network addresses a caller's URL may reach: pure checks, no DNS.

Used twice: on the host literal of a URL before any I/O (core.catalog.references), and
on every address a connection is about to use (tiers.remote), so a DNS name that
resolves, or a redirect that points, to a cloud metadata or private address is refused
too.
"""

from __future__ import annotations

import ipaddress
import socket

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_host(host: str) -> bool:
    """False for `localhost` and for an address literal that is not globally routable
    (loopback, link-local, private, shared, reserved, multicast, unspecified), in any
    spelling a resolver accepts: dotted, short (`127.1`), integer, hex, octal, IPv6
    and IPv4-mapped or -translated IPv6. A DNS name is public here: its addresses are
    checked where the connection is made. Pure: no DNS lookup."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    address = literal_address(host)
    return address is None or is_public_address(address)


def literal_address(host: str) -> Address | None:
    """The address a host literal denotes, or None for a DNS name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:   # inet_aton takes what getaddrinfo takes: 127.1, 0x7f.1, 2130706433, 0177.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_public_address(address: Address) -> bool:
    """Globally routable, also once the IPv4 inside an IPv6 form is taken out."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (
            address.teredo[1] if address.teredo else None)
        if inner is None and (address.packed[:12] == bytes(12)      # ::a.b.c.d
                              or address in _NAT64):                # 64:ff9b::a.b.c.d
            inner = ipaddress.IPv4Address(address.packed[12:])
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not address.is_multicast


def is_public_ip(text: str) -> bool:
    """An address as a resolver returns it (`10.0.0.1`, `::1`, `fe80::1%eth0`)."""
    address = literal_address(text)
    return address is not None and is_public_address(address)
