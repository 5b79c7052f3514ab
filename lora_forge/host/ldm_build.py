"""Turn a checkpoint file into the `ldm` LatentDiffusion object the WebUI would hold.

The steps mirror the WebUI's `sd_models.load_model` so that code written against the standalone
host sees the same object: read the state dict safely, pick the yaml the way
`sd_models_config.find_checkpoint_config` does, build the model with its layers on the meta
device (no time spent on random init that the checkpoint overwrites), then assign the weights.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.host.clip_files import resolve_clip_folder
from lora_forge.model.family import FAMILY_LABELS, checkpoint_family, sd2_is_v_prediction
from lora_forge.model.yaml_policy import check_model_config, read_yaml_tree

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_CONFIGS = {
    "sd1": "sd1.yaml",
    "sd2": "sd2.yaml",
    "sd2-v": "sd2-v.yaml",
    "sdxl": "sdxl.yaml",
    "sdxl-v": "sdxl.yaml",
}
# What cannot be trained or loaded here, with what the user can do instead.
REFUSED = {
    "sdxl-refiner": "this is the SDXL refiner, which only finishes images and takes no LoRA; load an SDXL base model",
    "sdxl-inpaint": "SDXL inpainting models cannot be trained; load the SDXL base model it was made from",
    "sd3": "SD3 models are not supported (a different network, not a UNet); load an SD1.x, SD2.x or SDXL model",
}
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
# after `cond_stage_model.` (SD1) or `conditioner.embedders.0.` (SDXL)
POSITION_IDS = "transformer.text_model.embeddings.position_ids"


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a `.safetensors` file, or of a pickle that `torch.load(weights_only=True)` accepts.

    A pickle that needs anything beyond tensors could run code on load; it is refused, not opened.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ForgeError("no such file; give the path of a .safetensors or .ckpt model", path=path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own types (SafetensorError, OSError)
            raise ForgeError(f"not a readable safetensors file ({e}); re-download it", path=path) from e
    if path.suffix.lower() not in (".ckpt", ".pt", ".pth", ".bin"):
        raise ForgeError("unsupported model file type; use a .safetensors (or .ckpt) file", path=path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ForgeError(
            "unsafe pickle: loading it would run code the file contains, so it was not loaded; "
            "use a .safetensors version of this model",
            path=path,
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ForgeError(f"not a readable checkpoint ({str(e).splitlines()[0]}); re-download it", path=path) from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ForgeError("the file holds no state dict; it is not a model checkpoint", path=path)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# Early SD1 checkpoints were saved with an older transformers, whose CLIPTextModel had no
# `text_model` level; the WebUI renames these prefixes on load, and so do we.
OLD_CLIP_PREFIXES = {
    f"cond_stage_model.transformer.{part}.": f"cond_stage_model.transformer.text_model.{part}."
    for part in ("embeddings", "encoder", "final_layer_norm")
}


def modern_key_names(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict with old CLIP key prefixes renamed (the same dict when there are none)."""
    if not any(k.startswith(tuple(OLD_CLIP_PREFIXES)) for k in state_dict):
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        for old, new in OLD_CLIP_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def choose_config(ckpt: Path, state_dict: Mapping[str, Any], explicit: Path | None = None) -> tuple[Path, str]:
    """(yaml path, family) for a checkpoint: an explicit yaml, else `<checkpoint>.yaml` beside it,
    else a built-in config for the family the keys show (SD2: a yaml-less file is tested for v)."""
    family = checkpoint_family({k: tuple(v.shape) for k, v in state_dict.items()})
    if not family:
        raise ForgeError("not a Stable Diffusion checkpoint (no UNet weights found)", path=ckpt)
    if family in REFUSED:
        raise ForgeError(REFUSED[family], path=ckpt)
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ForgeError("config file not found", path=explicit)
        return Path(explicit), family
    beside = Path(ckpt).with_suffix(".yaml")
    if beside.is_file():
        return beside, family
    if family == "sd2" and sd2_is_v_prediction(state_dict):
        family = "sd2-v"
    if family not in BUILTIN_CONFIGS:
        raise ForgeError(
            f"{FAMILY_LABELS.get(family, family)} checkpoints need their yaml config beside the file "
            f"({beside.name}); LoRA training wants a base (non-inpainting) model",
            path=ckpt,
        )
    return CONFIG_DIR / BUILTIN_CONFIGS[family], family


