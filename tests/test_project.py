"""炼丹 projects: names, manifest versions, two tabs, vanished folders, and what the bar shows on the real Blocks
(the bar's rules themselves: tests/test_app_steps.py)."""

from __future__ import annotations

import json

import pytest

from lora_forge import project as pj
from lora_forge.errors import ForgeError
from tests.blocks_support import call, handler
from tests.test_webui_train import dataset  # noqa: F401 - fixture


def test_chinese_and_long_names_get_short_ascii_folders(tmp_path):
    a = pj.create(tmp_path, "我的角色")
    b = pj.create(tmp_path, "我的角色 第二版")
    long_name = "Alice in Wonderland " * 9
    c = pj.create(tmp_path, long_name)
    assert a.folder.name == "project" and b.folder.name == "project-2"
    assert len(c.folder.name) <= pj.MAX_FOLDER and c.folder.name.isascii()
    assert pj.open_project(a.folder).name == "我的角色"
    assert pj.open_project(c.folder).name == long_name.strip()
    for p in (a, b, c):
        assert {d.name for d in p.folder.iterdir() if d.is_dir()} == set(pj.SUBDIRS)
    with pytest.raises(ForgeError, match="already exists"):
        pj.create(tmp_path, "我的角色")
    with pytest.raises(ForgeError, match="keep it under"):
        pj.create(tmp_path, "x" * 201)
    with pytest.raises(ForgeError, match="give the project a name"):
        pj.create(tmp_path, " \t\n")
    assert pj.create(tmp_path, "CON").folder.name != "con"  # a Windows device name


def test_listing_and_last_opened_survive_a_restart(tmp_path):
    first = pj.create(tmp_path, "first")
    second = pj.create(tmp_path, "second")
    second.set_step("train")
    assert [p.name for p in pj.list_projects(tmp_path)] == ["second", "first"]
    reopened = pj.last_opened(tmp_path)  # a new process reads only the disk
    assert reopened is not None and reopened.name == "second" and reopened.step == "train"
    pj.remember(tmp_path, first.folder)
    assert pj.last_opened(tmp_path).name == "first"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / pj.MANIFEST).write_text("{not json", encoding="utf-8")
    assert {p.name for p in pj.list_projects(tmp_path)} == {"first", "second"}
    with pytest.raises(ForgeError, match="cannot be read"):
        pj.open_project(tmp_path / "broken")


def test_two_tabs_cannot_clobber_each_other(tmp_path):
    pj.create(tmp_path, "shared")
    tab_a = pj.find(tmp_path, "shared")
    tab_b = pj.find(tmp_path, "shared")
    tab_a.save({"settings": {"note": "from A"}})
    with pytest.raises(ForgeError, match="another browser tab"):
        tab_b.save({"settings": {"note": "from B"}})
    assert pj.find(tmp_path, "shared").settings == {"note": "from A"}
    # where the user left off and runs merge instead: both tabs' facts are true, and they do not
    # make the other tab's next change fail
    tab_c = pj.find(tmp_path, "shared")
    tab_b.set_step("tag")
    tab_b.add_run(tmp_path / "some-run")
    on_disk = pj.find(tmp_path, "shared")
    assert on_disk.settings == {"note": "from A"} and on_disk.step == "tag" and on_disk.runs == [tmp_path / "some-run"]
    tab_c.save({"settings": {"note": "from C"}})
    assert pj.find(tmp_path, "shared").step == "tag"


def test_renamed_folder_is_followed_and_deleted_one_keeps_the_work(tmp_path):
    p = pj.create(tmp_path, "moving")
    p.folder.rename(tmp_path / "moved-by-hand")
    p.save({"settings": {"epochs": 12}})
    assert p.folder == tmp_path / "moved-by-hand"
    assert pj.open_project(p.folder).settings == {"epochs": 12}

    q = pj.create(tmp_path, "doomed")
    import shutil

    shutil.rmtree(q.folder)
    with pytest.raises(ForgeError, match="is gone") as err:
        q.save({"settings": {"epochs": 30}})
    kept = list((tmp_path / pj.RECOVERED).glob("*.json"))
    assert len(kept) == 1 and str(kept[0]) in str(err.value)
    assert json.loads(kept[0].read_text(encoding="utf-8"))["name"] == "doomed"


