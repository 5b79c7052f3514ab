"""Odd or hostile inputs that used to end a whole batch: each now gets its own reason, the rest of
the batch goes on, memory stays bounded, and a user mistake exits 2 (issue 16 item 10)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lora_forge.dataset.captions import list_history, rollback
from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.prepare import PrepareOptions, prepare
from lora_forge.errors import ForgeError

ROOT = Path(__file__).resolve().parent.parent
GBK_STEM = "你好".encode("gbk")  # b"\xc4\xe3\xba\xc3": not UTF-8, as a Chinese Windows copy leaves it
OPTIONS = PrepareOptions(size=64, detect_faces=False, download=False)
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file names, FIFOs and mounts")


def _jpg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _hostile_folder(folder: Path) -> Path:
    """Good pictures among a GBK-named one (with a GBK caption), a 250-character name, a named pipe,
    a looping link and a link to the folder itself."""
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(_jpg((10, 10, 200)))
    with open(os.fsencode(folder) + b"/" + GBK_STEM + b".jpg", "wb") as f:
        f.write(_jpg((200, 10, 10)))
    with open(os.fsencode(folder) + b"/" + GBK_STEM + b".txt", "wb") as f:
        f.write("红色, 1girl".encode("gbk"))
    long_name = "a" * 250 + ".jpg"  # 254 bytes: every sibling name (.caption, temp files) is too long
    (folder / long_name).write_bytes(_jpg((10, 200, 10)))
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(folder / "pipe.txt")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "self").symlink_to(".")
    return folder


@posix_only
def test_preprocess_goes_on_past_gbk_names_long_names_pipes_and_loops(tmp_path):
    src = _hostile_folder(tmp_path / "src")
    out = tmp_path / "out"
    report = prepare([src], out, OPTIONS, workers=2)
    reasons = {s.source: s.reason for s in report.skipped}
    assert "not a regular file" in reasons["src/pipe.jpg"]
    assert "loops" in reasons["src/loop.jpg"]
    written = sorted(report.written)
    assert "你好.jpg" in written and "ok.jpg" in written  # the GBK name, readable
    long_out = next(n for n in written if n.startswith("aaa"))
    assert len(long_out.encode()) <= 160
    assert (out / "你好.txt").read_text(encoding="utf-8") == "红色, 1girl"
    manifest = json.loads((out / "lora_forge_manifest.json").read_text(encoding="utf-8"))
    assert {s["stem"] for s in manifest["sources"]} >= {"你好", "ok"}
    again = prepare([src], out, OPTIONS, workers=2)  # the manifest reads back: nothing to redo
    assert again.written == [] and len(again.unchanged) == 3


def test_a_zip_member_with_a_bad_crc_is_skipped_and_the_zip_is_read_once(tmp_path, monkeypatch):
    src = tmp_path / "photos.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_STORED) as zf:
        for i in range(30):
            zf.writestr(f"img{i:02d}.jpg", _jpg((i * 8, 100, 50)))
            zf.writestr(f"img{i:02d}.txt", f"tag{i}")
    raw = bytearray(src.read_bytes())
    info = zipfile.ZipFile(src).getinfo("img07.jpg")
    raw[info.header_offset + 30 + len("img07.jpg") + 200] ^= 0xFF  # one byte of its data: CRC now wrong
    src.write_bytes(bytes(raw))
    opened = []
    real_init = zipfile.ZipFile.__init__

    def counting_init(self, file, *a, **kw):
        opened.append(file)
        real_init(self, file, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", counting_init)
    report = prepare([src], tmp_path / "out", OPTIONS, workers=2)
    assert [(s.source, "bad crc" in s.reason.lower()) for s in report.skipped] == [("photos.zip:img07.jpg", True)]
    assert len(report.written) == 29
    assert len([f for f in opened if str(f) == str(src)]) == 1  # not once per member (quadratic)


@posix_only
def test_tags_cli_on_gbk_long_names_pipes_and_loops_finishes_and_saves(tmp_path):
    folder = _hostile_folder(tmp_path / "d")
    r = subprocess.run(
        [sys.executable, "-m", "lora_forge", "tags", str(folder), "--add", "checked", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a named pipe used to block this for ever
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["written"] == 3 and "Traceback" not in r.stderr
    gbk_caption = os.fsencode(folder) + b"/" + GBK_STEM + b".txt"
    with open(gbk_caption, "rb") as f:
        assert f.read().decode("utf-8") == "红色, 1girl, checked"
    assert (folder / ("a" * 250 + ".txt")).read_text(encoding="utf-8") == "checked"
    assert len(Dataset.load(folder)) == 3
    rollback(folder, list_history(folder)[0].id)  # the GBK name's old bytes come back from the history
    with open(gbk_caption, "rb") as f:
        assert f.read() == "红色, 1girl".encode("gbk")


@posix_only
def test_tagger_goes_on_past_gbk_long_names_pipes_and_extreme_shapes(tmp_path, wd14_model):
    from lora_forge.tagger.batch import TagOptions, tag_folder

    folder = _hostile_folder(tmp_path / "d")
    Image.new("RGB", (30000, 100), (250, 250, 250)).save(folder / "wide.png")
    report = tag_folder(folder, wd14_model, TagOptions())
    by_name = {r.image.name: r for r in report.results}
    assert {n: by_name[n].status for n in ("ok.jpg", "wide.png", "a" * 250 + ".jpg")} == dict.fromkeys(
        ("ok.jpg", "wide.png", "a" * 250 + ".jpg"), "written"
    )
    assert (folder / "ok.txt").is_file() and (folder / "wide.txt").is_file()
    assert (folder / ("a" * 250 + ".txt")).is_file()
    assert by_name[os.fsdecode(GBK_STEM + b".jpg")].status == "kept"  # its GBK caption was read, and kept


@posix_only
def test_training_scan_lists_each_picture_once_past_pipes_and_links(tmp_path):
    from lora_forge.train.config import TrainConfig
    from lora_forge.train.data import scan_dataset

    folder = _hostile_folder(tmp_path / "d")
    (folder / "ok.txt").write_text("a, b", encoding="utf-8")
    (folder / ("a" * 250 + ".txt")).write_text("a", encoding="utf-8")
    config = TrainConfig.from_dict({"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128})
    names = sorted(i.path.name for i in scan_dataset(folder, config).items)
    assert names == sorted(["ok.jpg", "a" * 250 + ".jpg", os.fsdecode(GBK_STEM + b".jpg")])  # "self" not again


def test_a_lora_whose_dataset_folder_has_a_gbk_name_still_saves(tmp_path):
    """Folder names go into the kohya metadata (ss_dataset_dirs, ss_tag_frequency); a GBK one used
    to make the first LoRA save fail after the epoch's training was done."""
    import torch

    from lora_forge.lora.fileformat import read_metadata, save_lora

    folder = os.fsdecode(b"10_" + GBK_STEM)  # how Linux hands us the name
    meta = {"ss_dataset_dirs": json.dumps({folder: {"n_repeats": 10, "img_count": 3}}, ensure_ascii=False)}
    path = save_lora(tmp_path / "x.safetensors", {"lora_unet_a.lora_down.weight": torch.zeros(2, 4)}, meta)
    assert "10_你好" in read_metadata(path)["ss_dataset_dirs"]


