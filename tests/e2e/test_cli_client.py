"""`motionserve run ENDPOINT_ID`, the command-line client, against a real server process over TLS.

Each run is a `python -m motionserve run ...` subprocess that trusts the test CA through SSL_CERT_FILE,
as a user's shell would. Flag parsing and `--help` need no server and run in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from motionserve import client_cli
from motionserve.client_schema import local_schema
from tests.media import make_video

from .common import SMALL_T2V, T2V, TURBO, V2V, download, step_numbers
from .media import probe_mp4
from .server import Server, free_port

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 300
STEPS_OF_LONG_RUN = 50
SUBMITTED = re.compile(r"request (\S+) submitted")


def cli_env(srv: Server | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MOTIONSERVE_URL")) and "proxy" not in k.lower()}
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost")
    if srv is not None:
        env["SSL_CERT_FILE"] = str(srv.tls.ca_cert)
    return env


def run_cli(srv: Server, key: str, *args: str, cwd: Path, server_url: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "motionserve", "run", *args, "--server", server_url or srv.base_url, "--key", key]
    return subprocess.run(command, cwd=cwd, env=cli_env(srv), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def t2v_flags(**overrides: Any) -> list[str]:
    """SMALL_T2V (with `overrides`) as the command line's flags."""
    flags = []
    for name, value in {**SMALL_T2V, **overrides}.items():
        flags += ["--" + name.replace("_", "-"), value if isinstance(value, str) else json.dumps(value)]
    return flags


def error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode not in (0, 2), f"rc {out.returncode}\n{out.stdout}\n{out.stderr}"
    return [line for line in out.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- no server needed


def test_flags_follow_the_endpoint_schema(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"prompt": "from the file", "seed": 3, "num_frames": 4}))
    inv = client_cli.parse_command_line([
        T2V, "--input", str(request), "--seed", "5", "--video-size", "landscape_16_9", "--motions", "zoom-in",
        "--motions", '["pan-left", "tilt-up"]', "--guidance_scale", "3", "--set", "fps=4",
    ])
    assert client_cli.build_arguments(inv) == {
        "prompt": "from the file", "seed": 5, "num_frames": 4, "fps": 4, "video_size": "landscape_16_9",
        "motions": ["zoom-in", "pan-left", "tilt-up"], "guidance_scale": 3.0,
    }
    custom = client_cli.parse_command_line([T2V, "--prompt", "p", "--video-size", '{"width": 64, "height": 96}'])
    assert client_cli.build_arguments(custom)["video_size"] == {"width": 64, "height": 96}
    turbo = client_cli.parse_command_line([TURBO, "--loras", "some/repo", "--loras", '{"path": "x", "scale": 0.5}'])
    assert client_cli.build_arguments(turbo)["loras"] == [{"path": "some/repo"}, {"path": "x", "scale": 0.5}]


def test_the_server_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MOTIONSERVE_URL", "FAL_QUEUE_RUN_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert client_cli.parse_command_line([T2V]).server is None  # fal.ai's own hosts
    monkeypatch.setenv("FAL_QUEUE_RUN_HOST", "127.0.0.1:8443/queue")  # as `serve --tls auto` prints it
    assert client_cli.parse_command_line([T2V]).server == "https://127.0.0.1:8443"
    monkeypatch.setenv("MOTIONSERVE_URL", "http://gpu-box:8000/")
    assert client_cli.parse_command_line([T2V]).server == "http://gpu-box:8000"
    assert client_cli.parse_command_line([T2V, "--server", "https://other"]).server == "https://other"


