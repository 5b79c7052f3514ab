"""优化: advice from grid scores, and the next run's config written beside the previous run's."""

from __future__ import annotations

from lora_forge import optimise
from lora_forge.train.config import TrainConfig, read_config_file


def _scores(
    best_epoch: int, best_strength: float, fid: float, epochs=(1, 2, 3, 4), strengths=(0.5, 0.75, 1.0), warn=""
):
    cells = [
        {"epoch": e, "strength": s, "fidelity": fid if (e, s) == (best_epoch, best_strength) else 0.1}
        for e in epochs
        for s in strengths
    ]
    rec = {"epoch": best_epoch, "strength": best_strength, "reason": "best balance"}
    return {"cells": cells, "recommendation": rec, "overfitting_warning": warn}


def test_underfit_trains_longer():
    a = optimise.advise(_scores(4, 1.0, 0.3), {"max_train_epochs": 4, "num_repeats": 8})
    assert a.kind == "underfit"
    assert a.changes["max_train_epochs"] > 4 and a.changes["num_repeats"] > 8


def test_a_lora_that_changes_nothing_is_underfit_not_overfit():
    """Every cell scores alike (a run far too short, or at a tiny learning rate): the recommended
    cell is then the earliest epoch at the lowest strength, which alone would read as overfit."""
    scores = _scores(1, 0.5, 0.61, epochs=(1, 2), strengths=(0.5, 1.0))
    for cell in scores["cells"]:
        cell["fidelity"] = 0.61 + 0.001 * cell["epoch"]
    a = optimise.advise(scores, {"max_train_epochs": 2, "num_repeats": 1})
    assert a.kind == "underfit" and "0.61" in a.markdown()
    assert a.changes == {"max_train_epochs": 3, "num_repeats": 2}
    # the same flat grid high up is a LoRA that works at every strength, not one that learned nothing
    for cell in scores["cells"]:
        cell["fidelity"] = 0.9
    assert optimise.advise(scores, {"max_train_epochs": 2}).kind != "underfit"


def test_early_epoch_or_low_strength_is_overfit():
    a = optimise.advise(_scores(2, 1.0, 0.8), {"max_train_epochs": 4, "num_repeats": 8})
    assert a.kind == "overfit" and a.changes == {"max_train_epochs": 2, "num_repeats": 6}
    b = optimise.advise(_scores(4, 0.5, 0.8), {"max_train_epochs": 4, "num_repeats": 1, "learning_rate": 1e-4})
    assert b.kind == "overfit" and b.strength == 0.5 and b.changes["learning_rate"] < 1e-4
    c = optimise.advise(_scores(4, 1.0, 0.8, warn="Possible overfitting: …"), {"max_train_epochs": 4})
    assert c.kind == "overfit" and "Possible overfitting" in c.markdown()


def test_good_run_changes_nothing_and_no_scores_says_so():
    assert optimise.advise(_scores(4, 1.0, 0.9), {"max_train_epochs": 4}).kind == "good"
    assert optimise.advise({"cells": [], "recommendation": None}, {}).kind == "unknown"


def test_next_config_keeps_the_previous_run(tmp_path):
    run = tmp_path / "Lora" / "mine"
    run.mkdir(parents=True)
    previous = TrainConfig(output_name="mine", max_train_epochs=10, num_repeats=8, resume="x").to_toml()
    (run / "config.toml").write_text(previous, encoding="utf-8")
    path, values = optimise.next_config(run, {"max_train_epochs": 6}, tmp_path / "configs")
    again, _ = optimise.next_config(run, {"max_train_epochs": 5}, tmp_path / "configs")
    assert (run / "config.toml").read_text(encoding="utf-8") == previous
    assert path != again and path.parent == tmp_path / "configs"
    saved = read_config_file(path)
    assert saved["max_train_epochs"] == 6 and saved["num_repeats"] == 8 and not saved.get("resume")
    assert values["max_train_epochs"] == 6


def test_train_again_fills_the_train_section_and_keeps_the_run(tmp_path):
    """The 优化 button's handler on the real tab: new config in the project, Train's fields filled
    with it, the Train tab selected; a second tab's stale copy is refused."""
    from lora_forge import project as pj
    from lora_forge.settings import Settings
    from lora_forge.ui import projects, tab
    from lora_forge.ui.context import UiContext
    from tests.blocks_support import by_id

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "projects")
    blocks = tab.build(UiContext(host=lambda: None, settings=lambda: settings))
    handler = next(f for f in blocks.fns if getattr(f.fn, "__name__", "") == "on_again")
    p = pj.create(tmp_path / "projects", "again")
    run = tmp_path / "Lora" / "mine"
    run.mkdir(parents=True)
    from lora_forge.train.presets import preset_config

    previous = preset_config(
        "style", {"output_name": "mine", "max_train_epochs": 10, "num_repeats": 8, "min_bucket_reso": 64}
    ).to_toml()
    (run / "config.toml").write_text(previous, encoding="utf-8")
    stale = projects.to_state(p)
    changes = {"max_train_epochs": 4, "num_repeats": 6}
    out = by_id(handler, handler.fn(projects.to_state(p), {"run": str(run), "changes": changes}))
    assert "previous run is kept" in out["lora_forge_optimise_advice"]
    assert out["lora_forge_sections"]["selected"] == "train"
    assert out["lora_forge_train_max_train_epochs"]["value"] == 4
    assert out["lora_forge_train_num_repeats"]["value"] == 6
    # keys 训练 has no field for reach Start through its "more settings" box (no preset selected here
    # means Custom; the run was Art style, whose own defaults need no line: flip_aug is one of them)
    assert out["lora_forge_train_extra"].splitlines() == ["preset = style", "min_bucket_reso = 64"]
    assert (run / "config.toml").read_text(encoding="utf-8") == previous
    saved = pj.open_project(p.folder).settings["next_config"]
    assert read_config_file(saved)["max_train_epochs"] == 4
    refused = by_id(handler, handler.fn(stale, {"run": str(run), "changes": {"max_train_epochs": 3}}))
    assert "another browser tab" in refused["lora_forge_optimise_advice"]
    same_preset = handler.fn(
        projects.to_state(pj.open_project(p.folder)), {"run": str(run), "changes": {}}, "Art style"
    )
    assert by_id(handler, same_preset)["lora_forge_train_extra"] == "min_bucket_reso = 64"
