"""Pixels → latents with the model's own VAE, captions → conditioning with its own text encoder.

We go below the WebUI's hijacked `cond_stage_model(texts)`: that path parses `(emphasis:1.2)`,
substitutes textual-inversion names and reads clip skip from the UI settings, none of which a
caption file means. Here the tokenizer and transformer are called directly (`.wrapped` when the
WebUI has wrapped the embedder), with our clip skip and 75-token chunks like kohya and the WebUI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lora_forge.errors import ForgeError


def _dtype_of(module: Any) -> Any:
    return next(module.parameters()).dtype


def _device_of(module: Any) -> Any:
    return next(module.parameters()).device


@contextlib.contextmanager
def _float32(module: Any) -> Iterator[None]:
    """Run `module` in fp32 for a moment (an fp16 VAE overflows on some images), then cast back."""
    dtype = _dtype_of(module)
    module.float()
    try:
        yield
    finally:
        module.to(dtype)


def encode_images(sd_model: Any, pixels: Any) -> Any:
    """Scaled latents (the posterior *mean*, so the cache is deterministic) of pixels in [-1, 1].

    kohya samples the posterior once and caches the sample; the mean is that sample's
    expectation, costs nothing extra and makes a cached latent a pure function of the image.
    An fp16 VAE that overflows (NaN/inf) is retried in fp32 instead of failing the run.
    """
    import torch

    vae = sd_model.first_stage_model
    if getattr(sd_model, "conditioner", None) is not None:
        return _encode_sdxl(sd_model, vae, pixels)
    with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
        x = pixels.to(_device_of(vae))
        mean = vae.encode(x.to(_dtype_of(vae))).mode()
        if not torch.isfinite(mean).all():
            if _dtype_of(vae) == torch.float32:
                raise ForgeError("the VAE produced NaN/inf for an image even in fp32; check the VAE file")
            with _float32(vae):
                mean = vae.encode(x.float()).mode()
        scale = float(getattr(sd_model, "scale_factor", 0.18215))
    return mean.float() * scale


def _encode_sdxl(sd_model: Any, vae: Any, pixels: Any) -> Any:
    """SDXL: never in fp16 (its VAE overflows to NaN there): bf16 when the VAE is kept in bf16,
    else fp32. sgm's `encode` returns a posterior *sample*, so the mean is read from the
    encoder and quant_conv (the same layers `encode` runs); `scale_factor` is 0.13025."""
    import torch

    with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
        x = pixels.to(_device_of(vae))
        dtype = _dtype_of(vae)
        with contextlib.nullcontext() if dtype in (torch.float32, torch.bfloat16) else _float32(vae):
            run = _dtype_of(vae)
            moments = vae.quant_conv(vae.encoder(x.to(run)))
        mean = moments.float().chunk(2, dim=1)[0]
        if not torch.isfinite(mean).all():
            raise ForgeError("the VAE produced NaN/inf for an image even in fp32/bf16; check the VAE file")
    return mean * float(sd_model.scale_factor)


class TextEncoder:
    """Captions → conditioning, differentiable when the text encoder carries a trained LoRA."""

    def __init__(self, sd_model: Any, clip_skip: int = 1, max_token_length: int = 75) -> None:
        cond = sd_model.cond_stage_model
        self.embedder = getattr(cond, "wrapped", cond)
        self.clip_skip = clip_skip
        self.chunks = max_token_length // 75
        self.hf = hasattr(self.embedder, "transformer") and hasattr(self.embedder, "tokenizer")
        if not self.hf and not hasattr(self.embedder, "encode_with_transformer"):
            raise ForgeError("this model's text encoder is not supported for training (SD1.x and SD2.x are)")

    @property
    def module(self) -> Any:
        return self.embedder.transformer if self.hf else self.embedder.model

    def tokens(self, captions: list[str]) -> Any:
        """[B·chunks, 77] token ids: BOS + up to 75 tokens + EOS, padded, `chunks` per caption."""
        import torch

        if self.hf:
            tok = self.embedder.tokenizer
            ids = tok(captions, add_special_tokens=False, truncation=False)["input_ids"]
            bos, eos = tok.bos_token_id, tok.eos_token_id
            pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        else:
            import open_clip

            tokenizer = open_clip.tokenizer._tokenizer
            ids = [tokenizer.encode(c) for c in captions]
            bos, eos = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
            pad = 0
        rows = []
        for seq in ids:
            seq = list(seq)[: 75 * self.chunks]
            for c in range(self.chunks):
                part = seq[75 * c : 75 * (c + 1)]
                row = [bos, *part, eos]
                rows.append(row + [pad] * (77 - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def __call__(self, captions: list[str]) -> Any:
        tokens = self.tokens(captions).to(_device_of(self.module))
        if self.hf:
            out = self.embedder.transformer(input_ids=tokens, output_hidden_states=self.clip_skip > 1)
            if self.clip_skip > 1:
                z = out.hidden_states[-self.clip_skip]
                z = self.embedder.transformer.text_model.final_layer_norm(z)
            else:
                z = out.last_hidden_state
        else:
            z = self.embedder.encode_with_transformer(tokens)
        b = len(captions)
        return z.reshape(b, self.chunks * z.shape[1], z.shape[2])
