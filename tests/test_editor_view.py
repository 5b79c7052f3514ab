"""The editor page's session (paging, current image, tag-click filter, preview → apply, rollback) and
the thumbnail cache, without a browser; and the `tags` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_forge.dataset.captions import STATE_DIR, list_history
from lora_forge.dataset.editor_thumbs import cache_dir, thumbnail
from lora_forge.dataset.editor_view import PAGE_SIZE, EditorSession
from lora_forge.errors import ForgeError
from tests.test_editor_ops import CAPTIONS, make_dataset

ROOT = Path(__file__).resolve().parent.parent


def big_dataset(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (16, 24), (i % 255, 10, 10)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text("odd, x" if i % 2 else "even, x", encoding="utf-8")
    return folder


def test_pages_and_stepping_through_the_view(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(big_dataset(tmp_path / "set", PAGE_SIZE + 10)))
    assert s.pages() == 2 and len(s.gallery()) == PAGE_SIZE
    assert s.gallery()[0][1] == "000.png" and Path(s.gallery()[0][0]).suffix == ".jpg"
    s.go_page(1)
    assert s.gallery()[0][1] == f"{PAGE_SIZE:03d}.png" and len(s.gallery()) == 10
    s.go_page(5)
    assert s.page == 1  # clamped
    s.go_page(-1)
    s.select_on_page(PAGE_SIZE - 1)
    assert s.step(1) is True and s.page == 1 and s.current_view()[0].startswith(f"{PAGE_SIZE:03d}.png")
    assert s.step(-1) is True and s.page == 0
    s.set_filter("odd", "", "")
    assert len(s.view) == (PAGE_SIZE + 10) // 2 and s.current == 1
    s.step(1)
    assert s.current == 3  # steps stay inside the filtered view


def test_tag_click_toggles_the_and_filter(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(make_dataset(tmp_path / "set")))
    text, msg = s.toggle_tag_filter("1girl")
    assert text == "1girl" and msg.startswith("3 of 4")
    text, msg = s.toggle_tag_filter("smile")
    assert text == "1girl, smile" and msg.startswith("2 of 4")
    text, msg = s.toggle_tag_filter("1girl")
    assert text == "smile" and msg.startswith("2 of 4")


def test_preview_then_apply_then_undo_and_stale_previews(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(make_dataset(tmp_path / "set")))
    s.set_filter("1girl", "", "")
    p = s.preview("Remove tags", "smile", "", "back", "tag", "Filtered images")
    assert (p.changed, p.considered) == (2, 3)
    assert s.ds.counts()["smile"] == 2  # the preview changed nothing
    assert "2 caption(s) changed" in s.apply_pending()
    assert "smile" not in s.ds.counts()
    with pytest.raises(ForgeError, match="preview an edit first"):
        s.apply_pending()  # one preview, one apply
    s.preview("Add tags", "new", "", "front", "tag", "All images")
    s.undo()  # an edit between preview and apply drops the preview
    with pytest.raises(ForgeError, match="preview an edit first"):
        s.apply_pending()
    assert s.ds.counts()["smile"] == 2
    with pytest.raises(ForgeError, match="position must be"):
        s.preview("Add tags", "x", "", "middle", "tag", "All images")
    p = s.preview("Sort tags A-Z", "", "", "", "tag", "Current image")
    assert p.considered == 1


def test_selection_scope(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(make_dataset(tmp_path / "set")))
    with pytest.raises(ForgeError, match="no image selected"):
        s.preview("Add tags", "x", "", "back", "tag", "Selected images")
    s.toggle_selected()  # a
    s.step(1)
    s.step(1)
    s.toggle_selected()  # c
    assert [rel for _, rel in s.gallery()] == ["✓ a.png", "b.png", "✓ c.png", "d.png"]
    assert s.show_selection() == "showing the 2 selected image(s)" and len(s.gallery()) == 2
    s.preview("Add tags", "picked", "", "back", "tag", "Selected images")
    s.apply_pending()
    assert sorted(s.ds.items[i].rel for i in s.ds.having("picked")) == ["a.png", "c.png"]
    s.toggle_selected()  # current is a again: unselect
    assert s.selection == {2} and "1 selected" in s.status()
    s.clear_selection()
    assert s.selection == set()


def test_typed_caption_is_kept_when_moving_on(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(make_dataset(tmp_path / "set")))
    assert s.keep_typed(s.ds.caption(0)) == ""  # unchanged text: no edit, no undo step
    assert s.keep_typed("1girl,solo , long_hair,smile,smile") == ""  # same tags, other spacing
    assert s.ds.undo_stack == []
    assert "changed" in s.keep_typed("typed, tags")
    s.step(1)
    assert s.ds.caption(0) == "typed, tags" and s.current == 1


def test_trigger_word_and_caption_edit_then_save_and_rollback(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set")
    before = {p.name: p.read_bytes() for p in root.glob("*.txt")}
    s = EditorSession()
    s.load(str(root))
    assert "4 more caption(s)" in s.add_trigger("sks")
    s.edit_current("a new, sks, caption")
    assert s.ds.caption(s.current) == "sks, a new, caption"  # the trigger goes first
    with pytest.raises(ForgeError, match="unsaved"):
        s.load(str(root))  # reloading would drop the edits
    with pytest.raises(ForgeError, match="before rolling back"):
        s.rollback("anything")
    assert s.save().startswith("saved 4 caption file(s)")
    assert (root / "a.txt").read_text("utf-8") == "sks, a new, caption"
    choices = s.history_choices()
    assert len(choices) == 1 and "tag editor" in choices[0]
    assert "4 caption file(s) restored" in s.rollback(choices[0])
    assert {p.name: p.read_bytes() for p in root.glob("*.txt")} == before
    assert s.ds.caption(0) == CAPTIONS["a"] and s.ds.trigger == "sks"
    assert len(list_history(root)) == 2


def test_dataset_folder_vanishing_while_the_page_is_open(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set")
    s = EditorSession()
    s.load(str(root))
    s.edit_current("changed, here")
    (root.parent / "away").mkdir()
    root.rename(root.parent / "away" / "set")
    s.step(1)  # browsing on shows grey placeholders instead of failing
    assert all(Path(path).is_file() for path, _ in s.gallery())
    assert Path(s.current_view()[2]).is_file()
    with pytest.raises(ForgeError, match="dataset folder is gone"):
        s.save()
    assert "1 unsaved" in s.status()  # the edit is still there
    (root.parent / "away" / "set").rename(root)
    assert s.save().startswith("saved 1")


def test_errors_before_a_dataset_is_loaded() -> None:
    s = EditorSession()
    assert s.status() == "no dataset loaded" and s.tag_rows() == [] and s.history_choices() == []
    with pytest.raises(ForgeError, match="load a dataset first"):
        s.save()
    with pytest.raises(ForgeError, match="type the dataset folder"):
        s.load("  ")


def test_thumbnails_are_made_once_and_remade_when_the_image_changes(tmp_path: Path) -> None:
    root = big_dataset(tmp_path / "set", 1)
    folder = cache_dir(root)
    assert folder == root / STATE_DIR / "thumbs"
    img = root / "000.png"
    first = thumbnail(folder, img)
    made = first.stat().st_mtime_ns
    assert thumbnail(folder, img) == first and first.stat().st_mtime_ns == made  # cached, not redone
    with Image.open(first) as im:
        assert max(im.size) <= 256
    Image.new("RGB", (40, 20), (0, 255, 0)).save(img)
    os.utime(img, ns=(made + 10**9, made + 10**9))
    second = thumbnail(folder, img)
    assert second != first
    with Image.open(second) as im:
        assert im.size == (40, 20) and im.getpixel((5, 5))[1] > 200
    (root / "broken.png").write_bytes(b"\x89PNG truncated")
    assert thumbnail(folder, root / "broken.png").name.startswith("unreadable")
    Image.new("RGB", (8, 8)).save(root / "broken.png")  # fixed: a new mtime/size, so it is tried again
    os.utime(root / "broken.png", ns=(made + 2 * 10**9, made + 2 * 10**9))
    assert not thumbnail(folder, root / "broken.png").name.startswith("unreadable")


# ------------------------------------------------------------------ command line


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_forge", "tags", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_ops_in_order_dry_run_json_history_and_rollback(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set")
    before = {p.name: p.read_bytes() for p in root.glob("*.txt")}
    r = cli(str(root), "--remove", "smile", "--replace", "1girl=1woman", "--trigger", "sks", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["operation"] for o in out["operations"]] == ["add sks (front)", "remove smile", "replace 1girl → 1woman"]
    assert [o["changed"] for o in out["operations"]] == [4, 2, 3]
    assert out["would_write"] == 4 and out["written"] == 0
    assert {p.name: p.read_bytes() for p in root.glob("*.txt")} == before

    r = cli(str(root), "--where", "1girl", "--without", "solo", "--add", "hat", "--position", "front")
    assert r.returncode == 0, r.stderr
    assert (root / "b.txt").read_text("utf-8") == "hat, 1girl, short hair, smile"
    assert (root / "a.txt").read_bytes() == before["a.txt"]
    r = cli(str(root), "--history", "--json")
    entry = json.loads(r.stdout)["history"][0]
    assert entry["reason"] == "tags add hat (front)"
    assert cli(str(root), "--rollback", entry["id"]).returncode == 0
    assert {p.name: p.read_bytes() for p in root.glob("*.txt")} == before
    assert len(list_history(root)) == 2
    r = cli(str(root), "--prune-history", "1")
    assert r.returncode == 0 and r.stdout.strip() == "deleted 1 old history entry"
    assert [e.reason for e in list_history(root)] == [f"rollback of {entry['id']} (tags add hat (front))"]


def test_cli_lists_tags_and_reports_bad_input(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set")
    r = cli(str(root), "--top", "2")
    assert r.returncode == 0 and r.stdout.splitlines()[-2:] == ["     3  1girl", "     2  smile"]
    csv = tmp_path / "zh.csv"
    csv.write_text("1girl,一个女孩\n", encoding="utf-8")
    r = cli(str(root), "--top", "1", "--translations", str(csv))
    assert r.stdout.splitlines()[-1] == "     3  1girl  一个女孩"
    r = cli(str(root), "--regex", "(oops=x")
    assert r.returncode == 2 and "not a valid regular expression" in r.stderr
    r = cli(str(root), "--replace", "no-equals-sign")
    assert r.returncode == 2 and "OLD=NEW" in r.stderr
    r = cli(str(tmp_path / "missing"), "--add", "x")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli(str(root), "--replace", r"\=_\==face")  # a kaomoji tag, its '=' escaped
    assert r.returncode == 0 and (root / "d.txt").read_text("utf-8") == "1girl, solo, face, name_(series)"


def test_translations_show_in_both_tag_lists_and_search(tmp_path: Path) -> None:
    s = EditorSession()
    s.load(str(make_dataset(tmp_path / "set")))
    csv = tmp_path / "zh.csv"
    csv.write_bytes("\ufefftag,translation\nsmile,微笑\nlong hair,长发\n".encode())
    assert s.load_translations(str(csv)) == "3 translations loaded"
    assert ["long_hair", 1, "长发"] in s.tag_rows()  # underscore and space spellings both match
    assert s.tag_rows(search="微笑") == [["smile", 2, "微笑"]]
    assert ["smile", 2, "微笑"] in s.current_tags()
    with pytest.raises(ForgeError, match="translation file not found"):
        s.load_translations(str(tmp_path / "none.csv"))
    assert s.load_translations("") == "translations off" and s.tag_rows(search="微笑") == []
