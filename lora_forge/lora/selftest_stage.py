"""Selftest stage: a LoCon on the standalone host's model — inject, save, load, merge, restore.

Checks what a user would notice: the file loads back to the same result, merged weights render
like the injected modules, and the model is bit-identical afterwards.
"""

from __future__ import annotations

import hashlib
from typing import Any


def selftest(ctx: Any) -> str:
    import torch

    from lora_forge.errors import ForgeError
    from lora_forge.fsio import unused_path
    from lora_forge.lora import LoraNetwork, load_lora, lora_metadata, merge, save_lora

    sd_model = ctx.shared["host"].sd_model()
    unet = sd_model.model.diffusion_model
    before = _state_hash(sd_model)
    net = LoraNetwork.create(sd_model, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_(0.0, 0.2, generator=g)
    width = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features
    x, t, ctx_ = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 5, width, generator=g)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return unet(x, t, context=ctx_)

    base = run()
    with net.injected():
        net.multiplier = 0.8
        injected = run()
    path = save_lora(
        unused_path(ctx.out / "selftest-locon.safetensors"),
        net.kohya_state_dict(torch.float32),
        lora_metadata(net, output_name="selftest-locon"),
    )
    loaded = LoraNetwork.from_file(sd_model, path, multiplier=0.8)
    with loaded.injected():
        from_file = run()
    merged = merge(sd_model, load_lora(path)[0], 0.8)
    try:
        from_merge = run()
    finally:
        merged.unmerge()
    if not torch.equal(from_file, injected):
        raise ForgeError("a saved LoRA loaded back renders differently")
    if not torch.allclose(from_merge, injected, rtol=1e-4, atol=1e-4):
        raise ForgeError("merged LoRA weights render differently from the injected modules")
    if (injected - base).abs().max() < 1e-3:
        raise ForgeError("the LoRA did not change the UNet's output")
    if _state_hash(sd_model) != before or not torch.equal(run(), base):
        raise ForgeError("the model was not restored exactly after LoRA injection and merging")
    return f"{len(net.loras)} LoCon modules: injected == loaded == merged, model restored; {path.name}"


def _state_hash(model: Any) -> str:
    import torch

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
