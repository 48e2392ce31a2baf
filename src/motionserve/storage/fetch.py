"""Safe fetching of user-supplied input URLs: http(s), data: URIs and this server's own file URLs.

Input URLs are attacker-controlled, so an http(s) fetch:
- has one deadline for everything (DNS, connect, every redirect, the body), enforced with
  `asyncio.timeout`, so a server trickling one byte a second cannot hold a worker;
- is capped in size (Content-Length first, then by counting the bytes actually received);
- follows redirects itself (at most MAX_REDIRECTS) and, before *every* hop, resolves the host and
  refuses loopback, private, link-local (cloud metadata), multicast, reserved... addresses unless
  `allow_private` (see `addresses.is_public_address`);
- connects to the address it checked (the URL's host is replaced by the IP, the original name is
  sent as Host header and TLS SNI, and certificates are verified against the name), so a DNS answer
  that changes between check and connect (DNS rebinding) cannot redirect the connection;
- ignores proxy environment variables: the address check only means something on a direct connection.
  It does honour SSL_CERT_FILE / SSL_CERT_DIR (extra CAs for operators with a private PKI).

Every failure is a `FetchError` with a message fit for the user; URLs in messages lose their
credentials and query string (presigned URLs carry secrets there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Iterable, Sequence
from urllib.parse import unquote, unquote_to_bytes

import certifi
import httpx

from motionserve.errors import AddressRefusedError, FetchError
from motionserve.storage.addresses import IPAddress, is_public_address, parse_ip
from motionserve.storage.types import FileReader, FileStoreError, FileTooLargeError, token_in_path

MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "motionserve-fetch/1"

Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> IP address strings. Runs in a thread; the default uses getaddrinfo."""
AddressCheck = Callable[[str, IPAddress], bool]
"""(host, address) -> True if the fetch may connect there. Default: public, or any if allow_private."""

# getaddrinfo cannot be interrupted; a private pool means a stuck lookup never blocks loop shutdown.
_DNS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="motionserve-dns")


def fetch_bytes(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool,
    own_files: FileReader | None = None,
    own_base_urls: Iterable[str] = (),
    resolver: Resolver | None = None,
    address_check: AddressCheck | None = None,
) -> bytes:
    """The bytes behind `url`, or FetchError saying why not. Blocking; safe to call from any thread.

    Order: our own file URLs (`{base}/files/{token}/{name}` under one of `own_base_urls`) are read
    through `own_files`, whichever node or bucket holds them; then `data:` URIs; then http(s).
    `resolver` and `address_check` replace DNS and the address policy (tests, or an operator
    allow-list); without `address_check`, non-public addresses are refused unless `allow_private`.
    """
    local = _fetch_locally(url, max_bytes, own_files, own_base_urls)
    if local is not None:
        return local
    return _run_blocking(
        lambda: _fetch_http(
            url.strip(),
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            resolver=resolver or _getaddrinfo,
            address_ok=address_check or _default_policy(allow_private),
        )
    )


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """Decode `data:[<media type>][;base64],<data>` (RFC 2397), refusing more than `max_bytes`."""
    header, comma, payload = uri.strip()[len("data:") :].partition(",")
    if not comma:
        raise FetchError("malformed data: URI: there is no ',' before the data")
    if header.split(";")[-1].strip().lower() == "base64":
        # Base64 inside URIs is sometimes percent-encoded (%2B, %3D) or wrapped over lines.
        text = "".join(unquote(payload).split())
        if len(text) // 4 * 3 > max_bytes + 3:
            raise FetchError(_too_large("the data: URI", max_bytes))
        text += "=" * (-len(text) % 4)
        altchars = b"-_" if ("-" in text or "_" in text) else None  # URL-safe alphabet, also seen
        try:
            data = base64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FetchError("malformed data: URI: the base64 data is invalid") from exc
    else:
        if len(payload) // 3 > max_bytes:  # each byte takes 1 to 3 characters
            raise FetchError(_too_large("the data: URI", max_bytes))
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise FetchError(_too_large("the data: URI", max_bytes))
    return data


