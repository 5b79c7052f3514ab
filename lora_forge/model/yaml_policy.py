"""Which classes a model yaml may name: a yaml beside a checkpoint is data, never code.

`ldm`/`sgm` build a model with `instantiate_from_config`, which imports whatever dotted name a
`target:` holds and calls it with `params:` — so `target: subprocess.getoutput` runs a command.
Every `target` in the whole config tree is checked against the allow-list below before anything is
instantiated; so are the few other keys those libraries turn into imports or file loads
(`network_wrapper` is imported by sgm's DiffusionEngine; `ckpt_path` makes ldm `torch.load` a pickle).

To support another model family, add its classes to one of the tuples (or a new tuple joined into
`ALLOWED_TARGETS`); nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

# The classes of the WebUI's own SD1/SD2 yamls (v1-inference.yaml, v2-inference(-v).yaml).
LDM_TARGETS = (
    "ldm.models.diffusion.ddpm.LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "ldm.models.autoencoder.AutoencoderKL",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
    "ldm.lr_scheduler.LambdaLinearScheduler",  # named by v1-inference.yaml, only built when training ldm itself
    "torch.nn.Identity",  # the autoencoder's `lossconfig`
)

# The classes of the WebUI's SDXL yamls (sd_xl_base.yaml, sd_xl_v.yaml), as Stability's `sgm` names them.
SGM_TARGETS = (
    "sgm.models.diffusion.DiffusionEngine",
    "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper",
    "sgm.modules.diffusionmodules.openaimodel.UNetModel",
    "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
    "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling",
    "sgm.modules.diffusionmodules.denoiser_scaling.VScaling",
    "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting",
    "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization",
    "sgm.modules.GeneralConditioner",  # what sd_xl_base.yaml names (sgm re-exports it)
    "sgm.modules.encoders.modules.GeneralConditioner",
    "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
    "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
    "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
    "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
    "sgm.models.autoencoder.AutoencoderKL",
)

ALLOWED_TARGETS: frozenset[str] = frozenset(LDM_TARGETS + SGM_TARGETS)

# Keys that name a class to import, outside `target` (sgm's DiffusionEngine imports `network_wrapper`).
CLASS_KEYS = ("target", "network_wrapper")
# Keys that make a constructor load a file of its own (ldm/sgm `torch.load` it: a pickle runs code).
FILE_KEYS = ("ckpt_path", "ckpt", "pretrained")


def _walk(node: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted location, key, value) for every key of every mapping in a plain yaml tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            yield here, str(key), value
            yield from _walk(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")


def dangerous_entries(tree: Any) -> list[str]:
    """Human-readable reasons, one per entry of the yaml tree that would import or load something
    outside the allow-list; empty when the tree is safe to instantiate.

    `tree` is the plain container (no interpolation resolved): a `${...}` in a `target` is refused,
    since what it resolves to is not what was checked.
    """
    reasons = []
    for where, key, value in _walk(tree, ""):
        if key in CLASS_KEYS and value is not None:
            if not isinstance(value, str) or value not in ALLOWED_TARGETS:
                reasons.append(f"{where}: {value!r} is not a known model class")
        elif key in FILE_KEYS and value not in (None, "", False):
            reasons.append(f"{where}: {value!r} would load another file")
    return reasons


MAX_YAML_BYTES = 1 << 20  # the WebUI's configs are 2-5 kB


def read_yaml_tree(path: Path) -> Any:
    """The yaml as plain Python data (no interpolation resolved, no object built), or ForgeError.

    Model configs never use yaml aliases; refusing them (found by the linear token scan) keeps an
    alias bomb from expanding into gigabytes when the tree is copied.
    """
    import yaml
    from omegaconf import OmegaConf

    try:
        if Path(path).stat().st_size > MAX_YAML_BYTES:
            raise ForgeError("not a usable model config (larger than 1 MB)", path=path)
        text = Path(path).read_text(encoding="utf-8")
        if any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text, Loader=yaml.SafeLoader)):
            raise ForgeError(
                "not a usable model config (it uses yaml aliases, which model configs never do)", path=path
            )
        return OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except ForgeError:
        raise
    except Exception as e:  # yaml/omegaconf raise many types (and RecursionError) for a broken file
        raise ForgeError(f"not a usable model config ({e.__class__.__name__}: {e})", path=path) from e


def check_model_config(tree: Any, path: Path | None = None) -> None:
    """Refuse a model config that names anything but the known ldm/sgm classes (ForgeError)."""
    reasons = dangerous_entries(tree)
    if reasons:
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        raise ForgeError(
            f"refused to use this model config: it names code that is not a Stable Diffusion model class "
            f"({shown}). Delete or replace the yaml beside the checkpoint with the WebUI's own config",
            path=path,
        )
