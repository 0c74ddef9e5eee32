"""The address guard: postbacks never reach internal networks unless an operator opens them.

The transport is aiohttp; the guard is its resolver (`GuardedResolver`):

1. the host is resolved once (`resolve_host`, patchable in tests);
2. every candidate address is checked; only allowed ones are handed to aiohttp, and when
   none is left the lookup fails with `BlockedAddress`, before any socket is opened;
3. aiohttp connects to exactly those addresses, while the Host header, TLS SNI and the
   certificate check keep the name from the URL.

aiohttp skips the resolver for hosts that are canonical IP literals, so the transport
checks literal hosts itself (`check_literal`) with the same verdict. The connector is
built without a DNS cache, so every new connection goes through a fresh, checked lookup.
`GuardedConnector` checks once more, before every request, the address the connection it
is handed (new or kept alive) is actually connected to: an allow-list narrowed while a
process runs also applies to keep-alive connections opened before.

Why not `requests_hardened.IPFilterAdapter` (when this was a `requests` adapter): it
checks only the first address a name resolves to, has a loopback switch but no CIDR
allow-list, and judges IPv6 forms that embed an IPv4 address (NAT64, 6to4, Teredo) by
their IPv6 range, not by the IPv4 inside.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges the `ipaddress` flags of Python 3.12 miss or judge as global.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and broadcast
        "::/96",  # IPv4-compatible (deprecated) and unspecified
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "64:ff9b:1::/48",  # local-use NAT64
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, still routed internally in places)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedAddress(OSError):
    """The destination resolved only to addresses the guard refuses; nothing was sent."""

    def __init__(self, address: IPAddress | None, host: str = "") -> None:
        self.address = address
        self.host = host
        super().__init__(f"blocked address {address} for host {host!r}")


class HostNotFound(OSError):
    """The name did not resolve, or resolved to nothing usable."""


# --- the verdict -----------------------------------------------------------------------


@functools.cache  # asked before every request; forgotten when the setting changes
def allowed_networks() -> tuple[IPNetwork, ...]:
    """`settings.POSTBACK_ALLOWED_NETWORKS`, parsed."""
    configured = settings.POSTBACK_ALLOWED_NETWORKS or ()
    items = configured.split(",") if isinstance(configured, str) else configured
    networks = []
    for cidr in (str(item).strip() for item in items):
        if not cidr:
            continue
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            # Fail closed: an entry we cannot read opens nothing.
            logger.warning("Ignoring malformed POSTBACK_ALLOWED_NETWORKS entry %r", cidr)
    return tuple(networks)


@receiver(setting_changed)
def _allow_list_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "POSTBACK_ALLOWED_NETWORKS":
        allowed_networks.cache_clear()
        _verdicts.clear()


# The verdict on each address under the allow-list in force (see `allowed_networks`).
_verdicts: dict[IPAddress, bool] = {}


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address stands for: mapped, NAT64, 6to4 or Teredo."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        # (server, client); `ipaddress` already undoes the xor on the client address.
        return list(ip.teredo)
    return []


def is_blocked_ip(ip: IPAddress, *, allowed: Sequence[IPNetwork] | None = None) -> bool:
    """True when a postback must not go to `ip`.

    The allow-list is matched against the address as connected to, before anything else:
    `127.0.0.1/32` opens 127.0.0.1 but neither 127.0.0.2 nor ::ffff:127.0.0.1. IPv6 forms
    that carry an IPv4 address are judged by that IPv4 address (every one of them, for
    Teredo), because that is where the packets end up.
    """
    if allowed is None:
        verdict = _verdicts.get(ip)
        if verdict is None:
            if len(_verdicts) > 4096:
                _verdicts.clear()
            verdict = _verdicts[ip] = _blocked_verdict(ip, allowed_networks())
        return verdict
    return _blocked_verdict(ip, tuple(allowed))


@functools.lru_cache(maxsize=4096)  # pure; every request re-checks its connection's peer
def _blocked_verdict(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    if any(ip.version == net.version and ip in net for net in networks):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner:
            return any(_is_blocked_plain(v4) for v4 in inner)
    return _is_blocked_plain(ip)


def _is_blocked_plain(ip: IPAddress) -> bool:
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or any(ip.version == net.version and ip in net for net in _EXTRA_BLOCKED)
    )


# --- host literals ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # pure, and asked on every attempt of every postback
def parse_host_literal(host: str) -> IPAddress | None:
    """The address a URL host names literally, or None for a DNS name.

    IPv4 is read the way resolvers (inet_aton) and browsers read it, so the spellings an
    attacker would use to hide 127.0.0.1 are recognised: `2130706433`, `0x7f.1`,
    `0177.0.0.1`, `127.1`.
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return _parse_ipv4_forms(host)