def _peak_rss_mb(code: str) -> float:
    """Peak resident memory of a fresh Python running `code` (MB)."""
    probe = code + "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split()[-1]) / 1024


@posix_only
@pytest.mark.parametrize("size", [(30000, 100), (89_000_000, 1)])
def test_tagger_input_of_an_extreme_shape_stays_in_bounded_memory(tmp_path, size):
    path = tmp_path / "odd.png"
    Image.new("L", size, 200).save(path)
    code = (
        "from pathlib import Path; from lora_forge.tagger import preprocess\n"
        f"a = preprocess.load(Path({str(path)!r}), 448); assert a.shape == (448, 448, 3), a.shape"
    )
    baseline = _peak_rss_mb(f"from PIL import Image; im = Image.open({str(path)!r}); im.load(); im = im.convert('RGB')")
    peak = _peak_rss_mb(code)
    # the padded square would be 30000² (2.7 GB) or 89M² pixels; what is left is the decode itself
    assert peak < baseline + 300, (peak, baseline)


def test_inspect_batch_survives_a_header_nested_200000_deep(tmp_path):
    from lora_forge.inspect import inspect_paths
    from lora_forge.lora.fileformat import read_metadata

    header = b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    nested = tmp_path / "nested.safetensors"
    nested.write_bytes(len(header).to_bytes(8, "little") + header)
    good = tmp_path / "good.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(good))
    bad_report, good_report = inspect_paths([nested, good])
    assert "nested" in bad_report.error
    assert good_report.error is None
    with pytest.raises(ForgeError, match="not a safetensors file"):
        read_metadata(nested)
    r = subprocess.run(
        [sys.executable, "-m", "lora_forge", "inspect", str(nested), str(good)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "good.safetensors" in r.stdout and "Traceback" not in r.stderr


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs: a real ENOSPC (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@posix_only
def test_disk_full_stops_preprocess_with_a_message_and_exit_2(tmp_path, full_disk):
    src = tmp_path / "src"
    src.mkdir()
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(12):  # noise does not compress: 12 × ~300 KB PNGs overflow 2 MB
        Image.fromarray(rng.integers(0, 255, (320, 320, 3)).astype(np.uint8)).save(src / f"n{i:02d}.png")
    with pytest.raises(ForgeError, match="disk filled up"):
        prepare([src], full_disk / "out", PrepareOptions(size=320, detect_faces=False, format="png"), workers=1)
    args = [str(src), str(full_disk / "out2"), "--no-faces", "--no-download", "--format", "png", "--size", "320"]
    r = subprocess.run(
        [sys.executable, "-m", "lora_forge", "preprocess", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "disk" in r.stderr and "Traceback" not in r.stderr and "Errno 28" not in r.stderr


@posix_only
def test_disk_full_during_a_caption_save_is_a_message_and_nothing_changes(tmp_path, full_disk):
    from lora_forge.dataset.captions import save_captions

    folder = full_disk / "d"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_jpg((1, 2, 3)))
        (folder / f"{i}.txt").write_text("old", encoding="utf-8")
    (full_disk / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 64 * 1024))  # almost nothing left
    with pytest.raises(ForgeError, match=r"disk is full|No space left"):
        save_captions({folder / f"{i}.txt": "new " * 20_000 for i in range(3)}, folder, "test")
    assert all((folder / f"{i}.txt").read_text(encoding="utf-8") == "old" for i in range(3))
