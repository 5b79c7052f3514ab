"""Model files for the inspector tests, built under the real key names of each file type.

Where a file's size would matter (checkpoints, VAEs) the tensors are small stand-ins with the
real key names and the real number of dimensions; the few shapes a reader must look at (UNet input
channels, cross-attention width, LoRA widths) have their real values. The layouts come from the
formats' own sources: kohya sd-scripts networks/lora.py (LoRA names, 192 UNet + 72 TE modules for
SD1), LyCORIS (hada_/lokr_), diffusers/PEFT (lora_A/lora_B), A1111's textual_inversion and
hypernetwork savers, sd-webui-controlnet (control_model.*), ESRGAN/Real-ESRGAN (model.N / conv_first).
"""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path
from typing import Any

# SD1 UNet: (diffusers block, channels) for every attention block, as kohya names them
SD1_ATTENTIONS = (
    [(f"down_blocks_{b}_attentions_{i}", (320, 640, 1280)[b]) for b in range(3) for i in range(2)]
    + [("mid_block_attentions_0", 1280)]
    + [(f"up_blocks_{b}_attentions_{i}", (1280, 640, 320)[b - 1]) for b in range(1, 4) for i in range(3)]
)
TE_TARGETS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")


def sd1_lora_modules(context: int = 768, te_width: int = 768) -> list[tuple[str, int, int, int]]:
    """(kohya module, in, out, kernel) for kohya's default SD1 LoRA: 192 UNet + 72 text-encoder modules.
    kernel 0 = Linear, 1 = 1×1 conv (SD1's proj_in/proj_out)."""
    mods = []
    for block, ch in SD1_ATTENTIONS:
        mods += [(f"lora_unet_{block}_proj_in", ch, ch, 1), (f"lora_unet_{block}_proj_out", ch, ch, 1)]
        t = f"lora_unet_{block}_transformer_blocks_0"
        for attn, kv_in in (("attn1", ch), ("attn2", context)):
            mods += [(f"{t}_{attn}_to_q", ch, ch, 0), (f"{t}_{attn}_to_k", kv_in, ch, 0)]
            mods += [(f"{t}_{attn}_to_v", kv_in, ch, 0), (f"{t}_{attn}_to_out_0", ch, ch, 0)]
        mods += [(f"{t}_ff_net_0_proj", ch, ch * 8, 0), (f"{t}_ff_net_2", ch * 4, ch, 0)]
    for layer in range(12):
        for target in TE_TARGETS:
            fan_in = te_width * 4 if target == "mlp_fc2" else te_width
            fan_out = te_width * 4 if target == "mlp_fc1" else te_width
            mods.append((f"lora_te_text_model_encoder_layers_{layer}_{target}", fan_in, fan_out, 0))
    return mods


def sd1_locon_extra_modules() -> list[tuple[str, int, int, int]]:
    """The 86 modules kohya's conv_dim adds for SD1: resnet conv1/conv2 (3×3), time_emb_proj,
    conv_shortcut (1×1), 3 downsamplers and 3 upsamplers (3×3)."""
    chans = (320, 640, 1280, 1280)
    mods = []
    resnets = [
        (f"down_blocks_{b}_resnets_{i}", chans[b - 1] if b and not i else chans[b], chans[b])
        for b in range(4)
        for i in range(2)
    ]
    resnets += [(f"mid_block_resnets_{i}", 1280, 1280) for i in range(2)]
    up_in = (1280, 1280, 640, 320)
    resnets += [
        (f"up_blocks_{b}_resnets_{i}", up_in[b] * 2, (1280, 1280, 640, 320)[b]) for b in range(4) for i in range(3)
    ]
    for name, cin, cout in resnets:
        mods += [(f"lora_unet_{name}_conv1", cin, cout, 3), (f"lora_unet_{name}_conv2", cout, cout, 3)]
        mods.append((f"lora_unet_{name}_time_emb_proj", 1280, cout, 0))
        if cin != cout:
            mods.append((f"lora_unet_{name}_conv_shortcut", cin, cout, 1))
    mods += [(f"lora_unet_down_blocks_{b}_downsamplers_0_conv", chans[b], chans[b], 3) for b in range(3)]
    mods += [(f"lora_unet_up_blocks_{b}_upsamplers_0_conv", chans[3 - b], chans[3 - b], 3) for b in range(3)]
    return mods