def test_newer_project_opens_read_only(tmp_path):
    p = pj.create(tmp_path, "future")
    data = json.loads((p.folder / pj.MANIFEST).read_text(encoding="utf-8"))
    data["schema"] = pj.SCHEMA_VERSION + 1
    (p.folder / pj.MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    opened = pj.open_project(p.folder)
    assert "newer LoRA Forge" in opened.read_only
    before = (p.folder / pj.MANIFEST).read_bytes()
    with pytest.raises(ForgeError, match="read-only"):
        opened.save({"name": "changed"})
    opened.set_step("train")  # silently not saved
    assert (p.folder / pj.MANIFEST).read_bytes() == before


def test_page_load_restores_project_step_settings_and_offers_resume(tmp_path):
    """What the tab shows after a WebUI restart (its load handler on the real Blocks): the last
    project, its dataset folder, the tab of its step, the training fields of its last config, and
    the run the restart cut short with a Resume offer."""
    from lora_forge.settings import Settings
    from lora_forge.train.config import TrainConfig
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext

    root = tmp_path / "projects"
    p = pj.create(root, "重启之后")
    p.set_step("train")
    run = tmp_path / "Lora" / "cut"
    run.mkdir(parents=True)
    config = TrainConfig(output_name="cut", network_dim=8, min_bucket_reso=64, preset="person", flip_aug=False)
    (run / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    (run / "state").mkdir()
    (run / "state" / "state.json").write_text("{}", encoding="utf-8")
    p.add_run(run)

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=root)
    blocks = tab.build(UiContext(host=lambda: None, settings=lambda: settings))
    out = call(blocks, "on_load")
    assert "Reopened project “重启之后”" in out["lora_forge_project_msg"]
    assert out["lora_forge_dataset_dir"] == str(p.dataset_dir) == out["lora_forge_prepare_out"]
    assert out["lora_forge_sections"]["selected"] == "train"
    assert out["lora_forge_train_network_dim"]["value"] == 8
    assert out["lora_forge_train_extra"] == "min_bucket_reso = 64"  # a key with no field of its own
    assert out["lora_forge_resume_row"]["visible"] is True and "cut" in out["lora_forge_resume_text"]
    assert "did not finish" in out["lora_forge_next"]


def test_lora_names_keep_chinese_and_drop_what_breaks_a_file_or_prompt():
    assert pj.lora_name("我的角色") == "我的角色"
    assert pj.lora_name("My cat: v2 (final)") == "My_cat_v2_final"
    assert pj.lora_name('a/b\\c*?"<>|,d') == "a_b_c_d"
    assert pj.lora_name("...") == pj.lora_name("CON") == "lora"
    assert len(pj.lora_name("很长的名字" * 30)) == pj.MAX_LORA_NAME


def test_a_new_project_trains_under_its_own_name_and_its_tagger_trigger_word(tmp_path):
    """Opening a project that has not trained yet must not leave the previous project's LoRA name,
    trigger word or extra settings in 训练; the trigger word the tagger wrote is carried to 训练 and
    kept by the project for after a restart (on the real Blocks' handlers)."""
    from lora_forge.settings import Settings
    from lora_forge.train.config import TrainConfig
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext
    from lora_forge.ui.projects import to_state

    root = tmp_path / "projects"
    old = pj.create(root, "旧项目")
    run = tmp_path / "Lora" / "old"
    run.mkdir(parents=True)
    config = TrainConfig(output_name="old", trigger_word="oldtrig", min_bucket_reso=64)
    (run / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    old.add_run(run)
    new = pj.create(root, "小明 v2")

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=root)
    blocks = tab.build(UiContext(host=lambda: None, settings=lambda: settings))
    out = call(blocks, "on_open", "旧项目")
    assert out["lora_forge_train_output_name"]["value"] == "old"
    assert out["lora_forge_train_trigger_word"]["value"] == "oldtrig"
    assert "min_bucket_reso = 64" in out["lora_forge_train_extra"]

    out = call(blocks, "on_open", "小明 v2")
    assert out["lora_forge_train_output_name"]["value"] == "小明_v2"
    assert out["lora_forge_train_trigger_word"]["value"] == ""
    assert out["lora_forge_train_extra"] == "" and out["lora_forge_tagger_trigger"] == ""

    carry = handler(blocks, "carry_trigger")
    assert [c.elem_id for c in carry.outputs] == ["lora_forge_train_trigger_word"]
    assert carry.fn(to_state(new), "  xiaoming ") == "xiaoming"
    assert pj.open_project(new.folder).settings == {"trigger_word": "xiaoming"}
    assert pj.open_project(new.folder).revision == new.revision  # another tab's next save still works
    out = call(blocks, "on_load")  # a restart
    assert out["lora_forge_train_trigger_word"]["value"] == "xiaoming"
    assert out["lora_forge_tagger_trigger"] == out["lora_forge_editor_trigger"] == "xiaoming"


def test_the_bar_is_recomputed_after_each_section_action_that_changes_the_files(tmp_path):
    """Prepare, tag, save, roll back a save and render a grid change what the steps show; each
    button's own handler is followed by the bar's (a stale 'done' after a rollback misleads)."""
    from lora_forge.settings import Settings
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "projects")
    blocks = tab.build(UiContext(host=lambda: None, settings=lambda: settings))
    ids = {c._id: getattr(c, "elem_id", None) for c in blocks.blocks.values()}
    names = [getattr(f.fn, "__name__", "") for f in blocks.fns]
    deps = blocks.dependencies
    followed = set()
    for i, dep in enumerate(deps):
        if dep.get("trigger") == "click" and any(
            d.get("trigger_after") == i and names[j] == "on_work_done" for j, d in enumerate(deps)
        ):
            followed.update(ids.get(t) for t in dep["targets"])
    prefix = "lora_forge_"
    wanted = {"prepare_run", "tagger_run", "editor_save", "editor_rollback", "grid_go"}
    assert {prefix + w for w in wanted} <= followed


