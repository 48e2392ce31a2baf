"""Faults from the client side: uploads and status streams cut off midway, slow-loris connections and
oversized request heads, all on raw TLS sockets against a real server.

Nothing may leak: after the clients are gone the server holds no more descriptors, TCP connections,
temp files or job waiters (status streams, /run) than before. A slow loris is answered 408 and cut off
once its headers take longer than the server allows; an oversized head is answered 431.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from typing import Any, Callable

import pytest

from motionserve.api.http_protocol import HEADER_TIMEOUT_S, MAX_HEAD_BYTES

from .common import SMALL_T2V, T2V
from .fleet import wait_for
from .http_queue import QueueClient
from .procfs import established_to_port, open_fds
from .server import Server

pytestmark = pytest.mark.e2e

LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_inference_steps": 30}  # still running while its streams are cut
ROUNDS = 8  # of each misbehaviour
SETTLE_S = 60.0


class RawClient:
    """HTTP/1.1 written by hand over TLS: a client that can stop anywhere."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(server.tls.ca_cert))

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def head(self, method: str, path: str, key: str | None = None, extra: str = "") -> bytes:
        auth = f"Authorization: Key {key}\r\n" if key else ""
        return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}\r\n".encode()


def read_response(sock: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def job_waiters(server: Server, admin_key: str) -> float:
    with server.http(admin_key) as http:
        text = http.get("/metrics").text
    match = re.search(r"^motionserve_job_waiters\S* (\S+)$", text, re.MULTILINE)
    assert match, "no motionserve_job_waiters in /metrics"
    return float(match.group(1))


def held_resources(server: Server) -> dict[str, int]:
    files = server.data_dir / "files"
    fds = open_fds(server.process.pid).values()
    return {
        "fds": len(fds),  # printed; the pooled database connections may vary by a few files
        "sockets": sum(1 for target in fds if target.startswith("socket:")),
        "files_open": sum(1 for target in fds if target.startswith(str(files))),
        "connections": established_to_port(server.port),
        "temp_files": sum(1 for _ in (files / "tmp").iterdir()),
        "upload_parts": sum(1 for _ in (files / "uploads").glob("*/*")),
    }


def settled(server: Server, baseline: dict[str, int]) -> Callable[[], dict[str, int] | None]:
    def check() -> dict[str, int] | None:
        now = held_resources(server)
        ok = (now["sockets"] == baseline["sockets"] and now["files_open"] == 0 and now["connections"] == 0
              and now["temp_files"] == baseline["temp_files"] and now["upload_parts"] == 0)
        return now if ok else None
    return check


def test_disconnects_and_slow_clients_leak_nothing(server_factory) -> None:
    server = server_factory("clients")
    key, admin_key = server.create_key("clients"), server.create_key("clients-admin", admin=True)
    raw = RawClient(server)
    client = QueueClient(server, key)
    try:
        running = client.submit(T2V, LONG_T2V)
        client.wait(running, until="IN_PROGRESS")
        _well_behaved_round(client, running.status_url)  # warms pools and threads
        client.close()
        wait_for(lambda: established_to_port(server.port) == 0, SETTLE_S, "no client connections before the faults")
        baseline = held_resources(server)
        print("before:", baseline)

        lorises = [_start_slow_loris(raw) for _ in range(ROUNDS)]
        client = QueueClient(server, key)
        _cut_uploads(raw, client, ROUNDS)
        _cut_streams(raw, key, running.status_url, ROUNDS)
        assert _oversized_head(raw).startswith(b"HTTP/1.1 431 ")
        # The server still answers others while the lorises hang on.
        assert client.http.get("/health").status_code == 200
        answers = [_trickle_until_closed(sock) for sock in lorises]
        print("slow loris got:", answers[0][:200])
        assert all(a.startswith(b"HTTP/1.1 408 ") and b"Request headers not received" in a for a in answers)

        assert client.wait(running).get("error") is None  # the job whose streams were cut is unaffected
        client.close()
        after = wait_for(settled(server, baseline), SETTLE_S, f"resources back to {baseline}")
        print("after:", after)
        wait_for(lambda: job_waiters(server, admin_key) == 0, SETTLE_S, "no job waiters left")
    finally:
        client.close()
        server.stop()


def _well_behaved_round(client: QueueClient, status_url: str) -> None:
    """One upload, one status stream read to its first event, one health check: each done properly."""
    r = client.http.post("/rest/storage/upload/initiate", json={"content_type": "application/octet-stream"})
    assert client.http.put(r.json()["upload_url"], content=b"x" * 100_000).status_code == 200
    with client.http.stream("GET", status_url + "/stream") as stream:
        next(stream.iter_lines())
    assert client.http.get("/health").status_code == 200


def _cut_uploads(raw: RawClient, client: QueueClient, rounds: int) -> None:
    """PUT a body announced as 5 MB, send 1 MB of it, hang up; the file URL must not appear."""
    for _ in range(rounds):
        urls = client.http.post("/rest/storage/upload/initiate", json={"content_type": "video/mp4"}).json()
        path = urls["upload_url"].split("127.0.0.1:%d" % raw.server.port, 1)[1]
        sock = raw.connect()
        sock.sendall(raw.head("PUT", path, extra="Content-Type: video/mp4\r\nContent-Length: 5000000\r\n"))
        sock.sendall(b"\0" * 1_000_000)
        sock.close()
        assert client.http.get(urls["file_url"]).status_code == 404


def _cut_streams(raw: RawClient, key: str, status_url: str, rounds: int) -> None:
    """Open a status stream (SSE), read its first event, hang up."""
    path = status_url.split("127.0.0.1:%d" % raw.server.port, 1)[1] + "/stream"
    for _ in range(rounds):
        sock = raw.connect()
        sock.sendall(raw.head("GET", path, key, extra="Accept: text/event-stream\r\n"))
        data = b""
        while b"data:" not in data:
            chunk = sock.recv(4096)
            assert chunk, f"stream closed before its first event: {data!r}"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        sock.close()


def _oversized_head(raw: RawClient) -> bytes:
    sock = raw.connect()
    try:
        sock.sendall(raw.head("GET", "/health", extra=f"X-Big: {'a' * (MAX_HEAD_BYTES + 1)}\r\n"))
        return read_response(sock)
    finally:
        sock.close()


def _start_slow_loris(raw: RawClient) -> ssl.SSLSocket:
    sock = raw.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    sock.settimeout(0.2)
    return sock


def _trickle_until_closed(sock: ssl.SSLSocket) -> bytes:
    """Send a header byte a second until the server hangs up; what it said before it did."""
    deadline = time.monotonic() + HEADER_TIMEOUT_S + SETTLE_S
    data = b""
    try:
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    return data
                data += chunk
                continue
            except TimeoutError:
                pass
            except (ssl.SSLError, OSError):
                return data
            try:
                sock.send(b"a")
            except (ssl.SSLError, OSError):
                return data
            time.sleep(1.0)
        raise AssertionError(f"a slow loris was still connected after {HEADER_TIMEOUT_S + SETTLE_S:.0f}s")
    finally:
        sock.close()
