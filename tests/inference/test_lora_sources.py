"""User LoRAs named by hub repo id: a missing repo is the request's fault (422), a hub that cannot be
reached is not (503). Against local stand-ins of the hub, never the real one."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from motionserve.errors import ModelUnavailableError
from motionserve.inference.weights import LoraSourceError, resolve_lora_source
from tests.services import free_port


class _NoSuchRepo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the hub's answer for an unknown (or private) repository
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_without_the_repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()


def test_a_repo_the_hub_does_not_have_is_a_client_error(hub_without_the_repo: None) -> None:
    with pytest.raises(LoraSourceError, match="someone/no-such-lora"):
        resolve_lora_source("someone/no-such-lora", max_bytes=10**9)


def test_a_hub_that_cannot_be_reached_is_a_503_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # its retries, without the waits
    with pytest.raises(ModelUnavailableError, match="hub cannot be reached") as caught:
        resolve_lora_source("someone/some-lora", max_bytes=10**9)
    assert caught.value.status_code == 503