def write_kohya(
    path: Path,
    modules: list,
    rank: int,
    alpha: float | None,
    conv_rank: int = 0,
    conv_alpha: float = 1.0,
    metadata: dict[str, str] | None = None,
    dtype: Any = None,
) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float16
    sd = {}
    for name, fan_in, fan_out, kernel in modules:
        r = conv_rank if kernel == 3 else rank
        if kernel:
            down, up = (r, fan_in, kernel, kernel), (fan_out, r, 1, 1)
        else:
            down, up = (r, fan_in), (fan_out, r)
        sd[f"{name}.lora_down.weight"] = torch.randn(down, dtype=dtype)
        sd[f"{name}.lora_up.weight"] = torch.zeros(up, dtype=dtype)
        a = conv_alpha if kernel == 3 else alpha
        if a is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(a), dtype=dtype)
    save_file(sd, str(path), metadata=metadata)


def kohya_metadata(**extra: str) -> dict[str, str]:
    """Metadata as kohya's train_network.py writes it (values are strings, dicts are JSON)."""
    meta = {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_output_name": "mychar",
        "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
        "ss_steps": "1500",
        "ss_epoch": "10",
        "ss_num_epochs": "10",
        "ss_max_train_steps": "1500",
        "ss_resolution": "(512, 512)",
        "ss_num_train_images": "300",
        "ss_learning_rate": "0.0001",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
        "ss_training_started_at": "1700000000.0",
        "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 30}}),
        "ss_tag_frequency": json.dumps(
            {"10_mychar": {"1girl": 30, "solo": 28, "smile": 12, "long hair": 20, "outdoors": 4}}
        ),
        "sshs_model_hash": "ab" * 32,
        "modelspec.trigger_phrase": "mychar",
    }
    meta.update(extra)
    return meta


def write_small(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file with zero tensors of the given shapes."""
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path), metadata=metadata)


def stand_in(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Tiny shapes with the same number of dimensions, keeping the widths a reader must see: the
    UNet's input channels, the cross-attention input width and the VAE's latent channels."""
    out = {}
    for key, shape in shapes.items():
        tiny = [min(d, 2) for d in shape]
        if key.endswith(
            ("input_blocks.0.0.weight", "attn2.to_k.weight", "attn2.to_v.weight", "decoder.conv_in.weight")
        ):
            tiny[1] = shape[1]
        out[key] = tuple(tiny)
    return out


# ------------------------------------------------------------------------------- checkpoint layouts


def ldm_unet_shapes(context: int, linear: bool) -> dict[str, tuple[int, ...]]:
    """Real SD1/SD2 UNet key → shape, from the ldm class on the meta device (nothing allocated)."""
    import torch
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(
            image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
            num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8 if context == 768 else -1,
            num_head_channels=-1 if context == 768 else 64, use_spatial_transformer=True, transformer_depth=1,
            context_dim=context, use_checkpoint=False, legacy=False, use_linear_in_transformer=linear,
        )  # fmt: skip
    return {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}


def ldm_vae_shapes(prefix: str = "first_stage_model.") -> dict[str, tuple[int, ...]]:
    import torch
    from ldm.models.autoencoder import AutoencoderKL

    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)  # fmt: skip
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=dd, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
    return {f"{prefix}{k}": tuple(v.shape) for k, v in vae.state_dict().items()}


