"""kohya sd-scripts' noise and loss options, under kohya's names, on our noise schedule.

One training step is: draw the noise and timesteps (`draw_noise`), let the UNet predict from the
noisy latents (train/loop.py), then `loss_per_sample`. Each option follows kohya's formula
(`library/train_util.get_noise_noisy_latents_and_timesteps`, `conditional_loss`,
`get_huber_threshold_if_needed`, `library/custom_train_functions.py`, the order of
`train_network.post_process_loss`), so an imported kohya config trains the same maths;
tests/test_train_losses.py recomputes each of them independently on the same tensors.

Randomness comes only from the step's generator `gen` (kohya uses the global generators and
Python's `random` for the multires scale), so a step's draws depend on (seed, step) alone and a
resumed run makes the same draws. Draws an option adds come after the existing ones, so turning
options off leaves every earlier draw of a step as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn
from lora_forge.host.base import Host


@dataclass
class Drawn:
    noise: Any  # what the target is built from (no input perturbation)
    noisy: Any  # the UNet's input
    t: Any  # integer timesteps [B]


def draw_noise(x0: Any, gen: Any, schedule: Any, config: Any) -> Drawn:
    """Noise (+ offset, + multires), uniform timesteps, and the noisy latents (+ input perturbation)."""
    import torch

    b, c = x0.shape[:2]
    dev = x0.device
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(dev)
    if config.noise_offset:
        strength: Any = config.noise_offset
        if config.noise_offset_random_strength:
            strength = torch.rand(1, generator=gen).to(dev) * config.noise_offset
        if config.adaptive_noise_scale:
            mean = x0.float().mean(dim=(2, 3), keepdim=True).abs()
            strength = (strength + config.adaptive_noise_scale * mean).clamp(min=0.0)
        noise = noise + strength * torch.randn((b, c, 1, 1), generator=gen, dtype=torch.float32).to(dev)
    if config.multires_noise_iterations:
        noise = pyramid_noise(noise, gen, config.multires_noise_iterations, config.multires_noise_discount)
    t = torch.randint(config.min_timestep, config.max_timestep, (b,), generator=gen).to(dev)
    perturbed = noise
    if config.ip_noise_gamma:
        gamma: Any = config.ip_noise_gamma
        if config.ip_noise_gamma_random_strength:
            gamma = torch.rand(1, generator=gen).to(dev) * config.ip_noise_gamma
        perturbed = noise + gamma * torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(dev)
    return Drawn(noise, schedule.add_noise(x0, perturbed, t), t)


def pyramid_noise(noise: Any, gen: Any, iterations: int, discount: float) -> Any:
    """Multi-resolution ("pyramid") noise, kohya's `pyramid_noise_like`: add noise drawn at ever
    coarser sizes (each level's size divided by a random r ∈ [2, 4) once more), upsampled
    bilinearly and weighted discountⁱ, then divide by the global std to get back to unit variance."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = float(torch.rand(1, generator=gen)) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, hn, wn), generator=gen, dtype=torch.float32).to(noise.device)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def huber_threshold(config: Any, t: Any, schedule: Any) -> Any:
    """kohya's per-sample Huber parameter c(t) for `huber_schedule` (None for l1/l2)."""
    import torch

    if config.loss_type not in ("huber", "smooth_l1"):
        return None
    if config.huber_schedule == "exponential":
        alpha = -math.log(config.huber_c) / schedule.num_timesteps
        return torch.exp(-alpha * t.float()) * config.huber_scale
    if config.huber_schedule == "snr":  # on the (possibly zero-terminal) training schedule, like kohya
        a = schedule.alphas_cumprod[t].float()
        sigmas = ((1.0 - a) / a) ** 0.5
        return (1 - config.huber_c) / (1 + sigmas) ** 2 + config.huber_c
    return torch.full(t.shape, config.huber_c * config.huber_scale, device=t.device)


def elementwise_loss(pred: Any, target: Any, loss_type: str, c: Any) -> Any:
    """l2 / l1 / Huber / smooth-L1 per element; the Huber forms are kohya's pseudo-Huber."""
    import torch.nn.functional as F

    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = c.view(-1, *([1] * (pred.dim() - 1)))
    pseudo = ((pred - target) ** 2 + c**2).sqrt() - c
    return 2 * c * pseudo if loss_type == "huber" else 2 * pseudo


def _snr_capped(schedule: Any, t: Any) -> Any:
    """SNR capped at 1000 (at t=0 it is huge), as kohya's scale and debiased weights read it."""
    return schedule.snr(t).clamp(max=1000.0)


def loss_per_sample(pred: Any, x0: Any, drawn: Drawn, schedule: Any, config: Any) -> Any:
    """Per-sample loss [B]: element loss against the ε or v target, mean over C×H×W, then kohya's
    weights in kohya's order: min-SNR-γ, v-pred scaled like ε, v-pred-like term, debiased."""
    t = drawn.t
    target = schedule.target(x0, drawn.noise, t)
    loss = elementwise_loss(pred.float(), target.float(), config.loss_type, huber_threshold(config, t, schedule))
    loss = loss.mean(dim=tuple(range(1, loss.dim())))
    v = schedule.parameterization == "v"
    if config.min_snr_gamma:
        loss = loss * schedule.min_snr_weight(t, config.min_snr_gamma)
    if config.scale_v_pred_loss_like_noise_pred:
        snr = _snr_capped(schedule, t)
        loss = loss * (snr / (snr + 1))
    if config.v_pred_like_loss:
        snr = _snr_capped(schedule, t)
        loss = loss + loss / (snr / (snr + 1)) * config.v_pred_like_loss
    if config.debiased_estimation_loss:
        snr = _snr_capped(schedule, t)
        loss = loss * (1 / (snr + 1) if v else 1 / snr.sqrt())
    return loss


def check_for_prediction(config: Any, v: bool) -> None:
    """kohya's refusals once the prediction type is known (it may come from the model)."""
    if config.scale_v_pred_loss_like_noise_pred and not v:
        raise ForgeError("scale_v_pred_loss_like_noise_pred needs v-prediction; this run trains ε-prediction")
    if config.v_pred_like_loss and v:
        raise ForgeError("v_pred_like_loss is for ε-prediction models; this run trains v-prediction")


def schedule_for(host: Host, sd_model: Any, config: Any, device: Any, progress: ProgressFn, total: int) -> Any:
    """The run's noise schedule: prediction and ZTSNR resolved (model/prediction.py), the loss
    options checked against them, the choice and any mismatch reported before the first step."""
    from lora_forge.model.prediction import resolve
    from lora_forge.model.schedule import schedule_from_model

    host_ztsnr = host.zero_terminal_snr_sampling()
    found = resolve(sd_model, config.v_parameterization, config.zero_terminal_snr, host_ztsnr)
    check_for_prediction(config, found.v)
    progress(Progress(0, total, f"prediction: {found.source}", data={"prediction": found.source}))
    for warning in found.warnings:
        progress(Progress(0, total, warning, data={"warning": warning}))
    return schedule_from_model(sd_model, device, v=found.v, zero_terminal_snr=found.zero_terminal_snr)