def host_looks_numeric(host: str) -> bool:
    """A host whose last label is a number must be an IPv4 address (WHATWG URL rule)."""
    labels = host.rstrip(".").split(".")
    return bool(labels) and _parse_ipv4_number(labels[-1]) is not None


def _parse_ipv4_number(part: str) -> int | None:
    if not part or not part.isascii():
        return None
    text = part.lower()
    try:
        if text.startswith("0x"):
            return int(text[2:] or "0", 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        return int(text, 10) if text.isdigit() else None
    except ValueError:
        return None


def _parse_ipv4_forms(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]  # one trailing dot is allowed
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_parse_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):  # type: ignore[operator]
        return None
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))  # type: ignore[operator]
    return ipaddress.IPv4Address(value)


# --- resolution ------------------------------------------------------------------------


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order (one lookup)."""
    literal = parse_host_literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def allowed_addresses(host: str, port: int) -> list[IPAddress]:
    """Resolve once; every allowed candidate in the resolver's order, or raise.

    Raises `HostNotFound` when there is no answer and `BlockedAddress` when every
    answer is refused.
    """
    try:
        candidates = resolve_host(host, port)
    except (OSError, UnicodeError) as exc:
        raise HostNotFound(f"cannot resolve host {host!r}: {exc}") from exc
    return check_candidates(host, candidates)


def check_candidates(host: str, candidates: Sequence[IPAddress]) -> list[IPAddress]:
    if not candidates:
        raise HostNotFound(f"host {host!r} has no address")
    allowed = [c for c in candidates if not is_blocked_ip(c)]
    if not allowed:
        logger.warning("Blocked postback to %s (%s)", host, ", ".join(map(str, candidates)))
        raise BlockedAddress(candidates[0], host)
    return allowed


def check_literal(host: str) -> IPAddress | None:
    """The address a literal host names, after the guard's verdict; None for a name."""
    literal = parse_host_literal(host)
    if literal is not None:
        check_candidates(host, [literal])
    return literal


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver: one lookup, and only guard-approved addresses come out."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        if parse_host_literal(host) is not None:
            addresses = allowed_addresses(host, port)  # no lookup for a literal
        else:
            loop = asyncio.get_running_loop()
            addresses = await loop.run_in_executor(None, allowed_addresses, host, port)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


class GuardedConnector(TCPConnector):
    """A connector that refuses to use a connection whose peer the guard now refuses.

    The resolver already kept blocked addresses out of new connections; this catches a
    keep-alive connection opened under a wider allow-list. The peer address is the one
    the socket is connected to (asyncio reads it once, when the connection is made).
    """

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        connection = await super().connect(req, traces, timeout)
        transport = connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer:
            address = _peer_address(peer[0])
            if is_blocked_ip(address):
                connection.close()
                logger.warning("Blocked postback to %s on a kept-alive connection", address)
                raise BlockedAddress(address, req.url.raw_host or "")
        return connection


@functools.lru_cache(maxsize=4096)
def _peer_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])
