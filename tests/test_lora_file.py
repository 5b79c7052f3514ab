"""The kohya LoRA file: save → load round trip, metadata, hashes, never overwriting, refusals."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct

import pytest
import torch
from PIL import Image

from lora_forge.errors import ForgeError
from lora_forge.lora import (
    LoraNetwork,
    file_sha256,
    load_lora,
    lora_metadata,
    old_model_hash,
    save_dtype,
    save_lora,
)


@pytest.fixture(scope="module")
def sd_model(tiny_host):
    return tiny_host.sd_model()


@pytest.fixture(scope="module")
def locon(sd_model):
    net = LoraNetwork.create(sd_model, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_(0.0, 0.2, generator=g)
    return net


def read_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def full_metadata(net, tiny_files):
    cover = Image.new("RGB", (64, 48), (200, 30, 30))
    return lora_metadata(
        net,
        output_name="my_char",
        training={"learning_rate": 1e-4, "ss_seed": 42, "gradient_checkpointing": False, "optimizer": None},
        tag_frequency={"10_my_char": {"1girl": 20, "红发": 3}},
        dataset_dirs={"10_my_char": {"n_repeats": 10, "img_count": 20}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 20}}, "mean_img_ar_error": 0.0},
        sd_model_name=tiny_files.checkpoint.name,
        sd_model_hash=old_model_hash(tiny_files.checkpoint),
        new_sd_model_hash=file_sha256(tiny_files.checkpoint),
        clip_skip=2,
        trigger_phrase="my_char",
        cover_images=[cover],
        timestamp=1_700_000_000.0,
    )


def test_save_load_round_trips_every_tensor_and_metadata_value(locon, tiny_files, tmp_path):
    sd = locon.kohya_state_dict()
    meta = full_metadata(locon, tiny_files)
    path = save_lora(tmp_path / "my_char.safetensors", sd, meta)
    tensors, loaded_meta = load_lora(path)
    assert tensors.keys() == sd.keys()
    for k, v in sd.items():
        assert tensors[k].dtype == torch.float16
        assert torch.equal(tensors[k], v), k
    for k, v in meta.items():
        assert loaded_meta[k] == v, k
    assert set(loaded_meta) - set(meta) == {"sshs_model_hash", "sshs_legacy_hash"}


def test_file_holds_only_kohya_tensors_with_kohya_shapes(locon, tmp_path):
    path = save_lora(tmp_path / "a.safetensors", locon.kohya_state_dict(), {})
    tensors, _ = load_lora(path)
    modules = {k.split(".", 1)[0] for k in tensors}
    assert len(tensors) == 3 * len(modules) == 3 * len(locon.loras)
    for m in modules:
        down, up, alpha = (tensors[f"{m}.{p}"] for p in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert alpha.dim() == 0
        assert down.shape[0] == up.shape[1]  # rank
        if down.dim() == 4:
            assert up.shape[2:] == (1, 1)
        if down.dim() == 4 and down.shape[2:] == (3, 3):
            assert down.shape[0] == 2 and float(alpha) == 1.0  # conv rank / conv alpha
        else:
            assert down.shape[0] == 4 and float(alpha) == 2.0


@pytest.mark.parametrize(
    ("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_save_precision_casts_every_tensor_including_alpha(locon, tmp_path, name, dtype):
    path = save_lora(tmp_path / f"{name}.safetensors", locon.kohya_state_dict(save_dtype(name)), {})
    tensors, _ = load_lora(path)
    assert {t.dtype for t in tensors.values()} == {dtype}
    with pytest.raises(ForgeError, match="fp16"):
        save_dtype("fp8")


def test_sshs_model_hash_is_sha256_of_the_data_after_the_header(locon, tiny_files, tmp_path):
    path = save_lora(tmp_path / "h.safetensors", locon.kohya_state_dict(), full_metadata(locon, tiny_files))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    expected = hashlib.sha256(raw[8 + n :]).hexdigest()  # modules/hashes.py addnet_hash_safetensors
    header, _ = read_header(path)
    assert header["__metadata__"]["sshs_model_hash"] == expected
    assert (8 + n) % 8 == 0


def test_metadata_is_what_the_webui_reads(locon, tiny_files, tmp_path):
    path = save_lora(tmp_path / "m.safetensors", locon.kohya_state_dict(), full_metadata(locon, tiny_files))
    meta = read_header(path)[0]["__metadata__"]
    # the WebUI's NetworkOnDisk.detect_version: not sdxl_, ss_v2 != "True" → SD1
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_output_name"] == "my_char"  # the alias in <lora:...>
    assert float(meta["ss_training_started_at"]) == 1_700_000_000.0  # "Date trained" on the card
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1"}
    assert meta["ss_learning_rate"] == "0.0001" and meta["ss_seed"] == "42"
    assert meta["ss_gradient_checkpointing"] == "False" and meta["ss_optimizer"] == "None"
    assert json.loads(meta["ss_tag_frequency"]) == {"10_my_char": {"1girl": 20, "红发": 3}}
    assert sum(d["img_count"] for d in json.loads(meta["ss_dataset_dirs"]).values()) == 20
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["resolution"] == [512, 512]
    raw = tiny_files.checkpoint.read_bytes()
    assert meta["ss_sd_model_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(raw).hexdigest()
    assert meta["ss_sd_model_name"] == "tiny-sd1.safetensors"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.encoder_layer"] == "2" and meta["modelspec.trigger_phrase"] == "my_char"
    assert meta["modelspec.resolution"] == "512x512" and meta["modelspec.title"] == "my_char"
    covers = json.loads(meta["ssmd_cover_images"])
    img = Image.open(io.BytesIO(base64.b64decode(covers[0])))
    assert img.size == (64, 48)
    assert all(isinstance(v, str) for v in meta.values())


def test_never_writes_over_an_existing_file(locon, tmp_path):
    path = tmp_path / "taken.safetensors"
    path.write_bytes(b"someone's file")
    with pytest.raises(ForgeError, match="already exists"):
        save_lora(path, locon.kohya_state_dict(), {})
    assert path.read_bytes() == b"someone's file"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.safetensors"]  # no temp file left behind


def test_loaded_file_renders_like_the_saved_network(sd_model, locon, tmp_path):
    g = torch.Generator().manual_seed(5)
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300]), torch.randn(1, 5, 32, generator=g)
    path = save_lora(tmp_path / "r.safetensors", locon.kohya_state_dict(torch.float32), {})
    loaded = LoraNetwork.from_file(sd_model, path, multiplier=0.8)
    assert [m.name for m in loaded.loras] == [m.name for m in locon.loras]
    assert (loaded.rank, loaded.alpha, loaded.conv_rank, loaded.conv_alpha) == (4, 2.0, 2, 1.0)
    unet = sd_model.model.diffusion_model
    with torch.no_grad():
        with locon.injected():
            locon.multiplier = 0.8
            want = unet(x, t, context=ctx)
        with loaded.injected():
            got = unet(x, t, context=ctx)
    assert torch.equal(got, want)


def test_resume_puts_the_file_weights_back(sd_model, locon, tmp_path):
    path = save_lora(tmp_path / "resume.safetensors", locon.kohya_state_dict(torch.float32), {})
    fresh = LoraNetwork.create(sd_model, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    fresh.load_kohya_state_dict(load_lora(path)[0])
    for a, b in zip(fresh.loras, locon.loras, strict=True):
        assert torch.equal(a.lora_up.weight, b.lora_up.weight) and torch.equal(a.lora_down.weight, b.lora_down.weight)
    plain = LoraNetwork.create(sd_model, rank=4, alpha=2.0)
    with pytest.raises(ForgeError, match="same rank, LoCon"):
        plain.load_kohya_state_dict(load_lora(path)[0])


def sdxl_like_file(tmp_path):
    """Names and metadata as kohya writes them for SDXL (LDM-form UNet names, lora_te1_/lora_te2_)."""
    tensors = {}
    for name, (i, o) in {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (2048, 640),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": (1280, 5120),
    }.items():
        tensors[f"{name}.lora_down.weight"] = torch.zeros(4, i, dtype=torch.float16)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(o, 4, dtype=torch.float16)
        tensors[f"{name}.alpha"] = torch.tensor(4.0, dtype=torch.float16)
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False", "ss_network_module": "networks.lora"}
    return save_lora(tmp_path / "sdxl.safetensors", tensors, meta)


def test_a_file_for_another_family_is_refused_naming_it(sd_model, tmp_path):
    with pytest.raises(ForgeError, match="made for SDXL") as err:
        LoraNetwork.from_file(sd_model, sdxl_like_file(tmp_path))
    assert "SD1.x" in str(err.value)  # and the loaded model's family


def test_a_file_with_the_same_names_but_other_widths_is_refused_by_its_metadata(sd_model, locon, tmp_path):
    """An SD2 LoRA carries SD1's kohya names; only widths (and its metadata) tell them apart."""
    sd = locon.kohya_state_dict()
    name = next(k for k in sd if k.endswith("attn2_to_k.lora_down.weight"))
    sd[name] = torch.zeros(4, 1024, dtype=torch.float16)
    path = save_lora(tmp_path / "sd2.safetensors", sd, {"ss_v2": "True", "ss_base_model_version": "sd_v2"})
    with pytest.raises(ForgeError, match=r"made for SD2\.x"):
        LoraNetwork.from_file(sd_model, path)


