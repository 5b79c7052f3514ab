"""txt2img sampling over `sd_model.apply_model`, for the standalone host.

The WebUI samples with k-diffusion in sigma space; we do the same with the three samplers our
stages need (Euler, Euler a, DDIM), written out in a few lines each. Every sample in a batch
draws its noise from its own generator seeded with its own seed, so an image does not depend on
which other images shared its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lora_forge.errors import ForgeError

SAMPLERS = ("Euler a", "Euler", "DDIM")


def schedule(alphas_cumprod: Any, steps: int, sampler: str) -> tuple[Any, Any]:
    """(timesteps, sigmas) for `steps` model calls; sigmas has a trailing 0.

    Euler/Euler a space the timesteps evenly from 999 to 0 as k-diffusion does; DDIM uses ldm's
    "uniform" DDIM timesteps (…, 2c+1, c+1, 1). Sigmas between integer timesteps are
    interpolated in log space.
    """
    import torch

    ac = alphas_cumprod.double().cpu()
    log_sigmas = ((1 - ac) / ac).sqrt().log()
    n = len(ac)
    if sampler == "DDIM":
        stride = n // steps
        t = (torch.arange(0, n, stride)[:steps] + 1).clamp(max=n - 1).flip(0).double()
    else:
        t = torch.linspace(n - 1, 0, steps, dtype=torch.float64)
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    sigmas = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    return t.float(), torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> tuple[Any, list[Any]]:
    """Initial noise (one CPU generator per seed, so results are the same on any device) and
    the generators, which Euler a keeps drawing from."""
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return noise, generators


def make_denoiser(sd_model: Any, cond: Any, uncond: Any, cfg_scale: float, dtype: Any) -> Callable[..., Any]:
    """x, sigma, t → the classifier-free-guided estimate of the clean latent.

    Conditional and unconditional halves run as one UNet batch; eps and v models get the
    k-diffusion input/output scalings for their parameterization.
    """
    import torch

    v_model = getattr(sd_model, "parameterization", "eps") == "v"
    guided = cfg_scale != 1.0
    if isinstance(cond, dict):  # SDXL: {'crossattn', 'vector'}
        context: Any = {k: (torch.cat([cond[k], uncond[k]]) if guided else cond[k]).to(dtype) for k in cond}
    else:
        context = (torch.cat([cond, uncond]) if guided else cond).to(dtype)

    def denoise(x: Any, sigma: float, t: float) -> Any:
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((x_in.shape[0],), t, device=x.device)
        out = sd_model.apply_model((x_in * c_in).to(dtype), t_in, context).float()
        denoised = x_in / (sigma**2 + 1) - out * sigma * c_in if v_model else x_in - out * sigma
        if not guided:
            return denoised
        d_cond, d_uncond = denoised.chunk(2)
        return d_uncond + (d_cond - d_uncond) * cfg_scale

    return denoise


def sample(
    denoise: Callable[..., Any],
    noise: Any,
    generators: list[Any],
    timesteps: Any,
    sigmas: Any,
    sampler: str,
    on_step: Callable[[int], None],
) -> Any:
    """Run the sampler from pure noise to a clean latent (batch on noise's device)."""
    import torch

    if sampler not in SAMPLERS:
        raise ForgeError(f"the standalone host has no sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    x = noise * sigmas[0]
    for i, t in enumerate(timesteps.tolist()):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigma, t)
        d = (x - denoised) / sigma
        if sampler == "Euler a" and sigma_next > 0:
            sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
            sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
            x = x + d * (sigma_down - sigma)
            fresh = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.device)
            x = x + fresh * sigma_up
        else:
            x = x + d * (sigma_next - sigma)
        on_step(i + 1)
    return x
