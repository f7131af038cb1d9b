"""Outbound HTTP for webhooks that cannot be turned against the server's own network (SSRF).

A target URL must be http or https, without credentials. Its host is resolved here, every
address it resolves to is checked (loopback, private, link-local, shared, reserved,
multicast and unspecified addresses are refused, IPv4 and IPv6, including IPv4 addresses
mapped or embedded in IPv6), and the connection goes to the address that was checked, so
a second DNS answer cannot point it elsewhere (DNS rebinding). Redirects are not followed,
connect and read have timeouts, and no more than a capped number of bytes of the answer is
read. ``GRIDAPI_WEBHOOK_ALLOW_PRIVATE`` lists the networks (CIDRs) allowed despite all this,
for receivers inside the same network (tests allow ``127.0.0.1/32``).

urllib3 does the HTTP (the layer under requests, small and widely audited): it lets the
connection be made to a fixed address while TLS checks the certificate against the
host name (``server_hostname``/``assert_hostname``), and has explicit connect and read
timeouts and no redirect following when asked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2000
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: private in practice


class OutboundRefused(ValueError):
    """The URL or the address it resolves to may not be called; the message says why."""


class OutboundFailed(Exception):
    """The request was allowed but did not complete (connect, TLS, timeout)."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Which private networks are allowed, the timeouts and the cap on the answer read."""

    allow: tuple[Network, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_response_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    body: bytes
    duration_ms: int
    address: str
    retry_after: str | None = None  # the receiver's Retry-After header, as sent


def parse_allowlist(text: str) -> tuple[Network, ...]:
    """Return the networks of ``"127.0.0.1/32, 10.1.0.0/16"``. Raises ValueError naming the
    bad entry."""
    networks = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a network in CIDR notation ({exc})") from None
    return tuple(networks)


def policy_from_settings(settings: object) -> OutboundPolicy:
    """Return the policy of the GRIDAPI_WEBHOOK_* settings; a bad allow list stops start-up
    (SystemExit with the reason)."""
    try:
        allow = parse_allowlist(settings.webhook_allow_private)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise SystemExit(f"GRIDAPI_WEBHOOK_ALLOW_PRIVATE: {exc}") from None
    return OutboundPolicy(
        allow=allow,
        connect_timeout=float(settings.webhook_connect_timeout_seconds),  # type: ignore[attr-defined]
        read_timeout=float(settings.webhook_timeout_seconds),  # type: ignore[attr-defined]
        max_response_bytes=int(settings.webhook_max_response_kb) * 1024,  # type: ignore[attr-defined]
    )


def parse_target(url: str) -> Target:
    """Return the parts of an http(s) URL. Raises OutboundRefused."""
    if len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused("credentials in the URL are not allowed; sign with the secret")
    host = parts.hostname
    if not host:
        raise OutboundRefused("the URL has no host")
    if not host.isascii():
        # An internationalised name (例子.中国) as DNS, the Host header and the TLS
        # certificate know it: written as it is, the Host header could not be sent (Latin-1
        # only), and a subscription that passed every check failed every attempt.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise OutboundRefused(f"not a valid host name ({exc})") from None
    if port == 0:  # "port or the default" took :0 for the default port
        raise OutboundRefused("port 0 is no port")
    if parts.fragment:
        raise OutboundRefused("the URL may not have a fragment")
    if any(c.isspace() for c in url):
        raise OutboundRefused("the URL may not contain spaces")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_refusal(ip: IPAddress, allow: Iterable[Network] = ()) -> str | None:
    """Return why ``ip`` may not be called ("loopback", "private", …), or None if it may."""
    allow = tuple(allow)
    candidates: list[IPAddress] = [ip]
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        # A mapped address is the IPv4 host itself; a tunnelled one must pass both ways.
        mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
        candidates = [embedded] if mapped else [embedded, ip]
    for candidate in candidates:
        if any(candidate.version == net.version and candidate in net for net in allow):
            return None
    for candidate in candidates:
        for attribute, label in (
            ("is_unspecified", "unspecified"),
            ("is_loopback", "loopback"),
            ("is_link_local", "link-local"),
            ("is_multicast", "multicast"),
            ("is_private", "private"),
            ("is_reserved", "reserved"),
        ):
            if getattr(candidate, attribute):
                return label
        if isinstance(candidate, ipaddress.IPv4Address) and candidate in _SHARED:
            return "private"
        if not candidate.is_global:
            return "not globally routable"
    return None


def resolve(target: Target, policy: OutboundPolicy) -> list[str]:
    """Return the addresses of the target's host, all of them allowed. Raises
    OutboundRefused when one is not, or when the host does not resolve."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        infos = [str(literal)]
    else:
        found = _getaddrinfo_within(target, policy.connect_timeout)
        infos = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))
        if not infos:
            raise OutboundRefused(f"the host {target.host!r} does not resolve")
    for text in infos:
        reason = address_refusal(ipaddress.ip_address(text), policy.allow)
        if reason is not None:
            raise OutboundRefused(
                f"{target.host} resolves to {text}, a {reason} address; not allowed"
                if literal is None
                else f"{text} is a {reason} address; not allowed"
            )
    return infos


def _getaddrinfo_within(target: Target, timeout: float) -> list[Any]:
    """Return ``socket.getaddrinfo`` of the target's host, asked in a thread and waited for
    ``timeout`` seconds at most. Raises OutboundRefused when it fails or takes longer.

    getaddrinfo has no timeout of its own (the resolver's are per server and try, and
    add up): a slow DNS server held a delivery, and the round with it, far beyond its
    timeouts. The thread is a daemon; one left waiting ends when the resolver gives up.
    """
    answer: list[Any] = []

    def lookup() -> None:
        try:
            answer.append(
                socket.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            )
        except (OSError, UnicodeError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=lookup, name="gridapi-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        raise OutboundRefused(f"the host {target.host!r} did not resolve within {timeout:g} s")
    if isinstance(answer[0], Exception):
        raise OutboundRefused(f"the host {target.host!r} does not resolve ({answer[0]})")
    return list(answer[0])


def check_url(url: str, policy: OutboundPolicy) -> Target:
    """Return the target of ``url`` if it may be called now. Raises OutboundRefused."""
    target = parse_target(url)
    resolve(target, policy)
    return target


def post(
    url: str, body: bytes, headers: dict[str, str], policy: OutboundPolicy
) -> OutboundResponse:
    """POST ``body`` to ``url`` through the policy's checks; return the answer (status, the
    first ``max_response_bytes`` of the body). Raises OutboundRefused or OutboundFailed."""
    started = time.monotonic()
    target = parse_target(url)
    address = resolve(target, policy)[0]
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    timeout = urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            address, target.port, timeout=timeout, retries=False, maxsize=1
        )
    # The whole attempt (the name's resolution included) ends by this moment at most: the read timeout bounds each wait, and
    # a receiver sending a byte now and then (a 500, then 1 kB every 0.5 s; or a header line
    # every few seconds) held an attempt, and the delivery round with it, for as long as it
    # liked. The body is read until then; the watchdog cuts the connection then.
    deadline = started + policy.connect_timeout + policy.read_timeout
    watchdog = _Watchdog(deadline)
    pool.ConnectionCls = _watched(pool.ConnectionCls, watchdog)
    try:
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers={**headers, "Host": host_header, "Connection": "close"},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise OutboundFailed("read timeout" if watchdog.fired else _reason(exc)) from None
        if watchdog.fired:  # cut off before the headers were complete: not an answer
            response.close()
            raise OutboundFailed("read timeout")
        try:
            content = _read_until(response, policy.max_response_bytes, deadline)
        except urllib3.exceptions.HTTPError as exc:
            raise OutboundFailed(_reason(exc)) from None
        finally:
            response.release_conn()
            response.close()
    finally:
        watchdog.cancel()
        pool.close()
    return OutboundResponse(
        status=response.status,
        body=content,
        duration_ms=int((time.monotonic() - started) * 1000),
        address=address,
        retry_after=response.headers.get("Retry-After"),
    )


class _Watchdog:
    """Shuts a connection's socket down at a deadline, ending whatever waits on it.

    It keeps a duplicate of the socket's descriptor: TLS takes the plain socket over (and
    detaches it), and a shutdown through either descriptor ends the one connection.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._timers: list[threading.Timer] = []
        self._socks: list[socket.socket] = []

    def watch(self, sock: socket.socket) -> None:
        duplicate = sock.dup()
        self._socks.append(duplicate)
        delay = max(0.0, self.deadline - time.monotonic())
        timer = threading.Timer(delay, self._fire, (duplicate,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _fire(self, sock: socket.socket) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for sock in self._socks:
            sock.close()


def _watched(base: Any, watchdog: _Watchdog) -> Any:
    """Return ``base`` (urllib3's connection class) with its sockets under ``watchdog``."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            watchdog.watch(sock)
            return sock

    return Watched


def _read_until(response: Any, limit: int, deadline: float) -> bytes:
    """Return up to ``limit`` bytes of the answer's body, as much as came before ``deadline``
    (the status is what counts; the body is kept for the log)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and time.monotonic() < deadline:
        chunk = response.read1(min(8192, limit - size), decode_content=False)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    """A short, stable description of a failed request (no stack, no internal objects)."""
    # NewConnectionError first: urllib3 2 makes it a kind of ConnectTimeoutError, and a
    # refused connection was reported as a timeout (in 0 ms).
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connect timeout"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timeout"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken"
    return type(exc).__name__
