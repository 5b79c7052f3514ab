"""ε or v prediction, and zero-terminal SNR or not: decided as the WebUI decides what it renders with.

A LoRA must learn the model the user generates with, so "auto" follows the WebUI 1.10.1
(82a973c), which sets both on the loaded model and in its settings:
- SD2: v from a yaml beside the checkpoint, else a test forward pass at t=999
  (`sd_models_config.is_using_v_parameterization_for_sd2`; the standalone loader repeats it).
- SDXL (NoobAI v-pred and the like): v only from a yaml beside the checkpoint whose denoiser
  scaling is `VScaling` (`sd_models_xl.extend_sdxl` sets `model.parameterization`). The `v_pred`
  and `ztsnr` keys such files carry are **not** read by the WebUI.
- zero-terminal SNR: only Settings → Noise schedule = "Zero Terminal SNR" (`opts.sd_noise_schedule`,
  `sd_models.apply_alpha_schedule_override`); nothing in the checkpoint turns it on.
So auto reads `sd_model.parameterization` and the host's noise-schedule setting. The file's own
markers are only compared with that, to warn when the WebUI renders the model differently from
what the file says it is. `v_parameterization` / `zero_terminal_snr` = true/false override auto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MARKERS = ("v_pred", "ztsnr")  # state-dict keys NoobAI-style checkpoints carry (empty tensors)
TRISTATE = {"auto": None, "true": True, "false": False}
ZTSNR_SETTING = "Settings → Sampler parameters → Noise schedule"
ZTSNR_WITH_EPS = "zero-terminal SNR with ε-prediction cannot learn the last timestep; it is meant for v-prediction"


@dataclass(frozen=True)
class Prediction:
    v: bool
    zero_terminal_snr: bool
    source: str  # where each came from, for the run's log
    warnings: tuple[str, ...] = ()


def tristate(value: Any) -> bool | None:
    """ "auto" → None, "true"/"false" (any case, or a bool) → True/False; ValueError otherwise."""
    key = str(value).strip().lower()
    if key not in TRISTATE:
        raise ValueError(value)
    return TRISTATE[key]


def checkpoint_markers(sd_model: Any) -> frozenset[str]:
    """The v-pred / ZTSNR marker keys in the loaded checkpoint's safetensors header ({} when the
    file is not a readable .safetensors). Reads the header only, never a tensor."""
    from lora_forge.model.family import safetensors_shapes

    info = getattr(sd_model, "sd_checkpoint_info", None)
    path = str(getattr(info, "filename", "") or getattr(sd_model, "sd_model_checkpoint", "") or "")
    shapes = safetensors_shapes(path) if path else {}
    return frozenset(k for k in MARKERS if k in shapes)


def resolve(sd_model: Any, v_setting: Any, ztsnr_setting: Any, host_ztsnr: bool) -> Prediction:
    """What the run trains with: the config's true/false, else what the WebUI renders with."""
    model_v = getattr(sd_model, "parameterization", "eps") == "v"
    want_v, want_z = tristate(v_setting), tristate(ztsnr_setting)
    v = model_v if want_v is None else want_v
    z = host_ztsnr if want_z is None else want_z
    v_from = "the loaded model" if want_v is None else "v_parameterization"
    z_from = "the host's noise schedule setting" if want_z is None else "zero_terminal_snr"
    source = f"{'v' if v else 'ε'}-prediction (from {v_from}), zero-terminal SNR {'on' if z else 'off'} (from {z_from})"
    markers = checkpoint_markers(sd_model)
    warnings = []
    if "v_pred" in markers and not model_v:
        warnings.append(
            "this checkpoint is marked v-prediction, but the WebUI renders it as ε-prediction: put its "
            "v-prediction yaml beside the checkpoint and reload it (training follows what the WebUI renders "
            "unless you set v_parameterization)"
        )
    if "ztsnr" in markers and not host_ztsnr:
        warnings.append(
            "this checkpoint is marked zero-terminal SNR, but the host renders without it: in the WebUI set "
            f"{ZTSNR_SETTING} to Zero Terminal SNR (training follows it), or set zero_terminal_snr = true"
        )
    if want_v is not None and want_v != model_v:
        warnings.append(
            f"training {'v' if v else 'ε'}-prediction on a model the host renders as "
            f"{'v' if model_v else 'ε'}-prediction: samples and the grid will not show the LoRA as trained"
        )
    if z and not v:
        warnings.append(ZTSNR_WITH_EPS)
    return Prediction(v, z, source, tuple(warnings))


def file_metadata(v: bool, zero_terminal_snr: bool, family: str) -> dict[str, str]:
    """The keys kohya writes about prediction and schedule, as kohya writes them.

    `modelspec.prediction_type` is "v"/"epsilon" (`sai_model_spec`), `ss_zero_terminal_snr`
    "True"/"False"; SD1/SD2 carry v in `ss_base_model_version` (`sd_v2_v`, kohya's
    `get_model_version_str_for_sd1_sd2`, also `sd_v1_v`) and SD2 in `modelspec.architecture`;
    SDXL keeps `sdxl_base_v1-0`, as kohya has no v-pred SDXL version string. kohya writes no
    `ss_v_parameterization`; we add it (True/False) because our config has the key with an
    "auto" value that a reader could not interpret.
    """
    from lora_forge.model.family import base_family

    meta = {
        "ss_v_parameterization": str(v),
        "ss_zero_terminal_snr": str(zero_terminal_snr),
        "modelspec.prediction_type": "v" if v else "epsilon",
    }
    base = base_family(family)
    if base in ("sd1", "sd2"):
        meta["ss_base_model_version"] = ("sd_v2" if base == "sd2" else "sd_v1") + ("_v" if v else "")
    if base == "sd2":
        meta["modelspec.architecture"] = ("stable-diffusion-v2-768-v" if v else "stable-diffusion-v2-512") + "/lora"
    return meta
