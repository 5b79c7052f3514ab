"""The modules of a loaded `ldm`/`sgm` model that get LoRA, with their kohya names.

Found on the model object itself (both hosts hold the same classes), in kohya's order (text
encoders first, then UNet) and with kohya's selection, so a file we write has exactly the keys a
kohya file for the same settings has:

* UNet: every Linear/Conv2d inside a SpatialTransformer (proj_in/out, attn1/attn2 q/k/v/out,
  ff.net.0.proj, ff.net.2). With LoCon also every Linear/Conv2d of a ResBlock (in_layers.2,
  out_layers.3 3×3, emb_layers.1 Linear, skip_connection 1×1) and the Down/Upsample convs.
* Text encoders: per layer q/k/v/out projections and the two MLP Linears.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.model import names
from lora_forge.model.family import FAMILY_LABELS, base_family, model_family

UNET_BLOCKS = ("SpatialTransformer",)
CONV_BLOCKS = ("ResBlock", "Downsample", "Upsample")
_HF_CLIP_TARGET = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@dataclass(frozen=True, eq=False)
class Target:
    """One module LoRA attaches to (one kohya `M` in `M.lora_down.weight`).

    `kind` is "linear", "conv1x1", "conv" (k×k, LoCon) or "mha" (one q/k/v/out `slot` of a fused
    OpenCLIP attention). `batch_dim` is where the batch sits in the module's input, which is 1 for
    OpenCLIP's sequence-first MLPs; per-sample multipliers broadcast along it.
    """

    name: str
    path: str
    module: Any = field(repr=False)
    part: str  # "unet" or "te"
    kind: str
    in_features: int
    out_features: int
    kernel: tuple[int, int] = (1, 1)
    slot: str | None = None
    batch_dim: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def is_conv_rank(self) -> bool:
        """True for the k×k convs that take the LoCon conv rank/alpha instead of the network's."""
        return self.kind == "conv"


def model_base(sd_model: Any) -> tuple[str, str]:
    """(family, base) of a live model, refusing families no LoRA of ours can target."""
    family = model_family(sd_model)
    base = base_family(family)
    if base not in ("sd1", "sd2", "sdxl") or family == "sdxl-refiner":
        label = FAMILY_LABELS.get(family, family or "unknown")
        raise ForgeError(f"LoRA training and loading supports SD1.x, SD2.x and SDXL base models, not {label}")
    return family, base


def find_targets(sd_model: Any, *, unet: bool = True, text_encoder: bool = True, conv: bool = False) -> list[Target]:
    """Every LoRA target of `sd_model` in kohya order; `conv` adds the LoCon ResBlock/sampler modules."""
    _, base = model_base(sd_model)
    paths = {id(m): p for p, m in sd_model.named_modules()}
    found: list[Target] = []
    if text_encoder:
        for prefix, root in _text_encoders(sd_model, base):
            found += _text_targets(root, prefix, base, paths)
    if unet:
        found += _unet_targets(sd_model.model.diffusion_model, base, conv, paths)
    return found


def _text_encoders(sd_model: Any, base: str) -> list[tuple[str, Any]]:
    """(kohya prefix, embedder) pairs; the WebUI wraps each embedder, we look through `.wrapped`."""
    if base == "sdxl":
        embedders = [getattr(e, "wrapped", e) for e in sd_model.conditioner.embedders]
        texts = [e for e in embedders if hasattr(e, "transformer") or hasattr(getattr(e, "model", None), "transformer")]
        return list(zip((names.TE1_PREFIX, names.TE2_PREFIX), texts, strict=False))
    cond = sd_model.cond_stage_model
    return [(names.TE_PREFIX, getattr(cond, "wrapped", cond))]


def _text_targets(root: Any, prefix: str, base: str, paths: dict[int, str]) -> list[Target]:
    import torch

    if hasattr(root, "transformer"):  # HF CLIPTextModel (SD1, SDXL CLIP-L)
        out = []
        for path, m in root.transformer.named_modules():
            if _HF_CLIP_TARGET.match(path) and isinstance(m, torch.nn.Linear):
                # Some trainers write SD1's encoder as `lora_te1_`; the WebUI accepts it, so do we.
                aliases = (names.hf_clip_name(names.TE1_PREFIX, path),) if prefix == names.TE_PREFIX else ()
                out.append(_linear_target(names.hf_clip_name(prefix, path), paths[id(m)], m, "te", 0, aliases))
        return out
    transformer = root.model.transformer  # OpenCLIP (SD2, SDXL bigG)
    blocks = list(transformer.resblocks)
    # SD2 stops one block early (penultimate layer), so kohya leaves that block out; SDXL's bigG
    # runs every block (its pooled output comes from the last), so all count there.
    used = len(blocks) if base == "sdxl" else len(blocks) - int(getattr(root, "layer_idx", 0))
    seq_dim = 0 if getattr(transformer, "batch_first", False) else 1
    out = []
    for i, block in enumerate(blocks[:used]):
        attn = block.attn
        width = int(attn.embed_dim)
        for slot in names.MHA_SLOTS:
            name = names.openclip_name(prefix, f"resblocks.{i}.attn", slot)
            out.append(Target(name, paths[id(attn)], attn, "te", "mha", width, width, slot=slot))
        for sub in ("mlp.c_fc", "mlp.c_proj"):
            m = block.get_submodule(sub)
            name = names.openclip_name(prefix, f"resblocks.{i}.{sub}")
            out.append(_linear_target(name, paths[id(m)], m, "te", seq_dim))
    return out


def _unet_targets(unet: Any, base: str, conv: bool, paths: dict[int, str]) -> list[Target]:
    import torch

    kinds = UNET_BLOCKS + (CONV_BLOCKS if conv else ())
    out: list[Target] = []
    seen: set[int] = set()
    for block_path, block in unet.named_modules():
        if type(block).__name__ not in kinds:
            continue
        for sub, m in block.named_modules():
            if not sub or id(m) in seen or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            seen.add(id(m))
            path = f"{block_path}.{sub}"
            name = names.unet_name(path, base)
            aliases = tuple(names.unet_aliases(path, base))
            if isinstance(m, torch.nn.Linear):
                out.append(_linear_target(name, paths[id(m)], m, "unet", 0, aliases))
                continue
            kernel = (int(m.kernel_size[0]), int(m.kernel_size[1]))
            kind = "conv1x1" if kernel == (1, 1) else "conv"
            if kind == "conv" and not conv:  # only reachable if a SpatialTransformer held a k×k conv
                continue
            out.append(
                Target(name, paths[id(m)], m, "unet", kind, m.in_channels, m.out_channels, kernel, aliases=aliases)
            )
    return out


def _linear_target(name: str, path: str, m: Any, part: str, batch_dim: int, aliases: tuple[str, ...] = ()) -> Target:
    return Target(name, path, m, part, "linear", m.in_features, m.out_features, batch_dim=batch_dim, aliases=aliases)