def clip_l_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """OpenAI CLIP ViT-L/14 text encoder (SD1, SDXL's first encoder), HF transformers names."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, vocab_size=49408)  # fmt: skip
    with torch.device("meta"):
        te = CLIPTextModel(cfg)
    return {f"{prefix}{k}": tuple(v.shape) for k, v in te.state_dict().items()}


def open_clip_shapes(prefix: str, width: int, layers: int) -> dict[str, tuple[int, ...]]:
    """OpenCLIP text tower as ldm's FrozenOpenCLIPEmbedder / sgm's bigG embedder store it."""
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}positional_embedding": (77, width),
        f"{prefix}text_projection": (width, width),
        f"{prefix}logit_scale": (),
        f"{prefix}token_embedding.weight": (49408, width),
        f"{prefix}ln_final.weight": (width,),
        f"{prefix}ln_final.bias": (width,),
    }
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        shapes |= {
            f"{b}ln_1.weight": (width,), f"{b}ln_1.bias": (width,),
            f"{b}attn.in_proj_weight": (3 * width, width), f"{b}attn.in_proj_bias": (3 * width,),
            f"{b}attn.out_proj.weight": (width, width), f"{b}attn.out_proj.bias": (width,),
            f"{b}ln_2.weight": (width,), f"{b}ln_2.bias": (width,),
            f"{b}mlp.c_fc.weight": (4 * width, width), f"{b}mlp.c_fc.bias": (4 * width,),
            f"{b}mlp.c_proj.weight": (width, 4 * width), f"{b}mlp.c_proj.bias": (width,),
        }  # fmt: skip
    return shapes


def sd1_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of an SD1.5 checkpoint with its real shape (about 1.07 G parameters)."""
    return ldm_unet_shapes(768, False) | ldm_vae_shapes() | clip_l_shapes("cond_stage_model.transformer.")


def sd2_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    return ldm_unet_shapes(1024, True) | ldm_vae_shapes() | open_clip_shapes("cond_stage_model.model.", 1024, 24)


def sdxl_unet_shapes(in_channels: int = 4, context: int = 2048, refiner: bool = False) -> dict[str, tuple[int, ...]]:
    """The SDXL UNet keys that say what it is: conv_in, label_emb, the deep transformer stacks."""
    p = "model.diffusion_model."
    ch = 384 if refiner else 320
    shapes = {f"{p}input_blocks.0.0.weight": (ch, in_channels, 3, 3), f"{p}label_emb.0.0.weight": (1280, 2816)}
    for block, depth, width in ((4, 2, 640), (5, 2, 640), (7, 10, 1280), (8, 10, 1280)):
        for t in range(depth):
            for name in ("attn1.to_q", "attn2.to_q", "attn2.to_k", "attn2.to_v", "ff.net.2"):
                fan_in = context if name in ("attn2.to_k", "attn2.to_v") else width
                shapes[f"{p}input_blocks.{block}.1.transformer_blocks.{t}.{name}.weight"] = (width, fan_in)
    return shapes


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> int:
    """A full-size safetensors file whose data is a hole: real header, real size, no disk used."""
    item = {"F16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        n = math.prod(shape) * item
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


# ------------------------------------------------------------------------------------------ pickles


class CreatesFile:
    """Unpickling this creates `target` (the classic pickle attack, harmless payload)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


def malicious_pickle(target: Path) -> bytes:
    return pickle.dumps({"state_dict": {}, "payload": CreatesFile(target)}, protocol=2)


def write_hypernetwork(path: Path) -> None:
    """A1111 hypernetwork layout (modules/hypernetworks/hypernetwork.py save): {size: [k, v] state dicts}."""
    import torch

    state: dict[Any, Any] = {}
    for size in (768, 320, 640, 1280):
        state[size] = [
            {
                "linear.0.weight": torch.zeros(size // 2, size),
                "linear.0.bias": torch.zeros(size // 2),
                "linear.1.weight": torch.zeros(size, size // 2),
                "linear.1.bias": torch.zeros(size),
            }
            for _kv in range(2)
        ]
    state |= {
        "step": 2000, "name": "my_hn", "layer_structure": [1, 0.5, 1], "activation_func": "relu",
        "is_layer_norm": False, "weight_initialization": "Normal", "use_dropout": False,
        "sd_checkpoint": "e1441589a6", "sd_checkpoint_name": "v1-5-pruned", "activate_output": False,
    }  # fmt: skip
    torch.save(state, path)
