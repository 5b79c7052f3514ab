"""Training config, presets, kohya import and dataset checks: everything that runs before a model."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_forge.errors import ForgeError
from lora_forge.train import config as cfgmod
from lora_forge.train.config import TrainConfig, parse_toml
from lora_forge.train.data import caption_for_step, epoch_batches, scan_dataset
from lora_forge.train.importer import import_config
from lora_forge.train.outputs import new_run_dir
from lora_forge.train.presets import PRESETS, plan_steps, preset_config


def make_images(folder: Path, n: int, size=(96, 96), captions: bool = True, caption: str = "a, b, c") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.new("RGB", size, (i * 30 % 255, 100, 50)).save(p)
        if captions:
            p.with_suffix(".txt").write_text(caption, encoding="utf-8")
        paths.append(p)
    return paths


SMALL = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_plans_a_sensible_step_count(name):
    config = preset_config(name).validate()
    for images in (10, 20, 50):
        plan = plan_steps(config, [(images, None)])
        # within a third of the preset's target, and never a zero-repeat plan
        assert plan.repeats_for_plain >= 1
        assert abs(plan.total_steps - PRESETS[name].target_steps) <= PRESETS[name].target_steps / 3, plan
        assert plan.total_steps == plan.steps_per_epoch * plan.epochs


def test_presets_differ_where_the_subject_matters():
    assert preset_config("style").flip_aug and not preset_config("person").flip_aug
    assert preset_config("anime").clip_skip == 2 and preset_config("person").clip_skip == 1
    assert preset_config("product").network_dim < preset_config("style").network_dim


def test_user_overrides_win_over_preset_and_plan():
    config = preset_config("style", {"network_dim": "8", "flip_aug": "false", "max_train_epochs": 3})
    assert config.network_dim == 8 and config.flip_aug is False
    plan = plan_steps(config, [(20, None)], {"max_train_epochs"})
    assert plan.epochs == 3
    # N_ folders keep their repeats; the plan picks epochs instead
    plan = plan_steps(preset_config("person"), [(20, 10)])
    assert plan.repeats_for_plain == 1 and plan.epochs == 8


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"network_dim": 0}, "network_dim"),
        ({"learning_rate": 0.5}, "unet_lr"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"optimizer_type": "SGD"}, "optimizer_type"),
        ({"resolution": "500"}, "resolution"),
        ({"min_timestep": 900, "max_timestep": 100}, "min_timestep"),
        ({"caption_dropout_rate": 1.5}, "caption_dropout_rate"),
        ({"min_bucket_reso": 768, "resolution": "512"}, "min_bucket_reso"),
        ({"lr_scheduler": "polynomial"}, "lr_scheduler"),
        ({"output_name": "a/b"}, "output_name"),
    ],
)
def test_bad_configs_are_rejected_naming_the_key(changes, key):
    with pytest.raises(ForgeError, match=key):
        TrainConfig.from_dict(changes).validate()


def test_unknown_and_mistyped_keys_are_errors():
    with pytest.raises(ForgeError, match="unknown config key"):
        TrainConfig.from_dict({"netwrok_dim": 4})
    with pytest.raises(ForgeError, match="network_dim must be int"):
        TrainConfig.from_dict({"network_dim": "four"})


@pytest.fixture(params=["tomllib", "tomli"])
def toml_reader(request, monkeypatch):
    """Both readers parse_toml can use: Python 3.11's tomllib, and tomli as on the WebUI's 3.10."""
    if request.param == "tomli":
        monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails, as on 3.10
    return request.param


def test_toml_round_trip_keeps_every_value(toml_reader):
    tricky = 'C:\\Users\\张三\\lora "q" #tag \t tab\nnew line \x01 \x7f end'
    config = preset_config("anime", {"trigger_word": tricky, "sample_prompts": ["a, b", 'c "d"', "e\\f"]})
    config = config.replace(learning_rate=1e-5, lr_warmup_steps=0.05, training_comment="")
    assert TrainConfig.from_dict(parse_toml(config.to_toml())) == config


def test_toml_features_kohya_configs_use_read_on_every_python(toml_reader):
    text = """