def test_reopening_after_an_api_run_keeps_the_projects_name_and_trigger_word(tmp_path, tiny_host, dataset):  # noqa: F811
    """Issue 17, WebUI item 8: a run started over the HTTP API on the project's dataset filled 训练 from
    that run when the project was reopened, and the trigger word typed in 打标 was lost. The run still
    counts for the steps and 测试; 训练 keeps the project's own name and trigger word."""
    import shutil
    import time

    from fastapi import FastAPI

    from lora_forge import api
    from lora_forge.settings import Settings
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext
    from lora_forge.ui.projects import to_state
    from tests.asgi import request
    from tests.test_webui_train import FAST

    root = tmp_path / "projects"
    p = pj.create(root, "小明")
    for f in dataset.iterdir():
        shutil.copy(f, p.dataset_dir)
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=root)
    blocks = tab.build(UiContext(host=lambda: tiny_host, settings=lambda: settings))
    assert handler(blocks, "carry_trigger").fn(to_state(p), "xm") == "xm"  # typed in 打标

    app = FastAPI()
    api.register(app, host=lambda: tiny_host, settings=lambda: settings)
    config = {k: v for k, v in FAST.items() if k != "trigger_word"}
    config.update(output_name="from_api", max_train_epochs=1, sample_every_n_steps=0)
    started = request(app, "POST", "/lora_forge/v1/train", json={"data_dir": str(p.dataset_dir), "config": config})
    assert started.status_code == 200, started.text
    deadline = time.time() + 300
    while (status := request(app, "GET", f"/lora_forge/v1/train/runs/{started.json()['id']}").json())["state"] not in (
        "finished",
        "stopped",
        "failed",
    ):
        assert time.time() < deadline, status
        time.sleep(0.3)
    assert status["state"] == "finished", status

    for name, args in (("on_open", ("小明",)), ("on_load", ())):  # opened again, and after a restart
        out = call(blocks, name, *args)
        assert out["lora_forge_train_output_name"]["value"] == "小明"
        assert out["lora_forge_train_trigger_word"]["value"] == "xm"
        assert 'lf-step-done" id="lora_forge_step_train"' in out["lora_forge_steps"]  # trained, by the API
        assert "from_api" in out["lora_forge_train_status"]  # the run itself is the project's last run
    assert [r.name for r in pj.open_project(p.folder).runs] == ["from_api"]