def display_url(url: str | httpx.URL) -> str:
    """A URL safe to show in errors and logs: no credentials, no query, bounded length."""
    try:
        parsed = httpx.URL(str(url))
        shown = f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}{parsed.path}"
    except (httpx.InvalidURL, ValueError, TypeError):
        shown = str(url).split("?", 1)[0]
    return shown if len(shown) <= 120 else shown[:117] + "..."


# ------------------------------------------------------------------------------------ no network


def _fetch_locally(url: str, max_bytes: int, own_files: FileReader | None, own_base_urls: Iterable[str]) -> bytes | None:
    """Bytes for URLs served without a network request (our own files, data: URIs), else None."""
    url = url.strip()
    if not url:
        raise FetchError("the URL is empty")
    bases = tuple(own_base_urls)
    if own_files is not None and bases:
        token = own_files.token_from_url(url, bases)
        if token is not None:
            return _read_own(own_files, token, url, max_bytes)
    if own_files is not None:
        # Another node's name for one of our files: read it from the store when the token is there.
        token = token_in_path(url)
        data = _read_own_if_there(own_files, token, url, max_bytes) if token is not None else None
        if data is not None:
            return data
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_uri(url, max_bytes)
    if scheme not in ("http", "https"):
        shown = f"'{scheme}:'" if scheme else "no scheme"
        raise FetchError(f"unsupported URL ({shown}): use an http(s) URL or a data: URI")
    return None


def _read_own(own_files: FileReader, token: str, url: str, max_bytes: int) -> bytes:
    data = _read_own_if_there(own_files, token, url, max_bytes)
    if data is None:
        raise FetchError(f"{display_url(url)} does not exist or has expired")
    return data


def _read_own_if_there(own_files: FileReader, token: str, url: str, max_bytes: int) -> bytes | None:
    try:
        return own_files.read_bytes(token, max_bytes)
    except FileTooLargeError as exc:
        raise FetchError(_too_large(display_url(url), max_bytes)) from exc
    except (FileStoreError, OSError) as exc:
        raise FetchError(f"{display_url(url)} could not be read") from exc


# ------------------------------------------------------------------------------------ http(s)


