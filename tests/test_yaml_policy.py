"""A yaml beside a checkpoint is data: anything it names outside the ldm/sgm model classes is refused
before a single object is built, by the standalone host (train, grid, ui --ckpt) and the inspector."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lora_forge.errors import ForgeError

ROOT = Path(__file__).resolve().parent.parent


def _model_with_yaml(tiny_files, folder: Path, edit) -> tuple[Path, Path]:
    """The tiny checkpoint copied into `folder` with its own yaml, changed by `edit(tree)`."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = Path(shutil.copy(tiny_files.checkpoint, folder / "model.safetensors"))
    tree = yaml.safe_load(Path(tiny_files.config).read_text(encoding="utf-8"))
    edit(tree)
    config = ckpt.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return ckpt, config


def _command(marker: Path) -> dict:
    return {"target": "subprocess.getoutput", "params": {"cmd": f"touch {marker}"}}


def _at_top(marker):
    def edit(tree):
        tree["model"] = _command(marker)

    return edit


def _in_unet(marker):
    def edit(tree):
        tree["model"]["params"]["unet_config"]["target"] = "subprocess.getoutput"
        tree["model"]["params"]["unet_config"]["params"] = {"cmd": f"touch {marker}"}

    return edit


def _in_vae_loss(marker):  # three levels down, in a part nobody looks at
    def edit(tree):
        tree["model"]["params"]["first_stage_config"]["params"]["lossconfig"] = _command(marker)

    return edit


def _interpolated(marker):  # the target is only known after interpolation: refused as written
    def edit(tree):
        tree["evil"] = "subprocess.getoutput"
        tree["model"]["params"]["scheduler_config"] = {"target": "${evil}", "params": {"cmd": f"touch {marker}"}}

    return edit


def _pickle_path(marker):  # ldm torch.loads ckpt_path: a pickle would run code
    def edit(tree):
        tree["model"]["params"]["ckpt_path"] = str(marker)

    return edit


@pytest.mark.parametrize("variant", [_at_top, _in_unet, _in_vae_loss, _interpolated, _pickle_path])
def test_host_refuses_a_yaml_naming_foreign_code_and_runs_none_of_it(tiny_files, tmp_path, variant):
    from lora_forge.host.standalone import StandaloneHost

    marker = tmp_path / "pwned"
    ckpt, _ = _model_with_yaml(tiny_files, tmp_path / "m", variant(marker))
    with pytest.raises(ForgeError, match="refused to use this model config") as e:
        StandaloneHost(ckpt).sd_model()
    assert "model.yaml" in str(e.value)
    assert not marker.exists()


def test_the_real_model_yaml_still_loads(tiny_files, tmp_path):
    from lora_forge.host.standalone import StandaloneHost

    ckpt, _ = _model_with_yaml(tiny_files, tmp_path / "m", lambda tree: None)
    assert StandaloneHost(ckpt).sd_model().sd_checkpoint_info.name == "model.safetensors"


def test_builtin_configs_pass_the_allow_list():
    from lora_forge.host.ldm_build import CONFIG_DIR
    from lora_forge.model.yaml_policy import dangerous_entries, read_yaml_tree

    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        assert dangerous_entries(read_yaml_tree(config)) == [], config.name


def test_yaml_alias_bomb_and_deep_nesting_are_refused_quickly(tmp_path):
    from lora_forge.model.yaml_policy import read_yaml_tree

    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ForgeError, match="aliases"):
        read_yaml_tree(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: " + "[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(ForgeError, match="not a usable model config"):
        read_yaml_tree(deep)


def test_inspector_reports_the_yaml_as_dangerous_beside_its_checkpoint(tiny_files, tmp_path):
    from lora_forge.inspect import inspect_paths

    marker = tmp_path / "pwned"
    bad, _ = _model_with_yaml(tiny_files, tmp_path / "bad", _in_vae_loss(marker))
    good, _ = _model_with_yaml(tiny_files, tmp_path / "good", lambda tree: None)
    bad_report, good_report = inspect_paths([bad, good])
    assert bad_report.kind == "checkpoint"  # still says what the file is
    assert "DANGEROUS" in bad_report.error and "model.yaml" in bad_report.error
    assert "subprocess.getoutput" in bad_report.error
    assert good_report.error is None and good_report.details["yaml"] == "model.yaml"
    assert not marker.exists()


def test_train_dry_run_with_a_hostile_yaml_exits_2_and_runs_nothing(tiny_files, tmp_path):
    marker = tmp_path / "pwned"
    ckpt, _ = _model_with_yaml(tiny_files, tmp_path / "m", _in_unet(marker))
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (i * 90, 40, 200)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a photo", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", "--ckpt", str(ckpt), "--data", str(data), "--name", "x", "--out", str(tmp_path / "out")]
    sets = ["--set", "resolution=64", "--set", "min_bucket_reso=64", "--set", "max_bucket_reso=128"]
    r = subprocess.run(
        [sys.executable, "-m", "lora_forge", *args, "--dry-run", *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "refused to use this model config" in r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()
