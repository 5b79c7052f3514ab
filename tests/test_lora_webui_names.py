"""Every key of a saved file reaches the right layer under the WebUI's own Lora name rules.

The rules are re-implemented HERE from the facts sheet (webui-internals.md §3.2–3.3: A1111
1.10.1 `networks.convert_diffusers_name_to_compvis`, the `re_x_proj` and `lora_unet` →
`diffusion_model` fallbacks, and `assign_network_names_to_compvis_modules`), on purpose not
shared with the product code, so a naming mistake there cannot hide itself. The expected set of
layers is likewise listed from the model's structure by explicit child names.
"""

from __future__ import annotations

import re

import pytest
import torch

from lora_forge.lora import LoraNetwork, load_lora, save_lora

# ---- the WebUI's rules (A1111 1.10.1 extensions-builtin/Lora/networks.py), as the facts sheet gives them
RE_DIGITS = re.compile(r"\d+")
RE_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")
SUFFIX_CONVERSION = {
    "attentions": {},
    "resnets": {
        "conv1": "in_layers_2",
        "conv2": "out_layers_3",
        "norm1": "in_layers_0",
        "norm2": "out_layers_0",
        "time_emb_proj": "emb_layers_1",
        "conv_shortcut": "skip_connection",
    },
}


def webui_convert(key: str, is_sd2: bool) -> str:
    def match(regex: str) -> list | None:
        r = re.match(regex, key)
        return [int(x) if RE_DIGITS.match(x) else x for x in r.groups()] if r else None

    if m := match(r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{m[0]}"
    if m := match(r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{m[0]}"
    if m := match(r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{m[0] * 2 - 2}{m[1]}"
    if m := match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_input_blocks_{1 + m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        suffix = SUFFIX_CONVERSION.get(m[0], {}).get(m[2], m[2])
        return f"diffusion_model_middle_block_{1 if m[0] == 'attentions' else m[1] * 2}_{suffix}"
    if m := match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_output_blocks_{m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + m[0] * 3}_0_op"
    if m := match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):
        return f"diffusion_model_output_blocks_{2 + m[0] * 3}_{2 if m[0] > 0 else 1}_conv"
    if m := match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"):
        if is_sd2:
            if "mlp_fc1" in m[1]:
                return f"model_transformer_resblocks_{m[0]}_{m[1].replace('mlp_fc1', 'mlp_c_fc')}"
            if "mlp_fc2" in m[1]:
                return f"model_transformer_resblocks_{m[0]}_{m[1].replace('mlp_fc2', 'mlp_c_proj')}"
            return f"model_transformer_resblocks_{m[0]}_{m[1].replace('self_attn', 'attn')}"
        return f"transformer_text_model_encoder_layers_{m[0]}_{m[1]}"
    if m := match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)"):
        if "mlp_fc1" in m[1]:
            return f"1_model_transformer_resblocks_{m[0]}_{m[1].replace('mlp_fc1', 'mlp_c_fc')}"
        if "mlp_fc2" in m[1]:
            return f"1_model_transformer_resblocks_{m[0]}_{m[1].replace('mlp_fc2', 'mlp_c_proj')}"
        return f"1_model_transformer_resblocks_{m[0]}_{m[1].replace('self_attn', 'attn')}"
    return key


def webui_layer_mapping(sd_model) -> dict[str, torch.nn.Module]:
    """`assign_network_names_to_compvis_modules` for SD1/SD2: the text encoder's modules (through
    the hijack's `.wrapped` when there is one), then those of `sd_model.model`, dots → underscores."""
    mapping = {}
    te = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
    for name, module in te.named_modules():
        mapping[name.replace(".", "_")] = module
    for name, module in sd_model.model.named_modules():
        mapping[name.replace(".", "_")] = module
    return mapping


def webui_find(key_module: str, mapping: dict, is_sd2: bool) -> tuple[str, torch.nn.Module | None, bool]:
    """(mapped name, layer, whether a fallback was needed), in `load_network`'s lookup order."""
    key = webui_convert(key_module, is_sd2)
    module = mapping.get(key)
    if module is None and (m := RE_X_PROJ.match(key)):
        module = mapping.get(m.group(1))
        if module is not None:
            return m.group(1), module, False
    if module is None and "lora_unet" in key_module:
        key = key_module.replace("lora_unet", "diffusion_model")
        return key, mapping.get(key), True
    if module is None and "lora_te1_text_model" in key_module:
        for new in ("0_transformer_text_model", "transformer_text_model"):
            key = key_module.replace("lora_te1_text_model", new)
            if key in mapping:
                return key, mapping[key], True
    return key, module, False


# ---- the layers kohya trains, listed from the model's structure by explicit child names
ATTN_CHILDREN = ("to_q", "to_k", "to_v", "to_out.0")


def expected_layers(sd_model, locon: bool) -> list[torch.nn.Module]:
    unet = sd_model.model.diffusion_model
    layers = []
    te = sd_model.cond_stage_model.transformer.text_model
    for layer in te.encoder.layers:
        sa = layer.self_attn
        layers += [sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, layer.mlp.fc1, layer.mlp.fc2]
    for module in unet.modules():
        kind = type(module).__name__
        if kind == "SpatialTransformer":
            layers += [module.proj_in, module.proj_out]
            for block in module.transformer_blocks:
                for attn in (block.attn1, block.attn2):
                    layers += [attn.get_submodule(c) for c in ATTN_CHILDREN]
                layers += [block.ff.net[0].proj, block.ff.net[2]]
        elif locon and kind == "ResBlock":
            layers += [module.in_layers[2], module.out_layers[3], module.emb_layers[1]]
            if isinstance(module.skip_connection, torch.nn.Conv2d):
                layers.append(module.skip_connection)
        elif locon and kind == "Downsample":
            layers.append(module.op)
        elif locon and kind == "Upsample":
            layers.append(module.conv)
    return layers


@pytest.fixture(scope="module")
def sd_model(tiny_host):
    return tiny_host.sd_model()


def check_file_against_webui(sd_model, path, locon: bool) -> dict[str, str]:
    tensors, _ = load_lora(path)
    mapping = webui_layer_mapping(sd_model)
    modules = sorted({k.partition(".")[0] for k in tensors})
    unmatched, fallbacks, found, by_name = [], [], {}, {}
    for name in modules:
        mapped, layer, fallback = webui_find(name, mapping, is_sd2=False)
        if layer is None:
            unmatched.append(name)
            continue
        if fallback:
            fallbacks.append(name)
        assert id(layer) not in found, f"two keys reach the same layer: {name}"
        found[id(layer)] = mapped
        by_name[name] = mapped
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        if isinstance(layer, torch.nn.Linear):
            assert down.shape == (down.shape[0], layer.in_features) and up.shape == (layer.out_features, down.shape[0])
        else:
            assert isinstance(layer, torch.nn.Conv2d), name
            assert down.shape[1:] == (layer.in_channels, *layer.kernel_size) and up.shape[:1] == (layer.out_channels,)
        # the WebUI's TE/UNet split for <lora:name:te:unet>
        assert ("transformer" in mapped[:20]) == name.startswith("lora_te_"), name
    assert unmatched == []
    assert fallbacks == []  # SD1 names are kohya's diffusers form, resolved by the regex table itself
    expected = expected_layers(sd_model, locon)
    assert len({id(m) for m in expected}) == len(expected)
    unmapped = [m for m in expected if id(m) not in found]
    assert unmapped == [] and len(found) == len(expected)
    return by_name


def test_lora_keys_all_reach_their_layer_under_webui_rules(sd_model, tmp_path):
    net = LoraNetwork.create(sd_model, rank=4, alpha=1.0)
    path = save_lora(tmp_path / "plain.safetensors", net.kohya_state_dict(), {})
    mapped = check_file_against_webui(sd_model, path, locon=False)
    assert sum(k.startswith("lora_unet_") for k in mapped) == 192
    assert sum(k.startswith("lora_te_") for k in mapped) == 72
    for key in (
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_te_text_model_encoder_layers_11_mlp_fc2",
    ):
        assert key in mapped  # examples of kohya SD1 keys from the facts sheet


def test_locon_keys_all_reach_their_layer_under_webui_rules(sd_model, tmp_path):
    net = LoraNetwork.create(sd_model, rank=4, alpha=1.0, conv_rank=2, conv_alpha=1.0)
    path = save_lora(tmp_path / "locon.safetensors", net.kohya_state_dict(), {})
    mapped = check_file_against_webui(sd_model, path, locon=True)
    unet = sd_model.model.diffusion_model
    resblocks = [m for m in unet.modules() if type(m).__name__ == "ResBlock"]
    shortcuts = sum(isinstance(m.skip_connection, torch.nn.Conv2d) for m in resblocks)
    samplers = sum(type(m).__name__ in ("Downsample", "Upsample") for m in unet.modules())
    assert sum(k.startswith("lora_unet_") for k in mapped) == 192 + 3 * len(resblocks) + shortcuts + samplers
    assert 192 + 3 * len(resblocks) + shortcuts + samplers == 278  # the kohya SD1.x LoCon count
    assert "lora_unet_down_blocks_1_resnets_0_conv_shortcut" in mapped
    assert mapped["lora_unet_up_blocks_0_upsamplers_0_conv"] == "diffusion_model_output_blocks_2_1_conv"