@pytest.mark.parametrize(("flag", "value"), [("--num-frames", "many"), ("--video-size", "huge"), ("--motions", "spin")])
def test_a_value_of_the_wrong_type_is_refused_before_any_request(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client_cli.parse_command_line([T2V, "--prompt", "p", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: expected" in capsys.readouterr().err


def test_help_lists_the_fields_with_descriptions_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client_cli.main([T2V, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--num-frames INT The number of frames to generate for the video. [integer (minimum 1); default: 16]" in text
    assert "--video-size NAME|JSON" in text and "landscape_16_9" in text
    assert "--prompt TEXT" in text and "required" in text


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "motionserve", "run", T2V, "--prompt", "p", "--server", url, "--key", "k:s"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60,
    )
    assert error_lines(out) == [f"motionserve run: cannot reach {url}: connection refused"]


# ---------------------------------------------------------------- against the server


def test_the_schema_from_the_servers_openapi_document_gives_the_same_flags(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids this package does not know take their flags from `/openapi/{id}.json`: ours must read back as the original."""
    monkeypatch.setenv("SSL_CERT_FILE", str(server.tls.ca_cert))
    remote, local = client_cli.remote_schema(T2V, server.base_url), local_schema(T2V)
    assert remote is not None and local is not None
    assert list(remote.properties) == list(local.properties) and remote.required == local.required
    argv = [T2V, "--prompt", "p", "--video-size", "portrait_4_3", "--motions", "zoom-out", "--num-frames", "9"]
    parsed = []
    for schema in (remote, local):
        parser, fields = client_cli.endpoint_parser(schema)
        parsed.append(client_cli.build_arguments(client_cli.Invocation(parser.parse_args(argv), None, fields)))
    assert parsed[0] == parsed[1] == {"prompt": "p", "video_size": "portrait_4_3", "motions": ["zoom-out"], "num_frames": 9}


def test_text_to_video_shows_progress_and_writes_a_playable_mp4(server: Server, api_key: str, tmp_path: Path) -> None:
    out = run_cli(server, api_key, T2V, *t2v_flags(), "-o", "rocket.mp4", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    info = probe_mp4((tmp_path / "rocket.mp4").read_bytes())
    assert (info.frames, info.fps, info.width, info.height) == (8, 8, 64, 64)
    assert SUBMITTED.search(out.stderr)
    assert re.search(r"denoising: 100%.*3/3", out.stderr), out.stderr  # the tqdm bar, step by step
    assert "saved rocket.mp4" in out.stdout and f"seed: {SMALL_T2V['seed']}" in out.stdout


def test_video_to_video_uploads_a_local_file_and_prints_the_result_json(server: Server, api_key: str, tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(make_video(width=64, height=64, fps=8, frames=16))
    request = {"prompt": "a painting", "video_url": "clip.mp4", "first_n_seconds": 2, "fps": 4, "num_inference_steps": 4, "strength": 0.5, "seed": 3}
    (tmp_path / "request.json").write_text(json.dumps(request))

    out = run_cli(server, api_key, V2V, "--input", "request.json", "--seed", "5", "--json", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["seed"] == 5  # the flag overrode the file
    assert probe_mp4(download(server, result["video"]["url"])).frames == 8  # 2 s at 4 fps of the uploaded clip
    assert "denoising" not in out.stderr and not SUBMITTED.search(out.stderr)  # --json: no progress, no summary
    assert not list(tmp_path.glob("*-*-*.mp4")), "--json writes no file unless -o is given"


def test_ctrl_c_cancels_the_request_on_the_server(server: Server, api_key: str, tmp_path: Path) -> None:
    flags = t2v_flags(num_frames=16, num_inference_steps=STEPS_OF_LONG_RUN, video_size={"width": 128, "height": 128})
    command = [sys.executable, "-m", "motionserve", "run", T2V, *flags, "--server", server.base_url, "--key", api_key]
    proc = subprocess.Popen(command, cwd=tmp_path, env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = StreamReader(proc.stderr)
    try:
        stderr.wait_for(re.compile(rb"denoising: .*\b[1-9]\d*/%d" % STEPS_OF_LONG_RUN), timeout_s=RUN_TIMEOUT_S)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = stderr.text()
    request_id = SUBMITTED.search(text).group(1)  # type: ignore[union-attr]
    assert f"cancelled request {request_id} on the server" in text

    status = wait_completed(server, api_key, request_id)
    assert status["error_type"] == "client_cancelled"
    assert len(step_numbers(status["logs"])) < STEPS_OF_LONG_RUN


def test_a_bad_value_is_one_line_naming_the_field(server: Server, api_key: str, tmp_path: Path) -> None:
    out = run_cli(server, api_key, T2V, "--prompt", "p", "--num-frames", "0", cwd=tmp_path)

    assert error_lines(out) == ["motionserve run: invalid input: num_frames: Input should be greater than or equal to 1 (got 0)"]


def test_a_bad_key_is_one_line(server: Server, tmp_path: Path) -> None:
    out = run_cli(server, "nobody:wrong", T2V, "--prompt", "p", cwd=tmp_path)

    [line] = error_lines(out)
    assert line.startswith("motionserve run: the server refused the key: ")


# ---------------------------------------------------------------- helpers


class StreamReader:
    """Collects a child's pipe in a thread, so a test can wait for a pattern in output that has no newlines (tqdm)."""

    def __init__(self, pipe: Any) -> None:
        self._chunks: list[bytes] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        while chunk := os.read(pipe.fileno(), 4096):
            with self._cond:
                self._chunks.append(chunk)
                self._cond.notify_all()

    def text(self) -> str:
        self._thread.join(timeout=10)
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, pattern: re.Pattern[bytes], timeout_s: float) -> None:
        with self._cond:
            found = self._cond.wait_for(lambda: pattern.search(b"".join(self._chunks)), timeout=timeout_s)
        assert found, f"no {pattern.pattern!r} within {timeout_s}s in:\n{b''.join(self._chunks).decode(errors='replace')}"


def wait_completed(srv: Server, key: str, request_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with srv.http(key) as http:
        while True:
            status = http.get(f"/queue/fal-ai/fast-animatediff/requests/{request_id}/status", params={"logs": 1}).json()
            if status["status"] == "COMPLETED" or time.monotonic() > deadline:
                assert status["status"] == "COMPLETED", status
                return status
            time.sleep(0.2)
