"""The model inspector on real files of every type it names, and on every kind of bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from lora_forge.inspect import inspect_file, render_markdown, render_text
from tests import inspect_builders as b

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sd1_shapes():
    return b.sd1_checkpoint_shapes()


# ------------------------------------------------------------------------------------- checkpoints


def test_tiny_checkpoint_is_sd1_with_its_yaml(tiny_files):
    r = inspect_file(tiny_files.checkpoint)
    assert r.error is None and r.kind == "checkpoint"
    assert r.details["family"] == "sd1" and r.details["prediction"] == "eps"
    assert r.details["yaml"] == tiny_files.config.name
    assert all(r.details["components"][c] > 0 for c in ("unet", "vae", "text_encoder"))
    assert r.container == "safetensors" and "SD1" in r.title


@pytest.fixture(scope="module")
def tiny_sd2_v(tmp_path_factory):
    from lora_forge.host.tiny import build_tiny_sd2

    return build_tiny_sd2(tmp_path_factory.mktemp("tiny-sd2"), v=True)


def test_sd2_prediction_comes_from_the_yaml_beside_it_or_is_left_open(tiny_sd2_v, tmp_path):
    with_yaml = inspect_file(tiny_sd2_v.checkpoint)
    assert with_yaml.details["family"] == "sd2" and with_yaml.details["prediction"] == "v"
    assert "768-v" in with_yaml.title

    bare = tmp_path / "bare.safetensors"
    shutil.copy(tiny_sd2_v.checkpoint, bare)
    r = inspect_file(bare)
    assert r.details["prediction"] == "eps or v" and "eps or v" in r.title
    assert any("yaml" in n and "test" in n for n in r.notes)  # says how the WebUI decides

    eps = tmp_path / "eps.safetensors"
    shutil.copy(tiny_sd2_v.checkpoint, eps)
    yaml_text = tiny_sd2_v.config.read_text(encoding="utf-8")
    eps.with_suffix(".yaml").write_text(yaml_text.replace("parameterization: v", "# eps"), encoding="utf-8")
    assert "parameterization: v" in yaml_text
    assert inspect_file(eps).details["prediction"] == "eps"


@pytest.mark.parametrize("zip_format", [True, False])
def test_old_lightning_ckpt_is_read_without_running_lightning_code(tiny_files, tmp_path, zip_format):
    """SD1.4-era `.ckpt` files pickle a Lightning ModelCheckpoint beside the weights; the WebUI loads
    them, so we read them too, with the callback rebuilt as an inert object."""
    import torch
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint
    from safetensors.torch import load_file

    state = {"state_dict": load_file(tiny_files.checkpoint), "global_step": 470000, "epoch": 6}
    state["callbacks"] = {ModelCheckpoint: {"best_model_score": None, "dirpath": "/fsx/logs/checkpoints"}}
    path = tmp_path / "sd-v1-4.ckpt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    r = inspect_file(path)
    assert r.error is None, r.error
    assert r.kind == "checkpoint" and r.details["family"] == "sd1" and r.details["global_step"] == 470000
    assert r.container == ("pickle (zip)" if zip_format else "pickle (legacy)")


def _xl(unet: dict, refiner: bool = False) -> dict:
    te = b.open_clip_shapes("conditioner.embedders.0.model." if refiner else "conditioner.embedders.1.model.", 1280, 32)
    if not refiner:
        te |= b.clip_l_shapes("conditioner.embedders.0.transformer.")
    return unet | te | b.ldm_vae_shapes()


@pytest.mark.parametrize(
    ("name", "family", "words"),
    [
        ("sd1-inpaint", "sd1-inpaint", "inpainting"),
        ("sd2", "sd2", "eps or v"),
        ("sdxl", "sdxl", "SDXL base"),
        ("sdxl-refiner", "sdxl-refiner", "SDXL refiner"),
        ("sdxl-inpaint", "sdxl-inpaint", "SDXL inpainting"),
    ],
)
def test_checkpoint_families_under_real_key_names(tmp_path, sd1_shapes, name, family, words):
    shapes = {
        "sd1-inpaint": lambda: sd1_shapes | {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)},
        "sd2": b.sd2_checkpoint_shapes,
        "sdxl": lambda: _xl(b.sdxl_unet_shapes()),
        "sdxl-refiner": lambda: _xl(b.sdxl_unet_shapes(context=1280, refiner=True), refiner=True),
        "sdxl-inpaint": lambda: _xl(b.sdxl_unet_shapes(in_channels=9)),
    }[name]()
    path = tmp_path / f"{name}.safetensors"
    b.write_small(path, b.stand_in(shapes))
    r = inspect_file(path)
    assert r.kind == "checkpoint", r.title
    assert r.details["family"] == family
    assert words in r.title


def test_a_2gb_checkpoint_is_recognised_from_its_header_alone(tmp_path, sd1_shapes):
    path = tmp_path / "v1-5-pruned-emaonly.safetensors"
    size = b.write_sparse_safetensors(path, sd1_shapes)
    assert size > 2_000_000_000
    before = _bytes_read()
    r = inspect_file(path)
    read = _bytes_read() - before
    assert r.kind == "checkpoint" and r.details["family"] == "sd1"
    assert r.details["unet_parameters"] == 859_520_964  # SD1.5's published UNet size
    assert r.details["dtype"] == ["float16"] and r.size == size
    assert read < 2_000_000, f"read {read} bytes of a {size}-byte file"


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# ------------------------------------------------------------------------------------------- LoRAs


def test_kohya_lora_sd1(tmp_path):
    path = tmp_path / "mychar.safetensors"
    b.write_kohya(path, b.sd1_lora_modules(), rank=16, alpha=8, metadata=b.kohya_metadata())
    r = inspect_file(path)
    d = r.details
    assert r.kind == "lora" and d["network"] == "LoRA" and d["format"] == "kohya"
    assert d["base"] == "sd1" and d["rank"] == [16] and d["alpha"] == [8] and d["conv_rank"] == []
    assert d["modules"] == {"unet": 192, "text_encoder": 72}
    assert d["dtype"] == ["float16"]
    assert d["steps"] == 1500 and d["epochs"] == 10 and d["resolution"] == "512x512"
    assert d["dataset_images"] == 30 and d["num_train_images"] == 300
    assert d["top_tags"][:2] == [["1girl", 30], ["solo", 28]]
    assert d["trigger_words"] == ["mychar"] and d["output_name"] == "mychar"
    assert d["sshs_model_hash"] == "ab" * 32
    text = render_text(r)
    assert "192 UNet + 72 text encoder" in text and "1girl (30)" in text


def test_locon_sd1_reports_conv_rank_separately(tmp_path):
    path = tmp_path / "locon.safetensors"
    mods = b.sd1_lora_modules() + b.sd1_locon_extra_modules()
    b.write_kohya(path, mods, rank=16, alpha=8, conv_rank=8, conv_alpha=1, metadata=b.kohya_metadata(
        ss_network_args=json.dumps({"conv_dim": "8", "conv_alpha": "1"})))  # fmt: skip
    d = inspect_file(path).details
    assert d["network"] == "LoCon" and d["base"] == "sd1"
    assert d["modules"] == {"unet": 278, "text_encoder": 72}  # kohya: 192 + 86 conv modules
    assert d["rank"] == [16] and d["alpha"] == [8] and d["conv_rank"] == [8] and d["conv_alpha"] == [1]
    assert d["network_args"] == {"conv_dim": "8", "conv_alpha": "1"}


def test_lora_with_mixed_ranks_and_no_alpha_and_no_metadata(tmp_path):
    path = tmp_path / "resized.safetensors"
    mods = b.sd1_lora_modules()
    b.write_kohya(path, mods[:100], rank=8, alpha=None)
    part = tmp_path / "part.safetensors"
    b.write_kohya(part, mods[100:], rank=4, alpha=None)
    from safetensors.torch import load_file, save_file

    save_file(load_file(path) | load_file(part), str(path))
    r = inspect_file(path)
    assert r.details["rank"] == [4, 8] and r.details["alpha"] == []
    assert r.details["base"] == "sd1" and "top_tags" not in r.details
    assert any("scale 1" in n for n in r.notes)


def test_sdxl_kohya_lora_with_stale_metadata(tmp_path):
    mods = []
    for block, depth in ((4, 2), (7, 10)):
        for t in range(depth):
            pre = f"lora_unet_input_blocks_{block}_1_transformer_blocks_{t}"
            mods += [(f"{pre}_attn2_to_k", 2048, 640, 0), (f"{pre}_attn1_to_q", 640, 640, 0)]
    for layer in range(2):
        mods += [(f"lora_te1_text_model_encoder_layers_{layer}_self_attn_q_proj", 768, 768, 0)]
        mods += [(f"lora_te2_text_model_encoder_layers_{layer}_self_attn_q_proj", 1280, 1280, 0)]
    path = tmp_path / "xl.safetensors"
    b.write_kohya(path, mods, rank=32, alpha=16, metadata={"ss_base_model_version": "sd_v1"})
    r = inspect_file(path)
    assert r.details["base"] == "sdxl" and "SDXL" in r.title
    assert r.details["modules"] == {"unet": 24, "text_encoder": 4, "te1": 2, "te2": 2}
    assert any("metadata says SD1" in n for n in r.notes)


def test_lycoris_loha_and_lokr(tmp_path):
    import torch
    from safetensors.torch import save_file

    loha, lokr = {}, {}
    for block, ch in b.SD1_ATTENTIONS[:4]:
        m = f"lora_unet_{block}_transformer_blocks_0_attn2_to_k"
        loha |= {
            f"{m}.hada_w1_a": torch.zeros(ch, 6), f"{m}.hada_w1_b": torch.zeros(6, 768),
            f"{m}.hada_w2_a": torch.zeros(ch, 6), f"{m}.hada_w2_b": torch.zeros(6, 768),
            f"{m}.alpha": torch.tensor(3.0),
        }  # fmt: skip
        lokr |= {
            f"{m}.lokr_w1": torch.zeros(8, 8), f"{m}.lokr_w2_a": torch.zeros(ch // 8, 4),
            f"{m}.lokr_w2_b": torch.zeros(4, 96), f"{m}.alpha": torch.tensor(4.0),
        }  # fmt: skip
    meta = {"ss_network_module": "lycoris.kohya", "ss_base_model_version": "sd_v1"}
    save_file(loha, str(tmp_path / "loha.safetensors"), metadata=meta)
    save_file(lokr, str(tmp_path / "lokr.safetensors"), metadata=meta)
    r = inspect_file(tmp_path / "loha.safetensors")
    assert r.kind == "lora" and r.details["network"] == "LoHa" and r.details["format"] == "LyCORIS"
    assert r.details["rank"] == [6] and r.details["alpha"] == [3] and r.details["base"] == "sd1"
    r = inspect_file(tmp_path / "lokr.safetensors")
    assert r.details["network"] == "LoKr" and r.details["rank"] == [4] and r.details["modules"]["unet"] == 4


def test_diffusers_peft_lora(tmp_path):
    import torch
    from safetensors.torch import save_file

    sd = {}
    for block in ("down_blocks.0.attentions.0", "up_blocks.3.attentions.2"):
        for proj in ("to_q", "to_k", "to_v"):
            key = f"unet.{block}.transformer_blocks.0.attn2.{proj}"
            sd[f"{key}.lora_A.weight"] = torch.zeros(4, 768 if proj != "to_q" else 320)
            sd[f"{key}.lora_B.weight"] = torch.zeros(320, 4)
    for layer in range(3):
        key = f"text_encoder.text_model.encoder.layers.{layer}.self_attn.q_proj"
        sd |= {f"{key}.lora_A.weight": torch.zeros(4, 768), f"{key}.lora_B.weight": torch.zeros(768, 4)}
    save_file(sd, str(tmp_path / "pytorch_lora_weights.safetensors"))
    r = inspect_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert r.kind == "lora" and r.details["format"] == "diffusers/PEFT"
    assert r.details["base"] == "sd1" and r.details["rank"] == [4]
    assert r.details["modules"] == {"unet": 6, "text_encoder": 3}


# ------------------------------------------------------------------------- embeddings, hypernetworks


def test_textual_inversion_embeddings(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(4, 768)}, "name": "mychar-ti",
         "step": 3000, "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned"},
        tmp_path / "mychar-ti.pt",
    )  # fmt: skip
    save_file({"emb_params": torch.zeros(2, 1024)}, str(tmp_path / "sd2-ti.safetensors"))
    save_file({"clip_l": torch.zeros(3, 768), "clip_g": torch.zeros(3, 1280)}, str(tmp_path / "xl-ti.safetensors"))
    r = inspect_file(tmp_path / "mychar-ti.pt")
    assert r.kind == "embedding" and r.details["base"] == "sd1" and r.details["vectors"] == 4
    assert r.details["name"] == "mychar-ti" and r.details["step"] == 3000 and r.container == "pickle (zip)"
    r = inspect_file(tmp_path / "sd2-ti.safetensors")
    assert r.kind == "embedding" and r.details["base"] == "sd2" and r.details["vectors"] == 2
    r = inspect_file(tmp_path / "xl-ti.safetensors")
    assert r.kind == "embedding" and r.details["base"] == "sdxl" and r.details["vectors"] == 3


def test_original_textual_inversion_parameterdict_is_read_without_running_it(tmp_path):
    import torch

    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(2, 768))})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params}, tmp_path / "old-ti.pt")
    r = inspect_file(tmp_path / "old-ti.pt")
    assert r.kind == "embedding" and r.details["vectors"] == 2 and r.details["base"] == "sd1"


def test_hypernetwork(tmp_path):
    b.write_hypernetwork(tmp_path / "my_hn.pt")
    r = inspect_file(tmp_path / "my_hn.pt")
    assert r.kind == "hypernetwork" and r.details["base"] == "sd1"
    assert r.details["sizes"] == [320, 640, 768, 1280] and r.details["layer_structure"] == [1, 0.5, 1]
    assert r.details["name"] == "my_hn" and r.details["step"] == 2000


# ----------------------------------------------------------------------- VAE, ControlNet, upscalers


def test_vae_file(tiny_files, tmp_path):
    from lora_forge.host.tiny import write_tiny_vae

    path = write_tiny_vae(tiny_files, tmp_path / "vae-ft-mse.safetensors") or tmp_path / "vae-ft-mse.safetensors"
    r = inspect_file(path)
    assert r.kind == "vae" and r.details["latent_channels"] == 4 and "SDXL" in r.details["fits"]
    full = tmp_path / "sdxl_vae.safetensors"
    b.write_small(full, b.stand_in(b.ldm_vae_shapes(prefix="")))
    r = inspect_file(full)
    assert r.kind == "vae" and any("suggests SDXL" in n for n in r.notes)


def test_controlnets(tmp_path):
    p = "control_model."
    sd1 = {
        f"{p}input_hint_block.0.weight": (16, 3, 3, 3),
        f"{p}zero_convs.0.0.weight": (320, 320, 1, 1),
        f"{p}input_blocks.0.0.weight": (320, 4, 3, 3),
        f"{p}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        f"{p}middle_block_out.0.weight": (1280, 1280, 1, 1),
    }
    b.write_small(tmp_path / "control_v11p_sd15_openpose.safetensors", b.stand_in(sd1))
    xl = {
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        "add_embedding.linear_1.weight": (1280, 2816),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
        "controlnet_down_blocks.0.weight": (320, 320, 1, 1),
    }
    b.write_small(tmp_path / "diffusers_xl_canny.safetensors", b.stand_in(xl))
    r = inspect_file(tmp_path / "control_v11p_sd15_openpose.safetensors")
    assert r.kind == "controlnet" and r.details["base"] == "sd1" and "ldm" in r.details["layout"]
    r = inspect_file(tmp_path / "diffusers_xl_canny.safetensors")
    assert r.kind == "controlnet" and r.details["base"] == "sdxl" and r.details["layout"] == "diffusers"


def _rrdb_old(nb: int, ups: int) -> OrderedDict:
    import torch

    sd = OrderedDict({"model.0.weight": torch.zeros(8, 3, 3, 3), "model.0.bias": torch.zeros(8)})
    for i in range(nb):
        for rdb in (1, 2, 3):
            for c in range(1, 6):
                sd[f"model.1.sub.{i}.RDB{rdb}.conv{c}.0.weight"] = torch.zeros(4, 8, 3, 3)
    sd[f"model.1.sub.{nb}.weight"] = torch.zeros(8, 8, 3, 3)
    idx = 3
    for _ in range(ups):
        sd[f"model.{idx}.weight"] = torch.zeros(8, 8, 3, 3)
        idx += 3
    sd[f"model.{idx - 1}.weight"] = torch.zeros(8, 8, 3, 3)  # HR conv
    sd[f"model.{idx + 1}.weight"] = torch.zeros(3, 8, 3, 3)  # last conv
    return sd


def test_upscalers(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.save(_rrdb_old(nb=3, ups=2), tmp_path / "4x_foolhardy_Remacri.pth")
    r = inspect_file(tmp_path / "4x_foolhardy_Remacri.pth")
    assert r.kind == "upscaler" and "ESRGAN" in r.title and r.details["scale"] == 4 and r.details["blocks"] == 3

    new = {"conv_first.weight": torch.zeros(8, 12, 3, 3), "conv_body.weight": torch.zeros(8, 8, 3, 3)}
    for i in range(2):
        new |= {f"body.{i}.rdb{k}.conv1.weight": torch.zeros(4, 8, 3, 3) for k in (1, 2, 3)}
    new |= {f"{n}.weight": torch.zeros(8, 8, 3, 3) for n in ("conv_up1", "conv_up2", "conv_hr")}
    new["conv_last.weight"] = torch.zeros(3, 8, 3, 3)
    torch.save({"params_ema": new}, tmp_path / "RealESRGAN_x2plus.pth")
    r = inspect_file(tmp_path / "RealESRGAN_x2plus.pth")
    assert r.kind == "upscaler" and "RRDBNet" in r.title and r.details["scale"] == 2 and r.details["blocks"] == 2

    compact = {"body.0.weight": torch.zeros(8, 3, 3, 3), "body.1.weight": torch.zeros(8)}
    compact |= {"body.2.weight": torch.zeros(8, 8, 3, 3), "body.3.weight": torch.zeros(8)}
    compact["body.4.weight"] = torch.zeros(48, 8, 3, 3)
    save_file(compact, str(tmp_path / "realesr-general-x4v3.safetensors"))
    r = inspect_file(tmp_path / "realesr-general-x4v3.safetensors")
    assert r.kind == "upscaler" and "compact" in r.title and r.details["scale"] == 4


def test_parts_of_other_formats_are_named_with_what_to_get_instead(tmp_path):
    unet = {
        "conv_in.weight": (320, 4, 3, 3),
        "time_embedding.linear_1.weight": (1280, 320),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "up_blocks.3.resnets.2.conv2.weight": (320, 320, 3, 3),
    }
    b.write_small(tmp_path / "diffusion_pytorch_model.safetensors", b.stand_in(unet))
    te = b.stand_in(b.clip_l_shapes("")) | {"text_model.embeddings.token_embedding.weight": (2, 768)}
    b.write_small(tmp_path / "model.safetensors", te)
    flux = {f"double_blocks.{i}.img_attn.qkv.weight": (2, 2) for i in range(2)} | {
        "single_blocks.0.linear1.weight": (2, 2)
    }
    b.write_small(tmp_path / "flux1-dev.safetensors", flux)

    r = inspect_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert r.kind == "other" and "Diffusers UNet for SD1.x" in r.title and any("single-file" in n for n in r.notes)
    r = inspect_file(tmp_path / "model.safetensors")
    assert "CLIP text encoder" in r.title and r.details["width"] == 768 and r.details["layers"] == 12
    r = inspect_file(tmp_path / "flux1-dev.safetensors")
    assert "Flux" in r.title and any("Forge" in n for n in r.notes)


def test_torchscript_is_named_not_loaded(tmp_path):
    import torch

    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "scripted.pt"))
    r = inspect_file(tmp_path / "scripted.pt")
    assert r.kind == "torchscript" and r.error is None and "not loaded" in r.title


def test_unknown_file_shows_its_first_keys(tmp_path):
    b.write_small(tmp_path / "mystery.safetensors", {"foo.bar.weight": (2, 2), "foo.baz": (3,)})
    r = inspect_file(tmp_path / "mystery.safetensors")
    assert r.kind == "unknown" and r.details["first_keys"] == ["foo.bar.weight", "foo.baz"]


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, container):
    import torch

    proof = tmp_path / "proof.txt"
    pickle.loads(b.malicious_pickle(proof))  # the payload is live: plain unpickling creates the file
    assert proof.exists()

    target = tmp_path / "pwned.txt"
    path = tmp_path / "model.ckpt"
    if container == "legacy":
        path.write_bytes(b.malicious_pickle(target))
    else:
        torch.save({"state_dict": {}, "payload": b.CreatesFile(target)}, path)
    r = inspect_file(path)
    assert not target.exists()
    assert r.error and r.error.startswith("unsafe pickle") and "NOT loaded" in r.error


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_cli_reports_every_file_even_when_some_are_bad(tmp_path):
    """One real subprocess: good files are reported, each bad one gets one line, exit code 2, nothing written."""
    from PIL import Image

    files = tmp_path / "files"
    files.mkdir()
    good = files / "good.safetensors"
    b.write_kohya(good, b.sd1_lora_modules()[:12], rank=4, alpha=2, metadata=b.kohya_metadata())
    (files / "zero.safetensors").write_bytes(b"")
    data = good.read_bytes()
    (files / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (8, 8), "red").save(files / "photo.safetensors", format="JPEG")
    (files / "huge-header.safetensors").write_bytes((100 * 10**9).to_bytes(8, "little") + b"{" * 64)
    (files / "evil.ckpt").write_bytes(b.malicious_pickle(files / "pwned.txt"))
    torch_zip = files / "cut.ckpt"
    b.write_hypernetwork(torch_zip)
    torch_zip.write_bytes(torch_zip.read_bytes()[:4000])
    odd = os.fsencode(files) + b"/\xff\xfeLoRA.safetensors"  # not UTF-8 (e.g. GBK from an old zip)
    shutil.copy(good, odd)
    (files / "a-folder").mkdir()
    names = ["good", "zero", "truncated", "photo", "huge-header"]
    args = [f"{n}.safetensors".encode() for n in names] + [b"evil.ckpt", b"cut.ckpt", odd, b"a-folder"]
    args.append(b"missing.safetensors")

    home = tmp_path / "home"
    home.mkdir()
    before = _tree(tmp_path)
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "lora_forge", "inspect", "--json", *args]
    done = subprocess.run(cmd, cwd=files, env=env, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr.decode()
    reports = json.loads(done.stdout.decode("utf-8"))
    assert len(reports) == len(args)
    by_name = {Path(r["path"]).name: r for r in reports}
    assert by_name["good.safetensors"]["kind"] == "lora" and by_name["good.safetensors"]["error"] is None
    odd_report = by_name["\\xff\\xfeLoRA.safetensors"]
    assert odd_report["kind"] == "lora" and "not valid UTF-8" in odd_report["error"]
    assert "LoRA" in odd_report["error"]  # the user still learns what the badly named file is
    errors = {name: r["error"] for name, r in by_name.items() if r["error"]}
    assert set(errors) == {"zero.safetensors", "truncated.safetensors", "photo.safetensors", "huge-header.safetensors",
                           "evil.ckpt", "cut.ckpt", "a-folder", "missing.safetensors",
                           "\\xff\\xfeLoRA.safetensors"}  # fmt: skip
    assert all("\n" not in e for e in errors.values())
    assert "empty" in errors["zero.safetensors"]
    assert "truncated" in errors["truncated.safetensors"]
    assert "JPEG" in errors["photo.safetensors"]
    assert "100.0 GB" in errors["huge-header.safetensors"]
    assert errors["evil.ckpt"].startswith("unsafe pickle")
    assert "folder" in errors["a-folder"]
    assert not (files / "pwned.txt").exists()
    assert _tree(tmp_path) == before  # nothing written anywhere, not even in HOME or the working folder
    assert "Traceback" not in done.stderr.decode()

    text = subprocess.run(cmd[:4] + args[:2], cwd=files, env=env, capture_output=True, timeout=120)
    assert text.returncode == 2
    out = text.stdout.decode()
    assert "good.safetensors: LoRA (LoRA, kohya) for SD1.x" in out
    assert "zero.safetensors: error: is empty" in out


def test_cli_exit_code_is_0_when_all_files_are_fine(tmp_path, capsys):
    from lora_forge.cli import main

    b.write_kohya(tmp_path / "ok.safetensors", b.sd1_lora_modules()[:6], rank=4, alpha=4)
    assert main(["inspect", str(tmp_path / "ok.safetensors")]) == 0
    assert "Rank                     4" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ UI, selftest


def test_markdown_report_escapes_and_shows_errors(tmp_path):
    b.write_kohya(tmp_path / "my_lora|x.safetensors", b.sd1_lora_modules()[:6], rank=4, alpha=4)
    md = render_markdown(inspect_file(tmp_path / "my_lora|x.safetensors"))
    assert "my\\_lora\\|x" in md and "| Rank | 4 |" in md
    md = render_markdown(inspect_file(tmp_path / "nope.safetensors"))
    assert "**Error:** no such file" in md


def test_selftest_stage_with_the_tiny_model(tiny_files, tmp_path):
    from lora_forge.inspect.selftest_stage import selftest
    from lora_forge.selftest import SelftestContext

    ctx = SelftestContext(out=tmp_path)
    ctx.shared["tiny"] = tiny_files
    summary = selftest(ctx)
    assert "tiny checkpoint" in summary and "LoCon" in summary
    assert not list(tmp_path.rglob("created-by-payload.txt"))
