"""SD2 (tiny real `ldm` model with an OpenCLIP text encoder): the fused-attention LoRA path.

OpenCLIP's `nn.MultiheadAttention` reads its fused `in_proj_weight` directly, so q/k/v/out LoRA
cannot ride on a Linear forward; we run the attention unfused. These tests check it against
merged weights (q/k/v rows of `in_proj_weight`, `out_proj.weight`) and check the names against
the WebUI's SD2 rules (`self_attn`→`attn`, `mlp_fc1`→`mlp_c_fc`, `re_x_proj` → the MHA).
"""

from __future__ import annotations

import pytest
import torch

from lora_forge.errors import ForgeError
from lora_forge.lora import LoraNetwork, load_lora, lora_metadata, merge, save_lora
from tests.test_lora_webui_names import webui_find, webui_layer_mapping

pytestmark = pytest.mark.slow  # builds its own tiny SD2 model (~10-25 s on a shared machine)
PROMPTS = ["a photo of a cat", "a dog on a red sofa"]
TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def sd2_model(tmp_path_factory):
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd2

    files = build_tiny_sd2(tmp_path_factory.mktemp("tiny-sd2"), v=True, seed=0)
    return StandaloneHost(files.checkpoint, lora_dir=tmp_path_factory.mktemp("sd2-lora")).sd_model()


def randomized(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_(0.0, 0.3, generator=g)
    return net


def encode(model, prompts=PROMPTS):
    with torch.no_grad():
        return model.cond_stage_model(prompts)


def test_fused_attention_lora_equals_merged_weights(sd2_model):
    net = randomized(LoraNetwork.create(sd2_model, rank=4, alpha=2.0, train_unet=False))
    assert {lora.target.kind for lora in net.loras} == {"mha", "linear"}
    base = encode(sd2_model)
    with net.injected():
        net.multiplier = 0.0
        zero = encode(sd2_model)
        net.multiplier = 0.7
        injected = encode(sd2_model)
        net.multiplier = torch.tensor([0.7, 0.0])  # OpenCLIP runs sequence-first: batch is dim 1 inside
        per_sample = encode(sd2_model)
    torch.testing.assert_close(zero, base, **TOL)  # our unfused attention is the same attention
    assert (injected - base).abs().max() > 1e-2
    torch.testing.assert_close(per_sample[0], injected[0], **TOL)
    torch.testing.assert_close(per_sample[1], base[1], **TOL)
    merged = merge(sd2_model, net.kohya_state_dict(torch.float32), 0.7)
    try:
        merged_out = encode(sd2_model)
    finally:
        merged.unmerge()
    torch.testing.assert_close(injected, merged_out, **TOL)
    assert torch.equal(encode(sd2_model), base)
    for _, m in sd2_model.named_modules():
        assert "forward" not in m.__dict__


def test_sd2_keys_reach_their_layers_under_webui_rules(sd2_model, tmp_path):
    net = LoraNetwork.create(sd2_model, rank=4, alpha=1.0)
    path = save_lora(tmp_path / "sd2.safetensors", net.kohya_state_dict(), lora_metadata(net, output_name="sd2"))
    tensors, meta = load_lora(path)
    mapping = webui_layer_mapping(sd2_model)
    embedder = sd2_model.cond_stage_model
    used = embedder.model.transformer.resblocks[: len(embedder.model.transformer.resblocks) - embedder.layer_idx]
    expected = {id(m) for m in sd2_model.model.diffusion_model.modules() if type(m).__name__ == "SpatialTransformer"}
    expected_te = set()
    for block in used:  # the MHA takes q/k/v; out_proj, c_fc and c_proj are Linear layers
        expected_te |= {id(block.attn), id(block.attn.out_proj), id(block.mlp.c_fc), id(block.mlp.c_proj)}
    found_te, unet_modules, unmatched = set(), 0, []
    for name in sorted({k.partition(".")[0] for k in tensors}):
        mapped, layer, _ = webui_find(name, mapping, is_sd2=True)
        if layer is None:
            unmatched.append(name)
        elif name.startswith("lora_te_"):
            assert "transformer" in mapped[:20]
            found_te.add(id(layer))
        else:
            unet_modules += 1
    assert unmatched == []
    assert found_te == expected_te
    assert unet_modules == 12 * len(expected) == 192
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v"
    assert "ss_network_args" not in meta  # omitted when empty, as kohya does


def test_an_sd1_lora_is_refused_on_sd2_naming_sd1(sd2_model, tiny_host, tmp_path):
    sd1 = tiny_host.sd_model()
    net = LoraNetwork.create(sd1, rank=4, alpha=1.0)
    path = save_lora(tmp_path / "sd1.safetensors", net.kohya_state_dict(), lora_metadata(net, output_name="x"))
    with pytest.raises(ForgeError, match=r"made for SD1\.x.*SD2\.x 768-v"):
        LoraNetwork.from_file(sd2_model, path)
