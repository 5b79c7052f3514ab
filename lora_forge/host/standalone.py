"""The host for headless use: one checkpoint file, loaded into the same `ldm` classes as the WebUI.

Later stages only ever see the LatentDiffusion object and the Host interface, so this file's job
is to make that object look like the WebUI's (the `is_sd1/is_sd2/is_sdxl` flags, an fp32
`alphas_cumprod_original`, checkpoint identity fields) and to render txt2img for the grid and
training samples.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, no_progress
from lora_forge.host.base import Host, RenderRequest

MAX_BATCH = 8  # images per UNet batch; CFG doubles it


class CheckpointInfo:
    """The identity fields of the WebUI's `sd_models.CheckpointInfo` that our stages read (LoRA
    metadata records the base model's name and hashes). The full sha256 is computed on first use:
    hashing a 2-6 GB file costs seconds that loading for a render does not need."""

    def __init__(self, path: Path) -> None:
        self.filename = str(path)
        self.name = path.name
        self.name_for_extra = path.stem
        self.model_name = path.stem
        self.is_safetensors = path.suffix.lower() == ".safetensors"
        with open(path, "rb") as f:  # the WebUI's old 8-hex "model hash": 64 KiB at offset 1 MiB
            f.seek(0x100000)
            self.hash = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
        self.metadata: dict[str, str] = {}
        if self.is_safetensors:
            from safetensors import safe_open

            with safe_open(self.filename, framework="pt") as f:
                self.metadata = dict(f.metadata() or {})

    @functools.cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.filename, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    def calculate_shorthash(self) -> str:
        return self.shorthash


def _batch_key(r: RenderRequest) -> tuple[Any, ...]:
    """Requests alike in everything but seed and LoRA strengths share one UNet batch."""
    files = tuple(sorted(str(lo.path) for lo in r.loras))
    return (r.prompt, r.negative_prompt, r.steps, r.cfg_scale, r.width, r.height, r.sampler, files)


class StandaloneHost(Host):
    """Loads `ckpt` (+ optional separate VAE) on `device`; `config` overrides the yaml choice and
    `clip_folder` names the CLIP tokenizer/config folder when it is not in the HF cache."""

    name = "standalone"
    batches_lora_strengths = True  # _batch_key ignores strengths: a grid row is one UNet batch

    def __init__(
        self,
        ckpt: Path | str,
        vae: Path | str | None = None,
        config: Path | str | None = None,
        clip_folder: Path | str | None = None,
        device: str = "cpu",
        dtype: Any = None,
        lora_dir: Path | str | None = None,
    ) -> None:
        import torch

        from lora_forge.host import ldm_build

        self.ckpt = Path(ckpt)
        self._device = torch.device(device)
        self._dtype = dtype or (torch.float16 if self._device.type == "cuda" else torch.float32)
        if self._device.type == "cpu" and self._dtype != torch.float32:
            raise ForgeError("half precision needs a CUDA device; on CPU the model runs in float32")
        self._lock = threading.RLock()  # re-entrant: a training job renders its own samples
        self._lora_dir = Path(lora_dir) if lora_dir else self.ckpt.parent / "Lora"
        state_dict = ldm_build.modern_key_names(ldm_build.read_state_dict(self.ckpt))
        config_path, family = ldm_build.choose_config(self.ckpt, state_dict, Path(config) if config else None)
        self.config_path = config_path
        cfg = ldm_build.load_config(config_path)
        self.sdxl = family.startswith("sdxl")
        if self.sdxl:
            from lora_forge.host.sgm_compat import ensure_sgm

            ensure_sgm()
            if family == "sdxl-v" and config_path.parent == ldm_build.CONFIG_DIR:  # the marker, no yaml
                scaling = cfg.model.params.denoiser_config.params.scaling_config
                scaling.target = "sgm.modules.diffusionmodules.denoiser_scaling.VScaling"
            text_cfgs = list(cfg.model.params.conditioner_config.params.emb_models)
        else:
            text_cfgs = [cfg.model.params.cond_stage_config]
        for cond_cfg in text_cfgs:
            if str(cond_cfg.target).endswith(("FrozenOpenCLIPEmbedder", "FrozenOpenCLIPEmbedder2")):
                arch = str(cond_cfg.get("params", {}).get("arch", "ViT-H-14"))
                ldm_build.register_open_clip_configs(arch, [self.ckpt.parent, config_path.parent])
        model = ldm_build.instantiate(cfg, Path(clip_folder) if clip_folder else None)
        ldm_build.load_weights(model, state_dict, self._dtype, self.ckpt)
        del state_dict
        self.vae_path = Path(vae) if vae else None
        if self.vae_path is not None:
            ldm_build.load_vae(model, self.vae_path)
        self._model = self._finish(model, family)

    @classmethod
    def from_checkpoint(cls, ckpt: Path | str, **options: Any) -> StandaloneHost:
        """The same as the constructor; reads better where a host is made from a user's file."""
        return cls(ckpt, **options)

    def _finish(self, model: Any, family: str) -> Any:
        """Set what the WebUI's load_model_weights sets, and move to the device."""
        import torch

        model.eval()
        model.to(self._device)
        if self.sdxl:
            from lora_forge.host.sdxl_object import extend_sdxl

            extend_sdxl(model, self._device)
        else:
            model.cond_stage_model.device = self._device  # ldm embedders move tokens to this
        model.is_sd1 = family.startswith("sd1")
        model.is_sd2 = family.startswith("sd2")
        model.is_sdxl = self.sdxl
        model.is_ssd = False
        model.is_sd3 = False
        model.is_sdxl_inpaint = False
        model.latent_channels = 4
        model.alphas_cumprod = model.alphas_cumprod.to(torch.float32)
        model.alphas_cumprod_original = model.alphas_cumprod.detach().clone()
        model.sd_checkpoint_info = CheckpointInfo(self.ckpt)
        model.sd_model_checkpoint = str(self.ckpt)
        model.loaded_vae_file = str(self.vae_path) if self.vae_path else None
        return model

    # -- Host interface -------------------------------------------------------------------------

    def sd_model(self) -> Any:
        return self._model

    @property
    def device(self) -> Any:
        return self._device

    @property
    def dtype(self) -> Any:
        return self._dtype

    def lora_dir(self) -> Path:
        return self._lora_dir

    @contextlib.contextmanager
    def exclusive(self, job: str) -> Iterator[None]:
        """One job at a time (like the WebUI's queue_lock); the holding thread may re-enter."""
        with self._lock:
            yield

    def txt2img(self, requests: Sequence[RenderRequest], progress: ProgressFn = no_progress) -> list[Any]:
        """Render every request; alike requests go through the UNet together (see `_batch_key`).

        A seed always gives the same image for the same list of requests; batched float kernels
        may move a few pixel values by 1/255 when the same seed shares a batch with others.
        """
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            self._check(r)
            groups.setdefault(_batch_key(r), []).append(i)
        batches = [idx[k : k + MAX_BATCH] for idx in groups.values() for k in range(0, len(idx), MAX_BATCH)]
        total = sum(requests[b[0]].steps for b in batches)
        images: list[Any] = [None] * len(requests)
        done = 0
        with self.exclusive("txt2img"):
            for batch in batches:
                first = requests[batch[0]]

                def on_step(step: int, first: RenderRequest = first, base: int = done) -> None:
                    progress(Progress(base + step, total, f"sampling {first.width}x{first.height}"))

                for i, image in zip(batch, self._render([requests[i] for i in batch], on_step), strict=True):
                    images[i] = image
                done += first.steps
        return images

    # -- rendering ------------------------------------------------------------------------------

    @staticmethod
    def _check(r: RenderRequest) -> None:
        from lora_forge.host.sampling import SAMPLERS

        if r.width % 8 or r.height % 8 or r.width < 8 or r.height < 8:
            raise ForgeError(f"image size {r.width}x{r.height} must be a positive multiple of 8")
        if r.steps < 1:
            raise ForgeError("sampling steps must be at least 1")
        if r.sampler not in SAMPLERS:
            raise ForgeError(f"the standalone host has no sampler {r.sampler!r}; use one of {', '.join(SAMPLERS)}")
        for lora in r.loras:
            if not Path(lora.path).is_file():
                raise ForgeError("LoRA file not found", path=lora.path)

    def _render(self, batch: list[RenderRequest], on_step: Any) -> list[Any]:
        import torch

        from lora_forge.host import sampling
        from lora_forge.host.sdxl_object import SizedPrompts
        from lora_forge.model.unet import sdp_attention

        r = batch[0]
        model = self._model
        half = self._dtype != torch.float32  # as the WebUI: half weights run under autocast
        # SDP attention, as the WebUI renders by default: ldm's own einsum attention holds a
        # batch×heads×N² matrix, 8.6 GB for a batch of 8 at 512 px (a grid row on the CPU)
        with (
            torch.no_grad(),
            torch.autocast(self._device.type, dtype=self._dtype, enabled=half),
            sdp_attention(),
            self._loras_applied(batch),
        ):
            # one row per sample: a text-encoder LoRA may have a different strength in each
            cond = model.get_learned_conditioning(SizedPrompts([r.prompt] * len(batch), r.width, r.height))
            negative = SizedPrompts([r.negative_prompt] * len(batch), r.width, r.height, is_negative_prompt=True)
            uncond = model.get_learned_conditioning(negative)
            timesteps, sigmas = sampling.schedule(model.alphas_cumprod_original, r.steps, r.sampler)
            noise, generators = sampling.seeded_noise([q.seed for q in batch], (4, r.height // 8, r.width // 8))
            denoise = sampling.make_denoiser(model, cond, uncond, r.cfg_scale, self._dtype)
            latent = sampling.sample(denoise, noise.to(self._device), generators, timesteps, sigmas, r.sampler, on_step)
            with torch.autocast(self._device.type, enabled=False):
                pixels = model.decode_first_stage(latent.float())
        return _to_pil(pixels)

    @contextlib.contextmanager
    def _loras_applied(self, batch: list[RenderRequest]) -> Iterator[None]:
        """The LoRA files the batch names, live for this batch only, each with one strength per
        sample (the batch shares its files; strengths may differ, as in a strength grid)."""
        import torch

        from lora_forge.lora import LoraNetwork

        files = sorted({str(lo.path) for lo in batch[0].loras})
        networks = []
        try:
            for name in files:
                strengths = [sum(lo.strength for lo in r.loras if str(lo.path) == name) for r in batch]
                net = LoraNetwork.from_file(self._model, name, multiplier=torch.tensor(strengths))
                net.to(self._device)
                net.apply_to()
                networks.append(net)
            yield
        finally:
            for net in reversed(networks):
                net.remove()


def _to_pil(pixels: Any) -> list[Any]:
    import torch
    from PIL import Image

    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to("cpu", dtype=torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]
