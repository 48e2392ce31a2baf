"""The command line: keys, settings from flags and environment, first-start key, `serve` itself."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from motionserve.api.server import BackgroundServices, detect_devices, ensure_admin_key
from motionserve.cli import build_parser, main, settings_from_args
from motionserve.jobs.store import Store


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONSERVE_")}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "motionserve", *args], capture_output=True, text=True, env=env, timeout=120)


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    out = _cli("keys", "create", "--owner", "carol", "--label", "ci", "--data-dir", str(tmp_path), env=_env(tmp_path))
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    key_id, secret = last.split(":")
    store = Store(f"sqlite:///{tmp_path / 'motionserve.db'}")
    assert store.verify_key(key_id, secret) == "carol"
    store.close()


def test_keys_list_and_revoke_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTIONSERVE_DATA_DIR", str(tmp_path))  # no flag: the environment decides
    assert main(["keys", "create", "--owner", "dave"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    key_id, secret = key.split(":")
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "dave" in listing and "active" in listing and secret not in listing
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", key_id]) == 1
    main(["keys", "list"])
    assert "revoked" in capsys.readouterr().out


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOTIONSERVE_PORT", "9000")
    monkeypatch.setenv("MOTIONSERVE_MAX_FRAMES", "64")
    monkeypatch.setenv("MOTIONSERVE_ALLOW_PRIVATE_URLS", "1")
    args = build_parser().parse_args(["serve", "--port", "9100", "--devices", "cuda:0, cuda:1", "--no-workers", "--data-dir", str(tmp_path)])
    settings = settings_from_args(args)
    assert settings.port == 9100 and settings.max_frames == 64 and settings.allow_private_urls
    assert settings.devices == ("cuda:0", "cuda:1") and settings.workers_in_process is False
    assert settings.data_dir == tmp_path
    default = settings_from_args(build_parser().parse_args(["serve"]))
    assert default.workers_in_process is True and default.port == 9000


def test_first_start_key_is_written_0600_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_all()
    path = ensure_admin_key(store, tmp_path)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    key_id, secret = path.read_text().strip().split(":")
    assert store.verify_key(key_id, secret) == "admin"
    assert ensure_admin_key(store, tmp_path) is None  # keys exist: nothing new
    store.close()



def test_background_service_errors_do_not_escape(tmp_path: Path) -> None:
    services = BackgroundServices()
    ran = threading.Event()

    def broken(stop: threading.Event) -> None:
        ran.set()
        raise RuntimeError("boom")

    services.add("broken", broken)
    services.start()
    assert ran.wait(5)
    services.stop()  # joins the (ended) thread: the error stayed inside it


def test_detect_devices_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_devices() == ("cpu",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "motionserve", "serve", "--no-workers", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(tmp_path), text=True,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.stdout.read() if proc.poll() is not None else ""  # type: ignore[union-attr]
        key_file = tmp_path / "admin-key.txt"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        r = httpx.post(f"http://127.0.0.1:{port}/rest/storage/auth/token", json={}, headers={"Authorization": f"Key {key}"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert key.split(":")[1] not in output  # the secret never reaches the logs


def test_a_bad_setting_stops_the_command_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTIONSERVE_FILE_DELIVERY", "cdn")
    assert main(["worker", "--data-dir", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "motionserve: bad setting MOTIONSERVE_FILE_DELIVERY: Input should be 'redirect' or 'proxy'"
