"""extensions-builtin/Lora/networks.py: which LoRA files exist, and applying them to the model.

Discovery follows 1.10.1 (stems under --lora-dir and --lyco-dir-backcompat, `ss_output_name` as
alias, unknown names rescanned on use). Application maps kohya keys to the model's modules the way
`assign_network_names_to_compvis_modules` + `convert_diffusers_name_to_compvis` do, and merges
the plain LoRA type into the weights (eagerly; the WebUI merges in the next forward).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from modules import shared

available_networks: dict[str, NetworkOnDisk] = {}
available_network_aliases: dict[str, NetworkOnDisk] = {}
forbidden_network_aliases: dict[str, int] = {}
loaded_networks: list[Network] = []
not_found: list[str] = []
_backups: dict[Any, Any] = {}  # module -> original weight, while a network is merged


class NetworkOnDisk:
    def __init__(self, name: str, filename: str) -> None:
        self.name = name
        self.filename = filename
        self.metadata: dict[str, str] = {}
        self.is_safetensors = filename.lower().endswith(".safetensors")
        if self.is_safetensors:
            from safetensors import safe_open

            with safe_open(filename, framework="pt") as f:
                self.metadata = dict(f.metadata() or {})
        self.alias = self.metadata.get("ss_output_name", name)
        self.mtime = os.path.getmtime(filename)


class Network:
    def __init__(self, name: str, on_disk: NetworkOnDisk) -> None:
        self.name = name
        self.network_on_disk = on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.mtime = on_disk.mtime


def process_network_files(names: list[str] | None = None) -> None:
    candidates = []
    for folder in (shared.cmd_opts.lora_dir, shared.cmd_opts.lyco_dir_backcompat):
        candidates += list(shared.walk_files(folder, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    for filename in candidates:
        name = os.path.splitext(os.path.basename(filename))[0]
        if names and name not in names:
            continue
        entry = NetworkOnDisk(name, filename)
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names: list[str]) -> None:
    process_network_files(names)


def list_available_networks() -> None:
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()


# -- key mapping ---------------------------------------------------------------------------------

_RESNET = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


def _suffix(kind: str, suffix: str) -> str:
    if kind == "resnets":
        for k, v in _RESNET.items():
            if suffix.startswith(k):
                return v + suffix[len(k) :]
    return suffix


def convert_diffusers_name_to_compvis(key: str) -> str:
    """A UNet module part in diffusers naming -> the compvis name (SD1 layout); else unchanged."""
    m = re.match(r"lora_unet_(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        way, b, kind, i, suffix = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        index = 1 + 3 * b + i if way == "down" else 3 * b + i
        part = "input_blocks" if way == "down" else "output_blocks"
        return f"diffusion_model_{part}_{index}_{1 if kind == 'attentions' else 0}_{_suffix(kind, suffix)}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        kind, i, suffix = m.group(1), int(m.group(2)), m.group(3)
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * i}_{_suffix(kind, suffix)}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv(.*)", key)
    if m:
        return f"diffusion_model_input_blocks_{3 + 3 * int(m.group(1))}_0_op{m.group(2)}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv(.*)", key)
    if m:
        b = int(m.group(1))
        return f"diffusion_model_output_blocks_{2 + 3 * b}_{2 if b > 0 else 1}_conv{m.group(2)}"
    m = re.match(r"lora_unet_conv_in(.*)", key)
    if m:
        return f"diffusion_model_input_blocks_0_0{m.group(1)}"
    m = re.match(r"lora_unet_conv_out(.*)", key)
    if m:
        return f"diffusion_model_out_2{m.group(1)}"
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        return f"diffusion_model_time_embed_{2 * int(m.group(1)) - 2}{m.group(2)}"
    m = re.match(r"lora_te_text_model_(.+)", key)
    if m:
        return f"transformer_text_model_{m.group(1)}"
    m = re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key)  # SDXL bigG (OpenCLIP)
    if m:
        rest = m.group(2)
        if "mlp_fc1" in rest:
            rest = rest.replace("mlp_fc1", "mlp_c_fc")
        elif "mlp_fc2" in rest:
            rest = rest.replace("mlp_fc2", "mlp_c_proj")
        else:
            rest = rest.replace("self_attn", "attn")
        return f"1_model_transformer_resblocks_{m.group(1)}_{rest}"
    return key


def network_layer_mapping(sd_model: Any) -> dict[str, Any]:
    """assign_network_names_to_compvis_modules: dotted module paths with '.' -> '_'."""
    mapping = getattr(sd_model, "network_layer_mapping", None)
    if mapping is None:
        mapping = {}
        if getattr(sd_model, "is_sdxl", False):  # each hijacked embedder's modules, prefixed `i_`
            for i, embedder in enumerate(sd_model.conditioner.embedders):
                if not hasattr(embedder, "wrapped"):
                    continue
                for name, module in embedder.wrapped.named_modules():
                    mapping[f"{i}_{name.replace('.', '_')}"] = module
        else:
            te = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
            for name, module in te.named_modules():
                mapping[name.replace(".", "_")] = module
        for name, module in sd_model.model.named_modules():
            mapping[name.replace(".", "_")] = module
        sd_model.network_layer_mapping = mapping
    return mapping


def _find_module(mapping: dict[str, Any], key_module: str) -> tuple[str, Any]:
    converted = convert_diffusers_name_to_compvis(key_module)
    if converted in mapping:
        return converted, mapping[converted]
    m = re.match(r"(.*)_([qkv]_proj)$", converted)  # OpenCLIP's fused attention: q/k/v share one module
    if m and m.group(1) in mapping:
        return converted, mapping[m.group(1)]
    if "lora_unet" in key_module:  # SDXL files carry compvis names already
        alt = key_module.replace("lora_unet", "diffusion_model")
        if alt in mapping:
            return alt, mapping[alt]
    if "lora_te1_text_model" in key_module:
        for alt in (
            key_module.replace("lora_te1_text_model", "0_transformer_text_model"),  # SDXL CLIP-L
            key_module.replace("lora_te1_text_model", "transformer_text_model"),  # some SD1 files
        ):
            if alt in mapping:
                return alt, mapping[alt]
    return converted, None


# -- applying ------------------------------------------------------------------------------------


def _restore_all() -> None:
    import torch

    with torch.no_grad():
        for module, weight in _backups.items():
            target = module.in_proj_weight if isinstance(module, torch.nn.MultiheadAttention) else module.weight
            target.copy_(weight)
    _backups.clear()


def _merge(net: Network) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(net.network_on_disk.filename)
    mapping = network_layer_mapping(shared.sd_model)
    groups: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        module_part, _, network_part = key.partition(".")
        groups.setdefault(module_part, {})[network_part] = tensor
    unmatched = {}
    with torch.no_grad():
        for module_part, weights in groups.items():
            sd_key, module = _find_module(mapping, module_part)
            if module is None:
                unmatched[module_part] = sd_key
                continue
            if "lora_up.weight" not in weights or "lora_down.weight" not in weights:
                raise AssertionError(
                    f"Could not find a module type (out of lora) that would accept those keys: {', '.join(weights)}"
                )
            up, down = weights["lora_up.weight"].float(), weights["lora_down.weight"].float()
            scale = float(weights["alpha"]) / down.shape[0] if "alpha" in weights else 1.0
            mult = net.te_multiplier if "transformer" in sd_key[:20] else net.unet_multiplier
            delta = up.flatten(1) @ down.flatten(1)
            if isinstance(module, torch.nn.MultiheadAttention):  # q/k/v rows of the fused in_proj
                w = module.in_proj_weight
                if module not in _backups:
                    _backups[module] = w.detach().clone()
                slot = "qkv".index(sd_key[-6])
                rows = w.shape[0] // 3
                w[slot * rows : (slot + 1) * rows].add_((delta * scale * mult).to(w.dtype))
                continue
            w = module.weight
            delta = (
                delta.reshape(w.shape[0], *down.shape[1:])
                if w.dim() == 4 and down.dim() == 4
                else delta.reshape(w.shape)
            )
            if module not in _backups:
                _backups[module] = w.detach().clone()
            # as 1.10.1's network_apply_weights: added in the delta's dtype, stored in the weight's
            # (FP8 weights with the FP8 weight setting: the merged weight is rounded to FP8)
            w.copy_((w.to(delta.dtype) + delta * scale * mult).to(w.dtype))
    if unmatched:
        logging.debug(f"Network {net.network_on_disk.filename} didn't match keys: {unmatched}")


def _lookup(name: str) -> NetworkOnDisk | None:
    """By alias, except for aliases two files share: those resolve by file name."""
    if name.lower() in forbidden_network_aliases:
        return available_networks.get(name)
    return available_network_aliases.get(name)


def load_networks(
    names: list[str],
    te_multipliers: list[float] | None = None,
    unet_multipliers: list[float] | None = None,
    dyn_dims: list[Any] | None = None,
) -> None:
    unknown = [n for n in names if _lookup(n) is None]
    if unknown:
        update_available_networks_by_names(unknown)  # 1.10: only the names a prompt asks for
    if any(_lookup(n) is None for n in names):
        list_available_networks()
    _restore_all()
    loaded_networks.clear()
    not_found.clear()
    for i, name in enumerate(names):
        on_disk = _lookup(name)
        if on_disk is None:
            not_found.append(name)
            continue
        net = Network(name, on_disk)
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else None
        _merge(net)
        loaded_networks.append(net)


def network_restore_weights_from_backup(self: Any) -> None:
    """1.10.1: put a layer's CPU backup (made before its first in-place merge) back into the weights.
    The real extension merges lazily in each layer's forward and keeps `network_current_names` per
    layer; this stand-in merges eagerly, but a trainer may meet layers left in the lazy state."""
    weights_backup = getattr(self, "network_weights_backup", None)
    if weights_backup is None:
        return
    self.weight.copy_(weights_backup)