def test_other_network_types_and_broken_files_are_refused_in_words(sd_model, locon, tmp_path):
    sd = dict(locon.kohya_state_dict())
    first = locon.loras[0].name
    loha = {f"{first}.hada_w1_a": torch.zeros(4, 4), f"{first}.hada_w1_b": torch.zeros(4, 4)}
    path = save_lora(tmp_path / "ok.safetensors", sd, {})
    import safetensors.torch

    safetensors.torch.save_file(loha, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ForgeError, match="LoHa"):
        LoraNetwork.from_file(sd_model, tmp_path / "loha.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ForgeError, match="damaged or incomplete"):
        load_lora(broken)
    (tmp_path / "x.pt").write_bytes(b"x")
    with pytest.raises(ForgeError, match=r"only \.safetensors"):
        load_lora(tmp_path / "x.pt")


def test_other_spellings_the_webui_accepts_load_too(sd_model, locon, tmp_path):
    """LDM-form UNet names (the WebUI's `lora_unet`→`diffusion_model` fallback) and `lora_te1_` for
    SD1's encoder are written by other trainers; they load onto the same layers as kohya's names."""
    from lora_forge.model.names import unet_ldm_to_diffusers

    sd = locon.kohya_state_dict(torch.float32)
    paths = {
        lora.name: lora.target.path.removeprefix("model.diffusion_model.")
        for lora in locon.loras
        if lora.target.part == "unet"
    }
    respelled = {}
    for key, value in sd.items():
        module, _, part = key.partition(".")
        if module in paths:
            assert module == "lora_unet_" + unet_ldm_to_diffusers(paths[module]).replace(".", "_")
            module = "lora_unet_" + paths[module].replace(".", "_")
        else:
            module = module.replace("lora_te_", "lora_te1_", 1)
        respelled[f"{module}.{part}"] = value
    path = save_lora(tmp_path / "respelled.safetensors", respelled, {})
    loaded = LoraNetwork.from_file(sd_model, path)
    assert [m.name for m in loaded.loras] == [m.name for m in locon.loras]
    for a, b in zip(loaded.loras, locon.loras, strict=True):
        assert torch.equal(a.lora_up.weight, b.lora_up.weight)


def test_a_diffusers_format_file_is_refused_in_words(sd_model, tmp_path):
    import safetensors.torch

    path = tmp_path / "peft.safetensors"
    safetensors.torch.save_file(
        {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}, str(path)
    )
    with pytest.raises(ForgeError, match="diffusers/PEFT-format"):
        LoraNetwork.from_file(sd_model, path)


def test_two_runs_with_the_same_weights_get_the_same_hashes_whatever_the_clock(sd_model, monkeypatch, tmp_path):
    """sshs_legacy_hash reads the bytes at 1 MiB of a serialization whose header holds the training
    times: two runs of one seed (same tensors, other start times) must still show the same hashes."""
    from lora_forge.lora import fileformat

    net = LoraNetwork.create(sd_model, rank=64, alpha=32.0)  # over 1 MiB: the hashed window is in the data
    hashes = []
    for i, started in enumerate((1_700_000_000.5, 1_700_000_123.123456)):  # str() gives 12 and 17 characters
        monkeypatch.setattr(fileformat.time, "time", lambda s=started: s + 60.25)
        meta = lora_metadata(net, output_name="same", timestamp=started)
        path = save_lora(tmp_path / f"{i}.safetensors", net.kohya_state_dict(), meta)
        assert path.stat().st_size > 0x110000
        header, _ = read_header(path)
        hashes.append((header["__metadata__"]["sshs_model_hash"], header["__metadata__"]["sshs_legacy_hash"]))
    assert hashes[0] == hashes[1]
