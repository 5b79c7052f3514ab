"""Tag editor: every operation on a loaded dataset, its preview, its undo and redo, and the files saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lora_forge.dataset.editor import Dataset, load_translations, tag_table
from lora_forge.dataset.editor_ops import build_op, parse_tag_list, underscores_to_spaces
from lora_forge.errors import ForgeError

CAPTIONS = {
    "a": "1girl, solo, long_hair, smile, smile",
    "b": "1girl, short hair, smile",
    "c": "landscape, sky, cloud",
    "d": "1girl, solo, =_=, name_(series)",
}


def make_dataset(folder: Path, captions: dict[str, str | None] = CAPTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, (stem, text) in enumerate(captions.items()):
        Image.new("RGB", (4, 4), (n * 30, 0, 0)).save(folder / f"{stem}.png")
        if text is not None:
            (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def ds(tmp_path: Path) -> Dataset:
    return Dataset.load(make_dataset(tmp_path / "set"))


def caps(ds: Dataset) -> dict[str, str]:
    return {it.image.stem: ds.caption(it.id) for it in ds.items}


def run(ds: Dataset, name: str, ids=None, **kw) -> int:
    edit = ds.plan(range(len(ds)) if ids is None else ids, *build_op(name, **kw))
    return ds.apply(edit)


# (operation, arguments, expected captions afterwards) — expectations written out by hand
CASES = [
    (
        "add",
        {"tags": "sks", "position": "front"},
        {
            "a": "sks, 1girl, solo, long_hair, smile, smile",
            "b": "sks, 1girl, short hair, smile",
            "c": "sks, landscape, sky, cloud",
            "d": "sks, 1girl, solo, =_=, name_(series)",
        },
    ),
    (
        "add",
        {"tags": "smile, outdoors", "position": "back"},
        {
            "a": "1girl, solo, long_hair, smile, smile, outdoors",
            "b": "1girl, short hair, smile, outdoors",
            "c": "landscape, sky, cloud, smile, outdoors",
            "d": "1girl, solo, =_=, name_(series), smile, outdoors",
        },
    ),
    (
        "add",
        {"tags": "x", "position": 1},
        {
            "a": "1girl, x, solo, long_hair, smile, smile",
            "b": "1girl, x, short hair, smile",
            "c": "landscape, x, sky, cloud",
            "d": "1girl, x, solo, =_=, name_(series)",
        },
    ),
    (
        "remove",
        {"tags": "smile, sky"},
        {"a": "1girl, solo, long_hair", "b": "1girl, short hair", "c": "landscape, cloud"},
    ),
    (
        "replace",
        {"old": "1girl", "new": "1woman"},
        {
            "a": "1woman, solo, long_hair, smile, smile",
            "b": "1woman, short hair, smile",
            "d": "1woman, solo, =_=, name_(series)",
        },
    ),
    ("replace", {"old": "smile", "new": ""}, {"a": "1girl, solo, long_hair", "b": "1girl, short hair"}),
    (
        "replace",
        {"old": "solo", "new": "1girl"},
        {"a": "1girl, long_hair, smile, smile", "d": "1girl, =_=, name_(series)"},
    ),
    ("replace", {"old": "solo", "new": "solo"}, {}),  # replacing a tag with itself keeps it (BDTM #100)
    ("regex", {"pattern": r"^(\w+) hair$", "repl": r"\1_hair", "scope": "tag"}, {"b": "1girl, short_hair, smile"}),
    ("regex", {"pattern": r"sky, cloud", "repl": "overcast", "scope": "caption"}, {"c": "landscape, overcast"}),
    (
        "regex",
        {"pattern": r"^smile$", "repl": "", "scope": "tag"},
        {"a": "1girl, solo, long_hair", "b": "1girl, short hair"},
    ),
    (
        "front",
        {"tags": "smile, solo"},
        {"a": "smile, solo, 1girl, long_hair", "b": "smile, 1girl, short hair", "d": "solo, 1girl, =_=, name_(series)"},
    ),
    ("dedupe", {}, {"a": "1girl, solo, long_hair, smile"}),
    (
        "sort",
        {"key": "name"},
        {
            "a": "1girl, long_hair, smile, smile, solo",
            "c": "cloud, landscape, sky",
            "d": "1girl, =_=, name_(series), solo",
        },
    ),
    (
        "sort",
        {"key": "length"},
        {
            "a": "solo, 1girl, smile, smile, long_hair",
            "b": "1girl, smile, short hair",
            "c": "sky, cloud, landscape",
            "d": "=_=, solo, 1girl, name_(series)",
        },
    ),
    ("underscores", {}, {"a": "1girl, solo, long hair, smile, smile", "d": "1girl, solo, =_=, name (series)"}),
]


@pytest.mark.parametrize(("name", "kw", "changed"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_operation_changes_exactly_the_expected_captions_and_undo_redo_restore(ds, name, kw, changed) -> None:
    original = caps(ds)
    expected = {**original, **changed}
    n = run(ds, name, **kw)
    assert n == len(changed)
    assert caps(ds) == expected
    # the tag index follows the edit: counts equal a recount from the captions
    recount: dict[str, int] = {}
    for tags in ds.tags:
        for t in set(tags):
            recount[t] = recount.get(t, 0) + 1
    assert ds.counts() == recount
    if changed:
        assert ds.undo() is not None
        assert caps(ds) == original
        assert ds.redo() is not None
        assert caps(ds) == expected
    assert sorted(ds.dirty()) == sorted(it.id for it in ds.items if it.image.stem in changed)


def test_sort_by_count_uses_dataset_frequency(ds) -> None:
    run(ds, "sort", key="count", counts=ds.counts())
    assert caps(ds)["b"] == "1girl, smile, short hair"  # 1girl in 3 images, smile in 2, short hair in 1


def test_operations_on_selected_or_filtered_images_leave_the_others_alone(ds) -> None:
    ids = ds.filter(all_of=["1girl"], none_of=["solo"])
    assert [ds.items[i].image.stem for i in ids] == ["b"]
    run(ds, "add", ids=ids, tags="tagged")
    assert [ds.items[i].image.stem for i in sorted(ds.having("tagged"))] == ["b"]


def test_filters_and_or_not(ds) -> None:
    stems = lambda ids: sorted(ds.items[i].image.stem for i in ids)  # noqa: E731
    assert stems(ds.filter(all_of=["1girl", "smile"])) == ["a", "b"]
    assert stems(ds.filter(any_of=["sky", "short hair"])) == ["b", "c"]
    assert stems(ds.filter(none_of=["1girl"])) == ["c"]
    assert stems(ds.filter(all_of=["1girl"], any_of=["smile", "=_="], none_of=["short hair"])) == ["a", "d"]
    assert stems(ds.filter(all_of=["nope"])) == []
    assert stems(ds.filter()) == ["a", "b", "c", "d"]


def test_trigger_word_stays_first_through_later_edits(ds) -> None:
    ds.trigger = "sks"
    run(ds, "add", tags="sks", position="back")
    assert all(tags[0] == "sks" for tags in ds.tags)
    run(ds, "sort", key="name")
    run(ds, "add", tags="zzz", position="front")
    run(ds, "front", tags="smile")
    assert all(tags[0] == "sks" for tags in ds.tags)


def test_per_image_edit_parses_like_a_file_and_undoes(ds) -> None:
    i = next(it.id for it in ds.items if it.image.stem == "c")
    ds.apply(ds.plan_caption(i, "sea，beach,, sunset,\r\n"))
    assert ds.caption(i) == "sea, beach, sunset"
    assert ds.counts()["sea"] == 1 and "sky" not in ds.counts()
    ds.undo()
    assert ds.caption(i) == "landscape, sky, cloud"


def test_preview_counts_and_samples_without_changing_anything(ds) -> None:
    edit = ds.plan(range(len(ds)), *build_op("remove", tags="smile"))
    p = ds.preview(edit, considered=len(ds))
    assert (p.changed, p.considered) == (2, 4)
    assert p.samples[0] == ("a.png", "1girl, solo, long_hair, smile, smile", "1girl, solo, long_hair")
    assert ds.counts()["smile"] == 2 and ds.dirty() == []


def test_a_stale_preview_is_refused(ds) -> None:
    edit = ds.plan(range(len(ds)), *build_op("remove", tags="smile"))
    run(ds, "add", tags="x")
    with pytest.raises(ForgeError, match="preview the edit again"):
        ds.apply(edit)


def test_new_edit_after_undo_clears_redo(ds) -> None:
    run(ds, "add", tags="x")
    ds.undo()
    run(ds, "add", tags="y")
    assert ds.redo() is None
    assert "x" not in ds.counts() and ds.counts()["y"] == 4


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pattern": "(", "repl": "x"}, "not a valid regular expression"),
        ({"pattern": "a(b)", "repl": r"\2"}, "does not fit the pattern"),
        ({"pattern": "", "repl": "x"}, "pattern is empty"),
    ],
)
def test_a_bad_regex_is_a_clear_error_and_changes_nothing(ds, kw, message) -> None:
    before = caps(ds)
    with pytest.raises(ForgeError, match=message):
        run(ds, "regex", **kw)
    assert caps(ds) == before and ds.undo_stack == []


def test_saves_only_changed_files_and_undo_then_save_restores_the_text(ds) -> None:
    files = {it.image.stem: it.caption for it in ds.items}
    mtimes = {k: p.stat().st_mtime_ns for k, p in files.items()}
    run(ds, "remove", tags="sky")
    written, entry = ds.save()
    assert written == 1 and entry is not None
    assert files["c"].read_text("utf-8") == "landscape, cloud"
    assert all(files[k].stat().st_mtime_ns == mtimes[k] for k in "abd")  # untouched, not rewritten
    ds.undo()
    assert ds.save()[0] == 1
    assert files["c"].read_text("utf-8") == "landscape, sky, cloud"
    assert ds.save() == (0, None)


def test_tag_table_sorts_searches_and_translates(ds, tmp_path: Path) -> None:
    csv = tmp_path / "zh.csv"
    csv.write_bytes("tag,translation\nlong_hair,长发\nsmile,微笑\n".encode("gb18030"))
    tr = load_translations(csv)
    rows = tag_table(ds, sort="count", translations=tr)
    assert rows[0] == ("1girl", 3, "")
    assert ("long_hair", 1, "长发") in rows
    assert [r[0] for r in tag_table(ds, sort="name")][:3] == ["1girl", "=_=", "cloud"]
    assert [r[0] for r in tag_table(ds, sort="length")][:2] == ["=_=", "sky"]
    assert [r[0] for r in tag_table(ds, search="微笑", translations=tr)] == ["smile"]
    assert [r[0] for r in tag_table(ds, search="HAIR")] == ["long_hair", "short hair"]


def test_tag_parsing_helpers() -> None:
    assert parse_tag_list("a, b，a,,") == ["a", "b"]
    assert underscores_to_spaces(("^_^", "o_o", "x_x", "blue_eyes", ">_<")) == ("^_^", "o_o", "x_x", "blue eyes", ">_<")