def load_config(path: Path) -> Any:
    """The yaml as an OmegaConf tree, after every class it names passed the allow-list
    (model/yaml_policy.py): a yaml beside a checkpoint is data and must never run code."""
    from omegaconf import OmegaConf

    tree = read_yaml_tree(path)
    check_model_config(tree, path)
    try:
        config = OmegaConf.create(tree)
        params = config.model.params
        unet = params.unet_config if "unet_config" in params else params.network_config  # ldm / sgm
        unet.params.use_checkpoint = False  # as the WebUI's repair_config
        ddconfig = params.first_stage_config.params.get("ddconfig", {})
        if ddconfig.get("attn_type") == "vanilla-xformers" and not _xformers_available():
            ddconfig.attn_type = "vanilla"  # so does repair_config: that block needs xformers
    except Exception as e:  # yaml/omegaconf raise many types for a broken file
        raise ForgeError(f"not a usable model config ({e.__class__.__name__}: {e})", path=path) from e
    return config


def _xformers_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xformers") is not None


@contextlib.contextmanager
def _layers_on_meta(enabled: bool) -> Iterator[None]:
    """Create the big layers' weights on the meta device, as the WebUI's InitializeOnMeta does;
    small tensors made with torch.tensor (the noise schedule) stay real."""
    import torch

    if not enabled:
        yield
        return
    classes = [
        torch.nn.Linear,
        torch.nn.Conv2d,
        torch.nn.GroupNorm,
        torch.nn.LayerNorm,
        torch.nn.Embedding,
        torch.nn.MultiheadAttention,
    ]
    originals = {cls: cls.__init__ for cls in classes}

    def patched(orig: Any) -> Any:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["device"] = "meta"
            orig(self, *args, **kwargs)

        return init

    try:
        for cls in classes:
            cls.__init__ = patched(originals[cls])
        yield
    finally:
        for cls, orig in originals.items():
            cls.__init__ = orig


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set `owner.name` for a while; an inherited classmethod is restored by deleting the override,
    so subclasses keep resolving it to themselves."""
    had_own = name in vars(owner)
    before = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, before)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def _text_encoders_from_config(clip_folder: Path | None, on_meta: bool) -> Iterator[None]:
    """Let ldm's text embedders build their model from a config only: the weights come from the
    checkpoint, so no text-model weight file (or download) is needed, as in the WebUI."""
    import open_clip
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    load_tokenizer = CLIPTokenizer.from_pretrained  # bound before it is patched below

    def model_from_config(version: str, *args: Any, **kwargs: Any) -> Any:
        folder = resolve_clip_folder(str(version), clip_folder)
        return CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder)))

    def tokenizer(version: str, *args: Any, **kwargs: Any) -> Any:
        return load_tokenizer(str(resolve_clip_folder(str(version), clip_folder)))

    def open_clip_model(arch: str, *args: Any, **kwargs: Any) -> Any:
        model = open_clip.create_model(arch, pretrained=None, device="meta" if on_meta else "cpu")
        return model, None, None

    with (
        _patched(CLIPTextModel, "from_pretrained", model_from_config),
        _patched(CLIPTokenizer, "from_pretrained", tokenizer),
        _patched(open_clip, "create_model_and_transforms", open_clip_model),
    ):
        yield


def register_open_clip_configs(arch: str, folders: list[Path]) -> None:
    """Make an unknown open_clip architecture known from an `<arch>.json` in one of `folders`
    (beside the checkpoint or its yaml): that is how our tiny SD2 names its text encoder."""
    import open_clip

    if arch in open_clip.list_models():
        return
    for folder in folders:
        candidate = Path(folder) / f"{arch}.json"
        if candidate.is_file():
            open_clip.add_model_config(candidate)
            return
    raise ForgeError(f"unknown OpenCLIP architecture {arch!r}: put {arch}.json beside the checkpoint")


def instantiate(config: Any, clip_folder: Path | None = None, on_meta: bool = True) -> Any:
    """Build the LatentDiffusion a config describes; with `on_meta` its layers hold no memory yet.

    ldm prints parameter counts and pytorch_lightning warns about its own deprecations on import;
    neither means anything to our users, so both are kept quiet here.
    """
    import io
    import warnings

    from omegaconf import OmegaConf

    check_model_config(OmegaConf.to_container(config, resolve=False))  # also for configs built in code
    with warnings.catch_warnings():
        # lightning_fabric imports pkg_resources, which warns about itself with newer setuptools
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import pytorch_lightning  # noqa: F401  (it installs its own warning filters on import; ours go on top)

        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from ldm.util import instantiate_from_config

        with (
            contextlib.redirect_stdout(io.StringIO()),
            _text_encoders_from_config(clip_folder, on_meta),
            _layers_on_meta(on_meta),
        ):
            return instantiate_from_config(config.model)


def load_weights(model: Any, state_dict: dict[str, Any], dtype: Any, path: Path) -> None:
    """Assign checkpoint tensors to a model built on meta: UNet and text encoder in `dtype`, the VAE
    and the noise schedule in fp32 (the WebUI keeps those apart from half precision too).

    Empties `state_dict` as it goes, so an fp16 file converted to fp32 never sits in memory twice.
    """
    import torch

    own = model.state_dict()
    wanted = {}
    for key in list(state_dict):
        value = state_dict.pop(key)
        if key not in own:
            continue
        keep_fp32 = key.startswith("first_stage_model.") or key in SCHEDULE_BUFFERS or not value.is_floating_point()
        wanted[key] = value.to(torch.float32 if keep_fp32 else dtype)
    for key in own:
        if key.endswith(POSITION_IDS):  # some merges stored these as broken floats; they are just 0..76
            wanted[key] = torch.arange(own[key].shape[-1]).unsqueeze(0)
    for name in SCHEDULE_BUFFERS:
        if name in own:  # ldm only; sgm keeps its schedule in the denoiser
            wanted.setdefault(name, own[name].float())
    missing = [k for k in own if k not in wanted and own[k].is_meta]
    if missing:
        raise ForgeError(
            f"the checkpoint lacks {len(missing)} weights the model config needs (e.g. {missing[0]}); "
            "it may be for another model type: put the right yaml beside it",
            path=path,
        )
    try:
        model.load_state_dict(wanted, strict=False, assign=True)
    except RuntimeError as e:
        raise ForgeError(
            f"weights do not fit the model config ({str(e).splitlines()[-1].strip()}); "
            "put the right yaml beside the checkpoint",
            path=path,
        ) from e
    embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
    text_models = [getattr(e, "model", None) for e in embedders] if embedders is not None else []
    if hasattr(model, "cond_stage_model"):
        text_models.append(getattr(model.cond_stage_model, "model", None))
    for text_model in text_models:
        mask = getattr(text_model, "attn_mask", None)
        if mask is not None and mask.is_meta:  # open_clip's causal mask is not saved in checkpoints
            text_model.attn_mask = torch.full(tuple(mask.shape), float("-inf")).triu_(1)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise ForgeError(f"the checkpoint does not provide {name}", path=path)


def load_vae(model: Any, path: Path) -> None:
    """Load a separate VAE file into `first_stage_model` in place, as the WebUI's sd_vae does.

    Takes a VAE file (`encoder.*`, `decoder.*`, ...) or any checkpoint, whose `first_stage_model.*`
    part is used: users often pick "the VAE of that other model".
    """
    import torch

    state = read_state_dict(path)
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v.to(torch.float32) for k, v in state.items() if not k.startswith(("loss", "model_ema"))}
    try:
        model.first_stage_model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ForgeError(
            "not a VAE for this model (its weights do not fit the autoencoder); "
            "use an SD1/SD2 VAE in the original (not diffusers) layout",
            path=path,
        ) from e
