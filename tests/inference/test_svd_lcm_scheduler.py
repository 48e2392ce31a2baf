"""The AnimateLCM-SVD sampler: its schedule values and step arithmetic, against the published formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motionserve.inference.svd_lcm_scheduler import AnimateLCMSVDScheduler

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0


def karras(ramp: float) -> float:
    """EDM's sigma at position `ramp` in [0, 1] from sigma_max to sigma_min."""
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (hi + ramp * (lo - hi)) ** RHO


def test_defaults_are_the_animatelcm_svd_values() -> None:
    s = AnimateLCMSVDScheduler()
    assert s.config.num_train_timesteps == 40
    assert (s.config.sigma_min, s.config.sigma_max, s.config.sigma_data) == (0.002, 700.0, 1.0)
    assert (s.config.s_noise, s.config.rho, s.config.clip_denoised) == (1.0, 7.0, False)
    assert s.order == 1
    assert s.init_noise_sigma == pytest.approx(math.sqrt(700.0**2 + 1))


@pytest.mark.parametrize(
    "steps, points",
    [(1, [0]), (4, [0, 10, 20, 30]), (6, [0, 6, 12, 18, 24, 30]), (20, list(range(0, 40, 2))), (40, list(range(40)))],
)
def test_schedule_is_karras_at_evenly_spaced_training_points(steps: int, points: list[int]) -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(steps, device="cpu")
    expected = [karras(p / 39) for p in points]
    assert s.sigmas.tolist() == pytest.approx(expected + [0.0], rel=1e-5)
    # The UNet sees SVD's EDM noise conditioning 0.25 * ln(sigma).
    assert s.timesteps.tolist() == pytest.approx([0.25 * math.log(v) for v in expected], rel=1e-5, abs=1e-6)
    assert len(s.timesteps) == steps
    assert s.sigmas[0].item() == pytest.approx(SIGMA_MAX)


def test_forty_steps_reach_sigma_min() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(40)
    assert s.sigmas[-2].item() == pytest.approx(SIGMA_MIN, rel=1e-4)


def test_four_step_values() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(4)
    assert s.sigmas.tolist() == pytest.approx([700.0, 128.5637, 13.67844, 0.4968784, 0.0], rel=1e-5)
    assert s.timesteps.tolist() == pytest.approx([1.637770, 1.214106, 0.6539553, -0.1748525], rel=1e-5)


def test_custom_timesteps() -> None:
    s = AnimateLCMSVDScheduler()
    # As upstream: the descending points, read backwards, are ramp positions counted from sigma_max.
    s.set_timesteps(timesteps=[39, 20, 0])
    assert s.sigmas.tolist() == pytest.approx([karras(0.0), karras(20 / 39), karras(39 / 39), 0.0], rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"num_inference_steps": 0}, {"num_inference_steps": 41}, {}, {"num_inference_steps": 4, "timesteps": [3, 1]}, {"timesteps": [1, 3]}, {"timesteps": [40, 1]}])
def test_bad_schedules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AnimateLCMSVDScheduler().set_timesteps(**kwargs)


def test_scale_model_input_divides_by_edm_c_in() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(4)
    x = torch.ones(1, 2, 4, 3, 3)
    for i, t in enumerate(s.timesteps):
        sigma = s.sigmas[i].item()
        scaled = s.scale_model_input(x, t)
        assert scaled.flatten()[0].item() == pytest.approx(1 / math.sqrt(sigma**2 + 1), rel=1e-5)
        s.step(torch.zeros_like(x), t, x)


def test_step_is_consistency_jump_then_renoise() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(4)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 4, 5, 5, generator=gen) * s.init_noise_sigma
    v = torch.randn(x.shape, generator=gen)
    t = s.timesteps[0]
    s.scale_model_input(x, t)

    s.noise_generator = torch.Generator().manual_seed(123)
    out = s.step(v, t, x).prev_sample

    sigma, sigma_next = 700.0, s.sigmas[1].item()
    c_skip = 1 / (sigma**2 + 1)
    c_out = -sigma / math.sqrt(sigma**2 + 1)
    denoised = c_skip * x + c_out * v
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(out, denoised + sigma_next * noise, rtol=1e-5, atol=1e-3)
    assert s.step_index == 1


def test_last_step_returns_the_denoised_estimate_without_noise() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(2)
    x = torch.randn(1, 2, 4, 3, 3)
    v = torch.randn(1, 2, 4, 3, 3)
    for t in s.timesteps[:-1]:
        s.scale_model_input(x, t)
        x = s.step(v, t, x).prev_sample
    t = s.timesteps[-1]
    sigma = s.sigmas[-2].item()
    s.scale_model_input(x, t)
    out = s.step(v, t, x, return_dict=False)[0]
    expected = x / (sigma**2 + 1) - sigma / math.sqrt(sigma**2 + 1) * v
    torch.testing.assert_close(out, expected)


def test_noise_generator_makes_runs_reproducible() -> None:
    def sample(seed: int) -> torch.Tensor:
        s = AnimateLCMSVDScheduler()
        s.set_timesteps(4)
        s.noise_generator = torch.Generator().manual_seed(seed)
        x = torch.full((1, 2, 4, 3, 3), 5.0)
        for t in s.timesteps:
            x = s.step(torch.zeros_like(x), t, s.scale_model_input(x, t) * 0 + x).prev_sample
        return x

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_set_timesteps_restarts_the_step_counter() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 2, 2)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, s.scale_model_input(x, t)).prev_sample
    s.set_timesteps(3)
    assert s.step_index is None
    s.scale_model_input(x, s.timesteps[0])
    assert s.step_index == 0


def test_integer_indices_are_refused() -> None:
    s = AnimateLCMSVDScheduler()
    s.set_timesteps(2)
    with pytest.raises(ValueError):
        s.step(torch.zeros(1), 0, torch.zeros(1))


def test_schedule_is_monotone_for_every_allowed_step_count() -> None:
    for n in range(1, 21):  # the endpoint allows 1..20 steps
        s = AnimateLCMSVDScheduler()
        s.set_timesteps(n)
        sig = s.sigmas.numpy()
        assert np.all(np.diff(sig) < 0), n
        assert s.timesteps.dtype == torch.float32