async def _fetch_http(
    url: str, *, max_bytes: int, timeout_s: float, resolver: Resolver, address_ok: AddressCheck
) -> bytes:
    shown = display_url(url)
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(
                trust_env=False,
                verify=tls_context(),
                follow_redirects=False,
                timeout=httpx.Timeout(timeout_s),
                headers={"User-Agent": _USER_AGENT},
            ) as client:
                return await _follow(client, url, max_bytes, resolver, address_ok)
    except TimeoutError as exc:
        raise FetchError(f"downloading {shown} took longer than {timeout_s:g} s") from exc
    except httpx.TimeoutException as exc:
        raise FetchError(f"downloading {shown} took longer than {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise FetchError(f"could not download {shown}: {reason}") from exc


async def _follow(client: httpx.AsyncClient, url: str, max_bytes: int, resolver: Resolver, address_ok: AddressCheck) -> bytes:
    current = _parse_http_url(url)
    for _ in range(MAX_REDIRECTS + 1):
        host = current.raw_host.decode("ascii")
        port = current.port or (443 if current.scheme == "https" else 80)
        addresses = await _checked_addresses(host, port, resolver, address_ok)
        for address in addresses[:-1]:
            try:
                outcome = await _get(client, current, address, max_bytes)
                break
            except httpx.ConnectError:
                continue  # e.g. an IPv6 address without an IPv6 route: try the next, as browsers do
        else:
            outcome = await _get(client, current, addresses[-1], max_bytes)
        if isinstance(outcome, bytes):
            return outcome
        current = outcome
    raise FetchError(f"{display_url(url)} redirected more than {MAX_REDIRECTS} times")


async def _get(client: httpx.AsyncClient, url: httpx.URL, address: IPAddress, max_bytes: int) -> bytes | httpx.URL:
    """One GET to `url`, connecting to `address` (already checked): the body, or where it redirects."""
    host = url.raw_host.decode("ascii")
    pinned = url.copy_with(host=str(address))
    # The name goes in the Host header and in TLS SNI; certificates are verified against it.
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    async with client.stream("GET", pinned, headers={"Host": url.netloc.decode("ascii")}, extensions=extensions) as response:
        if response.status_code in _REDIRECT_CODES:
            location = response.headers.get("location")
            if not location:
                raise FetchError(f"{display_url(url)} redirected without a Location")
            return _parse_http_url(str(url.join(location)))
        if response.status_code >= 300:
            raise FetchError(f"{display_url(url)} answered HTTP {response.status_code} {response.reason_phrase}".rstrip())
        return await _read_capped(response, max_bytes, display_url(url))


def _parse_http_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise FetchError(f"invalid URL: {display_url(url)}") from exc
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL ('{parsed.scheme}:'): only http(s) can be fetched")
    if not parsed.raw_host:
        raise FetchError(f"invalid URL (no host): {display_url(url)}")
    return parsed


async def _checked_addresses(host: str, port: int, resolver: Resolver, address_ok: AddressCheck) -> list[IPAddress]:
    """`checked_addresses` off the event loop (getaddrinfo blocks)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DNS_POOL, checked_addresses, host, port, resolver, address_ok)


def checked_addresses(
    host: str, port: int, resolver: Resolver | None = None, address_ok: AddressCheck | None = None
) -> list[IPAddress]:
    """Resolve `host` and return its addresses, in resolver order, if every one of them is allowed.

    All addresses are checked, not just the one used: a name answering both a public and a private
    address is refused, since which one a client ends up on is not ours to predict. The defaults are
    the system resolver and "public addresses only". Used for input fetches and webhook targets alike.
    """
    resolver = resolver or _getaddrinfo
    address_ok = address_ok or _default_policy(False)
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            names = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"could not resolve host '{host}'") from exc
        addresses = [a for a in (parse_ip(n) for n in names) if a is not None]
        if not addresses:
            raise FetchError(f"could not resolve host '{host}'")
    for address in addresses:
        if not address_ok(host, address):
            raise AddressRefusedError(
                f"refusing to fetch from '{host}': it resolves to {address}, a loopback, private or"
                " otherwise non-public address"
            )
    return addresses


def tls_context() -> ssl.SSLContext:
    """The TLS trust for outgoing requests (input fetches, webhooks): public CAs plus the operator's own."""
    return _ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _ssl_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """Public CAs (certifi) plus the operator's own, if SSL_CERT_FILE / SSL_CERT_DIR name any."""
    context = ssl.create_default_context(cafile=certifi.where())
    if cafile or capath:
        context.load_verify_locations(cafile=cafile or None, capath=capath or None)
    return context


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # unique, in resolver order


def _default_policy(allow_private: bool) -> AddressCheck:
    if allow_private:
        return lambda host, address: True
    return lambda host, address: is_public_address(address)


async def _read_capped(response: httpx.Response, max_bytes: int, shown: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchError(f"{shown} is {int(declared)} bytes, more than the {max_bytes} allowed")
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():  # decoded bytes: a gzip bomb is counted expanded
        received += len(chunk)
        if received > max_bytes:
            raise FetchError(_too_large(shown, max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, max_bytes: int) -> str:
    return f"{what} is larger than the {max_bytes} bytes allowed"


def _run_blocking(make: Callable[[], Awaitable[bytes]]) -> bytes:
    """Run a coroutine to completion from synchronous code, even on a thread with a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:  # asyncio.run refuses to nest in a running loop
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]