# kohya / lora-scripts style, with what a hand-written reader got wrong
[model]
pretrained_model_name_or_path = 'D:\\sd\\models\\model.safetensors'
[training]
max_train_epochs = 10  # comment
resolution = "512,768"
network_args = [
    "conv_dim=4",  # a comment inside a multi-line array
    "conv_alpha=1",
]
learning_rate = 1e-4
shuffle_caption = true
optimizer.name = "AdamW"
sample = { steps = 20, cfg = 7.0 }
training_comment = \"\"\"
two
lines\"\"\"
"""
    data = parse_toml(text)
    assert data["model"]["pretrained_model_name_or_path"] == "D:\\sd\\models\\model.safetensors"
    training = data["training"]
    assert training["network_args"] == ["conv_dim=4", "conv_alpha=1"]
    assert training["optimizer"] == {"name": "AdamW"} and training["sample"] == {"steps": 20, "cfg": 7.0}
    assert training["training_comment"] == "two\nlines" and training["learning_rate"] == 1e-4


def test_a_broken_toml_file_is_a_clear_error(tmp_path, toml_reader):
    path = tmp_path / "bad.toml"
    path.write_text('max_train_epochs = 10\nresolution = "512\n', encoding="utf-8")
    with pytest.raises(ForgeError, match="cannot read the config"):
        cfgmod.read_config_file(path)


def test_import_kohya_ss_json_maps_gui_names_and_lists_what_it_ignores(tmp_path):
    path = tmp_path / "kohya_ss.json"
    path.write_text(
        json.dumps(
            {
                "epoch": 6,
                "max_resolution": "768,768",
                "lr_warmup": 10,
                "optimizer": "AdamW8bit",
                "network_dim": 16,
                "network_alpha": 8,
                "seed": "",
                "LoRA_type": "LyCORIS/LoHa",
                "xformers": "xformers",
                "train_data_dir": "C:/data",
                "some_future_key": 1,
            }
        ),
        encoding="utf-8",
    )
    values, warnings = import_config(path)
    config = TrainConfig.from_dict(values).validate()
    assert config.max_train_epochs == 6 and config.resolution == "768,768"
    assert config.lr_warmup_steps == pytest.approx(0.1) and config.optimizer_type == "AdamW8bit"
    assert (config.network_dim, config.network_alpha) == (16, 8.0)
    joined = " | ".join(warnings)
    assert "LoHa" in joined and "train_data_dir" in joined and "some_future_key" in joined


def test_import_sd_scripts_toml_with_network_args(tmp_path):
    path = tmp_path / "kohya.toml"
    path.write_text(
        'network_args = ["conv_dim=8", "conv_alpha=4", "down_lr_weight=1,1"]\n'
        'optimizer_type = "Lion8bit"\nlr_scheduler = "cosine"\nmin_snr_gamma = 5\n',
        encoding="utf-8",
    )
    values, warnings = import_config(path)
    config = TrainConfig.from_dict(values)
    assert (config.conv_dim, config.conv_alpha, config.optimizer_type) == (8, 4.0, "Lion")
    assert any("down_lr_weight" in w for w in warnings) and any("Lion8bit" in w for w in warnings)


# ----------------------------------------------------------------------------- dataset checks
def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ForgeError, match="no images found"):
        scan_dataset(tmp_path, TrainConfig(**SMALL))


def test_caption_only_folder_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ForgeError, match="caption files but no images"):
        scan_dataset(tmp_path, TrainConfig(**SMALL))


def test_images_without_captions_are_a_clear_error(tmp_path):
    make_images(tmp_path, 3)
    make_images(tmp_path / "plain", 2, captions=False)
    with pytest.raises(ForgeError, match=r"2 image\(s\) have no caption file"):
        scan_dataset(tmp_path, TrainConfig(**SMALL))


def test_images_all_below_the_bucket_minimum_are_a_clear_error(tmp_path):
    make_images(tmp_path, 3, size=(48, 200))
    with pytest.raises(ForgeError, match="smaller than the minimum bucket"):
        scan_dataset(tmp_path, TrainConfig(**SMALL))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ForgeError, match="does not exist"):
        scan_dataset(tmp_path / "nope", TrainConfig(**SMALL))


def test_repeat_folders_use_their_name_as_caption_and_their_repeats(tmp_path):
    make_images(tmp_path / "5_sks dog", 2, captions=False)
    make_images(tmp_path / "misc", 1, caption="cat, sitting")
    ds = scan_dataset(tmp_path, TrainConfig(**SMALL, trigger_word="zzz"))
    by_folder = {it.folder: it for it in ds.items}
    assert by_folder["5_sks dog"].caption == "zzz, sks dog" and by_folder["5_sks dog"].repeats == 5
    assert by_folder["misc"].caption == "zzz, cat, sitting" and by_folder["misc"].repeats == 0
    assert ("5_sks dog", 2, 5) in ds.folders


def test_buckets_follow_the_aspect_and_never_upscale(tmp_path):
    make_images(tmp_path, 1, size=(256, 128))
    ds = scan_dataset(tmp_path, TrainConfig(resolution="128", min_bucket_reso=64, max_bucket_reso=256))
    w, h = ds.items[0].bucket
    assert w > h and w * h <= 128 * 128 and w % 64 == 0 and h % 64 == 0


def test_caption_shuffle_keeps_the_trigger_first_and_dropout_works():
    config = TrainConfig(shuffle_caption=True, keep_tokens=1)
    caption = "trig, a, b, c, d, e, f"
    seen = {caption_for_step(caption, config, random.Random(i)) for i in range(30)}
    assert len(seen) > 5 and all(s.startswith("trig, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)
    drop = TrainConfig(shuffle_caption=False, caption_tag_dropout_rate=0.5, keep_tokens=1)
    lengths = [len(caption_for_step(caption, drop, random.Random(i)).split(", ")) for i in range(30)]
    assert min(lengths) < 7 and all(
        caption_for_step(caption, drop, random.Random(i)).startswith("trig") for i in range(30)
    )
    empty = TrainConfig(caption_dropout_rate=0.99)
    assert caption_for_step(caption, empty, random.Random(0)) == ""


def test_batches_hold_one_bucket_and_every_repeat(tmp_path):
    make_images(tmp_path / "3_wide", 2, size=(256, 128))
    make_images(tmp_path / "2_tall", 3, size=(128, 256))
    ds = scan_dataset(tmp_path, TrainConfig(resolution="128", min_bucket_reso=64, max_bucket_reso=256))
    batches = epoch_batches(ds, 2, seed=1, epoch=0)
    assert all(len({ds.items[i].bucket for i in b}) == 1 for b in batches)
    # folders in name order: 2_tall (items 0-2, twice each), then 3_wide (items 3-4, three times)
    assert sorted(i for b in batches for i in b) == [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    assert batches == epoch_batches(ds, 2, seed=1, epoch=0) != epoch_batches(ds, 2, seed=1, epoch=1)


def test_run_folders_never_overwrite(tmp_path):
    first = new_run_dir(tmp_path, "lora")
    (first / "lora.safetensors").write_bytes(b"x")
    second = new_run_dir(tmp_path, "lora")
    assert second != first and not any(second.iterdir())
    assert (first / "lora.safetensors").read_bytes() == b"x"
