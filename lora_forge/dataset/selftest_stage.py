"""Selftest stage for preprocessing: a few real and synthetic pictures through the whole stage.

It leaves the prepared folder in ctx.shared["dataset_dir"] for the tagger stage. The face model is
used when it is already in the models folder (placed by hand or downloaded before); the selftest
never downloads, so without it the crops use the saliency focal point and the summary says so.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lora_forge.dataset.manifest import Manifest
from lora_forge.dataset.prepare import PrepareOptions, prepare
from lora_forge.settings import Settings


def _sources(folder: Path) -> dict[str, tuple[float, float, float, float] | None]:
    """Write the test pictures; return the true face box (in the file's pixels) per file, if any."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.LANCZOS)
    wide = Image.new("RGB", (1800, 1100), (70, 90, 120))
    wide.paste(astronaut, (700, 40))
    wide.save(folder / "astronaut_wide.jpg", quality=90)
    (folder / "astronaut_wide.txt").write_text("1girl, astronaut", encoding="utf-8")
    # the face of skimage's astronaut is at about x=178, y=63, w=90, h=113 in its 512 px original
    faces: dict[str, tuple[float, float, float, float] | None] = {"astronaut_wide.jpg": (1056, 166, 180, 226)}
    rgba = Image.new("RGBA", (640, 480), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (200, 200), (200, 30, 30, 255)), (300, 150))
    rgba.save(folder / "transparent.png")
    faces["transparent.png"] = None
    ramp = (np.linspace(0, 65535, 600, dtype=np.uint32)[None, :].repeat(400, 0)).astype(np.uint16)
    Image.fromarray(ramp, "I;16").save(folder / "gradient16.png")
    faces["gradient16.png"] = None
    (folder / "notes.txt").write_text("not a caption of anything", encoding="utf-8")
    (folder / "empty.jpg").write_bytes(b"")
    return faces


def selftest(ctx) -> str:
    src = ctx.out / "preprocess_src"
    out = ctx.out / "dataset"
    truth = _sources(src)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    report = prepare([src], out, PrepareOptions(size=512, face_crops=True, download=False), Settings.from_env())
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert before == after, "an original was modified"
    skipped = {Path(s.source).name: s.reason for s in report.skipped}
    assert set(skipped) == {"notes.txt", "empty.jpg"}, f"unexpected skips: {skipped}"
    manifest = Manifest.load(out)
    assert len(manifest.sources) == 3, [s.source for s in manifest.sources]
    detector = not report.warnings
    for rec in manifest.sources:
        main = rec.outputs[0]
        assert main.size == [512, 512] and (out / main.file).is_file()
        face = truth[Path(rec.source).name]
        if face is not None and detector:
            x0, y0, x1, y1 = main.crop_box
            assert rec.faces, f"no face found in {rec.source}"
            assert x0 <= face[0] and y0 <= face[1] and x1 >= face[0] + face[2] and y1 >= face[1] + face[3], (
                f"face cut by the crop {main.crop_box} of {rec.source}"
            )
            assert any(o.kind == "face" for o in rec.outputs), "no face crop"
    assert (out / "astronaut_wide.txt").read_text(encoding="utf-8") == "1girl, astronaut"
    ctx.shared["dataset_dir"] = str(out)
    faces_note = "faces by YuNet" if detector else "no face model installed: saliency crops only"
    return f"{report.summary()}; {len(report.skipped)} bad files reported; {faces_note}"
