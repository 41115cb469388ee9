"""Where a webhook may be delivered: URL rules and the SSRF address policy.

Invariant: without ``--webhook-allow-private`` no delivery connects to a
loopback, private, link-local, shared, multicast, unspecified or otherwise
non-global address, whatever DNS answers and whenever it changes: the host
is checked when the subscription is created (:func:`check_public`, a clear
400) and again on every attempt by :class:`CheckedEndpoint`, which resolves,
checks every address and connects to exactly the address it checked (TLS
still verifies the host name).

Layer rule: the webhooks package; no SQL, no HTTP server code.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import hyperlink
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from eventbus.errors import InvalidInput

MAX_URL_LEN = 2048
MAX_PORT = 65535
RESOLVE_TIMEOUT_S = 5.0
#: Connecting (and the TLS handshake) gets this long.
CONNECT_TIMEOUT_S = 10.0

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The webhook's host is (or resolves to) an address we may not connect to."""


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable webhook URL; 400 otherwise."""
    if len(url) > MAX_URL_LEN:
        raise InvalidInput(f"url is longer than {MAX_URL_LEN} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise InvalidInput(
            "url must be ASCII (punycode, percent-encoding) without spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
    except ValueError as e:
        raise InvalidInput(f"url is not a valid URL: {e}") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        # Port 0 cannot be connected to; every other port is the receiver's choice.
        raise InvalidInput(f"url port must be from 1 to {MAX_PORT}")
    try:
        parsed = hyperlink.EncodedURL.from_text(url)
        if host and not _is_ip(host):
            # What the delivery client does to every URL; a host it cannot
            # encode (a_b, a..b) could never be delivered to.
            parsed.to_uri()
    except ValueError as e:
        raise InvalidInput(f"url is not a valid URL: {e}") from None
    if scheme not in ("http", "https"):
        raise InvalidInput("url must be an http or https URL")
    if not host:
        raise InvalidInput("url has no host")
    if ":" in host:
        # treq/hyperlink cannot encode IPv6 literal hosts for the request,
        # so such a subscription could never be delivered.
        raise InvalidInput("url with an IPv6 literal host is not supported; use a host name")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url must not contain credentials")
    return scheme, host, port or (443 if scheme == "https" else 80)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal(address: str) -> str | None:
    """Why we may not connect to this IP address without --webhook-allow-private."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 addresses carried inside IPv6 ones reach the IPv4 network.
        candidates += [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for candidate in candidates:
        if candidate is not None and (not candidate.is_global or candidate.is_multicast):
            return f"{address} is not a public address"
    return None


def resolve(reactor: Any, host: str, port: int) -> defer.Deferred[list[str]]:
    """The IP addresses of ``host`` (a name or a literal), as strings, in order."""
    result: defer.Deferred[list[str]] = defer.Deferred()
    found: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            if address.host not in found:
                found.append(address.host)

        def resolutionComplete(self) -> None:
            if not result.called:
                result.callback(found)

    reactor.nameResolver.resolveHostName(Receiver(), host, port)
    return result.addTimeout(RESOLVE_TIMEOUT_S, reactor)


@implementer(IStreamClientEndpoint)
class CheckedEndpoint:
    """Resolves, checks every address, then connects to a checked one."""

    def __init__(self, reactor: Any, scheme: bytes, host: str, port: int, allow_private: bool) -> None:
        self.reactor = reactor
        self.scheme = scheme
        self.host = host
        self.port = port
        self.allow_private = allow_private

    def connect(self, factory: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        addresses = await resolve(self.reactor, self.host, self.port)
        if not addresses:
            raise AddressRefused(f"{self.host} does not resolve")
        if not self.allow_private:
            for address in addresses:
                reason = refusal(address)
                if reason:
                    raise AddressRefused(f"refused to connect to {self.host}: {reason}")
        failure: Exception | None = None
        for address in addresses:
            cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint: Any = cls(self.reactor, address, self.port, timeout=CONNECT_TIMEOUT_S)
            if self.scheme == b"https":
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
            try:
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:
                failure = e
        assert failure is not None
        raise failure


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    def __init__(self, reactor: Any, allow_private: bool) -> None:
        self.reactor = reactor
        self.allow_private = allow_private

    def endpointForURI(self, uri: Any) -> CheckedEndpoint:
        return CheckedEndpoint(
            self.reactor, uri.scheme, uri.host.decode("ascii"), uri.port, self.allow_private
        )


async def check_public(reactor: Any, host: str, port: int) -> None:
    """Refuse (400) a host that does not resolve, or resolves to a non-public address."""
    try:
        addresses = await resolve(reactor, host, port)
    except defer.TimeoutError:
        raise InvalidInput(f"url refused: {host} did not resolve within {RESOLVE_TIMEOUT_S:g} s") from None
    if not addresses:
        raise InvalidInput(f"url refused: {host} does not resolve")
    for address in addresses:
        reason = refusal(address)
        if reason:
            raise InvalidInput(
                f"url refused: {host} resolves to {address}, which is not"
                " a public address (the server allows it only with"
                " --webhook-allow-private)"
            )
