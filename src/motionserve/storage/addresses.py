"""Which IP addresses a server-side fetch may connect to (SSRF guard).

A user-supplied URL must not make the server talk to itself, its LAN or a cloud metadata service
(169.254.169.254). Only globally routable unicast addresses are "public"; IPv6 forms that embed an
IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by the IPv4 address inside.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal (IPv6 zone ids like `fe80::1%eth0` stripped), or None if `text` is a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the translation forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # (server, client): the client is where packets end up
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    Refused: loopback, private (RFC 1918, ULA), link-local (incl. cloud metadata), carrier-grade
    NAT, multicast, unspecified, reserved, documentation/benchmark ranges, IPv6 site-local, and any
    IPv6 address that embeds one of those IPv4 addresses.
    """
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public_address(inner)
        if address.is_site_local:
            return False
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    )
