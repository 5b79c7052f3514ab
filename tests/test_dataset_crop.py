"""Face-focus crop, buckets and face crops on real pictures: the face must be whole in every crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_forge.dataset import crop
from lora_forge.dataset.buckets import SizeRule, bucket_for
from lora_forge.dataset.faces import Face, FaceDetector, saliency_map
from lora_forge.dataset.manifest import Manifest
from lora_forge.dataset.prepare import PrepareOptions, prepare
from tests.dataset_support import YUNET, contains, needs_yunet, place_astronaut, yunet_settings  # noqa: F401

# (canvas, where the astronaut's top-left goes, scale of the astronaut)
PLACEMENTS = [
    ((1600, 900), (0, 0), 1.0),  # wide, subject at the left edge
    ((1600, 900), (1088, 388), 1.0),  # wide, subject in the bottom-right corner
    ((2400, 1000), (900, 0), 1.5),  # very wide, subject in the middle
    ((900, 1600), (388, 1088), 1.0),  # tall, subject at the bottom (face far below the upper third)
    ((1000, 2400), (0, 100), 1.5),  # very tall, subject near the top
    ((1400, 1400), (100, 700), 1.0),  # square, small subject low in the frame
    ((3000, 2000), (1500, 200), 2.5),  # large photo: must be scaled, not cut into
]


@needs_yunet
@pytest.mark.parametrize("buckets", [False, True], ids=["square", "buckets"])
def test_face_whole_in_every_crop(tmp_path, yunet_settings, buckets):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    truth = {}
    for i, (size, at, scale) in enumerate(PLACEMENTS):
        image, face = place_astronaut(size, at, scale)
        image.save(src / f"shot{i}.jpg", quality=92)
        truth[f"src/shot{i}.jpg"] = (face, size)
    report = prepare(
        [src], tmp_path / "out", PrepareOptions(size=512, buckets=buckets, face_crops=True), yunet_settings
    )
    assert not report.skipped and not report.warnings
    manifest = Manifest.load(tmp_path / "out")
    assert len(manifest.sources) == len(PLACEMENTS)
    face_crops = 0
    for rec in manifest.sources:
        face, (w, h) = truth[rec.source]
        assert rec.faces, f"no face found in {rec.source}"
        main = rec.outputs[0]
        assert main.kind == "main"
        assert contains(main.crop_box, face), f"{rec.source}: face {face} cut by {main.crop_box}"
        # scale first, then crop: the crop spans the full short side of the picture
        x0, y0, x1, y1 = main.crop_box
        assert (x1 - x0 >= w - 1) or (y1 - y0 >= h - 1), f"{rec.source}: crop {main.crop_box} is a small window"
        out = Image.open(tmp_path / "out" / main.file)
        assert list(out.size) == main.size
        if buckets:
            assert out.size[0] % 64 == 0 and out.size[1] % 64 == 0
            assert out.size[0] <= x1 - x0 + 1 and out.size[1] <= y1 - y0 + 1, "bucket mode upscaled"
        else:
            assert out.size == (512, 512)
        # the face is in the upper part of the frame when the frame could move vertically
        if h > w and not buckets:
            fy_centre = face[1] + face[3] / 2
            assert (fy_centre - y0) / (y1 - y0) < 0.5 or y1 >= h - 1, f"{rec.source}: face not in the upper part"
        for o in rec.outputs[1:]:
            assert o.kind == "face" and "__face" in o.file
            assert contains(o.crop_box, face), f"{o.file}: face {face} cut by {o.crop_box}"
            cw = o.crop_box[2] - o.crop_box[0]
            assert 0.3 <= max(face[2], face[3]) / cw <= 0.75, f"{o.file}: face is not about half the frame"
            face_crops += 1
    # the 1x astronaut's face (113 px) is too small for a 512 face crop without >2x upscaling
    assert face_crops >= 3


@needs_yunet
def test_two_people_kept_when_they_fit_and_best_one_when_not(tmp_path, yunet_settings):  # noqa: F811
    from tests.dataset_support import astronaut

    photo = astronaut()
    src = tmp_path / "src"
    src.mkdir()
    near = Image.new("RGB", (1400, 600), (120, 120, 120))
    near.paste(photo.resize((400, 400)), (250, 100))
    near.paste(photo.resize((400, 400)), (700, 100))
    near.save(src / "near.png")
    far = Image.new("RGB", (2400, 600), (120, 120, 120))
    far.paste(photo.resize((400, 400)), (0, 100))
    far.paste(photo.resize((500, 500)), (1900, 80))
    far.save(src / "far.png")
    prepare([src], tmp_path / "out", PrepareOptions(size=512), yunet_settings)
    recs = {r.source: r for r in Manifest.load(tmp_path / "out").sources}
    near_faces = [Face.from_json(f) for f in recs["src/near.png"].faces]
    assert len(near_faces) == 2
    assert all(contains(recs["src/near.png"].outputs[0].crop_box, (f.x, f.y, f.w, f.h)) for f in near_faces)
    far_rec = recs["src/far.png"]
    assert len(far_rec.faces) == 2
    biggest = max((Face.from_json(f) for f in far_rec.faces), key=lambda f: f.w)
    assert contains(far_rec.outputs[0].crop_box, (biggest.x, biggest.y, biggest.w, biggest.h))
    assert any("kept 1 of 2 faces" in f for f in far_rec.outputs[0].flags)


def test_plan_geometry_without_a_detector():
    # a face near the bottom of a tall picture: the crop moves down to keep it whole
    face = Face(400, 1500, 100, 120, 0.9)
    plan = crop.plan_main(900, 1700, (512, 512), [face])
    assert plan.box.contains(crop.padded(face, 900, 1700))
    assert plan.box.w == pytest.approx(900) and plan.box.h == pytest.approx(900)
    # a face at the top: it sits in the upper part, not in the middle
    face = Face(400, 600, 100, 120, 0.9)
    plan = crop.plan_main(900, 2000, (512, 512), [face])
    assert (face.cy - plan.box.y0) / plan.box.h == pytest.approx(crop.FACE_HEIGHT_POSITION, abs=0.02)
    # "whole" keeps everything and pads
    plan = crop.plan_main(1000, 500, (512, 512), [], action="whole")
    assert plan.box.contains(crop.Box(0, 0, 1000, 500)) and "padded" in plan.flags
    # a small picture in a fixed square is upscaled, and says so
    plan = crop.plan_main(300, 400, (512, 512), [])
    assert any(f.startswith("upscaled") for f in plan.flags)


def test_no_face_falls_back_to_the_salient_part():
    # flat grey picture with one detailed object on the right: the crop goes there, not to the centre
    rng = np.random.default_rng(1)
    arr = np.full((400, 1200, 3), 128, np.uint8)
    arr[120:280, 950:1110] = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
    sal = saliency_map(arr)
    plan = crop.plan_main(1200, 400, (512, 512), [], sal)
    assert plan.box.x0 <= 950 and plan.box.x1 >= 1110, plan.box
    centre = crop.plan_main(1200, 400, (512, 512), [], sal, action="centre")
    assert centre.box.x0 == pytest.approx(400)


def test_whole_render_pads_on_white():
    image = Image.new("RGB", (1000, 500), (0, 0, 255))
    plan = crop.plan_main(1000, 500, (512, 512), [], action="whole")
    out = crop.render(image, 1.0, plan)
    assert out.size == (512, 512)
    assert out.getpixel((256, 10)) == (255, 255, 255) and out.getpixel((256, 256))[2] > 240


@pytest.mark.parametrize(
    ("size", "expect"),
    [
        ((3000, 2000), (576, 384)),  # larger than 512^2: 627x418 at that area, sides down to 64 steps
        ((400, 300), (384, 256)),  # smaller: kept, only rounded down
        ((5000, 500), (1024, 256)),  # 10:1 panorama: cropped to the 4:1 limit
        ((1024, 1024), (512, 512)),
    ],
)
def test_bucket_for_never_upscales(size, expect):
    w, h = size
    bw, bh = bucket_for(w, h, 512, 256, 1024, 64)
    assert (bw, bh) == expect
    assert bw * bh <= 512 * 512 and bw % 64 == 0 and bh % 64 == 0
    assert bw <= w and bh <= h


def test_bad_size_options_are_refused():
    with pytest.raises(ValueError):
        SizeRule(500)
    with pytest.raises(ValueError):
        SizeRule(512, min_side=768)


@needs_yunet
def test_detector_reports_faces_in_image_pixels():
    from tests.dataset_support import ASTRONAUT_FACE, astronaut

    det = FaceDetector(YUNET)
    big = astronaut(3.0)
    (face,) = det.find(big)
    fx, fy, fw, fh = (v * 3 for v in ASTRONAUT_FACE)
    assert abs(face.cx - (fx + fw / 2)) < fw * 0.15 and abs(face.cy - (fy + fh / 2)) < fh * 0.15
    assert 0.7 < face.w / fw < 1.3
