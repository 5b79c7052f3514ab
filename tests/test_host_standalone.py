"""The standalone host over the real tiny `ldm` model: loading, determinism, configs, safety."""

from __future__ import annotations

import numpy as np

from lora_forge.host.base import RenderRequest


def _render(host, seed: int, **kw):
    req = RenderRequest("a photo of a cat", seed=seed, steps=4, width=64, height=64, **kw)
    return host.txt2img([req])[0]


def test_same_seed_same_image_other_seed_different(tiny_host):
    a1, a2, b = _render(tiny_host, 1), _render(tiny_host, 1), _render(tiny_host, 2)
    assert a1.size == (64, 64) and a1.mode == "RGB"
    assert a1.tobytes() == a2.tobytes()
    assert np.abs(np.asarray(a1, dtype=int) - np.asarray(b, dtype=int)).mean() > 5
