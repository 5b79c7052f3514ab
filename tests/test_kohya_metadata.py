"""A trained file's metadata next to the keys and value formats kohya sd-scripts' train_network.py writes.

The table below is what train_network.py (sd-scripts, 2026) writes for a run from plain folders:
each key with the shape of its value (`str()` of the argument: "True", "None", "(512, 512)",
JSON for dicts). Model sites, ComfyUI and the WebUI's card read these keys as kohya writes them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.lora.fileformat import read_metadata
from lora_forge.train.config import TrainConfig
from lora_forge.train.loop import prepare, train

torch = pytest.importorskip("torch")

INT = r"-?\d+"
FLOAT = r"-?\d+(\.\d+)?(e-?\d+)?"
BOOL = r"True|False"
NONE_OR_INT = rf"None|{INT}"
NONE_OR_FLOAT = rf"None|{FLOAT}"
NONE_OR_TEXT = r".*"
JSON = "json"
KOHYA = {
    "ss_session_id": INT,
    "ss_training_started_at": FLOAT,
    "ss_training_finished_at": FLOAT,
    "ss_output_name": r".+",
    "ss_learning_rate": FLOAT,
    "ss_text_encoder_lr": NONE_OR_FLOAT,
    "ss_unet_lr": NONE_OR_FLOAT,
    "ss_num_train_images": INT,
    "ss_num_validation_images": INT,
    "ss_num_reg_images": INT,
    "ss_num_batches_per_epoch": INT,
    "ss_num_epochs": INT,
    "ss_gradient_checkpointing": BOOL,
    "ss_gradient_accumulation_steps": INT,
    "ss_max_train_steps": INT,
    "ss_lr_warmup_steps": rf"{INT}|{FLOAT}",
    "ss_lr_scheduler": r"[a-z_]+",
    "ss_network_module": r"networks\.lora",
    "ss_network_dim": INT,
    "ss_network_alpha": FLOAT,
    "ss_network_dropout": NONE_OR_FLOAT,
    "ss_mixed_precision": r"no|fp16|bf16",
    "ss_full_fp16": BOOL,
    "ss_v2": BOOL,
    "ss_base_model_version": r"sd_v1|sd_v2|sd_v2_v|sdxl_base_v1-0",
    "ss_clip_skip": NONE_OR_INT,
    "ss_max_token_length": NONE_OR_INT,
    "ss_cache_latents": BOOL,
    "ss_seed": INT,
    "ss_lowram": BOOL,
    "ss_noise_offset": NONE_OR_FLOAT,
    "ss_multires_noise_iterations": NONE_OR_INT,
    "ss_multires_noise_discount": FLOAT,
    "ss_adaptive_noise_scale": NONE_OR_FLOAT,
    "ss_zero_terminal_snr": BOOL,
    "ss_training_comment": NONE_OR_TEXT,
    "ss_optimizer": r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*(\(.*\))?",
    "ss_max_grad_norm": FLOAT,
    "ss_caption_dropout_rate": FLOAT,
    "ss_caption_dropout_every_n_epochs": INT,
    "ss_caption_tag_dropout_rate": FLOAT,
    "ss_face_crop_aug_range": r"None|\(.*\)",
    "ss_prior_loss_weight": FLOAT,
    "ss_min_snr_gamma": NONE_OR_FLOAT,
    "ss_scale_weight_norms": NONE_OR_FLOAT,
    "ss_ip_noise_gamma": NONE_OR_FLOAT,
    "ss_debiased_estimation": BOOL,
    "ss_noise_offset_random_strength": BOOL,
    "ss_ip_noise_gamma_random_strength": BOOL,
    "ss_loss_type": r"l1|l2|huber|smooth_l1",
    "ss_fp8_base": BOOL,
    "ss_fp8_base_unet": BOOL,
    "ss_batch_size_per_device": INT,
    "ss_total_batch_size": INT,
    "ss_resolution": rf"\({INT}, {INT}\)",
    "ss_color_aug": BOOL,
    "ss_flip_aug": BOOL,
    "ss_random_crop": BOOL,
    "ss_shuffle_caption": BOOL,
    "ss_enable_bucket": BOOL,
    "ss_bucket_no_upscale": BOOL,
    "ss_min_bucket_reso": INT,
    "ss_max_bucket_reso": INT,
    "ss_keep_tokens": INT,
    "ss_dataset_dirs": JSON,
    "ss_reg_dataset_dirs": JSON,
    "ss_tag_frequency": JSON,
    "ss_bucket_info": JSON,
    "ss_sd_model_hash": r"[0-9a-f]{8}",
    "ss_new_sd_model_hash": r"[0-9a-f]{64}",
    "ss_sd_model_name": r".+\.(safetensors|ckpt)",
    "ss_steps": INT,
    "ss_epoch": INT,
    "modelspec.sai_model_spec": r"1\.0\.1",
    "modelspec.architecture": r"stable-diffusion-.+/lora",
    "modelspec.implementation": r".+",
    "modelspec.implementation_version": r"\S+/\S+",
    "modelspec.title": r".+",
    "modelspec.resolution": rf"{INT}x{INT}",
    "modelspec.date": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
    "modelspec.prediction_type": r"epsilon|v",
}


@pytest.fixture(scope="module")
def trained(tiny_host, tmp_path_factory) -> tuple[Path, dict]:
    """Two folders: `3_zkw` (kohya's repeats prefix, 2 images) and a plain one (3 images, 2 repeats
    from the config); one tall image so a second bucket and an aspect error exist."""
    root = tmp_path_factory.mktemp("kohya-meta")
    rng = np.random.default_rng(1)
    shapes = {"3_zkw": [(64, 64), (64, 64)], "plain": [(64, 64), (64, 64), (64, 100)]}
    for folder, sizes in shapes.items():
        (root / folder).mkdir()
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(root / folder / f"{i}.png")
            (root / folder / f"{i}.txt").write_text("zkw, red", encoding="utf-8")
    config = TrainConfig.from_dict({
        "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 32,
        "sample_every_n_steps": 0, "cache_latents_to_disk": False, "mixed_precision": "no",
        "num_repeats": 2, "max_train_steps": 2, "gradient_accumulation_steps": 1, "save_state": False,
    })  # fmt: skip
    result = train(tiny_host, prepare(config, root, frozenset({"num_repeats", "max_train_steps"})), root / "out")
    return result.final_file, read_metadata(result.final_file)


def test_every_key_kohya_writes_is_there_in_kohya_format(trained):
    _, meta = trained
    missing = sorted(set(KOHYA) - set(meta))
    assert not missing, f"kohya writes these keys, we do not: {missing}"
    wrong = {}
    for key, shape in KOHYA.items():
        value = meta[key]
        if shape == JSON:
            try:
                json.loads(value)
            except ValueError:
                wrong[key] = value
        elif not re.fullmatch(shape, value):
            wrong[key] = value
    assert not wrong, f"values not in kohya's format: {wrong}"


def test_counts_are_images_times_repeats_like_kohya(trained):
    _, meta = trained
    assert meta["ss_num_train_images"] == str(2 * 3 + 3 * 2)
    dirs = json.loads(meta["ss_dataset_dirs"])
    assert dirs == {"3_zkw": {"n_repeats": 3, "img_count": 2}, "plain": {"n_repeats": 2, "img_count": 3}}
    buckets = json.loads(meta["ss_bucket_info"])
    assert sum(b["count"] for b in buckets["buckets"].values()) == 12
    assert len(buckets["buckets"]) == 2
    # the tall image is the only one with an aspect error, counted once (without repeats)
    tall = next(b["resolution"] for b in buckets["buckets"].values() if b["resolution"] != [64, 64])
    assert buckets["mean_img_ar_error"] == pytest.approx(abs(tall[0] / tall[1] - 64 / 100) / 5)
    assert meta["ss_num_batches_per_epoch"] == "12" and meta["ss_total_batch_size"] == "1"
    assert meta["ss_resolution"] == "(64, 64)"


def test_names_and_versions_are_kohyas(trained, tiny_files):
    _, meta = trained
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW"
    assert meta["ss_sd_model_name"] == Path(tiny_files.checkpoint).name
    assert "ss_network_args" not in meta  # no conv layers: kohya omits the key
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.implementation_version"].startswith("lora-forge/")
    assert meta["ss_network_dropout"] == "None" and meta["ss_training_comment"] == "None"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {}
