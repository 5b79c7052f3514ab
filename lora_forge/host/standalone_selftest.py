"""Selftest stage 1: build the tiny model, load it through the standalone host, render two seeds.

Later stages take `ctx.shared["tiny"]` (TinyModelFiles) and `ctx.shared["host"]` (the loaded
StandaloneHost) from here instead of building their own.
"""

from __future__ import annotations

from typing import Any

from lora_forge.host.base import RenderRequest


def selftest(ctx: Any) -> str:
    import io
    import time

    import torch

    from lora_forge.errors import ForgeError
    from lora_forge.fsio import atomic_write_bytes, unused_path
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd1

    # The selftest's models are tiny: intra-op threads only add OpenMP spin-waiting, which on a
    # busy 2-core machine made renders 10-30x slower. Later stages inherit this on purpose.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tiny = build_tiny_sd1(unused_path(ctx.out / "tiny-model"), seed=0)
    ctx.log(f"built {tiny.checkpoint.name} + {tiny.config.name} in {time.perf_counter() - t0:.1f}s")
    host = StandaloneHost(tiny.checkpoint, lora_dir=unused_path(ctx.out / "Lora"))
    requests = [RenderRequest("a photo of a cat", seed=s, steps=4, width=64, height=64) for s in (1, 2, 1)]
    images = host.txt2img(requests)
    if images[0].tobytes() != images[2].tobytes():
        raise ForgeError("the standalone host rendered seed 1 twice and got different images")
    if images[0].tobytes() == images[1].tobytes():
        raise ForgeError("the standalone host rendered seeds 1 and 2 as the same image")
    for seed, image in ((1, images[0]), (2, images[1])):
        path = unused_path(ctx.out / f"standalone-seed{seed}.png")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        ctx.log(f"rendered {path.name}")
    ctx.shared["tiny"] = tiny
    ctx.shared["host"] = host
    return f"tiny SD1 model loaded as {host.sd_model().__class__.__name__}; seeds 1 and 2 rendered, seed 1 twice alike"
