"""What kind of address a host stands for: a non-public one is reached only where the user vouched for it."""

from __future__ import annotations

import ipaddress
import socket

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
# The ranges a host, a LAN, a tailnet or a cloud's metadata service live on. Other ranges that are
# not routed on the internet (documentation, benchmarking) count as public: fake-IP proxies and
# sandboxed resolvers answer from them for public names, and nothing of the user's lives there.
_PRIVATE: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = tuple(
    (kind, ipaddress.ip_network(net)) for kind, nets in (
        ("unspecified", ("0.0.0.0/8", "::/128")),
        ("loopback", ("127.0.0.0/8", "::1/128")),
        ("link-local", ("169.254.0.0/16", "fe80::/10")),
        ("multicast", ("224.0.0.0/4", "ff00::/8")),
        ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "240.0.0.0/4",
                     "fec0::/10", "64:ff9b:1::/48")),
        ("unique-local", ("fc00::/7",)),
    ) for net in nets)


def address_class(addr: Address) -> str | None:
    """What kind of non-public address `addr` is ("loopback", "private" …), or None for a public one.

    Refused: unspecified, loopback, link-local, multicast, RFC 1918 and shared (100.64/10) space,
    240/4 (broadcast included), IPv6 unique-local and site-local. An IPv4 address inside an IPv6
    one (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, 6to4, NAT64) is judged as that IPv4 address.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour
        if inner is None and (addr in _NAT64 or (addr in _V4_COMPATIBLE and int(addr) > 1)):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            return address_class(inner)
    return next((kind for kind, net in _PRIVATE if addr.version == net.version and addr in net), None)


def literal(host: str) -> Address | None:
    """The address a host written as an IP literal stands for ("127.1" and "2130706433" too), else None."""
    host = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the short and numeric IPv4 forms the resolver accepts without asking anyone
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_local_name(host: str) -> bool:
    """True for `localhost` and the names under it, which always mean this machine (RFC 6761)."""
    h = host.lower().rstrip(".")
    return h in _LOCAL_NAMES or h.endswith(".localhost")
