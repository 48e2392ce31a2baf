"""The HTTP/1.1 connection protocol: uvicorn's (httptools) with bounds on each request's head.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`), but nothing bounds how long a
client may take to send a request line and its headers, nor how large they may grow: a "slow loris"
trickling a header byte at a time holds a connection, and the memory behind it, for ever. Here the
head of every request must arrive within `HEADER_TIMEOUT_S` of its first byte (of the connection,
for the first request) and stay under `MAX_HEAD_BYTES`; past either the connection is answered
(408 or 431, fal's JSON `detail`) and closed. Bodies are not timed: a slow upload on a poor network
is a legitimate client, and the upload limit bounds its size.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 64 * 1024  # request line and headers together; browsers send a few KB


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; httptools wraps it in HttpParserCallbackError."""


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_clock: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_too_large = False

    # -- the clock: from a request's first byte (or the connection's start) to its last header

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._start_head_clock()

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        super().on_headers_complete()

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        self._head_clock = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_clock is not None:
            self._head_clock.cancel()
            self._head_clock = None

    def _head_timed_out(self) -> None:
        self._head_clock = None
        log.info("%s: request headers not received within %.0f s; closing", _peer(self.client), HEADER_TIMEOUT_S)
        self._refuse(408, "Request Timeout", f"Request headers not received within {HEADER_TIMEOUT_S:g} s")

    # -- the size of the head -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which is how an oversized head stops the parser."""
        if self._head_too_large:
            self._refuse(431, "Request Header Fields Too Large", f"Request line and headers exceed {MAX_HEAD_BYTES} bytes")
        else:
            super().send_400_response(msg)

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self._stop_head_clock()
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": detail}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
