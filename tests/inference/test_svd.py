"""The tiny SVD checkpoints and the SVD-LCM loader: real layouts, LCM weights applied, clear failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from motionserve.errors import ModelUnavailableError
from motionserve.inference.svd import load_svd_lcm
from motionserve.inference.svd_lcm_scheduler import AnimateLCMSVDScheduler
from motionserve.inference.tiny_svd import LCM_UNET_FILE, SVD_FOLDER, build_tiny_svd
from motionserve.inference.weights import Checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-svd")
    build_tiny_svd(root)
    return root


def checkpoints(base: Path, lcm: Path) -> Checkpoints:
    return Checkpoints.from_map({"svd_base": str(base), "svd_lcm_unet": str(lcm)})


def test_layout_is_that_of_the_published_repos(tiny: Path) -> None:
    folder = tiny / SVD_FOLDER
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNetSpatioTemporalConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLTemporalDecoder"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert (unet["in_channels"], unet["out_channels"], unet["num_frames"]) == (8, 4, 25)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 4  # ×8, 4 latent channels
    encoder = json.loads((folder / "image_encoder" / "config.json").read_text())
    assert encoder["image_size"] == 224
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["use_karras_sigmas"] is True
    # The LCM file is a plain UNet state dict with diffusers key names, like AnimateLCM-SVD-xt-1.1.
    state = load_file(str(tiny / LCM_UNET_FILE))
    assert "conv_in.weight" in state and state["conv_in.weight"].shape[1] == 8


def test_build_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    build_tiny_svd(tmp_path)
    assert (tmp_path / LCM_UNET_FILE).read_bytes() == (tiny / LCM_UNET_FILE).read_bytes()
    unet_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert (tmp_path / SVD_FOLDER / unet_file).read_bytes() == (tiny / SVD_FOLDER / unet_file).read_bytes()


def test_build_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_tiny_svd(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_loader_applies_the_lcm_unet_and_scheduler(tiny: Path) -> None:
    pipe = load_svd_lcm(checkpoints(tiny / SVD_FOLDER, tiny / LCM_UNET_FILE), "cpu", torch.float32)
    assert isinstance(pipe.scheduler, AnimateLCMSVDScheduler)
    lcm = load_file(str(tiny / LCM_UNET_FILE))
    own = pipe.unet.state_dict()
    assert all(torch.equal(own[k], v) for k, v in lcm.items())
    # ...and they are not the base weights (the base folder's UNet differs).
    base = load_file(str(tiny / SVD_FOLDER / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(base["conv_in.weight"], own["conv_in.weight"])


def test_loader_in_half_precision(tiny: Path) -> None:
    pipe = load_svd_lcm(checkpoints(tiny / SVD_FOLDER, tiny / LCM_UNET_FILE), "cpu", torch.float16)
    assert pipe.unet.dtype == torch.float16


def test_partial_lcm_file_is_loaded_non_strictly(tiny: Path, tmp_path: Path) -> None:
    state: dict[str, Any] = load_file(str(tiny / LCM_UNET_FILE))
    partial = {k: v for k, v in state.items() if k.startswith("conv_in.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    pipe = load_svd_lcm(checkpoints(tiny / SVD_FOLDER, tmp_path / "partial.safetensors"), "cpu", torch.float32)
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], partial["conv_in.weight"])


@pytest.mark.parametrize("content", ["garbage", "foreign", "misfit"])
def test_wrong_lcm_file_is_model_unavailable(tiny: Path, tmp_path: Path, content: str) -> None:
    path = tmp_path / "lcm.safetensors"
    if content == "garbage":
        path.write_bytes(b"not safetensors")
    elif content == "foreign":
        save_file({"something.else": torch.zeros(2)}, str(path))
    else:
        save_file({"conv_in.weight": torch.zeros(1, 1, 1, 1)}, str(path))
    with pytest.raises(ModelUnavailableError, match="svd_lcm_unet"):
        load_svd_lcm(checkpoints(tiny / SVD_FOLDER, path), "cpu", torch.float32)


def test_missing_checkpoint_is_model_unavailable(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError):
        load_svd_lcm(checkpoints(tmp_path / "no-svd", tiny / LCM_UNET_FILE), "cpu", torch.float32)
