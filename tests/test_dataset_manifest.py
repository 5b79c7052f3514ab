"""The manifest tells the truth, re-runs skip what is done, per-image actions redo or drop one image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_forge.dataset.faces import Face
from lora_forge.dataset.manifest import MANIFEST_NAME, Manifest
from lora_forge.dataset.prepare import PrepareOptions, apply_action, prepare
from lora_forge.errors import ForgeError
from tests.dataset_support import YUNET, contains, place_astronaut, snapshot, yunet_settings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, dict[str, tuple[float, float, float, float]]]:
    src = tmp_path / "src"
    src.mkdir()
    truth = {}
    for name, size, at, scale in [
        ("wide.jpg", (2000, 1100), (1100, 80), 1.6),
        ("tall.png", (900, 1500), (100, 500), 1.5),
    ]:
        image, face = place_astronaut(size, at, scale)
        image.save(src / name)
        truth[f"src/{name}"] = face
    (src / "wide.txt").write_text("astronaut, space suit", encoding="utf-8")
    return src, truth


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_what_was_done(tmp_path, sources, yunet_settings):  # noqa: F811
    src, truth = sources
    out = tmp_path / "out"
    before = snapshot(src)
    prepare([src], out, PrepareOptions(size=512, face_crops=True), yunet_settings)
    assert snapshot(src) == before
    data = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert data["options"]["size"] == 512 and data["options"]["face_crops"] is True
    manifest = Manifest.load(out)
    assert [s.source for s in manifest.sources] == sorted(truth)
    files_on_disk = {p.name for p in out.iterdir() if p.suffix == ".jpg"}
    assert files_on_disk == {o.file for _, o in manifest.images()}
    for rec in manifest.sources:
        original = src / Path(rec.source).name
        assert rec.sha256 == _sha(original) and Path(rec.origin) == original.resolve()
        with Image.open(original) as im:
            assert rec.size == list(im.size)
        assert rec.focal == "faces" and rec.faces
        face = Face.from_json(rec.faces[0])
        t = truth[rec.source]
        assert abs(face.cx - (t[0] + t[2] / 2)) < t[2] * 0.2, "face box not in the original's pixels"
        kinds = [o.kind for o in rec.outputs]
        assert kinds == ["main", "face"]
        for o in rec.outputs:
            path = out / o.file
            assert o.sha256 == _sha(path)
            with Image.open(path) as im:
                assert list(im.size) == o.size
            x0, y0, x1, y1 = o.crop_box
            assert 0 <= x0 < x1 <= rec.size[0] and 0 <= y0 < y1 <= rec.size[1]
            assert contains(o.crop_box, t)
            # the face box in output pixels is the original's face mapped through the crop
            (of,) = [Face.from_json(f) for f in o.faces]
            s = o.size[0] / (x1 - x0)
            assert of.x == pytest.approx((face.x - x0) * s, abs=2) and of.w == pytest.approx(face.w * s, abs=2)
    wide = next(r for r in manifest.sources if r.source == "src/wide.jpg")
    assert wide.caption == "wide.txt"
    assert (out / "wide.txt").read_text(encoding="utf-8") == "astronaut, space suit"
    assert (out / "wide__face.txt").read_text(encoding="utf-8") == "astronaut, space suit"
    assert (src / "wide.txt").is_file(), "caption was moved instead of copied"


def test_rerun_skips_unchanged_and_redoes_changed(tmp_path, sources, yunet_settings):  # noqa: F811
    src, _ = sources
    out = tmp_path / "out"
    opts = PrepareOptions(size=512)
    first = prepare([src], out, opts, yunet_settings)
    assert sorted(first.written) == ["tall.jpg", "wide.jpg"]
    (out / "wide.txt").write_text("edited by the tagger", encoding="utf-8")
    stamp = snapshot(out)
    again = prepare([src], out, opts, yunet_settings)
    assert again.written == [] and sorted(again.unchanged) == ["src/tall.png", "src/wide.jpg"]
    assert {k: v for k, v in snapshot(out).items() if k != MANIFEST_NAME} == {
        k: v for k, v in stamp.items() if k != MANIFEST_NAME
    }
    # new options: the same names are reused, the old files move to .lora_forge/previous, captions stay
    bigger = prepare([src], out, PrepareOptions(size=768), yunet_settings)
    assert sorted(bigger.written) == ["tall.jpg", "wide.jpg"]
    with Image.open(out / "wide.jpg") as im:
        assert im.size == (768, 768)
    previous = list((out / ".lora_forge" / "previous").rglob("wide.jpg"))
    assert len(previous) == 1 and _sha(previous[0]) == stamp["wide.jpg"][0]
    assert (out / "wide.txt").read_text(encoding="utf-8") == "edited by the tagger"
    # an edited original replaces its outputs under the same names; a deleted output is made again
    image = Image.open(src / "tall.png").convert("RGB")
    image.paste((255, 0, 0), (0, 0, 50, 50))
    image.save(src / "tall.png")
    (out / "wide.jpg").unlink()
    third = prepare([src], out, PrepareOptions(size=768), yunet_settings)
    assert sorted(third.written) == ["tall.jpg", "wide.jpg"]
    assert [s.source for s in Manifest.load(out).sources] == ["src/tall.png", "src/wide.jpg"]
    assert len(list((out / ".lora_forge" / "previous").rglob("tall.jpg"))) == 2
    # an output left empty (what a power cut can do to an unsynced file) is made again too
    (out / "tall.jpg").write_bytes(b"")
    fourth = prepare([src], out, PrepareOptions(size=768), yunet_settings)
    assert fourth.written == ["tall.jpg"] and (out / "tall.jpg").stat().st_size > 0


def test_actions_centre_whole_drop(tmp_path, sources, yunet_settings):  # noqa: F811
    src, truth = sources
    out = tmp_path / "out"
    prepare([src], out, PrepareOptions(size=512), yunet_settings)
    rec = apply_action(out, "wide.jpg", "centre", yunet_settings)
    w, h = rec.size
    x0, y0, x1, y1 = rec.outputs[0].crop_box
    assert abs((x0 + x1) / 2 - w / 2) <= 1 and abs((y0 + y1) / 2 - h / 2) <= 1
    rec = apply_action(out, "wide.jpg", "whole", yunet_settings)
    assert rec.outputs[0].crop_box[0] <= 0 and rec.outputs[0].crop_box[2] >= w and "padded" in rec.outputs[0].flags
    with Image.open(out / "wide.jpg") as im:
        assert im.size == (512, 512) and im.getpixel((256, 5)) == (255, 255, 255)
    rec = apply_action(out, "wide.jpg", "face", yunet_settings)
    assert contains(rec.outputs[0].crop_box, truth["src/wide.jpg"])
    # a re-run keeps the per-image choice
    apply_action(out, "tall.jpg", "centre", yunet_settings)
    report = prepare([src], out, PrepareOptions(size=512), yunet_settings)
    assert report.written == []
    # drop: the files leave the dataset (kept under .lora_forge/previous), and stay out on re-runs
    apply_action(out, "wide.jpg", "drop", yunet_settings)
    assert not (out / "wide.jpg").exists() and not (out / "wide.txt").exists()
    assert list((out / ".lora_forge" / "previous").rglob("wide.txt"))
    report = prepare([src], out, PrepareOptions(size=512), yunet_settings)
    assert not (out / "wide.jpg").exists()
    assert any("dropped earlier" in s.reason for s in report.skipped)
    with pytest.raises(ForgeError, match="not one of the prepared images"):
        apply_action(out, "nothing.jpg", "centre", yunet_settings)


def test_action_refuses_a_changed_original(tmp_path, sources, yunet_settings):  # noqa: F811
    src, _ = sources
    out = tmp_path / "out"
    prepare([src], out, PrepareOptions(size=512), yunet_settings)
    (src / "tall.png").write_bytes(b"replaced")
    with pytest.raises(ForgeError, match="changed since it was prepared"):
        apply_action(out, "tall.jpg", "centre", yunet_settings)


def test_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(ForgeError, match="move it away"):
        Manifest.load(tmp_path)


def _cli(*args: str, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORA_FORGE_MODELS": str(models), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lora_forge", "preprocess", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )


def test_cli_json_buckets_and_errors(tmp_path, sources, yunet_settings):  # noqa: F811
    src, _ = sources
    out = tmp_path / "out"
    r = _cli(str(src), str(out), "--buckets", "--face-crops", "--json", models=yunet_settings.models_dir)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["folder"] == str(out) and not report["skipped"] and not report["warnings"]
    assert sorted(report["written"]) == ["tall.jpg", "tall__face.jpg", "wide.jpg", "wide__face.jpg"]
    for _, o in Manifest.load(out).images():
        assert o.size[0] % 64 == 0 and o.size[1] % 64 == 0
    r = _cli(str(src), str(out), "--size", "500", models=yunet_settings.models_dir)
    assert r.returncode == 2 and r.stderr.startswith("error: bad size options")
    r = _cli("wide.jpg", str(out), "--action", "centre", models=yunet_settings.models_dir)
    assert r.returncode == 0 and "wide.jpg" in r.stdout
