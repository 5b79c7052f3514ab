"""Training inside the WebUI on its loaded model, leaving the model exactly as it was.

The engine (lora_forge.train.loop) trains on whatever `host.sd_model()` returns; this module is
what the WebUI needs around it (webui-internals.md §10): refuse what cannot train (--lowvram,
SDXL for now; Forge 2 is refused by WebUIHost.sd_model; FP8 weights train as they are), hold
`queue_lock` for the whole run so generations and checkpoint switches wait, take the model to a
pristine state (the Lora extension's merged weights restored, hypernetworks, tiling and
alternative UNets off, eval mode) and put every piece of it back in a `finally`, and check each
file right after it is saved through the Lora extension's own loader. Like webui.py, every
`modules.*` import is inside a function.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn
from lora_forge.host.base import TrainingContext

if TYPE_CHECKING:
    from lora_forge.host.webui import WebUIHost

log = logging.getLogger(__name__)

WAIT_MESSAGE = "waiting for the WebUI to finish its current generation…"
LOCK_NOTE = "txt2img/img2img and checkpoint changes wait until training ends (Stop in the 炼丹 tab, or Interrupt)"
# The load-back check passes when the WebUI-applied file and our live modules differ by at most 5%
# of the LoRA's effect on the step (fp16 file rounding stays well under 1%), or by at most 4 machine
# epsilons of the weight dtype times the step's output (a half-precision model's own rounding).
LOADBACK_TOLERANCE = 0.05
LOADBACK_EPS = 4
_EMPHASIS = re.compile(r"([()\[\]\\:<>])")


def escape_prompt(text: str) -> str:
    """Tag text as literal prompt text: `(`, `)`, `[`, `]`, `:`, `<`, `>` and `\\` escaped so the
    WebUI reads no emphasis, weight, or `<lora:…>` extra network in it."""
    return _EMPHASIS.sub(r"\\\1", text)


def clip_skip() -> int:
    """The user's "Clip skip" setting (Settings → Stable Diffusion), as the loaded model renders with it.

    SDXL ignores it unless "Clip skip applies to SDXL CLIP-L" (`sdxl_clip_l_skip`) is on; then 1 —
    sgm's own CLIP-L layer, see model/encode_sdxl.py — is what the WebUI uses.
    """
    from modules import shared

    skip = max(1, int(shared.opts.data.get("CLIP_stop_at_last_layers", 1) or 1))
    if getattr(shared.sd_model, "is_sdxl", False) and not shared.opts.data.get("sdxl_clip_l_skip", False):
        return 1
    return skip


def training_refusal(sd_model: Any) -> str | None:
    """What in-process training cannot work on, with what to do instead; None when it can."""
    from modules import shared

    from lora_forge.host.ldm_build import REFUSED
    from lora_forge.model.family import model_family

    opts = shared.cmd_opts
    if getattr(opts, "lowvram", False) or (getattr(sd_model, "lowvram", False) and not _medvram()):
        return (
            "the WebUI runs with --lowvram, which keeps the model in pieces on the CPU; restart it without "
            "--lowvram (use --medvram on 6-8 GB cards), or train headless with `python -m lora_forge train`"
        )
    family = model_family(sd_model)
    if family in REFUSED:
        return REFUSED[family]
    if family.startswith("sdxl") and getattr(opts, "medvram_sdxl", False) and getattr(sd_model, "lowvram", False):
        return (
            "the WebUI runs with --medvram-sdxl, which moves SDXL's parts between the CPU and the card on every "
            "call; restart it without --medvram-sdxl (LoRA Forge caches the text encoders' and the VAE's outputs "
            "itself and keeps only the UNet on the card), or train headless with `python -m lora_forge train`"
        )
    return None


def _medvram() -> bool:
    from modules import shared

    opts = shared.cmd_opts
    return bool(getattr(opts, "medvram", False) or getattr(opts, "medvram_sdxl", False))


def fp8_overrides() -> dict[str, Any]:
    """The WebUI's FP8 weight setting (Settings → Optimizations): its weights are FP8 already, so the
    LoRA trains over them as they are (model/fp8.py), and the estimate counts them at 1 byte."""
    from modules import devices

    return {"fp8_base": True} if getattr(devices, "fp8", False) else {}


def medvram_overrides() -> dict[str, Any]:
    """--medvram: everything the VAE and the text encoder compute is cached before the first step,
    so only the UNet has to sit on the card while training."""
    if not _medvram():
        return {}
    return {"cache_latents": True, "cache_text_encoder_outputs": True, "network_train_unet_only": True}


class WebUITraining:
    """WebUIHost's answers for training and for our HTTP routes (host/base.py's hooks), mixed into
    WebUIHost: they live beside what they call."""

    def training_refusal(self, sd_model: Any) -> str | None:
        return training_refusal(sd_model)

    def training_defaults(self) -> dict[str, Any]:
        return {"clip_skip": clip_skip()}

    def sample_prompts(self, prompts: list[str]) -> list[str] | None:
        return [escape_prompt(p) for p in prompts]  # tag text, not prompt syntax

    def training(self, name: str, progress: ProgressFn) -> contextlib.AbstractContextManager[TrainingContext]:
        return training(self, name, progress)  # type: ignore[arg-type]  # self is the WebUIHost

    def loadback_check(self, sd_model: Any, path: Path, muted: Any) -> str:
        return loadback_check(self, sd_model, path, muted)  # type: ignore[arg-type]

    def api_enabled(self) -> bool:
        return api_enabled()

    def api_access(self, user: str | None, password: str | None) -> bool:
        return check_api_access(user, password)


# -- the pristine model --------------------------------------------------------------------------


def _restore_lora_merges(sd_model: Any) -> None:
    """Undo what the last generation's `<lora:…>` merged into the weights (the Lora extension
    restores a layer lazily in its next forward; our training forward must not see merged weights)."""
    networks = sys.modules.get("networks")
    if networks is None or not hasattr(networks, "load_networks"):
        return
    networks.load_networks([])
    restore = getattr(networks, "network_restore_weights_from_backup", None)
    if restore is None:
        return
    import torch

    with torch.no_grad():
        for module in (getattr(sd_model, "network_layer_mapping", None) or {}).values():
            if getattr(module, "network_current_names", ()):
                restore(module)
                module.network_current_names = ()


def _device_of(module: Any) -> Any:
    p = next(module.parameters(), None) if module is not None else None
    return None if p is None else p.device


@contextlib.contextmanager
def pristine(sd_model: Any) -> Iterator[None]:
    """§10.3 of webui-internals.md on the way in; everything put back on the way out."""
    from modules import devices, shared

    stack = contextlib.ExitStack()
    with stack:
        _restore_lora_merges(sd_model)

        hypernetworks = list(getattr(shared, "loaded_hypernetworks", []))
        shared.loaded_hypernetworks = []
        stack.callback(setattr, shared, "loaded_hypernetworks", hypernetworks)

        hijack = _optional("modules.sd_hijack")
        if hijack is not None and hasattr(hijack.model_hijack, "apply_circular"):
            was_circular = bool(getattr(hijack.model_hijack, "circular_enabled", False))
            hijack.model_hijack.apply_circular(False)
            stack.callback(hijack.model_hijack.apply_circular, was_circular)

        sd_unet = _optional("modules.sd_unet")
        if sd_unet is not None and getattr(sd_unet, "current_unet", None) is not None:
            sd_unet.apply_unet("None")
            stack.callback(sd_unet.apply_unet)  # back to the user's choice (opts.sd_unet)

        modes = [(m, m.training) for m in sd_model.modules()]
        flags = [(p, p.requires_grad) for p in sd_model.parameters()]
        parts = [getattr(sd_model, n, None) for n in ("model", "first_stage_model", "cond_stage_model")]
        places = [(m, _device_of(m)) for m in parts if _device_of(m) is not None]

        def put_back() -> None:
            for m, mode in modes:
                m.training = mode  # not .train(): the sgm VAE asserts on it (§10.3)
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, device in places:
                if _device_of(m) != device:
                    m.to(device)
            processing = _optional("modules.processing")
            for cls_name in ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img"):
                cls = getattr(processing, cls_name, None)
                for attr in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
                    if cls is not None and attr in vars(cls):  # stale conds after a TE change (§4.5)
                        setattr(cls, attr, [None] * len(getattr(cls, attr)))
            devices.torch_gc()

        stack.callback(put_back)
        for m, _ in modes:
            m.training = False
        for p, _ in flags:
            p.requires_grad_(False)
        yield


def _optional(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- the run -------------------------------------------------------------------------------------


@contextlib.contextmanager
def training(host: WebUIHost, name: str, progress: ProgressFn) -> Iterator[TrainingContext]:
    """WebUIHost.training: wait for queue_lock (generations and checkpoint changes then wait for
    the run), refuse what cannot train, take the model to a pristine state and put it back after,
    mirror the run into the WebUI's status line, and load-back check each saved file at once (a
    failure is a `warning` event that stays in the status text until the run ends)."""
    import torch
    from modules import shared

    progress(Progress(0, 0, WAIT_MESSAGE))
    with host.exclusive("train"):
        sd_model = host.sd_model()
        refusal = training_refusal(sd_model)
        if refusal:
            raise ForgeError(refusal)

        def relay(event: Progress) -> None:
            if event.message:
                alarm = f" ⚠ {host.status_note}" if host.status_note else ""
                shared.state.textinfo = f"LoRA Forge: training “{name}” — {event.message}. {LOCK_NOTE}{alarm}"
            if event.image is not None:
                shared.state.assign_current_image(event.image)
            progress(event)

        def check_saved(path: Path, session: Any) -> str:
            problem = host.loadback_check(sd_model, path, session.muted)
            if problem:
                log.error(problem)
                host.status_note = problem
                relay(Progress(0, 0, problem, data={"warning": problem}))
            return problem

        try:
            with pristine(sd_model):
                yield TrainingContext(relay, check_saved)
        except torch.OutOfMemoryError as e:
            raise ForgeError(
                "out of GPU memory while training; lower the batch size, the resolution or the rank, keep "
                "gradient checkpointing on, or close other programs using the GPU (the WebUI's model is "
                f"unchanged) [{str(e).splitlines()[0][:120]}]"
            ) from e
        finally:
            host.status_note = ""
            shared.state.interrupted = False  # our Stop/Interrupt must not cancel the next generation


# -- load-back check -----------------------------------------------------------------------------


def loadback_check(host: WebUIHost, sd_model: Any, path: Path, muted: Any) -> str:
    """One denoising step on a fixed input with our live modules, and with them muted (`muted()`)
    while the Lora extension applies the just-saved file; '' when the two agree, else a loud
    message naming the file (it would not render in txt2img as the samples did)."""
    import torch

    networks = sys.modules.get("networks")
    if networks is None or not hasattr(networks, "load_networks"):
        return ""
    from modules import devices

    from lora_forge.model.fp8 import is_fp8

    device = host.device
    weight = next(sd_model.model.diffusion_model.parameters())
    # FP8 weights (the WebUI's setting): inputs in the UNet's compute dtype; the Lora extension
    # merges the file into the FP8 weights, so FP8's rounding bounds the agreement
    dtype = devices.dtype_unet if is_fp8(weight) else weight.dtype
    rounding = torch.finfo(weight.dtype).eps
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(20240727)).to(device, dtype)
    t = torch.tensor([500], device=device)

    def step() -> Any:
        with devices.autocast():
            cond = sd_model.get_learned_conditioning(["a photo"])  # through a trained text encoder too
            return sd_model.apply_model(x, t, cond).float()

    try:
        name = host.network_name(path)
        with torch.no_grad():
            ours = step()
            with muted():
                base = step()
                try:
                    networks.load_networks([name], [1.0], [1.0], [None])
                    theirs = step()
                finally:
                    _restore_lora_merges(sd_model)
    except torch.cuda.OutOfMemoryError:
        raise
    except (ForgeError, RuntimeError, AssertionError, KeyError, ValueError) as e:
        return f"LOAD-BACK CHECK could not run on {path.name} (the WebUI's Lora loader or the model failed): {e}"
    # The verdict follows what the WebUI renders (its loader's output), not our probe alone: an fp16
    # probe step can overflow in our live modules where the WebUI's merged weights render finite.
    finite = {k: bool(torch.isfinite(v).all()) for k, v in (("base", base), ("theirs", theirs), ("ours", ours))}
    if not finite["base"]:
        return (
            f"LOAD-BACK CHECK could not compare {path.name}: the model itself gives NaN/inf on the check's input "
            f"in {_dtype_name(dtype)}; judge the file by a txt2img render"
        )
    if not finite["theirs"]:
        return f"LOAD-BACK CHECK: {path.name} gives NaN/inf outputs through the WebUI's Lora loader; do not use it"
    if not finite["ours"]:
        return (
            f"LOAD-BACK CHECK could not compare {path.name}: the WebUI's Lora loader renders it finite, but the "
            f"trained modules gave NaN/inf on the check's input in {_dtype_name(dtype)}; judge it by a txt2img render"
        )
    effect = float((ours - base).norm())
    if effect == 0:
        return f"LOAD-BACK CHECK: {path.name} changes nothing even in our own modules"
    diff = float((theirs - ours).norm())
    floor = LOADBACK_EPS * rounding * float(base.norm())
    if diff > max(LOADBACK_TOLERANCE * effect, floor):
        return (
            f"LOAD-BACK CHECK FAILED: the WebUI's Lora loader applies {path.name} differently from the trained "
            f"LoRA (difference {diff / effect:.0%} of its effect); renders with <lora:{name}:1> will not match "
            "the samples"
        )
    return ""


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


# -- HTTP API guard ------------------------------------------------------------------------------


def api_enabled() -> bool:
    """Our training routes exist for cloud users who run the WebUI with --api (or --nowebui)."""
    from modules import shared

    return bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))


def api_credentials() -> dict[str, str]:
    """--api-auth "user:pass,user2:pass2" as the WebUI's Api class reads it (empty: no auth)."""
    from modules import shared

    raw = getattr(shared.cmd_opts, "api_auth", None) or ""
    pairs = (item.split(":", 1) for item in raw.strip('"').replace("\n", "").split(",") if ":" in item)
    return {user: password for user, password in pairs}


def check_api_access(user: str | None, password: str | None) -> bool:
    """The comparison the WebUI's Api.auth makes (constant time), for routes it does not cover."""
    credentials = api_credentials()
    if not credentials:
        return True
    if user is None or user not in credentials:
        return False
    return hmac.compare_digest(str(password or ""), credentials[user])
