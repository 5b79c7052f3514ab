"""Full-size UNets with random weights for the training benchmarks (train_step.py, train_memory.py).

SD1.5 is ldm's UNetModel, SDXL sgm's (the WebUI's pinned sgm, or the test stack's fork through
host/sgm_compat), each with its checkpoint's exact architecture. Weights are made on the meta
device and materialised tensor by tensor straight in the storage dtype asked for, so building
never holds a second copy (the memory bench's peak would show it):
- "fp32": everything float32;
- "bf16": bfloat16, norms float32 (ldm's GroupNorm32 computes in fp32 and CPU autocast does not
  cast the affine parameters back);
- "fp8": as "bf16", but every Linear/Conv2d weight and bias float8_e4m3fn, as the WebUI's FP8 weight
  setting loads a model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

SD15 = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
)  # fmt: skip
TINY = {**SD15, "model_channels": 32, "context_dim": 32}
# sd_xl_base.yaml's network_config (attention through sgm's SDP CrossAttention)
SDXL = dict(
    adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
    model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4],
    num_head_channels=64, use_linear_in_transformer=True, transformer_depth=[1, 2, 10], context_dim=2048,
    spatial_transformer_attn_type="softmax", legacy=False,
)  # fmt: skip
CONTEXT = {"tiny": 32, "sd15": 768, "sdxl": 2048}


class Bare(nn.Module):
    """Just enough of a LatentDiffusion / DiffusionEngine for LoRA targeting: `.model.diffusion_model`."""

    def __init__(self, unet: nn.Module, sdxl: bool) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.is_sd2 = False
        self.is_sdxl = sdxl


class WithVector:
    """SDXL's UNet called the way predict() calls an SD1 one: the `vector` (pooled text + size
    conditioning, cached like the text) rides along."""

    def __init__(self, unet: nn.Module, y: torch.Tensor) -> None:
        self.unet, self.y = unet, y

    def __call__(self, x: torch.Tensor, timesteps: Any = None, context: Any = None) -> torch.Tensor:
        return self.unet(x, timesteps=timesteps, context=context, y=self.y.to(x.dtype))


def build_unet(kind: str, storage: str = "fp32", seed: int = 0) -> nn.Module:
    with torch.device("meta"):
        if kind == "sdxl":
            from lora_forge.host.sgm_compat import ensure_sgm

            ensure_sgm()
            from sgm.modules.diffusionmodules.openaimodel import UNetModel

            unet = UNetModel(**SDXL)
        else:
            from ldm.modules.diffusionmodules.openaimodel import UNetModel

            unet = UNetModel(**(TINY if kind == "tiny" else SD15))
    gen = torch.Generator().manual_seed(seed)
    fp8 = getattr(torch, "float8_e4m3fn", None)
    for m in unet.modules():
        norm = isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        layer = isinstance(m, (nn.Linear, nn.Conv2d))
        for name, p in list(m.named_parameters(recurse=False)):
            dtype = torch.float32 if storage == "fp32" or norm else torch.bfloat16
            data = torch.empty(p.shape, dtype=dtype).normal_(0, 0.02, generator=gen)
            if storage == "fp8" and layer:
                data = data.to(fp8)
            setattr(m, name, nn.Parameter(data, requires_grad=False))
        for name, b in list(m.named_buffers(recurse=False)):
            m.register_buffer(name, torch.zeros(b.shape, dtype=b.dtype))
    return unet.eval()
