"""SDXL presets (issue 15, Deliver 5): the subjects stay, the numbers become SDXL's when an
SDXL-family model is loaded — in the Train section, the training service and the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lora_forge.train.config import TrainConfig
from lora_forge.train.presets import PRESETS, model_preset_config, plan_steps, preset_config

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_sdxl_values_that_validate_and_plan(name):
    sd1, sdxl = preset_config(name), preset_config(name, family="sdxl", device_type="cuda").validate()
    assert (sdxl.resolution_wh, sdxl.min_bucket_reso, sdxl.max_bucket_reso, sdxl.bucket_reso_steps) == (
        (1024, 1024), 512, 2048, 64)  # fmt: skip
    assert sdxl.network_train_unet_only and not sdxl.train_text_encoder
    assert sdxl.optimizer_type == ("AdamW8bit" if HAS_BNB else "AdamW")
    assert preset_config(name, family="sdxl-v", device_type="cpu").optimizer_type == "AdamW"  # bitsandbytes: CUDA only
    # what the subject decides stays: flip, tag dropout, step target
    assert (sdxl.flip_aug, sdxl.caption_tag_dropout_rate) == (sd1.flip_aug, sd1.caption_tag_dropout_rate)
    plan = plan_steps(sdxl, [(20, None)])
    assert abs(plan.total_steps - PRESETS[name].target_steps) <= PRESETS[name].target_steps / 3
    # SD1/SD2 models keep the SD1 numbers
    assert preset_config(name, family="sd2-v").to_dict() == sd1.to_dict()


def test_sdxl_subjects_differ_where_the_subject_matters():
    def xl(name: str) -> TrainConfig:
        return preset_config(name, family="sdxl", device_type="cuda")

    assert xl("style").network_dim > xl("person").network_dim and xl("style").flip_aug
    assert xl("product").noise_offset > 0 and not xl("product").flip_aug
    assert xl("anime").clip_skip == 1  # kohya's SDXL scripts do not apply clip skip
    assert preset_config("anime", {"resolution": "896,1152"}, "sdxl").resolution_wh == (896, 1152)  # the user wins


def test_sdxl_buckets_are_64_px_steps_between_512_and_2048(tmp_path):
    from lora_forge.train.data import bucket_of

    config = preset_config("person", family="sdxl")
    for size in [(3000, 2000), (1024, 1024), (800, 1400), (4000, 900), (600, 600)]:
        w, h = bucket_of(size, config)
        assert w % 64 == 0 and h % 64 == 0 and min(w, h) >= 512 and max(w, h) <= 2048, (size, (w, h))
        assert w * h <= 1024 * 1024 and (w <= size[0] and h <= size[1])  # never upscaled
    assert bucket_of((400, 1000), config) is None  # below SDXL's 512 floor


class _Holds:
    """What the preset resolver asks a host: its loaded model and its device."""

    def __init__(self, model, device: str = "cpu") -> None:
        self._model, self.device = model, SimpleNamespace(type=device)

    def sd_model(self):
        if self._model is None:
            from lora_forge.errors import ForgeError

            raise ForgeError("no checkpoint is loaded")
        return self._model


def test_the_train_section_shows_sdxl_values_when_an_sdxl_model_is_loaded(tiny_sdxl_files, tiny_host):
    from lora_forge.host.ldm_build import instantiate, load_config
    from lora_forge.ui.train import MAIN_FIELDS, _preset_values

    sdxl_model = instantiate(load_config(tiny_sdxl_files.config), on_meta=True)
    xl = model_preset_config("anime", _Holds(sdxl_model, "cuda"))
    assert xl.to_dict() == preset_config("anime", family="sdxl", device_type="cuda").to_dict()
    assert model_preset_config("anime", tiny_host).to_dict() == preset_config("anime").to_dict()
    assert model_preset_config("anime", _Holds(None)).resolution_wh == (512, 512)  # nothing loaded: SD1's
    shown = dict(
        zip([k for k, _, _ in MAIN_FIELDS], _preset_values("Anime character", _Holds(sdxl_model)), strict=False)
    )
    assert (shown["resolution"], shown["network_dim"]) == ("1024", 16)


def test_the_command_line_picks_sdxl_values_from_the_checkpoint_file(tiny_sdxl_files, tiny_files, tmp_path):
    from lora_forge.cli import build_parser

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (1024, 1024)).save(data / "a.png")
    (data / "a.txt").write_text("a", encoding="utf-8")

    def config_for(ckpt: Path, *flags: str) -> TrainConfig:
        from lora_forge.cli.train import build_config

        given = ["--ckpt", str(ckpt), "--data", str(data), "--name", "n", "--out", str(tmp_path), "--preset", "style"]
        args = build_parser().parse_args(["train", *given, *flags])
        return build_config(args)[0]

    assert config_for(tiny_sdxl_files.checkpoint).resolution_wh == (1024, 1024)
    assert config_for(tiny_sdxl_files.checkpoint).network_dim == 32
    assert config_for(tiny_files.checkpoint).resolution_wh == (512, 512)
    flagged = config_for(tiny_sdxl_files.checkpoint, "--v-parameterization", "TRUE", "--zero-terminal-snr", "true")
    assert (flagged.v_parameterization, flagged.zero_terminal_snr) == ("true", "true")
    assert config_for(tiny_files.checkpoint).v_parameterization == "auto"


def test_opening_train_shows_sdxl_values_once_and_keeps_what_the_user_typed(tiny_sdxl_files, tiny_host, tmp_path):
    """The form is built before any model is known (SD1 numbers); opening 训练 with an SDXL model
    loaded shows the preset's SDXL values, opening it again keeps the user's edits, and a switch
    back to an SD1 checkpoint shows SD1 values again."""
    from lora_forge.host.ldm_build import instantiate, load_config
    from lora_forge.settings import Settings
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext
    from lora_forge.ui.train import PRESET_LABELS
    from tests.blocks_support import by_id, handler

    loaded: list = [_Holds(instantiate(load_config(tiny_sdxl_files.config), on_meta=True))]
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    blocks = tab.build(UiContext(host=lambda: loaded[0], settings=lambda: settings))
    on_model = handler(blocks, "on_model")
    anime = PRESET_LABELS["anime"]

    def open_train(kind: str) -> tuple[dict, str]:
        answer = on_model.fn(anime, kind)
        return by_id(on_model, [*answer[:-1], None]), answer[-1]

    shown, kind = open_train("sd")  # as built
    assert (shown["lora_forge_train_resolution"]["value"], kind) == ("1024", "sdxl")
    shown, kind = open_train("sdxl")  # opened again, same model: the user's values stay
    assert "value" not in shown["lora_forge_train_resolution"] and kind == "sdxl"
    loaded[0] = tiny_host  # the WebUI switched to an SD1 checkpoint
    shown, kind = open_train("sdxl")
    assert (shown["lora_forge_train_resolution"]["value"], kind) == ("512", "sd")
