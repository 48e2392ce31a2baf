"""Fixtures for end-to-end tests: a TLS server process on tiny weights, keys, the two official clients.

Servers are real `python -m motionserve serve` processes; clients are the unmodified `fal-client`
(Python, in a subprocess per scenario) and `@fal-ai/client` (Node, tests/e2e/js). Server logs are
attached to the report of any failing test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import server as server_mod
from .common import PyClient
from .server import Server, start_server
from .tls import TlsFiles, make_local_ca

HERE = Path(__file__).resolve().parent
JS_DIR = HERE / "js"
CLIENT_TIMEOUT_S = 600

# ---------------------------------------------------------------- report server logs on failure


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test that starts real server processes")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    server_mod.FINISHED.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in [*server_mod.FINISHED, *server_mod.LIVE]:
            report.sections.append((f"{proc.name} log ({proc.log_path})", proc.log()))


# ---------------------------------------------------------------- shared session resources


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def tls_files(e2e_dir: Path) -> TlsFiles:
    return make_local_ca(e2e_dir / "tls")


@pytest.fixture(scope="session")
def models_cache(e2e_dir: Path) -> Path:
    """Tiny weights are built once per session (or kept across runs via MOTIONSERVE_E2E_MODELS_CACHE)."""
    configured = os.environ.get("MOTIONSERVE_E2E_MODELS_CACHE")
    return Path(configured) if configured else e2e_dir / "models-cache"


@pytest.fixture(scope="session")
def log_dir(e2e_dir: Path) -> Path:
    path = e2e_dir / "logs"
    path.mkdir(exist_ok=True)
    return path


@dataclass
class ServerFactory:
    """Starts servers (all stopped at teardown) in fresh data directories under the session dir."""

    root: Path
    tls: TlsFiles
    log_dir: Path
    models_cache: Path
    started: list[Server] = field(default_factory=list)

    def __call__(self, name: str, **kwargs: Any) -> Server:
        data_dir = kwargs.pop("data_dir", None) or self._fresh_dir(name)
        srv = start_server(data_dir, self.tls, log_dir=self.log_dir, name=name, models_cache=self.models_cache, **kwargs)
        self.started.append(srv)
        return srv

    def _fresh_dir(self, name: str) -> Path:
        n = 0
        while (self.root / f"{name}-{n}").exists():
            n += 1
        path = self.root / f"{name}-{n}"
        path.mkdir(parents=True)
        return path

    def stop_all(self) -> None:
        for srv in self.started:
            srv.stop()


@pytest.fixture(scope="session")
def server_factory(e2e_dir: Path, tls_files: TlsFiles, log_dir: Path, models_cache: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(e2e_dir / "data", tls_files, log_dir, models_cache)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def server(server_factory: ServerFactory) -> Server:
    """The shared server for client tests: one in-process CPU worker, private URLs allowed (local webhooks)."""
    return server_factory("server", allow_private_urls=True)


@pytest.fixture(scope="session")
def api_key(server: Server) -> str:
    return server.create_key("e2e-clients")


# ---------------------------------------------------------------- clients


def _last_json_line(out: subprocess.CompletedProcess[str], what: str) -> Any:
    if out.returncode != 0:
        raise AssertionError(f"{what} exited {out.returncode}\n--- stdout\n{out.stdout[-6000:]}\n--- stderr\n{out.stderr[-6000:]}")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise AssertionError(f"{what} printed no JSON result\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}") from exc


def python_client_env(srv: Server, key: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("FAL_KEY_ID", "FAL_KEY_SECRET", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(name, None)
    env.update(
        FAL_KEY=key,
        FAL_RUN_HOST=f"127.0.0.1:{srv.port}/run",
        FAL_QUEUE_RUN_HOST=f"127.0.0.1:{srv.port}/queue",
        SSL_CERT_FILE=str(srv.tls.ca_cert),
        MOTIONSERVE_E2E_BASE=srv.base_url,
        NO_PROXY="127.0.0.1,localhost",
    )
    return env



@pytest.fixture()
def py_client(server: Server, api_key: str) -> PyClient:
    """`py_client("scenario", key=None, **kwargs)` runs py_driver.py against the shared server."""
    return make_py_client(server, api_key)


def make_py_client(srv: Server, default_key: str) -> PyClient:
    def run(scenario: str, *, key: str | None = None, **kwargs: Any) -> Any:
        out = subprocess.run(
            [sys.executable, str(HERE / "py_driver.py"), scenario, json.dumps(kwargs)],
            capture_output=True, text=True, env=python_client_env(srv, key or default_key), timeout=CLIENT_TIMEOUT_S,
        )
        return _last_json_line(out, f"py_driver {scenario}")

    return run


@pytest.fixture(scope="session")
def js_ready() -> Path:
    """Node and tests/e2e/js/node_modules (installed from package-lock.json once if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("Node.js >= 20 with npm is required for the @fal-ai/client tests (see README)")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=600)
    return JS_DIR


@pytest.fixture()
def js_client(server: Server, api_key: str, js_ready: Path) -> PyClient:
    """`js_client("scenario", key=None, **kwargs)` runs js/driver.cjs against the shared server."""
    return make_js_client(server, api_key, js_ready)


def make_js_client(srv: Server, default_key: str, js_dir: Path) -> PyClient:
    def run(scenario: str, *, key: str | None = None, **kwargs: Any) -> Any:
        env = dict(os.environ)
        env.update(
            FAL_KEY=key or default_key,
            MOTIONSERVE_E2E_BASE=srv.base_url,
            NODE_EXTRA_CA_CERTS=str(srv.tls.ca_cert),
        )
        out = subprocess.run(
            ["node", str(js_dir / "driver.cjs"), scenario, json.dumps(kwargs)],
            capture_output=True, text=True, env=env, cwd=js_dir, timeout=CLIENT_TIMEOUT_S,
        )
        return _last_json_line(out, f"js driver {scenario}")

    return run


# ---------------------------------------------------------------- outputs and webhooks


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A plain HTTP endpoint on 127.0.0.1 that records every POST (fal delivers webhooks by POST)."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._cond:
                    receiver.received.append(
                        ReceivedWebhook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"

    def wait_for(self, request_id: str, timeout_s: float = 120.0) -> ReceivedWebhook:
        def match() -> ReceivedWebhook | None:
            for hook in self.received:
                if hook.headers.get("x-fal-webhook-request-id") == request_id:
                    return hook
            return None

        with self._cond:
            self._cond.wait_for(lambda: match() is not None, timeout=timeout_s)
            hook = match()
        assert hook is not None, f"no webhook for {request_id} within {timeout_s}s; got {[h.headers for h in self.received]}"
        return hook

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture()
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
