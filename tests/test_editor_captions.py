"""Caption files: parsing real-world captions, safe saves, history and rollback, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lora_forge.dataset import captions
from lora_forge.dataset.captions import (
    caption_path_for,
    join_tags,
    list_history,
    read_caption,
    rollback,
    save_captions,
    split_tags,
)
from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.editor_ops import build_op
from lora_forge.errors import ForgeError
from tests.test_editor_ops import make_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("a, b, c", ["a", "b", "c"]),
        ("a,b,,c,", ["a", "b", "c"]),
        ("\ufeffa, b", ["a", "b"]),
        ("a, b\r\nc,\r\n", ["a", "b", "c"]),
        ("a\nb\rc", ["a", "b", "c"]),
        ("红色，蓝色, green", ["红色", "蓝色", "green"]),
        ("  a   girl \t standing , ,", ["a girl standing"]),
        ("name_(series), \\(cat\\), ^_^", ["name_(series)", "\\(cat\\)", "^_^"]),
        ("", []),
        (None, []),
    ],
)
def test_split_tags_handles_what_real_captions_contain(text, tags) -> None:
    assert split_tags(text) == tags


def test_join_and_caption_path() -> None:
    assert join_tags(["a", "b c"]) == "a, b c"
    assert caption_path_for(Path("x/img.final.png")) == Path("x/img.final.txt")


def test_read_caption_bom_gbk_and_missing(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeff猫, dog".encode())
    (tmp_path / "gbk.txt").write_bytes("长发, 微笑".encode("gbk"))
    assert read_caption(tmp_path / "bom.txt") == "猫, dog"
    assert read_caption(tmp_path / "gbk.txt") == "长发, 微笑"
    assert read_caption(tmp_path / "none.txt") is None


def test_save_writes_only_changes_keeps_old_bytes_and_rolls_back_after_restart(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    gbk = root / "a.txt"
    gbk.write_bytes("长发, 微笑\r\n".encode("gbk"))
    same = root / "b.txt"
    same.write_text("kept", encoding="utf-8")
    before_gbk = gbk.read_bytes()
    entry = save_captions({gbk: "长发", same: "kept", root / "new.txt": "fresh"}, root, "test edit")
    assert entry is not None and entry.state == "done"
    assert {f.path for f in entry.files} == {"a.txt", "new.txt"}  # b.txt had the same text
    assert gbk.read_bytes() == "长发".encode()
    # "after a restart": a fresh process reads the history from disk and rolls back
    code = "import sys; from lora_forge.dataset.captions import rollback; rollback(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(root), entry.id], check=True, cwd=ROOT, timeout=60)
    assert gbk.read_bytes() == before_gbk  # the original GBK bytes, CRLF included
    assert not (root / "new.txt").exists()
    assert same.read_text("utf-8") == "kept"
    entries = list_history(root)
    assert [e.reason for e in entries] == [f"rollback of {entry.id} (test edit)", "test edit"]
    index = json.loads((entries[1].folder / "index.json").read_text("utf-8"))
    assert index["reason"] == "test edit" and index["state"] == "done"
    # the rollback is itself undoable
    rollback(root, entries[0].id)
    assert gbk.read_bytes() == "长发".encode() and (root / "new.txt").read_text("utf-8") == "fresh"


def test_nothing_to_save_makes_no_history(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    assert save_captions({tmp_path / "a.txt": "x"}, tmp_path, "noop") is None
    assert list_history(tmp_path) == []


def test_rollback_of_unknown_entry_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="no saved history entry"):
        rollback(tmp_path, "nope")


def test_paths_outside_the_dataset_are_refused(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    with pytest.raises(ForgeError, match="outside the dataset"):
        save_captions({tmp_path / "elsewhere.txt": "x"}, tmp_path / "set", "x")
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_read_only_caption_stops_the_whole_batch_before_any_write(tmp_path: Path) -> None:
    ds = Dataset.load(make_dataset(tmp_path / "set"))
    locked = ds.root / "b.txt"
    locked.chmod(stat.S_IRUSR)
    before = {p: p.read_bytes() for p in ds.root.glob("*.txt")}
    ds.apply(ds.plan(range(len(ds)), *build_op("add", tags="sks", position="front")))
    try:
        with pytest.raises(ForgeError, match=r"read-only \(b.txt\).*nothing was saved"):
            ds.save()
        assert {p: p.read_bytes() for p in ds.root.glob("*.txt")} == before
        assert len(ds.dirty()) == 4  # the edits are still there to save once the file is writable
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
        assert ds.save()[0] == 4
    finally:
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_failure_in_the_middle_of_a_batch_puts_back_the_files_already_written(tmp_path, monkeypatch) -> None:
    ds = Dataset.load(make_dataset(tmp_path / "set"))
    before = {p: p.read_bytes() for p in ds.root.glob("*.txt")}
    ds.apply(ds.plan(range(len(ds)), *build_op("add", tags="sks")))
    real = os.replace
    calls = {"captions": 0}

    def disk_full_on_third_caption(src, dst):
        if captions.STATE_DIR not in Path(dst).parts:
            calls["captions"] += 1
            if calls["captions"] == 3:
                raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_on_third_caption)
    with pytest.raises(ForgeError, match=r"No space left on device.*restored"):
        ds.save()
    assert {p: p.read_bytes() for p in ds.root.glob("*.txt")} == before
    assert list_history(ds.root)[0].state == "failed"
    monkeypatch.setattr(os, "replace", real)
    assert not list(ds.root.glob(".*.tmp"))  # no temp file left behind
    assert ds.save()[0] == 4


def test_a_caption_changed_by_another_tool_is_not_overwritten(tmp_path: Path) -> None:
    ds = Dataset.load(make_dataset(tmp_path / "set"))
    ds.apply(ds.plan(range(len(ds)), *build_op("remove", tags="smile")))
    (ds.root / "b.txt").write_text("retagged by the tagger", encoding="utf-8")
    with pytest.raises(ForgeError, match="changed on disk since they were loaded"):
        ds.save()
    assert (ds.root / "b.txt").read_text("utf-8") == "retagged by the tagger"
    assert "smile" in (ds.root / "a.txt").read_text("utf-8")


def test_the_dataset_folder_vanishing_mid_session_loses_nothing(tmp_path: Path) -> None:
    ds = Dataset.load(make_dataset(tmp_path / "set"))
    ds.apply(ds.plan(range(len(ds)), *build_op("add", tags="sks")))
    shutil.move(ds.root, tmp_path / "moved")
    with pytest.raises(ForgeError, match="dataset folder is gone"):
        ds.save()
    assert not (tmp_path / "set").exists()  # nothing recreated at the old place
    shutil.move(tmp_path / "moved", ds.root)
    assert ds.save()[0] == 4  # the edits survived in memory and are saved once it is back


def test_messy_captions_load_and_untouched_ones_are_never_rewritten(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set", {"mixed": None, "bom": None, "gbk": None, "crlf": None, "bare": None})
    (root / "mixed.txt").write_text("a,b，c\nd,, ,", encoding="utf-8")
    (root / "bom.txt").write_bytes("\ufeffa, b".encode())
    (root / "gbk.txt").write_bytes("长发, a".encode("gbk"))
    (root / "crlf.txt").write_bytes(b"a, b\r\n")
    (root / "orphan.txt").write_text("no image for me", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in root.glob("*.txt")}
    ds = Dataset.load(root)
    tags = {it.image.stem: ds.tags[it.id] for it in ds.items}
    assert tags == {
        "mixed": ("a", "b", "c", "d"),
        "bom": ("a", "b"),
        "gbk": ("长发", "a"),
        "crlf": ("a", "b"),
        "bare": (),
    }
    assert ds.report.orphans == ["orphan.txt"]
    assert any("orphan.txt" in n and "left alone" in n for n in ds.report.notes())
    ds.apply(ds.plan(ds.filter(all_of=["长发"]), *build_op("remove", tags="a")))
    assert ds.save()[0] == 1
    after = {p.name: p.read_bytes() for p in root.glob("*.txt")}
    assert after.pop("gbk.txt") == "长发".encode()  # written back as UTF-8
    before.pop("gbk.txt")
    assert after == before  # every other file, the orphan too, byte-identical; no bare.txt created


def test_an_image_without_caption_gets_one_only_when_tagged(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set", {"bare": None})
    ds = Dataset.load(root)
    assert ds.save() == (0, None) and not (root / "bare.txt").exists()
    ds.apply(ds.plan([0], *build_op("add", tags="sks")))
    _, entry = ds.save()
    assert (root / "bare.txt").read_text("utf-8") == "sks"
    rollback(root, entry.id)
    assert not (root / "bare.txt").exists()


def test_loading_skips_our_state_dir_hidden_temp_files_and_reports_shared_captions(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set", {"a": "x", "sub": "y"})
    (root / "sub.png").rename(root / "nested.png")
    (root / "nested.png").rename(root / "a.jpg")  # a.png and a.jpg both want a.txt
    (root / "sub.txt").unlink()
    (root / "deep").mkdir()
    make_dataset(root / "deep", {"d": "z"})
    (root / ".a.txt.123.tmp").write_text("half", encoding="utf-8")
    save_captions({root / "a.txt": "x2"}, root, "make history")
    ds = Dataset.load(root)
    assert [it.rel for it in ds.items] == ["a.jpg", "deep/d.png"]
    assert ds.report.skipped == ["a.png"]
    assert not any(captions.STATE_DIR in it.rel for it in ds.items)


def test_missing_or_wrong_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="does not exist"):
        Dataset.load(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ForgeError, match="not a folder"):
        Dataset.load(tmp_path / "file.png")


def test_unreadable_caption_is_reported_not_fatal(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "set", {"a": "x", "b": "y"})
    (root / "b.txt").write_bytes(b"tags \xff\xff")  # neither UTF-8 nor GBK
    ds = Dataset.load(root)
    assert [it.rel for it in ds.items] == ["a.png"]
    assert ds.report.unreadable and "b.txt" in ds.report.unreadable[0]
    assert any("could not be read" in n for n in ds.report.notes())


def test_an_edit_landing_while_a_save_runs_stays_unsaved(tmp_path: Path, monkeypatch) -> None:
    ds = Dataset.load(make_dataset(tmp_path / "set"))
    ds.apply(ds.plan(range(len(ds)), *build_op("add", tags="first")))
    real = captions.save_captions

    def save_with_a_concurrent_edit(*args, **kwargs):
        entry = real(*args, **kwargs)
        ds.apply(ds.plan([0], *build_op("add", tags="second")))  # e.g. another click of the same page
        return entry

    monkeypatch.setattr(captions, "save_captions", save_with_a_concurrent_edit)
    ds.save()
    assert ds.dirty() == [0]  # the disk has "first" only; the later edit is still to be saved
    monkeypatch.setattr(captions, "save_captions", real)
    ds.save()
    assert (ds.root / "a.txt").read_text("utf-8").endswith("first, second")
