"""`motionserve models pull` checks access to every repository before downloading anything.

The hub is a local stand-in on 127.0.0.1 (pointed to with HF_ENDPOINT) answering the auth-check API as
huggingface.co does: 200, 401/403 with `X-Error-Code: GatedRepo`, 401/404 with `RepoNotFound`. It records
every request, so the tests can tell that nothing but access checks was asked for. No real download.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from motionserve.inference.motions import MOTIONS
from motionserve.inference.weights import _PIPELINE_PATTERNS, load_checkpoints, needed
from tests.services import free_port

SVD = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
SVD_LCM = "wangfuyun/AnimateLCM-SVD-xt"
ANIMATEDIFF_REPOS = {"emilianJR/epiCRealism", "guoyww/animatediff-motion-adapter-v1-5-2",
                     *(f"guoyww/animatediff-motion-lora-{m}" for m in MOTIONS)}
AUTH_CHECK = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/auth-check$")
ANY_REPO_PATH = re.compile(r"^(?:/api/models)?/(?P<repo>[^/]+/[^/]+)/")


class StandInHub:
    """Answers auth-check per repo: "ok", "gated" (401 without a token, 403 with one), "missing" (401
    without a token, as the hub does for unknown and private repos alike; 404 with one), "bad-token"."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                auth = self.headers.get("Authorization")
                hub.requests.append(("GET", self.path, auth))
                match = AUTH_CHECK.match(self.path) or ANY_REPO_PATH.match(self.path)
                answer = hub.answers.get(match["repo"], "ok") if match else "ok"
                if (match is None or match.re is not AUTH_CHECK) and answer != "gated":
                    return self._answer(500, {"error": "the stand-in serves no files"})  # the start of a download
                repo = match["repo"]
                if answer == "ok":
                    return self._answer(200, {})
                if answer == "gated":
                    status, message = (403, f"Access to model {repo} is restricted and you are not in the authorized list.") if auth \
                        else (401, f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it.")
                    return self._answer(status, {"error": message}, code="GatedRepo")
                if answer == "missing":
                    return self._answer(404 if auth else 401, {"error": "Repository not found"}, code="RepoNotFound")
                if answer == "bad-token":
                    return self._answer(401, {"error": "Invalid credentials in Authorization header"},
                                        message="Invalid credentials in Authorization header")
                raise AssertionError(answer)

            do_HEAD = do_GET

            def do_POST(self) -> None:  # noqa: N802
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                self._answer(500, {"error": "the stand-in serves no files"})

            def _answer(self, status: int, body: dict, *, code: str | None = None, message: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if code:
                    self.send_header("X-Error-Code", code)
                if message or body.get("error"):
                    self.send_header("X-Error-Message", message or body["error"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def checked(self) -> set[str]:
        return {m["repo"] for _, path, _ in self.requests if (m := AUTH_CHECK.match(path))}

    def only_access_checks(self) -> bool:
        return all(method == "GET" and AUTH_CHECK.match(path) for method, path, _ in self.requests)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    stand_in = StandInHub({})
    yield stand_in
    stand_in.close()


def pull(tmp_path: Path, endpoint: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`motionserve models pull ARGS` in a fresh process (huggingface_hub reads HF_ENDPOINT at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "MOTIONSERVE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "motionserve", "models", "pull", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def problem_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("motionserve: ")]


def nothing_downloaded(tmp_path: Path) -> bool:
    hub_cache = tmp_path / "hf-home" / "hub"
    return not hub_cache.exists() or not any(hub_cache.glob("models--*"))


def test_a_gated_repo_without_a_token_says_how_to_get_access_and_nothing_is_downloaded(tmp_path: Path, hub: StandInHub) -> None:
    hub.answers[SVD] = "gated"
    out = pull(tmp_path, hub.url)
    assert out.returncode == 1, out.stderr
    assert problem_lines(out) == [
        f"motionserve: {SVD}: gated: accept the licence at {hub.url}/{SVD}, then set HF_TOKEN or run `hf auth login`",
        "motionserve: nothing was downloaded",
    ]
    # Every repository of the map was checked, and nothing else was asked for.
    assert hub.checked() == {c.source for c in load_checkpoints("real", tiny_root=tmp_path)}
    assert hub.only_access_checks() and nothing_downloaded(tmp_path)


def test_every_problem_is_one_line(tmp_path: Path, hub: StandInHub) -> None:
    map_path = tmp_path / "weights.json"
    map_path.write_text(json.dumps({"motion_adapter": "someone/no-such-adapter"}))
    hub.answers.update({SVD: "gated", "someone/no-such-adapter": "missing", SVD_LCM: "missing"})
    out = pull(tmp_path, hub.url, "--weights", str(map_path), token="hf_test_token")
    assert out.returncode == 1
    lines = problem_lines(out)
    assert lines == [
        "motionserve: someone/no-such-adapter: not found on the hub (or private to others): check the weights map (--weights)",
        f"motionserve: {SVD}: gated, and the account of your token has not been granted access: accept the licence at {hub.url}/{SVD} with that account",
        f"motionserve: {SVD_LCM}: not found on the hub (or private to others): check the weights map (--weights)",
        "motionserve: nothing was downloaded",
    ]
    assert all(auth == "Bearer hf_test_token" for _, _, auth in hub.requests)  # the token was used
    assert hub.only_access_checks() and nothing_downloaded(tmp_path)


def test_a_refused_token_is_named(tmp_path: Path, hub: StandInHub) -> None:
    hub.answers["emilianJR/epiCRealism"] = "bad-token"
    out = pull(tmp_path, hub.url, "--endpoint", "fal-ai/animatediff-v2v/turbo", token="hf_wrong")
    assert out.returncode == 1
    assert problem_lines(out)[0] == (
        "motionserve: emilianJR/epiCRealism: the hub refused the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`"
    )


def test_endpoint_choice_checks_only_the_repositories_it_needs(tmp_path: Path, hub: StandInHub) -> None:
    hub.answers.update({SVD: "gated", SVD_LCM: "missing"})
    out = pull(tmp_path, hub.url, "--endpoint", "fal-ai/fast-svd-lcm")
    assert out.returncode == 1
    assert hub.checked() == {SVD, SVD_LCM} and len(problem_lines(out)) == 3

    hub.requests.clear()
    hub.answers["guoyww/animatediff-motion-lora-pan-left"] = "missing"
    out = pull(tmp_path, hub.url, "--endpoint", "fal-ai/fast-animatediff/text-to-video", "--endpoint", "fal-ai/fast-animatediff/video-to-video")
    assert out.returncode == 1
    assert hub.checked() == ANIMATEDIFF_REPOS  # no SVD: its licence does not matter for these endpoints
    assert problem_lines(out)[0].startswith("motionserve: guoyww/animatediff-motion-lora-pan-left: not found")
    assert hub.only_access_checks() and nothing_downloaded(tmp_path)

    unknown = pull(tmp_path, hub.url, "--endpoint", "fal-ai/no-such-endpoint")
    assert unknown.returncode == 2 and "unknown endpoint fal-ai/no-such-endpoint" in unknown.stderr


def test_a_hub_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    out = pull(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert out.returncode == 1
    lines = problem_lines(out)
    assert len(lines) == 2 and lines[0].startswith("motionserve: cannot reach the Hugging Face hub at http://127.0.0.1:")
    assert nothing_downloaded(tmp_path)


def test_each_pipeline_group_needs_its_own_checkpoints(tmp_path: Path) -> None:
    checkpoints = load_checkpoints("real", tiny_root=tmp_path)
    names = lambda *groups: {c.name for c in needed(checkpoints, groups)}  # noqa: E731
    assert names("svd_lcm") == {"svd_base", "svd_lcm_unet"}
    assert names("turbo") == {"sd15_base", "animatelcm_adapter", "animatelcm_lora"}
    assert names("animatediff") == {"sd15_base", "motion_adapter", *(f"motion_lora:{m}" for m in MOTIONS)}
    assert {c.name for c in needed(checkpoints)} == {c.name for c in checkpoints}
    with pytest.raises(ValueError, match="unknown pipeline group"):
        needed(checkpoints, ["nope"])


# -- what the pipeline patterns fetch -------------------------------------------------------------


def _snapshot(source: Path, dest: Path, extra: dict[str, bytes], model_index: dict[str, object]) -> list[str]:
    """`source` plus the files real repos carry beside the components, filtered as snapshot_download does."""
    from huggingface_hub.utils import filter_repo_objects

    staged = dest.with_name(dest.name + "-repo")
    shutil.copytree(source, staged)
    for rel, data in extra.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    index = json.loads((staged / "model_index.json").read_text())
    (staged / "model_index.json").write_text(json.dumps({**index, **model_index}))
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    kept = list(filter_repo_objects(files, allow_patterns=_PIPELINE_PATTERNS))
    for rel in kept:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(staged / rel, dest / rel)
    return kept


def test_the_pipeline_patterns_fetch_what_the_loaders_read_and_nothing_else(tmp_path: Path, tiny_weights: Path) -> None:
    from motionserve.inference.models import ModelManager

    decoy = b"not loaded"
    # As emilianJR/epiCRealism: a safety checker (1.2 GB there), a single-file checkpoint, fp16 and .bin copies.
    sd_kept = _snapshot(
        tiny_weights / "sd15", tmp_path / "sd15",
        {"safety_checker/config.json": b"{}", "safety_checker/model.safetensors": decoy, "epiCRealism.safetensors": decoy,
         "unet/diffusion_pytorch_model.fp16.safetensors": decoy, "text_encoder/pytorch_model.bin": decoy, "README.md": decoy,
         "feature_extractor/preprocessor_config.json": (tiny_weights / "svd" / "feature_extractor" / "preprocessor_config.json").read_bytes()},
        {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "requires_safety_checker": True,
         "feature_extractor": ["transformers", "CLIPImageProcessor"]},
    )
    assert not [f for f in sd_kept if "safety_checker" in f or "fp16" in f or f.endswith((".bin", ".md")) or "/" not in f and f.endswith(".safetensors")]
    # As stabilityai/stable-video-diffusion-img2vid-xt-1-1: the single-file checkpoint and fp16 variants at the side.
    svd_kept = _snapshot(
        tiny_weights / "svd", tmp_path / "svd",
        {"svd_xt_1_1.safetensors": decoy, "image_encoder/model.fp16.safetensors": decoy, "vae/diffusion_pytorch_model.fp16.safetensors": decoy},
        {},
    )
    assert not [f for f in svd_kept if "fp16" in f or f == "svd_xt_1_1.safetensors"]

    # The loaders build every pipeline from what was kept.
    weights = json.loads((tiny_weights / "weights.json").read_text())
    weights.update(sd15_base=str(tmp_path / "sd15"), svd_base=str(tmp_path / "svd"))
    for key, value in weights.items():
        if isinstance(value, str) and value.startswith("./"):
            weights[key] = str(tiny_weights / value)
    weights["motion_loras"] = {m: str(tiny_weights / p) for m, p in weights["motion_loras"].items()}
    weights["animatelcm_lora"]["source"] = str(tiny_weights / weights["animatelcm_lora"]["source"])
    map_path = tmp_path / "weights.json"
    map_path.write_text(json.dumps(weights))
    models = ModelManager(str(map_path), tmp_path / "models", "cpu")
    assert models.text_to_video() is not None and models.turbo() is not None and models.svd_lcm() is not None


def test_a_request_that_needs_a_gated_checkpoint_says_which_licence(tmp_path: Path, hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `models pull`, the server fetches on first use: a gated repo is a 503 that says what to do."""
    from motionserve.errors import ModelUnavailableError
    from motionserve.inference.weights import Checkpoints

    hub.answers[SVD] = "gated"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    checkpoints = Checkpoints.from_map({"svd_base": SVD}, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelUnavailableError) as caught:
        checkpoints.path("svd_base", download=True)
    assert caught.value.message == (
        f"checkpoint 'svd_base': {SVD}: gated: accept the licence at {hub.url}/{SVD}, then set HF_TOKEN or run `hf auth login`"
    )
