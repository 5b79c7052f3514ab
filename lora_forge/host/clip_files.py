"""The CLIP text-encoder files a checkpoint does not carry: tokenizer and model config.

An SD1 checkpoint holds the CLIP text weights but not the tokenizer or `config.json` that
transformers needs to build the model. The WebUI gets them from the huggingface cache
(`openai/clip-vit-large-patch14`); we look in a folder the user names, then in that cache, and
never download in the middle of loading a model — a missing file is a clear error instead.
The tokenizer itself can be written offline: open-clip-torch ships the very BPE vocabulary
OpenAI's CLIP uses, which is how the tiny test model gets a real tokenizer.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_text

SD1_CLIP_REPO = "openai/clip-vit-large-patch14"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
N_MERGES = 49152 - 256 - 2  # the BPE file has more lines than CLIP uses; both tokenizers cut here
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 byte values, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _open_clip_bpe() -> Path:
    """The vocabulary file inside the open-clip-torch package, found without importing it (slow)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ForgeError("open-clip-torch is not installed (it ships the CLIP vocabulary); pip install open-clip-torch")
    return path


def write_clip_tokenizer(folder: Path) -> Path:
    """Write a transformers CLIPTokenizer (vocab.json, merges.txt, configs) into `folder`.

    Built from open-clip-torch's `bpe_simple_vocab_16e6.txt.gz`, the same vocabulary as
    openai/clip-vit-large-patch14, so token ids match what SD1 models were trained with.
    """
    bpe_path = _open_clip_bpe()
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    alphabet = _byte_alphabet()
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    tok_config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(tok_config, indent=2))
    return folder


def write_clip_text_config(folder: Path, *, width: int, layers: int, heads: int, ffn: int) -> Path:
    """Write a CLIPTextConfig `config.json` (a CLIP-L text tower when given 768/12/12/3072)."""
    config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": width,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    return folder


def _has_clip_files(folder: Path) -> bool:
    return folder.is_dir() and all((folder / n).is_file() for n in (*TOKENIZER_FILES, "config.json"))


def _from_hf_cache(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` in the local huggingface cache, if the files are there."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name) for name in (*TOKENIZER_FILES, "config.json")]
    if not all(isinstance(p, str) for p in found):
        return None
    folders = {Path(p).parent for p in found if isinstance(p, str)}
    return folders.pop() if len(folders) == 1 else None


def resolve_clip_folder(version: str, clip_folder: Path | None = None, models_dir: Path | None = None) -> Path:
    """Folder with the tokenizer and config.json for a FrozenCLIPEmbedder `version`.

    Order: the folder the user gave, `version` itself when it is a folder (our tiny models'
    yaml names one), the huggingface cache (where the WebUI's copy lives), then our own models
    folder (`<models_dir>/openai--clip-vit-large-patch14`, where `hub.download` puts files).
    Text-model weights are never needed here: they come from the checkpoint.
    """
    from lora_forge.hub import local_folder
    from lora_forge.settings import Settings

    if clip_folder is not None:
        if not _has_clip_files(Path(clip_folder)):
            missing = [n for n in (*TOKENIZER_FILES, "config.json") if not (Path(clip_folder) / n).is_file()]
            raise ForgeError(
                f"the CLIP folder lacks {', '.join(missing)}; give a folder holding the tokenizer and "
                f"config.json of {version} (e.g. a download of huggingface.co/{SD1_CLIP_REPO})",
                path=clip_folder,
            )
        return Path(clip_folder)
    if Path(version).is_absolute():
        if _has_clip_files(Path(version)):
            return Path(version)
        raise ForgeError(
            "the CLIP folder the model's yaml names is missing or lacks vocab.json, merges.txt or config.json; "
            "restore it, or pass a folder with those files as clip_folder (--clip-folder)",
            path=version,
        )
    if _has_clip_files(Path(version)):
        return Path(version)
    repo = version
    cached = _from_hf_cache(repo)
    if cached is not None:
        return cached
    settings = Settings.from_env()
    ours = local_folder(Settings(models_dir or settings.models_dir, settings.dataset_dir), repo)
    if _has_clip_files(ours):
        return ours
    raise ForgeError(
        f"the CLIP tokenizer and config.json for {version} are missing (looked in the huggingface cache and {ours}); "
        f"get them with `huggingface-cli download {repo} vocab.json merges.txt config.json "
        "tokenizer_config.json special_tokens_map.json` (in China set HF_ENDPOINT=https://hf-mirror.com first), "
        f"or put those files in {ours}, or pass the folder that holds them as clip_folder (--clip-folder)"
    )
