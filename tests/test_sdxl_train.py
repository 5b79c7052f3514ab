"""SDXL training on the tiny SDXL model: conditioning as the WebUI computes it, size conditioning
from each image's real sizes, safe latents, kohya SDXL files the WebUI's Lora loader takes whole."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.train.config import TrainConfig
from lora_forge.train.loop import prepare, train
from lora_forge.train.sdxl_sizes import Origin, size_cond
from tests.train_support import FAST, squares, weights_hash

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return squares(tmp_path_factory.mktemp("sdxl-data"), widen=True)


def run(host, data_dir, out, **changes):
    config = TrainConfig.from_dict({**FAST, **changes})
    return train(host, prepare(config, data_dir, frozenset(changes) | {"num_repeats"}), out)


# ------------------------------------------------------------------------------ conditioning


def test_text_encoding_equals_the_conditioning_the_webui_renders_with(tiny_sdxl_host):
    """CLIP-L hidden ⊕ bigG penultimate, bigG pooled, sizes: the same numbers as the model's own
    `get_learned_conditioning` at 1024² with no crop, bit for bit."""
    from lora_forge.host.sdxl_object import SizedPrompts
    from lora_forge.model.encode_sdxl import SdxlTextEncoder, unet_conditioning
    from lora_forge.train.sdxl_sizes import SizeCond, size_tensors

    model = tiny_sdxl_host.sd_model()
    captions = ["zkw, red square", "a long caption, " * 30]
    with torch.no_grad():
        ours = unet_conditioning(
            model, SdxlTextEncoder(model)(captions), size_tensors([SizeCond((1024, 1024), (0, 0), (1024, 1024))] * 2)
        )
        webui = model.get_learned_conditioning(SizedPrompts(captions, 1024, 1024))
    assert ours["crossattn"].shape == webui["crossattn"].shape == (2, 77, 80)
    assert torch.equal(ours["crossattn"], webui["crossattn"])
    assert torch.equal(ours["vector"], webui["vector"])


def test_size_conditioning_uses_each_images_real_sizes():
    # a 300×200 photo trained in a 64×64 bucket: cover-resized to 96×64, centre crop at left 16
    assert size_cond((300, 200), (64, 64), False) == size_cond((300, 200), (64, 64), False)
    plain = size_cond((300, 200), (64, 64), False)
    assert (plain.original_hw, plain.crop_tl, plain.target_hw) == ((200, 300), (0, 16), (64, 64))
    assert size_cond((300, 200), (64, 64), True).crop_tl == (0, 16)  # centred: mirrored offset is the same
    # prepared from a 1000×800 photo: crop box (500, 100)-(800, 300) became the 300×200 image
    cut = size_cond((300, 200), (64, 64), False, Origin((1000, 800), (500, 100, 800, 300)))
    scale = 64 / 200
    assert cut.original_hw == (800, 1000)
    assert cut.crop_tl == (round(100 * scale), round(500 * scale) + 16)
    flipped = size_cond((300, 200), (64, 64), True, Origin((1000, 800), (500, 100, 800, 300)))
    assert flipped.crop_tl == (round(100 * scale), round(200 * scale) + 16)  # 200 px right of the box


def test_manifest_gives_the_photo_and_its_crop(tmp_path):
    from lora_forge.dataset.manifest import Manifest, OutputRecord, SourceRecord
    from lora_forge.train.data import Item
    from lora_forge.train.sdxl_sizes import item_origins

    Image.new("RGB", (300, 200)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "b.png")
    manifest = Manifest(tmp_path)
    out = OutputRecord("a.png", "main", [500, 100, 800, 300], [300, 200], [], [], "")
    manifest.sources.append(
        SourceRecord(
            "p.jpg", "/x/p.jpg", None, "", "", [1000, 800], "JPEG", [], [], "centre", "auto", "", "a", None, [], [out]
        )
    )
    manifest.save()
    items = [
        Item(tmp_path / "a.png", "", (300, 200), (64, 64), 1, ""),
        Item(tmp_path / "b.png", "", (64, 64), (64, 64), 1, ""),
    ]
    assert item_origins(items) == [Origin((1000, 800), (500, 100, 800, 300)), None]


def test_sdxl_latents_never_run_the_vae_in_fp16(tiny_sdxl_host):
    """An fp16 SDXL VAE overflows; the latents come from fp32 (and equal the fp32 VAE's)."""
    from lora_forge.model.encode import encode_images

    model = tiny_sdxl_host.sd_model()
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = encode_images(model, pixels)
    vae = model.first_stage_model
    saved = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.half()
    try:
        latents = encode_images(model, pixels)
        assert next(vae.parameters()).dtype == torch.float16  # put back as it was
    finally:
        vae.float()
        vae.load_state_dict(saved)
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert torch.allclose(latents, reference, atol=2e-2)  # only the weights' fp16 rounding differs
    assert reference.shape == (1, 4, 8, 8)


# ------------------------------------------------------------------------------ training and files


def test_training_writes_a_kohya_sdxl_file_and_leaves_the_model_as_it_was(tiny_sdxl_host, dataset, tmp_path):
    model = tiny_sdxl_host.sd_model()
    before = weights_hash(model)
    flags = [p.requires_grad for p in model.parameters()]
    result = run(tiny_sdxl_host, dataset, tmp_path, max_train_steps=2, network_train_unet_only=False,
                 text_encoder_lr=1e-4, cache_text_encoder_outputs=False)  # fmt: skip
    assert weights_hash(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    from safetensors import safe_open

    with safe_open(str(result.final_file), "pt") as f:
        names = {k.split(".")[0] for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"].startswith("stable-diffusion-xl-v1-base")
    assert len([n for n in names if n.startswith("lora_te1_")]) == 72
    assert len([n for n in names if n.startswith("lora_te2_")]) == 192
    assert "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k" in names
    assert "lora_te2_text_model_encoder_layers_31_self_attn_q_proj" in names
    assert "lora_te1_text_model_encoder_layers_11_mlp_fc2" in names


def test_the_webuis_lora_loader_takes_every_key_and_renders_the_same(tiny_sdxl_files, dataset, tmp_path, caplog):
    """A file trained on the stand-in's SDXL object loads through the stand-in's built-in Lora
    (1.10.1's SDXL key mapping) with no unmatched key, reaching every layer it names."""
    import sys

    from tests.sdxl_support import STUB_DIR, webui_sdxl_model

    model = webui_sdxl_model(tiny_sdxl_files)
    from lora_forge.host.standalone import StandaloneHost

    standalone = StandaloneHost(tiny_sdxl_files.checkpoint, lora_dir=tmp_path / "Lora")
    result = run(standalone, dataset, tmp_path, max_train_steps=3, network_train_unet_only=False,
                 text_encoder_lr=1e-3, unet_lr=1e-2, network_alpha=8, network_dim=4,
                 cache_text_encoder_outputs=False, conv_dim=2, conv_alpha=2)  # fmt: skip
    import webui_stub

    lora_dir = tmp_path / "webui" / "models" / "Lora"
    webui_stub.start(tmp_path / "webui", model, argv=["--lora-dir", str(lora_dir)])
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "mine.safetensors").write_bytes(Path(result.final_file).read_bytes())
    networks = sys.modules["networks"]
    before = weights_hash(model)
    try:
        with caplog.at_level(logging.DEBUG):
            networks.load_networks(["mine"], [1.0], [1.0])
        assert not [r for r in caplog.records if "didn't match keys" in r.getMessage()]
        assert networks.loaded_networks and weights_hash(model) != before
        # every module of the file reached a layer: bigG's q/k/v (3 file modules) share one fused layer
        from safetensors import safe_open

        with safe_open(str(result.final_file), "pt") as f:
            file_modules = {k.split(".")[0] for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        assert len(networks._backups) == len(file_modules) - 2 * 32
    finally:
        networks.load_networks([])
    assert weights_hash(model) == before
    assert str(STUB_DIR) in sys.path


@pytest.mark.slow
def test_loss_falls_clearly_over_200_steps(tiny_sdxl_host, dataset, tmp_path):
    """The mean loss of the last 20 steps is clearly below that of the first 20 (4 images).

    LoCon (conv_dim) is on: at the tiny model's 8×8 latents SDXL's attention only sits at 4×4 and
    2×2 (no attention at the first level, by design), where an attention-only LoRA cannot reach the
    per-pixel noise; the ResBlock convs at full latent resolution can."""
    result = run(
        tiny_sdxl_host, dataset, tmp_path, max_train_steps=200, network_dim=8, network_alpha=8, conv_dim=8,
        conv_alpha=8, unet_lr=3e-3, learning_rate=3e-3, lr_scheduler="constant", min_snr_gamma=0,
        train_batch_size=1, network_train_unet_only=True, shuffle_caption=False, gradient_checkpointing=False,
    )  # fmt: skip
    first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
    assert last < 0.8 * first, (first, last)


def test_a_run_the_card_cannot_hold_is_refused_before_anything_is_written(
    tiny_sdxl_host, dataset, tmp_path, monkeypatch
):
    from lora_forge.errors import ForgeError
    from lora_forge.train import fit

    monkeypatch.setattr(fit, "capacity", lambda device: 6 * 1024**2)  # a 6 MB "card"
    model = tiny_sdxl_host.sd_model()
    before = weights_hash(model)
    with pytest.raises(ForgeError, match=r"needs about [\d.]+ GB of graphics memory but the card has 0.0 GB"):
        run(tiny_sdxl_host, dataset, tmp_path / "out", max_train_steps=2)
    assert weights_hash(model) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_clip_skip_moves_only_clip_l_and_only_past_sgms_own_layer(tiny_sdxl_host):
    from lora_forge.model.encode_sdxl import SdxlTextEncoder

    model = tiny_sdxl_host.sd_model()
    with torch.no_grad():
        one, two, three = (SdxlTextEncoder(model, skip)(["zkw, red square"]) for skip in (1, 2, 3))
    assert torch.equal(one["crossattn"], two["crossattn"])  # sgm's CLIP-L layer is already the penultimate
    assert not torch.equal(one["crossattn"][..., :32], three["crossattn"][..., :32])
    assert torch.equal(one["crossattn"][..., 32:], three["crossattn"][..., 32:])  # bigG: always penultimate
    assert torch.equal(one["pooled"], three["pooled"])


def test_cli_trains_on_an_sdxl_checkpoint_headless(tiny_sdxl_files, dataset, tmp_path, capsys):
    from lora_forge.cli import main

    args = ["train", "--ckpt", str(tiny_sdxl_files.checkpoint), "--data", str(dataset), "--name", "xl", "--out",
            str(tmp_path), "--trigger", "zkw", "--json"]  # fmt: skip
    sets = [f"{k}={v}" for k, v in {**FAST, "max_train_steps": 2}.items()]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from lora_forge.lora.fileformat import read_metadata

    assert out["steps"] == 2 and read_metadata(Path(out["final"]))["ss_base_model_version"] == "sdxl_base_v1-0"
