"""The SDXL test stack: the tiny SDXL model is the WebUI's pinned `sgm` object at toy widths.

CI has no WebUI `repositories/`, so `sgm` comes from imaginAIry's fork through
`lora_forge.host.sgm_compat`. The fingerprints below were taken from the same tiny config built with
Stability-AI/generative-models at the WebUI's pin (45c443b): every state-dict key with its shape, and
every module path with its class name (the only difference, the VAE's parameter-free
`regularization`, is left out). Any drift of the fork, the shim or the tiny builder away from the
real classes changes them.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

PINNED_KEYS_SHA256 = "3568a35d5b9f3230cf725032116b0e329fd714135ed444050043d975f37ad450"
PINNED_MODULES_SHA256 = "8ea52949208270147ea13c8a1657e6ef22884d8e95236fe112430afa19e861a5"


@pytest.fixture(scope="module")
def built(tiny_sdxl_files):
    from safetensors.torch import load_file

    from lora_forge.host.ldm_build import instantiate, load_config

    model = instantiate(load_config(tiny_sdxl_files.config), on_meta=False)
    state = load_file(str(tiny_sdxl_files.checkpoint))
    model.load_state_dict(state, strict=True)  # the WebUI loads strict=False: prove the layout once
    return model.eval(), state


def test_keys_and_modules_are_the_pinned_sgm_ones(built):
    model, state = built
    keys = "\n".join(f"{k} {list(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(keys.encode()).hexdigest() == PINNED_KEYS_SHA256
    modules = "\n".join(
        f"{n} {type(m).__name__}" for n, m in sorted(model.named_modules()) if n != "first_stage_model.regularization"
    )
    assert hashlib.sha256(modules.encode()).hexdigest() == PINNED_MODULES_SHA256


def test_sdxl_layout(built):
    model, state = built
    unet = model.model.diffusion_model
    assert type(model).__name__ == "DiffusionEngine" and type(model.model).__name__ == "OpenAIWrapper"
    assert len(unet.input_blocks) == 9 and len(unet.output_blocks) == 9
    # no attention at the first level, then transformer depth 1 and 2 (SDXL: 2 and 10)
    depth = {
        i: len(b[1].transformer_blocks)
        for i, b in enumerate(unet.input_blocks)
        if len(b) > 1 and hasattr(b[1], "transformer_blocks")
    }
    assert depth == {4: 1, 5: 1, 7: 2, 8: 2}
    assert isinstance(unet.input_blocks[4][1].proj_in, torch.nn.Linear)
    assert unet.output_blocks[2][2].__class__.__name__ == "Upsample"
    # the `vector` path: bigG pooled + original size, crop offset, target size → label_emb
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 32 + 3 * 2 * 32
    kinds = [type(e).__name__ for e in model.conditioner.embedders]
    assert kinds == ["FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder2"] + ["ConcatTimestepEmbedderND"] * 3
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in state
    assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in state
    assert "conditioner.embedders.1.model.text_projection" in state
    assert model.scale_factor == pytest.approx(0.13025)


def test_kohya_module_counts(built):
    """72 CLIP-L + 192 bigG text targets, as in kohya's log of a full-size SDXL run."""
    from lora_forge.model.targets import find_targets

    model, _ = built
    targets = find_targets(model)
    te1 = [t for t in targets if t.name.startswith("lora_te1_")]
    te2 = [t for t in targets if t.name.startswith("lora_te2_")]
    assert (len(te1), len(te2)) == (72, 192)
    assert "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k" in {t.name for t in targets}


def test_conditioning_uses_both_encoders_and_the_sizes(built):
    """The conditioner concatenates CLIP-L (32 wide) and bigG (48 wide) and puts the sizes into `vector`."""
    model, _ = built
    for e in model.conditioner.embedders[:2]:
        e.device = "cpu"
    batch = {
        "txt": ["a photo of a cat"] * 2,
        "original_size_as_tuple": torch.tensor([[1024, 768], [512, 512]]),
        "crop_coords_top_left": torch.tensor([[0, 0], [0, 0]]),
        "target_size_as_tuple": torch.tensor([[1024, 1024], [1024, 1024]]),
    }
    with torch.no_grad():
        c = model.conditioner(batch)
    assert c["crossattn"].shape == (2, 77, 80) and c["vector"].shape == (2, 224)
    assert torch.equal(c["crossattn"][0], c["crossattn"][1])
    assert torch.equal(c["vector"][0, :32], c["vector"][1, :32])  # same pooled text
    assert not torch.equal(c["vector"][0, 32:96], c["vector"][1, 32:96])  # different original size
