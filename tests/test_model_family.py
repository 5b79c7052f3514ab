"""Model-family detection on real key maps (full-size SD1/SD2 built on the meta device, SDXL
keys as the WebUI tests them) and on live tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge.model.family import FAMILY_LABELS, base_family, checkpoint_family, model_family, state_dict_shapes


def _full_size_shapes(tmp_path: Path, config_name: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the full-size model our built-in config describes, without allocating it."""
    from lora_forge.host.clip_files import write_clip_text_config, write_clip_tokenizer
    from lora_forge.host.ldm_build import CONFIG_DIR, instantiate, load_config

    clip = write_clip_tokenizer(tmp_path / "clip-l")
    write_clip_text_config(clip, width=768, layers=12, heads=12, ffn=3072)
    model = instantiate(load_config(CONFIG_DIR / config_name), clip_folder=clip, on_meta=True)
    return state_dict_shapes(model.state_dict())


@pytest.fixture(scope="module")
def sd1_shapes(tmp_path_factory):
    return _full_size_shapes(tmp_path_factory.mktemp("sd1"), "sd1.yaml")


@pytest.fixture(scope="module")
def sd2_shapes(tmp_path_factory):
    return _full_size_shapes(tmp_path_factory.mktemp("sd2"), "sd2-v.yaml")


def test_full_size_sd1_and_its_inpainting_and_pix2pix_variants(sd1_shapes):
    assert sd1_shapes["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert sd1_shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert checkpoint_family(sd1_shapes) == "sd1"
    for in_ch, family in ((9, "sd1-inpaint"), (8, "sd1-pix2pix")):
        variant = {**sd1_shapes, "model.diffusion_model.input_blocks.0.0.weight": (320, in_ch, 3, 3)}
        assert checkpoint_family(variant) == family


def test_full_size_sd2_and_inpainting(sd2_shapes):
    assert sd2_shapes["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == (3072, 1024)
    assert checkpoint_family(sd2_shapes) == "sd2"  # 512-eps and 768-v share every shape
    inpaint = {**sd2_shapes, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    assert checkpoint_family(inpaint) == "sd2-inpaint"


def test_unet_only_files_are_told_apart_by_cross_attention_width(sd1_shapes, sd2_shapes):
    for shapes, family in ((sd1_shapes, "sd1"), (sd2_shapes, "sd2")):
        unet_only = {k: v for k, v in shapes.items() if k.startswith("model.diffusion_model.")}
        assert checkpoint_family(unet_only) == family


def _sdxl_keys(refiner: bool = False, in_ch: int = 4) -> dict[str, tuple[int, ...]]:
    """The keys the WebUI's guess looks at, with SDXL's real shapes, plus a UNet block."""
    unet = {
        "model.diffusion_model.input_blocks.0.0.weight": (384 if refiner else 320, in_ch, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (
            (768, 1280) if refiner else (640, 2048)
        ),
    }
    if refiner:
        return {**unet, "conditioner.embedders.0.model.ln_final.weight": (1280,)}
    return {
        **unet,
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
    }


def test_sdxl_base_refiner_inpaint_and_v():
    assert checkpoint_family(_sdxl_keys()) == "sdxl"
    assert checkpoint_family(_sdxl_keys(refiner=True)) == "sdxl-refiner"
    assert checkpoint_family(_sdxl_keys(in_ch=9)) == "sdxl-inpaint"
    assert checkpoint_family({**_sdxl_keys(), "v_pred": ()}) == "sdxl-v"


def test_other_files_are_not_checkpoints():
    lora = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": (),
    }
    vae = {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}
    assert checkpoint_family(lora) == "" and checkpoint_family(vae) == "" and checkpoint_family({}) == ""
    assert checkpoint_family({"model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2)}) == "sd3"


def test_every_answer_has_a_label_and_a_base():
    answers = {"sd1", "sd1-inpaint", "sd1-pix2pix", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-refiner"}
    assert answers <= set(FAMILY_LABELS)
    assert {base_family(f) for f in FAMILY_LABELS} == {"sd1", "sd2", "sdxl", "sd3"}


def test_tiny_models_keep_the_real_structure(tiny_host, tiny_files):
    from safetensors import safe_open

    with safe_open(str(tiny_files.checkpoint), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert checkpoint_family(shapes) == "sd1"
    assert model_family(tiny_host.sd_model()) == "sd1"


def test_sd2_without_its_yaml_runs_the_webui_v_test_then_asks_for_the_yaml(tmp_path):
    from lora_forge.errors import ForgeError
    from lora_forge.host.ldm_build import read_state_dict
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd2
    from lora_forge.model.family import sd2_is_v_prediction

    files = build_tiny_sd2(tmp_path, v=True)
    state = read_state_dict(files.checkpoint)
    # the WebUI's rule: a UNet whose output at t=999 on grey sits far below its input is a v-model
    for bias, is_v in ((-5.0, True), (5.0, False)):
        state["model.diffusion_model.out.2.weight"].zero_()
        state["model.diffusion_model.out.2.bias"].fill_(bias)
        assert sd2_is_v_prediction(state) is is_v
    files.config.unlink()
    with pytest.raises(ForgeError, match="yaml"):
        StandaloneHost(files.checkpoint)
