"""One validated training config, with kohya sd-scripts' key names, in and out of TOML.

Keys are kohya's wherever kohya has one, so a user's knowledge (and their old configs, through
`import_config`) carries over. Everything is checked in `validate()` before any work starts:
a bad combination is a ForgeError that says which key to change.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor")
# Optimizers whose update depends on each tensor's own shape (Adafactor factors a matrix's second
# moment into row and column statistics; bitsandbytes quantises state per tensor): they get the
# LoRA's own tensors, not the training forward's flat buffers (train/fastlora.py). They are also the
# ones `fused_backward_pass` can step one tensor at a time in backward: their update of a tensor
# reads only its gradient and state. AdamW, Lion and Prodigy train one flat buffer per group, whose
# gradient is complete only when backward ends (and Prodigy's step size depends on every tensor).
PER_TENSOR = ("Adafactor", "AdamW8bit")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "float", "fp32")  # kohya says "float", our file format "fp32"
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")


@dataclass
class TrainConfig:
    """Everything a run needs besides the model and the dataset folder.

    A key that names a file or folder says so: `field(..., metadata={"path": "read"})` (or "write");
    a listening server holds those to its path policy (safety.py), from any face."""

    output_name: str = "lora"
    trigger_word: str = ""  # ours: first tag of every caption (kept first when shuffling), default samples
    # data
    resolution: str = "512"  # "512" or "w,h"
    train_batch_size: int = 1
    max_train_epochs: int = 10
    max_train_steps: int = 0  # 0: epochs decide
    num_repeats: int = 0  # repeats of folders without an `N_` prefix; 0: the preset plans them
    caption_extension: str = ".txt"
    shuffle_caption: bool = True
    keep_tokens: int = 1
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = True
    cache_latents: bool = True
    cache_latents_to_disk: bool = True
    cache_text_encoder_outputs: bool = True  # when the TE is frozen and captions are fixed (see data.py)
    max_token_length: int = 75
    clip_skip: int = 1
    # network
    network_dim: int = 32
    network_alpha: float = 16.0
    conv_dim: int = 0
    conv_alpha: float = 1.0
    network_dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    network_train_unet_only: bool = False
    network_weights: str = field(default="", metadata={"path": "read"})  # continue from this LoRA file
    # optimiser
    optimizer_type: str = "AdamW"
    learning_rate: float = 1e-4
    unet_lr: float = 0.0  # 0: learning_rate
    text_encoder_lr: float = 1e-5  # 0: learning_rate
    lr_scheduler: str = "cosine_with_restarts"
    lr_warmup_steps: float = 0.0  # steps, or a fraction of the total when < 1
    lr_scheduler_num_cycles: int = 1
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    # precision and memory
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    sdpa: bool = True
    fp8_base: bool = False  # frozen Linear/Conv weights stored as float8_e4m3fn, upcast per layer (model/fp8.py)
    fused_backward_pass: bool = False  # Adafactor/AdamW8bit step each tensor in backward, its grad freed at once
    # loss
    noise_offset: float = 0.0
    min_snr_gamma: float = 5.0
    min_timestep: int = 0
    max_timestep: int = 1000
    # prediction and more loss options (kohya's names; train/losses.py, model/prediction.py)
    v_parameterization: str = "auto"  # auto: as the host renders the model; true / false
    zero_terminal_snr: str = "auto"  # auto: the host's noise-schedule setting; true / false
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float = 0.0
    debiased_estimation_loss: bool = False
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    ip_noise_gamma_random_strength: bool = False
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    # outputs
    save_every_n_epochs: int = 1
    save_precision: str = "fp16"
    save_state: bool = True  # keep a resumable state beside the final file
    seed: int = 1337
    sample_every_n_steps: int = 50
    sample_prompts: list[str] = field(default_factory=list)  # empty: trigger word, + a generalisation probe
    sample_steps: int = 20
    sample_cfg_scale: float = 7.0
    sample_sampler: str = "Euler a"
    training_comment: str = ""
    resume: str = field(default="", metadata={"path": "read"})  # a run folder or its state file
    preset: str = "custom"

    # ------------------------------------------------------------------ derived values
    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def unet_learning_rate(self) -> float:
        return self.unet_lr or self.learning_rate

    @property
    def te_learning_rate(self) -> float:
        return self.text_encoder_lr or self.learning_rate

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only and self.te_learning_rate > 0

    def warmup_steps(self, total: int) -> int:
        w = self.lr_warmup_steps
        return round(w * total) if 0 < w < 1 else int(w)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Reject what cannot work, naming the key; returns self for chaining."""
        w, h = self.resolution_wh
        step = self.bucket_reso_steps
        _check(bool(self.output_name.strip()), "output_name", "must not be empty")
        _check(not any(c in self.output_name for c in '/\\:*?"<>|'), "output_name", "must be a plain file name")
        _check(step in (8, 16, 32, 64), "bucket_reso_steps", "must be 8, 16, 32 or 64")
        _check(w % 8 == 0 and h % 8 == 0 and min(w, h) >= 64, "resolution", "must be multiples of 8, at least 64")
        _check(self.train_batch_size >= 1, "train_batch_size", "must be at least 1")
        _check(self.max_train_epochs >= 1 or self.max_train_steps >= 1, "max_train_epochs", "must be at least 1")
        _check(self.max_train_steps >= 0 and self.num_repeats >= 0, "max_train_steps", "must not be negative")
        _check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be at least 1")
        _check(self.keep_tokens >= 0, "keep_tokens", "must not be negative")
        for key in ("caption_dropout_rate", "caption_tag_dropout_rate", "network_dropout", "rank_dropout"):
            _check(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")
        _check(0 <= self.module_dropout < 1, "module_dropout", "must be in [0, 1)")
        _check(self.max_token_length in (75, 150, 225), "max_token_length", "must be 75, 150 or 225")
        _check(1 <= self.clip_skip <= 12, "clip_skip", "must be between 1 and 12")
        _check(self.network_dim >= 1, "network_dim", "must be at least 1")
        _check(self.network_alpha > 0, "network_alpha", "must be positive (try network_dim or half of it)")
        _check(self.conv_dim >= 0 and self.conv_alpha > 0, "conv_dim", "conv_dim ≥ 0 and conv_alpha > 0")
        _check(self.optimizer_type in OPTIMIZERS, "optimizer_type", f"must be one of {', '.join(OPTIMIZERS)}")
        _check(self.lr_scheduler in SCHEDULERS, "lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        _check(self.mixed_precision in PRECISIONS, "mixed_precision", "must be no, fp16 or bf16")
        _check(self.save_precision in SAVE_PRECISIONS, "save_precision", "must be fp16, bf16 or float")
        for key in ("learning_rate", "unet_lr", "text_encoder_lr"):
            value = getattr(self, key)
            _check(math.isfinite(value) and 0 <= value <= 10, key, "must be between 0 and 10")
        _check(self.unet_learning_rate > 0, "learning_rate", "must be positive")
        if self.optimizer_type != "Prodigy":
            _check(self.unet_learning_rate < 0.1, "unet_lr", "is far too high for LoRA (typical: 1e-4)")
        _check(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must not be negative")
        _check(self.lr_scheduler_num_cycles >= 1, "lr_scheduler_num_cycles", "must be at least 1")
        if self.fused_backward_pass:
            key = "fused_backward_pass"
            only = f"works with optimizer_type {' or '.join(PER_TENSOR)} only"
            _check(self.optimizer_type in PER_TENSOR, key, only)
            no_accumulation = "steps inside backward, so it cannot accumulate (set gradient_accumulation_steps 1)"
            _check(self.gradient_accumulation_steps == 1, key, no_accumulation)
            _check(self.mixed_precision != "fp16", key, "cannot use fp16's loss scaling (use bf16)")
        if self.fp8_base:
            _check(self.mixed_precision != "no", "fp8_base",
                   "needs mixed_precision bf16 or fp16 (FP8 weights are upcast per layer)")  # fmt: skip
        _check(self.max_grad_norm >= 0, "max_grad_norm", "must not be negative (0 turns clipping off)")
        _check(0 <= self.noise_offset < 1, "noise_offset", "must be in [0, 1) (0.05-0.1 is usual)")
        _check(self.min_snr_gamma >= 0, "min_snr_gamma", "must not be negative (0 turns it off, 5 is usual)")
        _check(0 <= self.min_timestep < self.max_timestep <= 1000, "min_timestep", "need 0 ≤ min < max ≤ 1000")
        self._validate_loss_options()
        _check(self.save_every_n_epochs >= 0, "save_every_n_epochs", "must not be negative")
        _check(self.sample_every_n_steps >= 0, "sample_every_n_steps", "must not be negative (0: no samples)")
        _check(1 <= self.sample_steps <= 150, "sample_steps", "must be between 1 and 150")
        _check(self.min_bucket_reso >= 64, "min_bucket_reso", "must be at least 64")
        if self.enable_bucket:
            _check(self.min_bucket_reso <= min(w, h), "min_bucket_reso", "must not exceed the resolution")
            _check(self.max_bucket_reso >= max(w, h), "max_bucket_reso", "must be at least the resolution")
        _check(self.seed >= 0, "seed", "must not be negative")
        if self.caption_dropout_rate or self.caption_tag_dropout_rate or self.shuffle_caption:
            _check(self.keep_tokens >= 0, "keep_tokens", "must not be negative")
        return self

    def _validate_loss_options(self) -> None:
        from lora_forge.model.prediction import TRISTATE

        for key in ("v_parameterization", "zero_terminal_snr"):
            _check(str(getattr(self, key)).lower() in TRISTATE, key, "must be auto, true or false")
        v = str(self.v_parameterization).lower()
        _check(not (self.scale_v_pred_loss_like_noise_pred and v == "false"), "scale_v_pred_loss_like_noise_pred",
               "needs v-prediction (v_parameterization)")  # fmt: skip
        _check(not (self.v_pred_like_loss and v == "true"), "v_pred_like_loss", "is for ε-prediction models")
        _check(0 <= self.v_pred_like_loss <= 10, "v_pred_like_loss", "must be between 0 and 10 (0 turns it off)")
        _check(not self.adaptive_noise_scale or self.noise_offset > 0, "adaptive_noise_scale", "needs noise_offset")
        _check(self.multires_noise_iterations >= 0, "multires_noise_iterations", "must not be negative (6-10 is usual)")
        if self.multires_noise_iterations:  # kohya_ss files say 0 for both when it is off
            _check(0 < self.multires_noise_discount <= 1, "multires_noise_discount", "must be in (0, 1] (0.3 is usual)")
        _check(0 <= self.ip_noise_gamma < 1, "ip_noise_gamma", "must be in [0, 1) (0.1 is usual)")
        _check(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}")
        _check(self.huber_schedule in HUBER_SCHEDULES, "huber_schedule", f"must be one of {', '.join(HUBER_SCHEDULES)}")
        _check(0 < self.huber_c <= 1, "huber_c", "must be in (0, 1] (0.1 is usual)")
        _check(self.huber_scale > 0, "huber_scale", "must be positive (1 is usual)")

    # ------------------------------------------------------------------ TOML
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = ["# LoRA Forge training config (kohya sd-scripts key names)"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Overlay `data` on `base` (or the defaults), coercing types; unknown keys are an error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            named = ", ".join(_with_suggestion(k, list(known)) for k in unknown)
            raise ForgeError(f"unknown config key(s): {named}; train --help lists every key with its type and default")
        values = dataclasses.asdict(base or cls())
        for key, raw in data.items():
            values[key] = coerce(key, raw, values[key])
        return cls(**values)


def nearest_key(name: str, keys: list[str]) -> str | None:
    """The config key a user most likely meant: `epochs` → `max_train_epochs`, `lr` → `learning_rate`."""
    import difflib

    low = name.strip().lower().replace("-", "_")
    aliases = {
        "lr": "learning_rate", "dim": "network_dim", "rank": "network_dim", "alpha": "network_alpha",
        "epochs": "max_train_epochs", "steps": "max_train_steps", "batch_size": "train_batch_size",
        "batch": "train_batch_size", "repeats": "num_repeats", "trigger": "trigger_word", "name": "output_name",
    }  # fmt: skip
    if aliases.get(low) in keys:
        return aliases[low]
    containing = [k for k in keys if (low and low in k.split("_")) or (len(low) > 3 and low in k)]
    if containing:
        return min(containing, key=len)
    close = difflib.get_close_matches(low, keys, n=1, cutoff=0.6)
    return close[0] if close else None


def _with_suggestion(name: str, keys: list[str]) -> str:
    near = nearest_key(name, keys)
    return f"{name} (did you mean {near}?)" if near else name


def describe_keys() -> str:
    """Every config key with its type and default, one per line: `train --help` and the README."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = type(default).__name__
        lines.append(f"  {f.name} ({kind}, default {_toml_value(default)})")
    return "\n".join(lines)


def path_keys() -> dict[str, bool]:
    """The keys that name a file or folder (field metadata "path"), each → whether it is written:
    what a listening server's path policy checks in a config from any face (safety.py)."""
    return {f.name: f.metadata["path"] == "write" for f in dataclasses.fields(TrainConfig) if "path" in f.metadata}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ForgeError(f"config: {key} {message}")


def parse_resolution(text: str | int) -> tuple[int, int]:
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        nums = [int(float(p)) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise ForgeError(f'config: resolution must be like "512" or "512,768", not {text!r}')


def coerce(key: str, raw: Any, default: Any) -> Any:
    """`raw` (TOML value or a `--set` string) as the type of the key's default."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                low = raw.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off", ""):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if isinstance(default, int):
            value = float(raw)
            if value != int(value):
                raise ValueError(raw)
            return int(value)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            if isinstance(raw, str):
                return [p for p in (s.strip() for s in raw.split("|")) if p]
            return [str(x) for x in raw]
        if isinstance(raw, list) and key == "resolution":
            return ",".join(str(int(x)) for x in raw)
        return str(raw)
    except (TypeError, ValueError) as e:
        kind = type(default).__name__
        raise ForgeError(f"config: {key} must be {kind}, not {raw!r}") from e


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    # A JSON string is a TOML basic string once DEL, which JSON leaves raw and TOML forbids, is escaped.
    return json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")


# ---------------------------------------------------------------------- reading TOML / JSON files
def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or JSON file as a flat dict (TOML tables are flattened, as kohya does)."""
    from lora_forge.fsio import read_text

    path = Path(path)
    if not path.is_file():
        raise ForgeError("config file not found", path=path)
    text = read_text(path)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else parse_toml(text)
    except (ValueError, json.JSONDecodeError) as e:
        raise ForgeError(f"cannot read the config: {e}", path=path) from e
    if not isinstance(data, dict):
        raise ForgeError("the config must be a table of key = value", path=path)
    return _flatten(data)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(_flatten(v))
        else:
            flat[k] = v
    return flat


def parse_toml(text: str) -> dict[str, Any]:
    """A TOML document read by a real TOML parser: `tomllib` (Python 3.11+), else `tomli`.

    The WebUI 1.10.1 runs on Python 3.10, which has no tomllib, and nothing it installs brings
    tomli: install.py adds tomli there (and pyproject.toml lists it for 3.10), so every TOML
    feature kohya / lora-scripts configs use (multi-line arrays, inline tables, literal strings,
    dotted keys) reads the same on every Python. Errors are ValueError (TOMLDecodeError is one).
    """
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ForgeError(
                "reading a TOML config on Python 3.10 needs the tomli package: python -m pip install tomli "
                "(the WebUI's install step adds it on restart)"
            ) from e
    return tomllib.loads(text)
