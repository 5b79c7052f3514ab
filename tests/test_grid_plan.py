"""Grid plan: the files of one run in epoch order (the final file as the last epoch, nothing renamed),
strengths in every accepted spelling, the prompt, and every refusal before anything renders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lora_forge import cli
from lora_forge.errors import ForgeError
from lora_forge.grid.plan import collect_files, make_plan, parse_strengths
from lora_forge.grid.size import check_size, parse_size
from lora_forge.grid.testing import write_run


@pytest.fixture(scope="module")
def run_files(tiny_host, tmp_path_factory) -> list[Path]:
    """lfgrid-000001, lfgrid-000002 and the final lfgrid.safetensors, written once for the module."""
    return write_run(tiny_host.sd_model(), tmp_path_factory.mktemp("grid-run"), epochs=2)


def _copy(files: list[Path], folder: Path, names: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        target = folder / (names[i] if names else f.name)
        shutil.copyfile(f, target)
        out.append(target)
    return out


def _with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    from safetensors.torch import load_file, save_file

    from lora_forge.lora.fileformat import read_metadata

    meta = {**read_metadata(src), **changes}
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1,0.5,1", [0.1, 0.5, 1.0]),
        ("0.1-1 (+0.1)", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("0 - 1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("1-0.5 (-0.25)", [1.0, 0.75, 0.5]),
        ("0.2-0.6", [0.2, 0.3, 0.4, 0.5, 0.6]),
        ("-0.5，0.5, 0.5", [-0.5, 0.5]),  # Chinese comma; a repeated value once
    ],
)
def test_strengths_parse(text, expected):
    assert parse_strengths(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("abc", "cannot read the strength 'abc'"),
        ("0.1,,x", "cannot read the strength 'x'"),
        ("", "no strengths given"),
        ("0-1 (+0)", "never reaches its end"),
        ("1-0 (+0.1)", "never reaches its end"),
        ("0-100 (+0.1)", "at most 40"),
        ("nan", "not a number"),
    ],
)
def test_strengths_refused_in_words(text, words):
    with pytest.raises(ForgeError) as e:
        parse_strengths(text)
    assert words in str(e.value)


def test_files_in_epoch_order_with_the_final_file_last(run_files, tmp_path):
    # written out of order, with a 10th epoch, so neither name order nor writing order can pass
    folder = tmp_path / "run"
    _copy(run_files, folder, ["lfgrid-000010.safetensors", "lfgrid-000002.safetensors", "lfgrid.safetensors"])
    files, _infos, notes = collect_files(folder)
    assert [(f.path.name, f.epoch, f.is_final) for f in files] == [
        ("lfgrid-000002.safetensors", 2, False),
        ("lfgrid-000010.safetensors", 10, False),
        ("lfgrid.safetensors", 11, True),  # max + 1, like the tutorial's renamed last file
    ]
    assert [f.label for f in files] == ["000002", "000010", "000011 (final)"]
    assert notes == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(  # nothing renamed
        ["lfgrid-000010.safetensors", "lfgrid-000002.safetensors", "lfgrid.safetensors"]
    )


def test_final_file_takes_its_epoch_from_metadata(run_files, tmp_path):
    folder = tmp_path / "run"
    _copy(run_files[:2], folder)
    _with_metadata(run_files[2], folder / "lfgrid.safetensors", ss_epoch="7")
    files, _infos, _notes = collect_files(folder)
    assert [(f.epoch, f.is_final) for f in files] == [(1, False), (2, False), (7, True)]


def test_a_final_file_with_the_last_epochs_weights_is_shown_once(run_files, tmp_path):
    """Our trainer (and kohya) save the last epoch and the final file from the same weights."""
    folder = tmp_path / "run"
    _copy(run_files[:2], folder)
    _copy([run_files[1]], folder, ["lfgrid.safetensors"])
    files, _infos, notes = collect_files(folder)
    assert [f.path.name for f in files] == ["lfgrid-000001.safetensors", "lfgrid-000002.safetensors"]
    assert notes == ["lfgrid.safetensors holds the same weights as lfgrid-000002.safetensors: shown once"]


def test_other_models_in_the_folder_are_skipped_with_a_note(run_files, tiny_files, tmp_path):
    folder = tmp_path / "run"
    _copy(run_files[:1], folder)
    shutil.copyfile(tiny_files.checkpoint, folder / "some-checkpoint.safetensors")
    files, _infos, notes = collect_files(folder)
    assert [f.path.name for f in files] == ["lfgrid-000001.safetensors"]
    assert notes == ["skipped some-checkpoint.safetensors: not a LoRA"]
    with pytest.raises(ForgeError, match="not a LoRA file"):
        collect_files([folder / "some-checkpoint.safetensors"])


def test_mixed_runs_empty_folders_and_missing_paths_refused(run_files, tmp_path):
    mixed = tmp_path / "mixed"
    _copy(run_files[:2], mixed)
    _copy(run_files[:1], mixed, ["other-000001.safetensors"])
    with pytest.raises(ForgeError, match=r"2 different runs \(lfgrid, other\)"):
        collect_files(mixed)
    # same stem pattern but a different declared run name in the metadata
    declared = tmp_path / "declared"
    _copy(run_files[:1], declared)
    _with_metadata(run_files[1], declared / "lfgrid-000002.safetensors", ss_output_name="somebody-else")
    with pytest.raises(ForgeError, match="different runs"):
        collect_files(declared)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForgeError, match="no LoRA files"):
        collect_files(tmp_path / "empty")
    with pytest.raises(ForgeError, match="no such file or folder"):
        collect_files(tmp_path / "nope")


def test_lora_of_another_family_refused_naming_both(run_files, tiny_host, tmp_path):
    sdxl = _with_metadata(
        run_files[0],
        tmp_path / "xl-000001.safetensors",
        ss_base_model_version="sdxl_base_v1-0",
        **{"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
    )
    with pytest.raises(ForgeError) as e:
        make_plan([sdxl], "1", sd_model=tiny_host.sd_model())
    assert "trained for SDXL but the loaded model is SD1.x" in str(e.value)
    make_plan(run_files[:1], "1", sd_model=tiny_host.sd_model())  # the right family passes


def test_prompt_has_the_trigger_once_and_the_probe_by_default(run_files):
    plan = make_plan(run_files, "0.5,1")
    assert plan.trigger == "lfgrid"  # modelspec.trigger_phrase
    assert plan.prompt == "lfgrid, masterpiece, best quality, white hair, red dress"
    assert make_plan(run_files, "1", prompt="lfgrid, 1girl, beach").prompt == "lfgrid, 1girl, beach"
    # tags in at least half of the captions, minus the trigger: what a faithful cell shows
    assert [t for t, _s in plan.characteristic_tags] == ["1girl", "long_hair", "smile"]
    assert [f.path.name for f in plan.files] == [p.name for p in run_files]
    assert plan.x_labels() == ["000001", "000002", "000003 (final)"]


def test_grid_too_large_refused_before_rendering_with_its_size(run_files):
    with pytest.raises(ForgeError) as e:
        make_plan(run_files, "0.1-1 (+0.1)", size=(4096, 4096))
    assert "3 × 10 cells of 4096×4096" in str(e.value)
    assert "megapixel limit" in str(e.value)
    plan = make_plan(run_files, "0.5,1", size=(512, 512))
    with pytest.raises(ForgeError, match=r"only 10 MB of memory is free"):
        check_size(plan, available=10 * 2**20)
    assert "3 × 2 cells of 512×512" in check_size(plan, available=None)


def test_size_and_steps_checked(run_files):
    assert parse_size("512x768") == (512, 768) and parse_size("640") == (640, 640)
    with pytest.raises(ForgeError, match="WIDTHxHEIGHT"):
        parse_size("big")
    with pytest.raises(ForgeError, match="multiples of 8"):
        make_plan(run_files, "1", size=(500, 512))
    with pytest.raises(ForgeError, match="sampling steps"):
        make_plan(run_files, "1", steps=0)


def test_cli_refuses_bad_input_before_loading_the_model(tmp_path, capsys, tiny_files):
    (tmp_path / "empty").mkdir()
    base = ["grid", "--ckpt", str(tmp_path / "no-model.safetensors"), "--out", str(tmp_path / "g.png")]
    assert cli.main([*base, "--loras", str(tmp_path / "empty")]) == 2
    assert "no LoRA files" in capsys.readouterr().err
    assert cli.main([*base, "--loras", str(tmp_path), "--strengths", "lots"]) == 2
    assert "cannot read the strength 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_cli_json_reports_the_plan(run_files, tiny_files, tmp_path, capsys):
    folder = tmp_path / "run"
    _copy(run_files[:2], folder)
    out = tmp_path / "grid.png"
    args = ["grid", "--ckpt", str(tiny_files.checkpoint), "--loras", str(folder), "--strengths", "0.5,1"]
    args += ["--steps", "2", "--size", "64x64", "--out", str(out), "--json", "--xyz", "v1.10.1"]
    assert cli.main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] and data["cells"] == 4
    assert [f["label"] for f in data["plan"]["files"]] == ["000001", "000002"]
    assert out.is_file() and str(out) in data["saved"]
    assert len(data["xyz"]["script_args"]) == 18


def test_run_folders_listed_newest_first_and_keep_moves_never_deletes(run_files, tmp_path):
    import os

    from lora_forge.grid.files import keep_only, run_folders

    lora = tmp_path / "Lora"
    old = _copy(run_files[:1], lora / "old")
    new = _copy(run_files, lora / "chars" / "new")
    _copy(run_files[2:], lora)  # a lone final file is no run folder
    os.utime(old[0], (1_000_000, 1_000_000))
    assert run_folders(lora) == [lora / "chars" / "new", lora / "old"]
    assert run_folders(tmp_path / "missing") == []
    files, _infos, _notes = collect_files(lora / "chars" / "new")
    trash = tmp_path / "trash"
    folder, moved = keep_only(files, new[1], trash)
    assert [p.name for p in (lora / "chars" / "new").iterdir()] == [new[1].name]
    assert sorted(p.name for p in moved) == sorted([new[0].name, new[2].name])
    assert all(p.parent == folder and p.is_file() for p in moved)
    assert str(new[0]) in (folder / "README.txt").read_text(encoding="utf-8")
    with pytest.raises(ForgeError, match="nothing else to move"):
        keep_only(files, new[1], trash)
    with pytest.raises(ForgeError, match="not one of this grid's files"):
        keep_only(files, old[0], trash)


def test_a_folder_of_runs_and_a_run_with_siblings_name_the_run_folders_found(run_files, tmp_path):
    """`grid --loras runs/zkw` after a second run (zkw-2), and `--loras runs` itself (issue 17)."""
    runs = tmp_path / "runs"
    _copy(run_files, runs / "lfgrid")
    _copy(run_files, runs / "lfgrid-2")
    os.utime(runs / "lfgrid-2", (2_000_000_000, 2_000_000_000))  # the newer run
    with pytest.raises(ForgeError) as e:
        collect_files(runs)
    assert "holds run folders, not LoRA files: lfgrid, lfgrid-2" in str(e.value)
    assert str(runs / "lfgrid-2") in str(e.value)
    _files, _infos, notes = collect_files(runs / "lfgrid")
    assert "run folders beside lfgrid: lfgrid-2; this grid shows lfgrid" in notes
