"""Live previews: the latent->RGB projection, the frame choice and size, and the animated WebP."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from motionserve.inference.previews import (
    SD15_LATENT_RGB_FACTORS,
    encode_animation,
    frame_indices,
    latents_to_rgb,
    make_preview,
    preview_size,
    scheduler_sigma,
)


def _constant_latents(values: tuple[float, float, float, float], frames: int = 16, size: int = 8) -> torch.Tensor:
    """AnimateDiff layout (batch, channels, frames, h, w), every pixel of every frame the same."""
    return torch.tensor(values).view(1, 4, 1, 1, 1).expand(1, 4, frames, size, size).clone()


@pytest.mark.parametrize(("frames", "expected"), [(16, [0, 5, 10, 15]), (25, [0, 8, 16, 24]), (4, [0, 1, 2, 3]),
                                                  (2, [0, 1]), (1, [0])])
def test_frame_indices_are_evenly_spaced_from_first_to_last(frames: int, expected: list[int]) -> None:
    assert frame_indices(frames) == expected


@pytest.mark.parametrize(("latent", "expected"), [((64, 64), (128, 128)), ((72, 128), (144, 256)),
                                                  ((256, 256), (256, 256)), ((8, 16), (16, 32))])
def test_previews_are_at_most_twice_the_latents_and_256_px(latent: tuple[int, int], expected: tuple[int, int]) -> None:
    assert preview_size(*latent) == expected


def test_shape_range_and_determinism() -> None:
    latents = torch.randn(1, 4, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 2
    frames = latents_to_rgb(latents)
    assert frames.shape == (4, 128, 128, 3) and frames.dtype == np.uint8
    assert frames.min() == 0 and frames.max() == 255  # clamped, not wrapped
    assert np.array_equal(frames, latents_to_rgb(latents.clone()))
    assert make_preview(latents) == make_preview(latents.clone())


def test_a_known_latent_gives_the_comfyui_colour() -> None:
    # Channel 0 alone: the first row of the factors, mapped from [-1, 1] to [0, 255].
    frames = latents_to_rgb(_constant_latents((1.0, 0.0, 0.0, 0.0)))
    expected = [round((1 + f) / 2 * 255) for f in SD15_LATENT_RGB_FACTORS[0]]
    assert expected == [172, 157, 169]
    assert (frames == np.array(expected, dtype=np.uint8)).all()
    # Zero latents are mid grey; channel 3 at -3 is a light blue whose blue (2.15 before clamping) saturates.
    assert (latents_to_rgb(_constant_latents((0.0, 0.0, 0.0, 0.0))) == 128).all()
    assert latents_to_rgb(_constant_latents((0.0, 0.0, 0.0, -3.0)))[0, 0, 0].tolist() == [209, 228, 255]


def test_the_svd_layout_shows_the_same_frames() -> None:
    latents = torch.randn(1, 4, 25, 9, 16, generator=torch.Generator().manual_seed(1))
    as_svd = latents.transpose(1, 2).contiguous()  # (batch, frames, channels, h, w)
    assert np.array_equal(latents_to_rgb(latents), latents_to_rgb(as_svd, layout="bfchw"))
    first = latents_to_rgb(latents[:, :, :1])  # frame 0 alone is the preview's first frame
    assert np.array_equal(first[0], latents_to_rgb(latents)[0])


def test_sigma_space_latents_are_brought_to_unit_scale() -> None:
    noisy = _constant_latents((1.0, 0.0, 0.0, 0.0)) * np.sqrt(1 + 10.0**2)
    assert np.array_equal(latents_to_rgb(noisy, sigma=10.0), latents_to_rgb(_constant_latents((1.0, 0.0, 0.0, 0.0))))


def test_half_precision_latents_on_any_device_work() -> None:
    frames = latents_to_rgb(_constant_latents((1.0, 0.0, 0.0, 0.0)).half())
    assert frames.dtype == np.uint8 and frames[0, 0, 0].tolist() == [172, 157, 169]


def test_latents_of_another_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="4 latent channels"):
        latents_to_rgb(torch.zeros(1, 16, 4, 8, 8))


def test_the_preview_is_an_animated_webp_a_browser_can_play() -> None:
    data = make_preview(torch.randn(1, 4, 16, 64, 64))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP" and image.size == (128, 128)
        assert getattr(image, "n_frames", 1) == 4 and image.is_animated
        assert image.info.get("loop") == 0  # loops forever
    with Image.open(io.BytesIO(encode_animation(np.zeros((1, 8, 8, 3), np.uint8)))) as still:
        assert still.format == "WEBP" and getattr(still, "n_frames", 1) == 1


def test_scheduler_sigma_only_for_sigma_space_schedulers() -> None:
    from diffusers import DDIMScheduler, LCMScheduler

    from motionserve.inference.svd_lcm_scheduler import AnimateLCMSVDScheduler

    assert scheduler_sigma(DDIMScheduler()) is None and scheduler_sigma(LCMScheduler()) is None
    assert scheduler_sigma(None) is None
    svd = AnimateLCMSVDScheduler()
    svd.set_timesteps(4)
    assert scheduler_sigma(svd) is None  # no step taken yet
    latents = torch.randn(1, 2, 4, 8, 8)
    svd.step(torch.zeros_like(latents), svd.timesteps[0], latents)
    assert scheduler_sigma(svd) == pytest.approx(float(svd.sigmas[1]))  # the level of the latents step() returned
