"""Selftest stage: the inspector on the tiny checkpoint, on a LoCon file we write with real SD1
layer names, and on a pickle whose payload would create a file (it must not)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

# (kohya module, input width, output width, kernel) — a slice of a real SD1.5 LoCon's modules
_MODULES = [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320, 0),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320, 0),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320, 1),
    ("lora_unet_down_blocks_0_resnets_0_conv1", 320, 320, 3),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, 0),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", 768, 3072, 0),
]


class _CreatesFile:
    """A pickle payload that creates a file when unpickled by anything that runs code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


def write_locon(path: Path, rank: int = 8, conv_rank: int = 4) -> None:
    import torch
    from safetensors.torch import save_file

    sd = {}
    for name, fan_in, fan_out, kernel in _MODULES:
        r = conv_rank if kernel == 3 else rank
        down = (r, fan_in, kernel, kernel) if kernel else (r, fan_in)
        up = (fan_out, r, 1, 1) if kernel else (fan_out, r)
        sd[f"{name}.lora_down.weight"] = torch.randn(down).half()
        sd[f"{name}.lora_up.weight"] = torch.zeros(up).half()
        sd[f"{name}.alpha"] = torch.tensor(1.0 if kernel == 3 else rank / 2).half()
    meta = {
        "ss_base_model_version": "sd_v1",
        "ss_output_name": path.stem,
        "ss_steps": "120",
        "ss_resolution": "(512, 512)",
        "ss_dataset_dirs": json.dumps({"10_selftest": {"n_repeats": 10, "img_count": 12}}),
        "ss_tag_frequency": json.dumps({"10_selftest": {"1girl": 12, "smile": 7, "outdoors": 3}}),
    }
    save_file(sd, str(path), metadata=meta)


def selftest(ctx: Any) -> str:
    from lora_forge.fsio import unused_path
    from lora_forge.inspect import inspect_paths

    folder = unused_path(ctx.out / "inspect")
    folder.mkdir(parents=True)
    lora = folder / "selftest-locon.safetensors"
    write_locon(lora)
    trap = folder / "created-by-payload.txt"
    evil = folder / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _CreatesFile(trap)}, protocol=2))
    files = [lora, evil]
    tiny = ctx.shared.get("tiny")
    if tiny is not None:
        files.insert(0, tiny.checkpoint)
    reports = {Path(r.path).name: r for r in inspect_paths(files)}
    for r in reports.values():
        ctx.log(f"{Path(r.path).name}: {r.error or r.title}")

    got = reports[lora.name]
    want = {"base": "sd1", "rank": [8], "conv_rank": [4], "alpha": [4], "conv_alpha": [1]}
    if got.kind != "lora" or any(got.details.get(k) != v for k, v in want.items()):
        raise ForgeError(f"inspector misread the LoCon file: {got.title} {got.details}")
    if got.details.get("top_tags", [[None]])[0][0] != "1girl":
        raise ForgeError("inspector lost the LoCon file's tag frequencies")
    if trap.exists() or "unsafe pickle" not in (reports[evil.name].error or ""):
        raise ForgeError("inspector did not refuse a pickle that runs code")
    if tiny is not None and reports[tiny.checkpoint.name].details.get("family") != "sd1":
        raise ForgeError(f"inspector misread the tiny checkpoint: {reports[tiny.checkpoint.name].title}")
    what = "tiny checkpoint, " if tiny is not None else ""
    return f"recognised {what}a LoCon (rank 8, conv rank 4, SD1) and refused a code-running pickle"
