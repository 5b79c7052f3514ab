"""Ingest: the format zoo decodes right, bad input is reported by name, originals stay untouched."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.dataset import ingest
from lora_forge.dataset.manifest import Manifest
from lora_forge.dataset.prepare import PrepareOptions, prepare
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings
from tests.dataset_support import as_ordinary_user, astronaut, snapshot


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds a few bytes: a decompression bomb's header."""
    return _png(width, height, zlib.compress(b"\0" * 64))


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _no_faces(tmp_path: Path) -> Settings:
    return Settings(models_dir=tmp_path / "no-models", dataset_dir=tmp_path / "ds")


OPTS = PrepareOptions(size=256, detect_faces=False)


# ---- the format zoo ------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (300, 200), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 150, 200))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left side becomes the top
    dec = ingest.decode(_jpeg(im, exif=exif.tobytes()), "rot.jpg")
    assert dec.size == (200, 300) and dec.image.size == (200, 300)
    top, bottom = dec.image.getpixel((100, 20)), dec.image.getpixel((100, 280))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert any("EXIF" in n for n in dec.notes)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_transparency_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((200, 20, 20, 255), (0, 0, 32, 64))
    if mode == "P":
        im = rgba.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=4)
        transparent = im.getpixel((60, 10))
        im.info["transparency"] = transparent
    elif mode == "LA":
        im = rgba.convert("LA")
    else:
        im = rgba
    buf = io.BytesIO()
    im.save(buf, "PNG", **({"transparency": im.info["transparency"]} if mode == "P" else {}))
    dec = ingest.decode(buf.getvalue(), f"{mode}.png")
    assert dec.image.mode == "RGB"
    assert dec.image.getpixel((60, 10)) == (255, 255, 255), "transparent part is not white"
    assert dec.image.getpixel((10, 10)) != (255, 255, 255)
    assert any("white" in n for n in dec.notes)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in print colours
    dec = ingest.decode(_jpeg(cmyk), "print.jpg")
    r, g, b = dec.image.getpixel((32, 32))
    assert dec.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_is_scaled_not_clamped():
    ramp = np.linspace(0, 65535, 512).astype(np.uint16)[None, :].repeat(8, 0)
    buf = io.BytesIO()
    Image.fromarray(ramp, "I;16").save(buf, "PNG")
    dec = ingest.decode(buf.getvalue(), "deep.png")
    row = np.asarray(dec.image)[4, :, 0]
    assert len(np.unique(row)) > 250, "16-bit levels collapsed (clamped instead of scaled)"
    assert abs(int(row[256]) - 128) <= 2 and row[0] == 0 and row[-1] == 255


def test_animated_gif_uses_first_frame_and_says_so():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    dec = ingest.decode(buf.getvalue(), "anim.gif")
    assert dec.image.getpixel((5, 5))[0] > 200
    assert any("first of 3 frames" in n for n in dec.notes)


def test_webp_decodes_and_unsupported_avif_is_reported():
    buf = io.BytesIO()
    astronaut().save(buf, "WEBP", quality=80)
    assert ingest.decode(buf.getvalue(), "a.webp").size == (512, 512)
    avif_header = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
    from PIL import features

    if "avif" in getattr(features, "modules", {}) and features.check("avif"):
        pytest.skip("this Pillow reads AVIF")
    with pytest.raises(ForgeError, match="not an image this Pillow can read"):
        ingest.decode(avif_header, "photo.avif")


def test_pixel_count_is_checked_before_decoding_and_pillow_limit_untouched():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ForgeError, match="over the 89 MP limit"):
        ingest.decode(_png_header_only(12000, 9000), "huge.png")  # 108 MP: under Pillow's own error
    with pytest.raises(ForgeError, match="too many pixels"):
        ingest.decode(_png_header_only(40000, 40000), "bomb.png")  # Pillow refuses it itself
    assert before == Image.MAX_IMAGE_PIXELS


def test_jpeg_draft_decodes_only_what_is_needed():
    big = _jpeg(astronaut(4.0))  # 2048 px
    dec = ingest.decode(big, "big.jpg", min_scale=0.25)
    assert dec.size == (2048, 2048) and dec.image.size == (512, 512) and dec.scale == 0.25


