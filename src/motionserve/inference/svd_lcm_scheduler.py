"""The consistency sampler AnimateLCM-SVD was distilled for, as a diffusers scheduler.

AnimateLCM-SVD ships its sampler as a modified copy of diffusers' `CMStochasticIterativeScheduler`
(HF Space `wangfuyun/AnimateLCM-SVD`, `lcm_scheduler.py`); it is not in diffusers itself. What differs
from the consistency-model scheduler diffusers has, and why:

- SVD is an EDM model with `c_noise = 0.25 * log(sigma)`, so the UNet timestep is that value, not
  diffusers' `1000 * 0.25 * log(sigma)` (the 1000 factor is for the original consistency models).
- SVD predicts `v`: the denoised sample is `c_skip * x + c_out * F` with
  `c_skip = sd² / (σ² + sd²)` and `c_out = -σ·sd / sqrt(σ² + sd²)` (note the sign, and no `sigma_min`
  offset: the boundary condition is the plain EDM preconditioning).
- The schedule ends at sigma 0 (not `sigma_min`) and the re-noising between steps is
  `denoised + s_noise·z·σ_next`; the last step therefore returns the denoised sample itself.
- `init_noise_sigma = sqrt(sigma_max² + 1)`, matching SVD's Euler scheduler.

Reproducibility: `StableVideoDiffusionPipeline` calls `step(noise_pred, t, latents)` without a
generator, so the re-noising would draw from torch's global RNG. Set `noise_generator` before a call
(the endpoint seeds one per request) to make the whole run a function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_consistency_models import (
    CMStochasticIterativeScheduler,
    CMStochasticIterativeSchedulerOutput,
)
from diffusers.utils.torch_utils import randn_tensor


class AnimateLCMSVDScheduler(CMStochasticIterativeScheduler):
    """Multistep consistency sampling for the AnimateLCM-SVD UNet (EDM, v-prediction).

    Defaults are the values the AnimateLCM-SVD authors sample with.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 40,
        sigma_min: float = 0.002,
        sigma_max: float = 700.0,
        sigma_data: float = 1.0,
        s_noise: float = 1.0,
        rho: float = 7.0,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
            s_noise=s_noise,
            rho=rho,
            clip_denoised=clip_denoised,
        )
        # SVD's latents start as N(0, sigma_max² + 1), like its EulerDiscreteScheduler.
        self.init_noise_sigma = float((sigma_max**2 + 1) ** 0.5)
        # Training schedule: the full Karras ramp, ending at sigma 0.
        sigmas = np.concatenate([self._convert_to_karras(np.linspace(0, 1, num_train_timesteps)), [0.0]])
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))
        self.timesteps = torch.from_numpy(self.sigma_to_t(sigmas[:-1]).astype(np.float32))
        self.noise_generator: torch.Generator | None = None

    def sigma_to_t(self, sigmas: float | np.ndarray) -> np.ndarray:
        """SVD's noise conditioning `c_noise = 0.25 * ln(sigma)` (EDM), without diffusers' ×1000."""
        sigmas = np.asarray(sigmas, dtype=np.float64)
        return 0.25 * np.log(sigmas + 1e-44)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Pick `num_inference_steps` evenly spaced points of the 40-point training ramp.

        Step `k` of `n` sits at ramp position `k * (40 // n) / 39`, so the first step is always at
        `sigma_max`. `timesteps` (descending integers in [0, 40)) chooses the points explicitly; as in
        the upstream sampler, the list read backwards gives the ramp positions counted from `sigma_max`.
        """
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of `num_inference_steps` or `timesteps`.")
        n_train = self.config.num_train_timesteps
        if timesteps is not None:
            points = np.asarray(timesteps, dtype=np.int64)
            if np.any(np.diff(points) >= 0):
                raise ValueError(f"`timesteps` must be strictly descending, got {list(timesteps)}.")
            if points[0] >= n_train or points[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {n_train}), got {list(timesteps)}.")
            self.custom_timesteps = True
            self.num_inference_steps = len(points)
        else:
            assert num_inference_steps is not None
            if not 1 <= num_inference_steps <= n_train:
                raise ValueError(f"`num_inference_steps` must be in 1..{n_train}, got {num_inference_steps}.")
            step_ratio = n_train // num_inference_steps
            points = (np.arange(num_inference_steps) * step_ratio)[::-1].astype(np.int64)
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps

        # Upstream maps the descending points to ascending ramp positions by reversing the list.
        ramp = points[::-1] / (n_train - 1)
        sigmas = self._convert_to_karras(ramp)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # kept on CPU
        self.timesteps = torch.from_numpy(self.sigma_to_t(sigmas).astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None

    def get_scalings_for_boundary_condition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM v-prediction preconditioning: `denoised = c_skip * x + c_out * F(x)`."""
        sigma_data = self.config.sigma_data
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = -sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
        return c_skip, c_out

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> CMStochasticIterativeSchedulerOutput | tuple[torch.Tensor]:
        """One consistency step: jump to the denoised estimate, then re-noise to the next sigma."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("Pass one of `scheduler.timesteps` to `step()`, not an integer index.")
        if self.step_index is None:
            self._init_step_index(timestep)

        sigma = self.sigmas[self.step_index]
        sigma_next = self.sigmas[self.step_index + 1].clamp(min=0, max=self.config.sigma_max)
        c_skip, c_out = self.get_scalings_for_boundary_condition(sigma)
        denoised = c_out * model_output + c_skip * sample
        if self.config.clip_denoised:
            denoised = denoised.clamp(-1, 1)

        if sigma_next > 0:
            noise = randn_tensor(
                model_output.shape,
                generator=generator if generator is not None else self.noise_generator,
                device=model_output.device,
                dtype=model_output.dtype,
            )
            prev_sample = denoised + noise * (self.config.s_noise * sigma_next)
        else:
            # The final step lands on sigma 0: the denoised estimate is the result.
            prev_sample = denoised

        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return CMStochasticIterativeSchedulerOutput(prev_sample=prev_sample)
