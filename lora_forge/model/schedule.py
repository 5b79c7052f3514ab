"""The diffusion noise schedule as training needs it: fp32, from the model's *original* alphas.

The WebUI converts the model's registered buffers to fp16 with the rest of the model and may
override `alphas_cumprod` (e.g. zero-terminal-SNR settings, `alphas_cumprod_original` keeps the
real one). Training on fp16 alphas skews the SNR of late timesteps, so we rebuild an fp32 copy once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class NoiseSchedule:
    alphas_cumprod: Any  # fp32 tensor [T] on the training device
    parameterization: str  # "eps" or "v"

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _coefs(self, t: Any, ndim: int) -> tuple[Any, Any]:
        a = self.alphas_cumprod[t].float()
        shape = (-1,) + (1,) * (ndim - 1)
        return a.sqrt().view(shape), (1.0 - a).sqrt().view(shape)

    def add_noise(self, x0: Any, noise: Any, t: Any) -> Any:
        sa, s1a = self._coefs(t, x0.dim())
        return sa * x0 + s1a * noise

    def target(self, x0: Any, noise: Any, t: Any) -> Any:
        """What the UNet should predict: the noise (eps) or v = √ᾱ·ε − √(1−ᾱ)·x0."""
        if self.parameterization == "v":
            sa, s1a = self._coefs(t, x0.dim())
            return sa * noise - s1a * x0
        return noise

    def snr(self, t: Any) -> Any:
        a = self.alphas_cumprod[t].float()
        return a / (1.0 - a)

    def min_snr_weight(self, t: Any, gamma: float) -> Any:
        """Per-sample loss weight of min-SNR-γ (Hang et al. 2023), in kohya's form.

        ε-prediction: min(SNR, γ)/SNR; v-prediction: min(SNR, γ)/(SNR + 1), because the v loss
        already carries an (SNR + 1) factor relative to the ε loss.
        """
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        return clipped / (snr + 1.0) if self.parameterization == "v" else clipped / snr


def schedule_from_model(sd_model: Any, device: Any) -> NoiseSchedule:
    """Build the fp32 schedule; `alphas_cumprod_original` wins when the WebUI has set it."""
    import torch

    ac = getattr(sd_model, "alphas_cumprod_original", None)
    if ac is None:
        ac = sd_model.alphas_cumprod
    ac = torch.as_tensor(ac).detach()
    start, end = getattr(sd_model, "linear_start", None), getattr(sd_model, "linear_end", None)
    if ac.dtype in (torch.float16, torch.bfloat16) and start is not None and end is not None:
        # Half-precision buffers lose the late timesteps (ᾱ ≈ 0.0047 at t=999); rebuild ldm's
        # "linear" schedule from its two numbers instead, exactly as the model was built.
        betas = torch.linspace(start**0.5, end**0.5, ac.shape[0], dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
    ac = ac.to(device=device, dtype=torch.float32)
    parameterization = getattr(sd_model, "parameterization", "eps")
    return NoiseSchedule(alphas_cumprod=ac, parameterization="v" if parameterization == "v" else "eps")


def sample_noise(latents: Any, generator: Any, noise_offset: float) -> Any:
    """Gaussian noise like the latents, plus kohya's per-channel offset (helps very dark/bright images)."""
    import torch

    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, dtype=torch.float32).to(latents.device)
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(batch: int, generator: Any, low: int, high: int, device: Any) -> Any:
    """Uniform integer timesteps in [low, high), as kohya does."""
    import torch

    return torch.randint(low, high, (batch,), generator=generator).to(device)
