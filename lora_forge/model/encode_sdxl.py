"""SDXL conditioning as the WebUI computes it for generation, below its prompt parser.

The UNet of an SDXL base model takes `{'crossattn': [B, 77·k, C1+C2], 'vector': [B, V]}`:
* crossattn: CLIP-L's hidden layer 11 (of 12) and OpenCLIP bigG's penultimate layer, concatenated
  along the channels, per 75-token chunk (chunks concatenated along the sequence, like the WebUI);
* vector: bigG's pooled output (of the first chunk, as the WebUI and kohya take it), then one
  sinusoidal embedding per number of original size (h, w), crop offset (top, left) and target size
  (h, w), each by the model's own `ConcatTimestepEmbedderND` in the conditioner's order.
The WebUI builds those three pairs from the render's width/height and its crop settings; a trainer
must build them from each image's real sizes (kohya's size conditioning, `train/sdxl_sizes.py`).

Clip skip: in the WebUI it reaches SDXL only through "Clip skip applies to SDXL CLIP-L"; sgm's own
CLIP-L layer is already the penultimate one, so clip skip 1 and 2 mean that layer and n > 2 takes
hidden state -n of CLIP-L. bigG always gives its penultimate layer, as in the WebUI and kohya.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lora_forge.errors import ForgeError

SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")


def _device_of(module: Any) -> Any:
    return next(module.parameters()).device


def text_embedders(sd_model: Any) -> tuple[Any, Any]:
    """(CLIP-L, bigG) embedders of an SDXL base conditioner; the WebUI's wrappers are looked through."""
    embedders = [getattr(e, "wrapped", e) for e in sd_model.conditioner.embedders]
    clip_l = [e for e in embedders if hasattr(e, "transformer") and hasattr(e, "tokenizer")]
    bigg = [e for e in embedders if hasattr(e, "encode_with_transformer") and hasattr(e, "model")]
    if len(clip_l) != 1 or len(bigg) != 1:
        raise ForgeError("only SDXL base models (CLIP-L + OpenCLIP bigG) can be trained; the refiner cannot")
    return clip_l[0], bigg[0]


class SdxlTextEncoder:
    """Captions → {'crossattn', 'pooled'}, differentiable when a text-encoder LoRA is trained."""

    def __init__(self, sd_model: Any, clip_skip: int = 1, max_token_length: int = 75) -> None:
        self.sd_model = sd_model
        self.clip_l, self.bigg = text_embedders(sd_model)
        self.clip_skip = clip_skip
        self.chunks = max(1, max_token_length // 75)

    @property
    def module(self) -> Any:
        """Everything the conditioning needs (moved off the accelerator when its outputs are cached)."""
        return self.sd_model.conditioner

    def _rows(self, ids: Sequence[Sequence[int]], bos: int, eos: int, pad: int) -> Any:
        import torch

        rows = []
        for seq in ids:
            seq = list(seq)[: 75 * self.chunks]
            for c in range(self.chunks):
                row = [bos, *seq[75 * c : 75 * (c + 1)], eos]
                rows.append(row + [pad] * (77 - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def tokens(self, captions: list[str]) -> tuple[Any, Any]:
        """[B·chunks, 77] ids for CLIP-L (padded with EOS, as its tokenizer does) and bigG (padded with 0)."""
        import open_clip

        tok = self.clip_l.tokenizer
        ids_l = tok(captions, add_special_tokens=False, truncation=False)["input_ids"]
        pad_l = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        bpe = open_clip.tokenizer._tokenizer
        ids_g = [bpe.encode(c) for c in captions]
        start, end = bpe.encoder["<start_of_text>"], bpe.encoder["<end_of_text>"]
        return self._rows(ids_l, tok.bos_token_id, tok.eos_token_id, pad_l), self._rows(ids_g, start, end, 0)

    def __call__(self, captions: list[str]) -> dict[str, Any]:
        import torch

        tokens_l, tokens_g = self.tokens(captions)
        transformer = self.clip_l.transformer
        out = transformer(input_ids=tokens_l.to(_device_of(transformer)), output_hidden_states=True)
        index = -self.clip_skip if self.clip_skip > 2 else int(getattr(self.clip_l, "layer_idx", 11))
        z_l = out.hidden_states[index]
        g = self.bigg.encode_with_transformer(tokens_g.to(_device_of(self.bigg.model)))
        z_g = g[getattr(self.bigg, "layer", "penultimate")]
        b = len(captions)
        z = torch.cat([z_l, z_g.to(z_l.dtype)], dim=2)
        pooled = g["pooled"].reshape(b, self.chunks, -1)[:, 0]
        return {"crossattn": z.reshape(b, self.chunks * z.shape[1], z.shape[2]), "pooled": pooled}


def size_embedding(sd_model: Any, sizes: dict[str, Any]) -> Any:
    """[B, 3·2·d] embedding of the size tensors (`SIZE_KEYS` → [B, 2] tensors) by the model's own
    size embedders, in the conditioner's order."""
    import torch

    parts = []
    for embedder in sd_model.conditioner.embedders:
        key = getattr(embedder, "input_key", None)
        if key in SIZE_KEYS:
            parts.append(embedder(sizes[key]))
    if len(parts) != len(SIZE_KEYS):
        raise ForgeError("this SDXL model's conditioner has no size embedders; it is not an SDXL base model")
    return torch.cat(parts, dim=1)


def unet_conditioning(sd_model: Any, text: dict[str, Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """The dict `OpenAIWrapper` hands the UNet: crossattn, and vector = pooled ⊕ size embedding."""
    import torch

    pooled = text["pooled"]
    emb = size_embedding(sd_model, {k: v.to(pooled.device) for k, v in sizes.items()})
    return {"crossattn": text["crossattn"], "vector": torch.cat([pooled, emb.to(pooled.dtype)], dim=1)}
