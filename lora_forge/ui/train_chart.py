"""The loss chart of the 训练 section, drawn with PIL: no plotting library, same picture in every
gradio version, and small enough to redraw on every poll."""

from __future__ import annotations

from typing import Any

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 44, 12, 12, 24


def loss_chart(
    raw: list[float], smoothed: list[float], band: tuple[float, float], total: int = 0, first: int = 0
) -> Any:
    """Raw loss (thin grey), smoothed (thick blue), the good-loss band (green) as guidance; the
    first value is step `first + 1` (a resumed run)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    values = [v for v in raw + smoothed if v == v and v != float("inf")]
    top = max([band[1] * 1.5, *values]) if values else band[1] * 1.5
    top = min(top, max(band[1] * 4, sorted(values)[int(len(values) * 0.95)] * 1.2) if values else top)
    steps = max(total, first + len(raw), 2)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B

    def xy(i: int, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * i / (steps - 1), y1 - (y1 - y0) * min(max(v, 0.0), top) / top

    draw.rectangle([x0, xy(0, band[1])[1], x1, xy(0, band[0])[1]], fill=(214, 240, 214))
    draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        v = top * frac
        y = xy(0, v)[1]
        draw.text((4, y - 6), f"{v:.3f}", fill=(90, 90, 90))
    draw.text((x0 + 4, xy(0, band[1])[1] - 12), f"good: {band[0]:g}-{band[1]:g}", fill=(40, 120, 40))
    draw.text((x1 - 60, y1 + 6), f"step {first + len(raw)}", fill=(90, 90, 90))
    for series, color, width in ((raw, (170, 170, 170), 1), (smoothed, (30, 90, 200), 3)):
        points = [xy(first + i, v) for i, v in enumerate(series) if v == v]
        if len(points) > 1:
            draw.line(points, fill=color, width=width)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    return img