# ---- a whole folder: bad input reported by name, the rest completes -------------------------------


def _bad_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        from skimage import data

        zf.writestr("inside/good.jpg", _jpeg(Image.fromarray(data.coffee())))
        zf.writestr("inside/good.txt", "caption from the zip")
        zf.writestr("../escape.jpg", _jpeg(astronaut(0.5).rotate(90)))
        zf.writestr("/abs/olute.jpg", _jpeg(astronaut(0.5).rotate(180)))
        zf.writestr("bomb.bmp", b"\0" * (40 * 1024 * 1024))  # 40 MB of zeros, ~40 kB compressed


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    src = tmp_path / "素材 folder"
    (src / "子目录").mkdir(parents=True)
    astronaut().save(src / "宇航员 1.jpg", quality=90)
    (src / "宇航员 1.txt").write_text("1girl, 宇航员", encoding="utf-8")
    Image.new("RGB", (200, 200), (10, 120, 30)).save(src / "子目录" / "small.png")
    (src / "子目录" / "zz small copy.png").write_bytes((src / "子目录" / "small.png").read_bytes())
    astronaut().save(src / "子目录" / "reencoded.jpg", quality=55)  # near duplicate of 宇航员 1.jpg
    from skimage import data

    cat = Image.fromarray(data.chelsea())
    frames = [cat, cat.rotate(90), cat.rotate(180)]  # a picture, not a flat colour (flat ones all look alike)
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (src / "notes.pdf").write_bytes(b"%PDF-1.4 not an image at all")
    (src / "empty.jpg").write_bytes(b"")
    good = _jpeg(Image.new("RGB", (400, 400), (200, 100, 0)))
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "corrupt.png").write_bytes(_png(64, 64, b"\x78\x9c" + bytes(range(7, 250))))  # not deflate data
    (src / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    _bad_zip(src / "pack.zip")
    locked = src / "locked"
    locked.mkdir()
    astronaut().save(locked / "hidden_from_us.jpg")
    locked.chmod(0)
    return src


def test_bad_input_is_reported_by_name_and_the_rest_completes(tmp_path, messy_folder):
    out = tmp_path / "prepared"
    before = snapshot(messy_folder)
    outside_before = sorted(p.name for p in tmp_path.parent.iterdir())
    try:
        with as_ordinary_user():
            report = prepare([messy_folder], out, OPTS, _no_faces(tmp_path))
    finally:
        (messy_folder / "locked").chmod(0o755)
    reasons = {s.source: s.reason for s in report.skipped}
    root = messy_folder.name

    def reason(name: str) -> str:
        assert name in reasons, f"{name} not reported; reported: {sorted(reasons)}"
        return reasons[name]

    assert "not an image" in reason(f"{root}/notes.pdf")
    assert "empty file" in reason(f"{root}/empty.jpg")
    assert "truncated" in reason(f"{root}/truncated.jpg")
    assert "corrupt" in reason(f"{root}/corrupt.png")
    assert "too many pixels" in reason(f"{root}/bomb.png")
    assert "exact duplicate of" in reason(f"{root}/子目录/zz small copy.png")
    assert "folder cannot be read" in reason(f"{root}/locked")
    assert "'..'" in reason(f"{root}/pack.zip:../escape.jpg")
    assert "absolute path" in reason(f"{root}/pack.zip:/abs/olute.jpg")
    assert "zip bomb" in reason(f"{root}/pack.zip:bomb.bmp")
    # the rest completed: the good photo, the small one, the near copy, the good zip member
    manifest = Manifest.load(out)
    done = {r.source for r in manifest.sources}
    assert done == {
        f"{root}/宇航员 1.jpg",
        f"{root}/anim.gif",
        f"{root}/子目录/small.png",
        f"{root}/子目录/reencoded.jpg",
        f"{root}/pack.zip:inside/good.jpg",
    }
    assert report.notes[f"{root}/anim.gif"] == ["animated: used the first of 3 frames"]
    for rec in manifest.sources:
        assert (out / rec.outputs[0].file).is_file()
    # non-ASCII names survive, captions come along (copied), the zip's caption too
    assert (out / "宇航员 1.jpg").is_file()
    assert (out / "宇航员 1.txt").read_text(encoding="utf-8") == "1girl, 宇航员"
    assert (out / "good.txt").read_text(encoding="utf-8") == "caption from the zip"
    # flagged, not dropped: the small picture and the near duplicate
    small = next(r for r in manifest.sources if r.source.endswith("small.png"))
    assert any(f.startswith("small") for f in small.flags)
    assert "upscaled x1.28" in small.outputs[0].flags  # 200 px into a 256 square, and it says so
    pairs = {frozenset((p["a"], p["b"])) for p in report.near_duplicates}
    assert pairs == {frozenset((f"{root}/宇航员 1.jpg", f"{root}/子目录/reencoded.jpg"))}
    # originals byte-identical with the same mtimes; nothing written beside the output folder
    assert snapshot(messy_folder) == before
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == outside_before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prepared", "素材 folder"])
    assert not list(tmp_path.rglob("escape.jpg")) and not list(tmp_path.rglob("olute.jpg"))
    assert not Path("/abs/olute.jpg").exists()


def test_zip_with_too_much_declared_content_is_rejected_whole(tmp_path, monkeypatch):
    src = tmp_path / "z.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"blank{i}.bmp", b"\0" * (2 * 1024 * 1024))
    monkeypatch.setattr(ingest, "MAX_ZIP_TOTAL", 5 * 1024 * 1024)  # the real limit is 4 GB
    scan = ingest.scan([src])
    assert not scan.items
    assert scan.skipped and "zip bomb" in scan.skipped[0].reason and scan.skipped[0].source == "z.zip"


def test_uploaded_files_and_a_missing_path(tmp_path):
    a = tmp_path / "up1" / "photo.jpg"
    a.parent.mkdir()
    astronaut().save(a)
    scan = ingest.scan([a, tmp_path / "gone.png"])
    assert [i.label for i in scan.items] == ["photo.jpg"]
    assert scan.skipped[0].source.endswith("gone.png") and "cannot be read" in scan.skipped[0].reason


def test_output_folder_inside_the_source_is_not_read_back(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    astronaut().save(src / "a.png")
    prepare([src], src / "prepared", OPTS, _no_faces(tmp_path))
    report = prepare([src], src / "prepared", OPTS, _no_faces(tmp_path))
    assert report.unchanged == ["photos/a.png"] and not report.written and not report.skipped


def test_max_pixels_option_and_hidden_files(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    astronaut().save(src / "ok.png")
    (src / ".DS_Store").write_bytes(b"junk")
    (src / "Thumbs.db").write_bytes(b"junk")
    report = prepare(
        [src], tmp_path / "o", PrepareOptions(size=256, detect_faces=False, max_pixels=200_000), _no_faces(tmp_path)
    )
    reasons = {s.source: s.reason for s in report.skipped}
    assert "megapixels" in reasons["s/ok.png"]  # 512x512 = 262 144 > 200 000
    assert reasons["s/.DS_Store"] == reasons["s/Thumbs.db"] == "hidden or system file"
    # nothing but the manifest (and our hidden state folder, which holds the dataset's write lock)
    assert sorted(os.listdir(tmp_path / "o")) == [".lora_forge", "lora_forge_manifest.json"]


def test_zip_from_a_chinese_windows_keeps_its_gbk_names(tmp_path):
    """Windows' built-in zip stores GBK names without the UTF-8 flag; they must not become mojibake."""
    gbk = "素材/宇航员.jpg".encode("gbk")
    placeholder = b"x" * (len(gbk) - 4) + b".jpg"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(placeholder.decode("ascii"), _jpeg(astronaut()))
        zf.writestr(placeholder.decode("ascii")[:-4] + ".txt", "1girl")
    raw = buf.getvalue().replace(placeholder, gbk).replace(placeholder[:-4] + b".txt", gbk[:-4] + b".txt")
    (tmp_path / "win.zip").write_bytes(raw)
    report = prepare([tmp_path / "win.zip"], tmp_path / "out", OPTS, _no_faces(tmp_path))
    assert report.written == ["宇航员.jpg"], report.skipped
    assert (tmp_path / "out" / "宇航员.txt").read_text(encoding="utf-8") == "1girl"
    assert Manifest.load(tmp_path / "out").sources[0].source == "win.zip:素材/宇航员.jpg"
