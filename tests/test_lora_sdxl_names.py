"""SDXL naming on an SDXL-layout model, checked against the WebUI's SDXL rules.

The `sgm` package (SDXL's DiffusionEngine) is not part of the test stack, so the container is a
plain nn.Module with the attributes the WebUI's SDXL object has (`is_sdxl`, `conditioner.embedders`
= [CLIP-L with `.transformer`, OpenCLIP bigG with `.model.transformer`], `model.diffusion_model`),
holding real parts at tiny widths: the `ldm` UNetModel in SDXL's layout (no attention at the
first level, 2 transformer blocks, Linear projections, upsamplers at `output_blocks.2.2` and
`5.2`), an HF CLIPTextModel and an open_clip text Transformer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_forge.lora import LoraNetwork, load_lora, lora_metadata, merge, save_lora
from tests.test_lora_webui_names import ATTN_CHILDREN, webui_convert, webui_find

WIDTH = 32


class ClipL(nn.Module):
    def __init__(self) -> None:
        from transformers import CLIPTextConfig, CLIPTextModel

        super().__init__()
        config = CLIPTextConfig(
            hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000
        )
        self.transformer = CLIPTextModel(config)
        self.tokenizer = None


class BigG(nn.Module):
    def __init__(self) -> None:
        from open_clip.transformer import Transformer

        super().__init__()
        self.model = nn.Module()
        self.model.transformer = Transformer(width=WIDTH, layers=3, heads=4)


@pytest.fixture(scope="module")
def sdxl_model():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    sd = nn.Module()
    sd.is_sdxl = True
    sd.conditioner = nn.Module()
    sd.conditioner.embedders = nn.ModuleList([ClipL(), BigG()])
    sd.model = nn.Module()
    sd.model.diffusion_model = UNetModel(
        image_size=8,
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=2,
        attention_resolutions=[2, 4],
        channel_mult=[1, 2, 4],
        num_head_channels=8,
        use_spatial_transformer=True,
        transformer_depth=2,
        context_dim=[WIDTH, WIDTH],
        use_linear_in_transformer=True,
        legacy=False,
    )
    return sd.eval()


def webui_sdxl_mapping(sd) -> dict[str, nn.Module]:
    """`assign_network_names_to_compvis_modules` for SDXL: embedder i's modules prefixed `i_`."""
    mapping = {}
    for i, embedder in enumerate(sd.conditioner.embedders):
        for name, module in getattr(embedder, "wrapped", embedder).named_modules():
            mapping[f"{i}_{name.replace('.', '_')}"] = module
    for name, module in sd.model.named_modules():
        mapping[name.replace(".", "_")] = module
    return mapping


def expected_layers(sd) -> set[int]:
    unet = sd.model.diffusion_model
    layers = []
    for layer in sd.conditioner.embedders[0].transformer.text_model.encoder.layers:
        sa = layer.self_attn
        layers += [sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, layer.mlp.fc1, layer.mlp.fc2]
    for block in sd.conditioner.embedders[1].model.transformer.resblocks:  # SDXL trains all bigG blocks
        layers += [block.attn, block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj]
    for module in unet.modules():
        kind = type(module).__name__
        if kind == "SpatialTransformer":
            layers += [module.proj_in, module.proj_out]
            for tb in module.transformer_blocks:
                layers += [a.get_submodule(c) for a in (tb.attn1, tb.attn2) for c in ATTN_CHILDREN]
                layers += [tb.ff.net[0].proj, tb.ff.net[2]]
        elif kind == "ResBlock":
            layers += [module.in_layers[2], module.out_layers[3], module.emb_layers[1]]
            if isinstance(module.skip_connection, nn.Conv2d):
                layers.append(module.skip_connection)
        elif kind == "Downsample":
            layers.append(module.op)
        elif kind == "Upsample":
            layers.append(module.conv)
    return {id(m) for m in layers}


def test_sdxl_locon_keys_reach_their_layers_under_webui_rules(sdxl_model, tmp_path):
    net = LoraNetwork.create(sdxl_model, rank=4, alpha=1.0, conv_rank=2)
    meta = lora_metadata(net, output_name="xl", resolution=(1024, 1024))
    path = save_lora(tmp_path / "xl.safetensors", net.kohya_state_dict(), meta)
    tensors, meta = load_lora(path)
    mapping = webui_sdxl_mapping(sdxl_model)
    names = sorted({k.partition(".")[0] for k in tensors})
    found, unmatched = set(), []
    for name in names:
        mapped, layer, _ = webui_find(name, mapping, is_sd2=False)
        if layer is None:
            unmatched.append(name)
            continue
        found.add(id(layer))
        assert ("transformer" in mapped[:20]) == name.startswith(("lora_te1_", "lora_te2_")), name
    assert unmatched == []
    assert found == expected_layers(sdxl_model)
    # SDXL names are the LDM paths; the upsampler of the first up block sits at output_blocks.2.2
    assert "lora_unet_output_blocks_2_2_conv" in names
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k" in names
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block")) for n in names)
    # ... which is why the diffusers form must not be written for SDXL: the WebUI would aim it wrong
    assert webui_convert("lora_unet_up_blocks_0_upsamplers_0_conv", False) == "diffusion_model_output_blocks_2_1_conv"
    assert not isinstance(mapping.get("diffusion_model_output_blocks_2_1_conv"), nn.Conv2d)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"


def test_sdxl_text_encoder_2_lora_equals_merged(sdxl_model):
    net = LoraNetwork.create(sdxl_model, rank=4, alpha=2.0, train_unet=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_(0.0, 0.3, generator=g)
    transformer = sdxl_model.conditioner.embedders[1].model.transformer
    x = torch.randn(5, 2, WIDTH, generator=g)  # sequence-first, as sgm's embedder calls it
    mask = torch.full((5, 5), float("-inf")).triu(1)

    def run():
        with torch.no_grad():
            return transformer(x, attn_mask=mask)

    base = run()
    with net.injected():
        net.multiplier = torch.tensor([0.0, 0.9])
        injected = run()
    merged = merge(sdxl_model, net.kohya_state_dict(torch.float32), 0.9)
    try:
        merged_out = run()
    finally:
        merged.unmerge()
    torch.testing.assert_close(injected[:, 0], base[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(injected[:, 1], merged_out[:, 1], rtol=1e-4, atol=1e-4)
    assert (injected[:, 1] - base[:, 1]).abs().max() > 1e-2
    assert torch.equal(run(), base)
