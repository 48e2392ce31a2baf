"""The checkpoint map: defaults, JSON overrides, local/HF-cache resolution, missing-checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motionserve.config import Settings
from motionserve.endpoints.text_to_video import Motion
from motionserve.errors import ModelUnavailableError
from motionserve.inference.motions import MOTIONS
from motionserve.inference.weights import (
    DEFAULT_MAP,
    Checkpoints,
    LoraSourceError,
    load_checkpoints,
    lora_weights_file,
    pull,
    resolve_lora_source,
)


def test_real_defaults_name_the_published_checkpoints(tmp_path: Path) -> None:
    checkpoints = load_checkpoints("real", tiny_root=tmp_path)
    assert checkpoints["sd15_base"].source == "emilianJR/epiCRealism"
    assert checkpoints["motion_adapter"].source == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert {checkpoints.motion_lora(m).source for m in MOTIONS} == {f"guoyww/animatediff-motion-lora-{m}" for m in MOTIONS}
    lcm = checkpoints["animatelcm_lora"]
    assert (lcm.source, lcm.file) == ("wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors")
    assert checkpoints["svd_base"].source == "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
    svd_lcm = checkpoints["svd_lcm_unet"]
    assert (svd_lcm.source, svd_lcm.file) == ("wangfuyun/AnimateLCM-SVD-xt", "AnimateLCM-SVD-xt-1.1.safetensors")
    assert not any(c.is_local for c in checkpoints)


def test_every_motion_the_endpoints_offer_has_a_lora() -> None:
    assert [m.value for m in Motion] == list(MOTIONS)


def test_a_json_map_overrides_entries_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "my-base").mkdir()
    (tmp_path / "zoom").mkdir()
    (tmp_path / "zoom" / "lora.safetensors").write_bytes(b"")
    map_path = tmp_path / "weights.json"
    map_path.write_text(json.dumps({
        "sd15_base": "./my-base",
        "motion_adapter": "someone/other-adapter",
        "motion_loras": {"zoom-in": "./zoom"},
    }))
    checkpoints = load_checkpoints(str(map_path), tiny_root=tmp_path)
    assert checkpoints.path("sd15_base") == (tmp_path / "my-base").resolve()
    assert checkpoints["motion_adapter"].source == "someone/other-adapter"
    assert checkpoints.path("motion_lora:zoom-in") == (tmp_path / "zoom").resolve()
    # Entries not overridden keep their defaults, motion LoRAs included.
    assert checkpoints.motion_lora("pan-left").source == DEFAULT_MAP["motion_loras"]["pan-left"]
    assert checkpoints["svd_base"].source == DEFAULT_MAP["svd_base"]


def test_bad_maps_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_checkpoints(str(tmp_path / "nope.json"), tiny_root=tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelUnavailableError, match="JSON"):
        load_checkpoints(str(tmp_path / "bad.json"), tiny_root=tmp_path)
    with pytest.raises(ValueError, match="unknown checkpoint"):
        Checkpoints.from_map({"sd15": "x/y"})
    with pytest.raises(ValueError, match="single file"):
        Checkpoints.from_map({"animatelcm_lora": "wangfuyun/AnimateLCM"})


def test_a_missing_local_checkpoint_names_itself(tmp_path: Path) -> None:
    checkpoints = Checkpoints.from_map({"sd15_base": str(tmp_path / "gone")})
    with pytest.raises(ModelUnavailableError) as info:
        checkpoints.path("sd15_base")
    assert "sd15_base" in info.value.message and str(tmp_path / "gone") in info.value.message
    assert info.value.status_code == 503


def test_an_uncached_repo_offline_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoints = Checkpoints.from_map(
        {"motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
         "svd_lcm_unet": {"source": "wangfuyun/AnimateLCM-SVD-xt", "file": "AnimateLCM-SVD-xt-1.1.safetensors"}},
        cache_dir=tmp_path / "empty-cache",
    )
    for name in ("motion_adapter", "svd_lcm_unet"):
        with pytest.raises(ModelUnavailableError) as info:
            checkpoints.path(name)
        message = info.value.message
        assert name in message and checkpoints[name].source in message
        assert "motionserve models pull" in message and "weights map" in message


def test_a_repo_in_the_hf_cache_resolves_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay out a cache entry the way huggingface_hub does: blobs, a snapshot, a ref to it.
    repo_dir = tmp_path / "cache" / "models--someone--adapter"
    snapshot = repo_dir / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoints = Checkpoints.from_map({"motion_adapter": "someone/adapter"}, cache_dir=tmp_path / "cache")
    assert checkpoints.path("motion_adapter") == snapshot


def test_lora_weights_file_finds_the_single_safetensors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "whatever.safetensors").write_bytes(b"")
    assert lora_weights_file(tmp_path / "a") == tmp_path / "a" / "whatever.safetensors"
    (tmp_path / "a" / "other.safetensors").write_bytes(b"")
    with pytest.raises(ModelUnavailableError):
        lora_weights_file(tmp_path / "a")
    (tmp_path / "a" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert lora_weights_file(tmp_path / "a").name == "pytorch_lora_weights.safetensors"


def test_user_lora_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> None:
    lora = tiny_weights / "user-lora.safetensors"
    assert resolve_lora_source(str(lora), local_root=tiny_weights) == lora
    assert resolve_lora_source("user-lora.safetensors", local_root=tiny_weights) == lora  # relative to the folder
    with pytest.raises(LoraSourceError, match="neither"):
        resolve_lora_source(str(tmp_path / "missing.safetensors"), local_root=tiny_weights)
    with pytest.raises(LoraSourceError, match="neither"):
        resolve_lora_source("just-a-name", local_root=tiny_weights)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoraSourceError, match="could not be fetched"):
        resolve_lora_source("nobody/no-such-lora-xyz/lora.safetensors", local_root=tiny_weights)


def test_local_lora_paths_stay_inside_the_lora_folder(tmp_path: Path, tiny_weights: Path) -> None:
    """API-key holders must not load arbitrary files of the server through `loras[].path`."""
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "mine.safetensors").write_bytes(b"x")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x")
    assert resolve_lora_source("mine.safetensors", local_root=lora_dir) == (lora_dir / "mine.safetensors").resolve()
    for escape in (str(outside), "../secret.safetensors", str(tiny_weights / "user-lora.safetensors")):
        with pytest.raises(LoraSourceError):
            resolve_lora_source(escape, local_root=lora_dir)
    (lora_dir / "link.safetensors").symlink_to(outside)
    with pytest.raises(LoraSourceError, match="outside"):
        resolve_lora_source("link.safetensors", local_root=lora_dir)
    with pytest.raises(LoraSourceError):  # no LoRA folder configured: no local paths at all
        resolve_lora_source(str(outside), local_root=None)


def test_pull_resolves_every_entry_of_the_tiny_map(data_dir: Path, tiny_weights: Path) -> None:
    lines: list[str] = []
    paths = pull(Settings(weights="tiny", data_dir=data_dir), log=lines.append)
    assert {"sd15_base", "motion_adapter", "animatelcm_adapter", "animatelcm_lora", "svd_base", "svd_lcm_unet"} <= set(paths)
    assert {f"motion_lora:{m}" for m in MOTIONS} <= set(paths)
    assert all(p.exists() and tiny_weights in p.parents for p in paths.values())
    assert any("sd15_base" in line for line in lines)
