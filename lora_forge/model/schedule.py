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
    alphas_cumprod: Any  # fp32 tensor [T] on the training device (rescaled when zero_terminal_snr)
    parameterization: str  # "eps" or "v"
    # ᾱ the SNR loss weights read. kohya computes its `all_snr` before it rescales the betas for
    # zero-terminal SNR, so its weights keep the original schedule (and stay finite at t = T-1,
    # where the rescaled SNR is 0). None: the same as `alphas_cumprod`.
    snr_alphas_cumprod: Any = None
    zero_terminal_snr: bool = False

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
        """Signal-to-noise ratio ᾱ/(1−ᾱ) at `t`, of the schedule the loss weights use."""
        a = (self.alphas_cumprod if self.snr_alphas_cumprod is None else self.snr_alphas_cumprod)[t].float()
        return a / (1.0 - a)

    def min_snr_weight(self, t: Any, gamma: float) -> Any:
        """Per-sample loss weight of min-SNR-γ (Hang et al. 2023), in kohya's form.

        ε-prediction: min(SNR, γ)/SNR; v-prediction: min(SNR, γ)/(SNR + 1), because the v loss
        already carries an (SNR + 1) factor relative to the ε loss.
        """
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        return clipped / (snr + 1.0) if self.parameterization == "v" else clipped / snr


def rescale_zero_terminal_snr(alphas_cumprod: Any) -> Any:
    """ᾱ with zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"), as kohya's `--zero_terminal_snr` rescales it: √ᾱ is shifted so its last
    value is 0 and scaled so its first value is unchanged. kohya goes through the betas and back;
    the cumulative product of those betas is this ᾱ, so we rescale ᾱ directly (in float64).
    The last ᾱ is exactly 0: the final timestep is pure noise, as for a ZTSNR-trained model.
    """
    import torch

    ac = torch.as_tensor(alphas_cumprod)
    root = ac.detach().cpu().double().sqrt()  # on the CPU: MPS has no float64
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return (root**2).to(device=ac.device, dtype=ac.dtype)


def schedule_from_model(
    sd_model: Any, device: Any, v: bool | None = None, zero_terminal_snr: bool = False
) -> NoiseSchedule:
    """Build the fp32 schedule; `alphas_cumprod_original` wins when the WebUI has set it.

    `v` overrides the model's own parameterization (None: use it); `zero_terminal_snr` rescales
    the training schedule while the SNR weights keep the original one, as kohya does.
    """
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
    if v is None:
        v = getattr(sd_model, "parameterization", "eps") == "v"
    parameterization = "v" if v else "eps"
    if not zero_terminal_snr:
        return NoiseSchedule(alphas_cumprod=ac, parameterization=parameterization)
    return NoiseSchedule(rescale_zero_terminal_snr(ac), parameterization, snr_alphas_cumprod=ac, zero_terminal_snr=True)
