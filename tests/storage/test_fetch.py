"""fetch_bytes against a real local HTTP(S) server: SSRF guard, redirects, size and time caps, data: URIs."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from motionserve.errors import FetchError
from motionserve.storage.addresses import is_public_address
from motionserve.storage.fetch import decode_data_uri, fetch_bytes
from motionserve.config import Settings
from motionserve.storage import open_file_store
from tests.file_stores import create_tables
from tests.e2e.tls import make_local_ca

BODY = bytes(range(256)) * 4  # 1 KiB


class _Handler(BaseHTTPRequestHandler):
    """Routes: /ok, /status/N, /redirect?to=URL, /chain/N, /host, /big-declared, /big-streamed, /slow."""

    protocol_version = "HTTP/1.0"  # the connection closes after each response: no Content-Length needed

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        route = urlsplit(self.path)
        query = parse_qs(route.query)
        parts = route.path.strip("/").split("/")
        if route.path == "/ok":
            self._send(200, BODY)
        elif parts[0] == "status":
            self._send(int(parts[1]), b"nope")
        elif route.path == "/redirect":
            self._redirect(query["to"][0])
        elif parts[0] == "chain":
            left = int(parts[1])  # /chain/N answers N redirects, then /ok
            self._redirect(f"/chain/{left - 1}" if left > 1 else "/ok")
        elif route.path == "/host":
            self._send(200, self.headers["Host"].encode())
        elif route.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            self.wfile.write(b"x" * 10000)
        elif route.path == "/big-streamed":
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"x" * 1000)
        elif route.path == "/slow":  # 100 bytes, one every 0.1 s: each read is quick, the whole is not
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the client gave up, as it should
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.paths = []  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def paths(self) -> list[str]:
        return self.httpd.paths  # type: ignore[attr-defined]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def fetch(url: str, **kwargs: Any) -> bytes:
    options: dict[str, Any] = {"max_bytes": 1 << 20, "timeout_s": 5.0, "allow_private": False}
    options.update(kwargs)
    return fetch_bytes(url, **options)


# "public.test" stands for an allowed public host; it is served by the local test server.
def public_test_resolver(host: str, port: int) -> list[str]:
    if host == "public.test":
        return ["127.0.0.1"]
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def trust_public_test(host: str, address: Any) -> bool:
    return host == "public.test" or is_public_address(address)


AS_PUBLIC = {"resolver": public_test_resolver, "address_check": trust_public_test}


# ------------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),  # loopback
        ("127.255.255.254", False),
        ("::1", False),
        ("10.1.2.3", False),  # RFC 1918
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("fe80::1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),  # unspecified
        ("::", False),
        ("224.0.0.1", False),  # multicast
        ("ff02::1", False),
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("192.0.2.1", False),  # documentation
        ("fc00::1", False),  # unique local
        ("fec0::1", False),  # site-local (deprecated, still routed internally)
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("2002:0808:0808::", True),  # 6to4 wrapping 8.8.8.8
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ],
)
def test_private_ranges_table(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# ------------------------------------------------------------------------------------ http(s)


def test_fetches_from_an_allowed_server(server: Server) -> None:
    assert fetch(server.url("/ok"), allow_private=True) == BODY


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_is_refused_without_allow_private(server: Server, host: str) -> None:
    before = len(server.paths)
    with pytest.raises(FetchError, match="refusing"):
        fetch(server.url("/ok", host=host))
    assert len(server.paths) == before  # refused before any request was sent


@pytest.mark.parametrize("url", ["http://10.255.255.1/clip.mp4", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/x"])
def test_private_targets_are_refused_before_connecting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    attempts: list[Any] = []

    def no_connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("connect attempted")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    with pytest.raises(FetchError, match="refusing"):
        fetch(url, timeout_s=2)
    assert attempts == []


def test_a_name_with_any_private_address_is_refused() -> None:
    with pytest.raises(FetchError, match="10.0.0.1"):
        fetch("http://mixed.test/x", resolver=lambda host, port: ["93.184.216.34", "10.0.0.1"])


def test_redirect_to_loopback_is_refused_even_when_the_first_hop_was_allowed(server: Server) -> None:
    target = server.url("/ok")  # 127.0.0.1: must be re-checked at the redirect hop
    url = server.url(f"/redirect?to={target}", host="public.test")
    before = len(server.paths)

    with pytest.raises(FetchError, match="refusing to fetch from '127.0.0.1'"):
        fetch(url, **AS_PUBLIC)
    assert server.paths[before:] == [f"/redirect?to={target}"]  # the first hop ran; the second never did


def test_redirects_are_followed_with_the_original_host_name(server: Server) -> None:
    url = server.url(f"/redirect?to=/host", host="public.test")
    assert fetch(url, **AS_PUBLIC) == f"public.test:{server.port}".encode()  # connected to the pinned IP


def test_redirect_limit(server: Server) -> None:
    assert fetch(server.url("/chain/5"), allow_private=True) == BODY
    with pytest.raises(FetchError, match="more than 5 times"):
        fetch(server.url("/chain/6"), allow_private=True)


def test_redirect_to_another_scheme_is_refused(server: Server) -> None:
    with pytest.raises(FetchError, match="unsupported"):
        fetch(server.url("/redirect?to=file:///etc/passwd"), allow_private=True)


@pytest.mark.parametrize("status", [404, 403, 500])
def test_remote_errors_name_the_status(server: Server, status: int) -> None:
    with pytest.raises(FetchError, match=f"HTTP {status}"):
        fetch(server.url(f"/status/{status}"), allow_private=True)


@pytest.mark.parametrize("path", ["/big-declared", "/big-streamed"])
def test_size_cap(server: Server, path: str) -> None:
    with pytest.raises(FetchError, match="9999"):
        fetch(server.url(path), allow_private=True, max_bytes=9999)
    assert len(fetch(server.url(path), allow_private=True, max_bytes=10000)) == 10000


def test_time_cap_covers_the_whole_download(server: Server) -> None:
    # Every byte arrives well within any read timeout; only a total deadline stops this.
    with pytest.raises(FetchError, match="longer than 0.5 s"):
        fetch(server.url("/slow"), allow_private=True, timeout_s=0.5)


def test_unresolvable_host() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(FetchError, match="could not resolve host 'nowhere.test'"):
        fetch("http://nowhere.test/x", resolver=fail)


def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="could not download"):
        fetch(f"http://127.0.0.1:{port}/x", allow_private=True)


def test_an_unreachable_address_falls_back_to_the_next_one(server: Server) -> None:
    # Like a name whose IPv6 address the machine cannot reach: the IPv4 one must still be used.
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection.
    dead_first = {"resolver": lambda host, port: ["127.0.0.2", "127.0.0.1"], "allow_private": True}
    assert fetch(f"http://two.test:{server.port}/ok", **dead_first) == BODY


def test_usable_from_a_thread_running_an_event_loop(server: Server) -> None:
    async def handler() -> bytes:
        return fetch(server.url("/ok"), allow_private=True)  # a sync call inside async code

    assert asyncio.run(handler()) == BODY


def test_error_messages_hide_credentials_and_query(server: Server) -> None:
    url = f"http://user:secret@127.0.0.1:{server.port}/status/404?X-Amz-Signature=topsecret"
    with pytest.raises(FetchError) as info:
        fetch(url, allow_private=True)
    assert "secret" not in info.value.message and "/status/404" in info.value.message


# ------------------------------------------------------------------------------------ TLS pinning


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    files = make_local_ca(tmp_path_factory.mktemp("tls"))  # certificate for localhost / 127.0.0.1
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    srv = Server(tls=context)
    yield srv, files.ca_cert
    srv.close()


def test_https_verifies_the_name_while_connecting_to_the_checked_address(
    tls_server: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    pin_to_loopback = {"resolver": lambda host, port: ["127.0.0.1"], "allow_private": True}

    # The certificate names localhost: fetching by that name over the pinned IP succeeds...
    assert fetch(server.url("/ok", host="localhost", scheme="https"), **pin_to_loopback) == BODY
    # ...and a name the certificate does not cover fails, although the address is the same.
    with pytest.raises(FetchError, match="not valid for 'evil.test'"):
        fetch(server.url("/ok", host="evil.test", scheme="https"), **pin_to_loopback)


# ------------------------------------------------------------------------------------ other sources


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/x", "javascript:alert(1)", "example.com/clip.mp4"],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(FetchError, match="unsupported URL"):
        fetch(url)


def test_empty_url() -> None:
    with pytest.raises(FetchError, match="empty"):
        fetch("  ")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("data:text/plain;base64,aGVsbG8gd29ybGQ=", b"hello world"),
        ("data:;base64,aGVsbG8gd29ybGQ", b"hello world"),  # padding left off
        ("data:video/mp4;name=a.mp4;base64,aGVs%0AbG8=", b"hello"),  # percent-encoded newline
        ("data:application/octet-stream;base64,-_8=", b"\xfb\xff"),  # URL-safe alphabet
        ("data:,hello%20world%FF", b"hello world\xff"),  # percent-encoded
        ("data:text/plain;charset=utf-8,plain", b"plain"),
    ],
)
def test_data_uris(uri: str, expected: bytes) -> None:
    assert fetch(uri) == expected


@pytest.mark.parametrize("uri", ["data:text/plain;base64,***", "data:text/plain;base64"])
def test_malformed_data_uris(uri: str) -> None:
    with pytest.raises(FetchError, match="malformed"):
        fetch(uri)


def test_data_uri_size_cap() -> None:
    payload = bytes(1000)
    assert len(decode_data_uri("data:;base64," + base64.b64encode(payload).decode(), 1000)) == 1000
    with pytest.raises(FetchError, match="larger than the 999 bytes"):
        decode_data_uri("data:;base64," + base64.b64encode(payload).decode(), 999)
    with pytest.raises(FetchError, match="larger than the 999 bytes"):
        decode_data_uri("data:," + "a" * 1000, 999)


def test_own_file_urls_are_read_through_the_file_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    create_tables(settings.resolved_database_url)
    files = open_file_store(settings)
    stored = files.put(b"uploaded clip", content_type="video/mp4", file_name="clip.mp4")
    base = "https://motion.example"
    url = files.file_url(base, stored)

    assert fetch(url, own_files=files, own_base_urls=[base]) == b"uploaded clip"
    with pytest.raises(FetchError, match="larger than"):
        fetch(url, own_files=files, own_base_urls=[base], max_bytes=4)
    with pytest.raises(FetchError, match="does not exist or has expired"):
        fetch(url.replace(stored.token, "A" * len(stored.token)), own_files=files, own_base_urls=[base])
    # Another API node's URL for the same file (that node may be gone): read from the store, no network.
    other_node = files.file_url("https://10.0.0.7:8443/motion", stored)
    assert fetch(other_node, own_files=files, own_base_urls=[base]) == b"uploaded clip"
    # A look-alike path whose token we do not hold is someone else's file: fetched (here: refused) as usual.
    with pytest.raises(FetchError, match="non-public address"):
        fetch(other_node.replace(stored.token, "B" * len(stored.token)), own_files=files, own_base_urls=[base])
    files.close()
