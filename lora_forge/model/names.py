"""Kohya LoRA module names for the modules of an `ldm`/`sgm` model: plain string rules, no torch.

Every loader users have (the WebUI's Lora, reForge/Forge, ComfyUI, diffusers) was written
against kohya sd-scripts files, so we must write the names kohya writes:

* SD1/SD2 UNet: kohya trains on a diffusers-structured UNet, so its names are the diffusers
  paths (`down_blocks_0_attentions_1_…`); we rename our LDM paths the way kohya's
  `convert_unet_state_dict_to_sd` table does (the inverse of the WebUI's
  `convert_diffusers_name_to_compvis`).
* SDXL UNet: kohya trains on an LDM-structured UNet, so the name is the LDM path itself. The
  diffusers form would even be wrong there: the WebUI's regex sends `up_blocks_0_upsamplers` to
  `output_blocks_2_1`, but SDXL's upsampler of that block is `output_blocks.2.2`.
* Text encoders: HF CLIP paths as they are (`lora_te_`, SDXL `lora_te1_`); OpenCLIP (SD2,
  SDXL's bigG) renamed to the HF CLIP names kohya's converted encoder has (`lora_te_`/`lora_te2_`).
"""

from __future__ import annotations

import re

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"
TE1_PREFIX = "lora_te1"
TE2_PREFIX = "lora_te2"

# LDM ResBlock children → diffusers ResnetBlock2D children.
RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}

# OpenCLIP resblock children → HF CLIP encoder-layer children (kohya's converted SD2/bigG encoder).
OPENCLIP_PARTS = {
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
}

# The fused `nn.MultiheadAttention` of an OpenCLIP resblock is four kohya modules.
MHA_SLOTS = ("q", "k", "v", "out")

_INPUT = re.compile(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.(\d+)\.(.+)$")
_RESBLOCK = re.compile(r"^resblocks\.(\d+)\.(.+)$")


def join(prefix: str, dotted: str) -> str:
    """`prefix_` + the dotted path with every `.` turned into `_` (kohya's rule)."""
    return f"{prefix}_{dotted.replace('.', '_')}"


def _resnet_part(rest: str) -> str:
    for ldm, diffusers in RESNET_PARTS.items():
        if rest == ldm or rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm) :]
    raise ValueError(f"not a ResBlock child: {rest}")


def unet_ldm_to_diffusers(path: str) -> str:
    """Diffusers path of an SD1/SD2 UNet module given its path under `diffusion_model`.

    `input_blocks.4.1.proj_in` → `down_blocks.1.attentions.0.proj_in`; raises ValueError for
    modules with no diffusers counterpart that kohya could have trained.
    """
    if m := _INPUT.match(path):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        if n == 0:
            raise ValueError(f"conv_in is never a LoRA target: {path}")
        if n % 3 == 0:  # 3, 6, 9: the Downsample of the block before
            if sub == 0 and rest == "op":
                return f"down_blocks.{n // 3 - 1}.downsamplers.0.conv"
            raise ValueError(f"unexpected module in a downsampling block: {path}")
        block, index = (n - 1) // 3, (n - 1) % 3
        if sub == 0:
            return f"down_blocks.{block}.resnets.{index}.{_resnet_part(rest)}"
        return f"down_blocks.{block}.attentions.{index}.{rest}"
    if m := _MIDDLE.match(path):
        sub, rest = int(m[1]), m[2]
        if sub == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{sub // 2}.{_resnet_part(rest)}"
    if m := _OUTPUT.match(path):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        block, index = n // 3, n % 3
        if sub == 0:
            return f"up_blocks.{block}.resnets.{index}.{_resnet_part(rest)}"
        if rest == "conv":  # Upsample: `output_blocks.2.1.conv`, `5.2.conv`, `8.2.conv` in SD1/SD2
            return f"up_blocks.{block}.upsamplers.0.conv"
        return f"up_blocks.{block}.attentions.{index}.{rest}"
    raise ValueError(f"not a trainable UNet module path: {path}")


def unet_name(path: str, base: str) -> str:
    """Kohya name of a UNet module (`path` under `diffusion_model`) for base family `base`."""
    if base == "sdxl":
        return join(UNET_PREFIX, path)
    return join(UNET_PREFIX, unet_ldm_to_diffusers(path))


def unet_aliases(path: str, base: str) -> list[str]:
    """Other names a file may use for this UNet module and that the WebUI still loads.

    For SD1/SD2 that is the LDM form (the WebUI's `lora_unet`→`diffusion_model` fallback), which
    several trainers write; we accept it when loading but never write it.
    """
    return [] if base == "sdxl" else [join(UNET_PREFIX, path)]


def hf_clip_name(prefix: str, path: str) -> str:
    """Kohya name of an HF CLIPTextModel module, `path` relative to the CLIPTextModel."""
    return join(prefix, path)


def openclip_name(prefix: str, path: str, slot: str | None = None) -> str:
    """Kohya name of an OpenCLIP text-transformer module, `path` relative to `transformer`.

    `resblocks.3.mlp.c_fc` → `…text_model_encoder_layers_3_mlp_fc1`; the fused attention
    `resblocks.3.attn` needs `slot` (q/k/v/out) → `…_self_attn_q_proj`.
    """
    m = _RESBLOCK.match(path)
    if not m:
        raise ValueError(f"not an OpenCLIP resblock module: {path}")
    layer, rest = m[1], m[2]
    if rest == "attn":
        if slot not in MHA_SLOTS:
            raise ValueError(f"the fused attention needs a slot q/k/v/out, got {slot!r}")
        rest = f"self_attn.{slot}_proj"
    else:
        rest = OPENCLIP_PARTS.get(rest, rest)
    return join(prefix, f"text_model.encoder.layers.{layer}.{rest}")
