"""HTTPS in one step: `motionserve serve --tls auto` prints what a client needs, and that is enough.

A real server process makes its own CA in the data directory; the official Python client then runs in a
shell whose environment holds nothing but the `export` lines the server printed (plus PATH and HOME),
and sets the upload globals from the Python lines printed beside them. Node checks NODE_EXTRA_CA_CERTS
the same way. A second start reuses the certificate.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.media import make_png

from .common import SMALL_T2V, T2V
from .media import probe_mp4
from .server import ManagedProcess, base_env, free_port, link_models_cache

pytestmark = pytest.mark.e2e

DRIVER = r"""
import json, sys, tempfile
import fal_client
import fal_client.client

for line in json.loads(sys.argv[1]):  # the printed upload settings, as the operator would paste them
    assert line.startswith("fal_client.client."), line
    exec(line)
png = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
png.write(bytes.fromhex(sys.argv[3]))
png.close()
uploaded = fal_client.upload_file(png.name)
result = fal_client.subscribe(sys.argv[2], arguments=json.loads(sys.argv[4]), with_logs=True)
print(json.dumps({"video": result["video"]["url"], "uploaded": uploaded}))
"""

NODE_CHECK = "fetch(process.argv[1]).then(r => r.json()).then(b => console.log(JSON.stringify(b.status ?? b)))"


def _start(data_dir: Path, port: int, log_dir: Path) -> ManagedProcess:
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--weights", "tiny", "--tls", "auto"]
    return ManagedProcess(f"tls-auto-{port}", args, log_dir / f"tls-auto-{port}-{time.monotonic_ns()}.log", base_env()).start()


def _wait_healthy(proc: ManagedProcess, base: str, ca: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.alive(), f"server exited:\n{proc.log()}"
        if ca.exists():
            try:
                if httpx.get(f"{base}/health", verify=str(ca), timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.25)
    raise AssertionError(f"not healthy after {timeout_s}s:\n{proc.log()}")


def _printed(log: str, prefix: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if line.strip().startswith(prefix)]


def _in_clean_shell(exports: list[str], argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`argv` in bash with an environment made of the printed lines only (and PATH/HOME to find programs)."""
    script = "\n".join([*exports, "exec " + shlex.join(argv)])
    home.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True, text=True, timeout=600,
    )


def test_the_printed_lines_are_all_the_official_clients_need(tmp_path: Path, log_dir: Path, models_cache: Path) -> None:
    data_dir = tmp_path / "data"
    link_models_cache(data_dir, models_cache)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    ca = data_dir / "tls" / "ca.pem"
    proc = _start(data_dir, port, log_dir)
    try:
        _wait_healthy(proc, base, ca)
        log = proc.log()
        exports = _printed(log, "export ")
        assert [e.split("=", 1)[0] for e in exports] == [
            "export FAL_KEY", "export FAL_RUN_HOST", "export FAL_QUEUE_RUN_HOST", "export SSL_CERT_FILE", "export NODE_EXTRA_CA_CERTS",
        ], log
        key = (data_dir / "admin-key.txt").read_text().strip()
        assert key.split(":")[1] not in log  # the secret is named by its file, never printed
        upload_globals = _printed(log, "fal_client.client.")
        assert len(upload_globals) == 2, log

        png = make_png(64, 64)
        out = _in_clean_shell(
            exports,
            [sys.executable, "-c", DRIVER, json.dumps(upload_globals), T2V, png.hex(), json.dumps(SMALL_T2V)],
            tmp_path / "home",
        )
        assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}\n--- server\n{proc.log()}"
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["video"].startswith(base) and result["uploaded"].startswith(base)
        with httpx.Client(verify=str(ca), timeout=60) as http:
            assert http.get(result["uploaded"]).content == png
            video = probe_mp4(http.get(result["video"]).content)
        assert video.frames == SMALL_T2V["num_frames"]

        node = _in_clean_shell(exports, ["node", "-e", NODE_CHECK, f"{base}/health"], tmp_path / "home")
        assert node.returncode == 0, node.stderr

        # A second start on the same data directory reuses the CA and the certificate clients trust.
        ca_bytes, cert_bytes = ca.read_bytes(), (data_dir / "tls" / "server.pem").read_bytes()
        proc.stop()
        proc = _start(data_dir, port, log_dir)
        _wait_healthy(proc, base, ca)
        assert ca.read_bytes() == ca_bytes and (data_dir / "tls" / "server.pem").read_bytes() == cert_bytes
        assert _printed(proc.log(), "export ") == exports
    finally:
        proc.stop()
