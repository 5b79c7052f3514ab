"""Make `import sgm` work where the WebUI's `repositories/generative-models` is not on the path.

SDXL models are `sgm` objects (Stability-AI/generative-models; the WebUI pins 45c443b). Inside the
WebUI the real package is importable and this module does nothing. Headless and in CI it is not on
PyPI, but the wheel `imaginAIry==15.0.0` (installed `--no-deps`) ships a later fork of it under
`imaginairy.modules.sgm`. `ensure_sgm()` maps the names the WebUI's yaml configs and our code use
(`sgm.models.diffusion.DiffusionEngine`, `sgm.modules.GeneralConditioner`,
`sgm.modules.diffusionmodules.openaimodel.UNetModel`, ...) onto that fork, and evens out the
differences that change what an SDXL model *is* (module types, state-dict keys, constructor
arguments), so one config builds the same object either way:

* the fork's UNet builds its transformer blocks with the SD1 `SpatialTransformer`, which takes no
  `attn_type`; the pinned sgm uses its own `sgm.modules.attention.SpatialTransformer`;
* the fork's UNetModel lost the constructor arguments SDXL configs still pass (`legacy`,
  `use_spatial_transformer`, `use_fp16`, `transformer_depth_middle`, ...); the SDXL values are
  accepted, anything that would build a different network is refused;
* the fork decorates CLIP-L's `forward` with a context manager it never calls (the embedder
  returns a function instead of a tensor); the pinned `autocast` decorator is put back;
* the fork's Denoiser lost `weighting_config` (SDXL configs pass EpsWeighting); it is accepted and
  kept as `.weighting` like the pinned one;
* the fork has no `AutoencoderKLInferenceWrapper` (the SDXL configs' VAE class); it is rebuilt
  over the fork's AutoencoderKL with the pinned behaviour (encode asserts eval mode and returns a
  posterior sample).

What still differs (see ../../../shared/docs/test-stack.md and the tests): the fork's
DiffusionEngine is an nn.Module, not a LightningModule, and picks the autocast device itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

from lora_forge.errors import ForgeError

FORK = "imaginairy.modules.sgm"
# pinned sgm module → fork module where the layout differs; everything under sgm.modules.X maps to FORK.X
_RENAMED = {
    "sgm.models.diffusion": f"{FORK}.diffusion",
    "sgm.models.autoencoder": f"{FORK}.autoencoder",
    "sgm.modules": FORK,
    "sgm.util": "imaginairy.utils",
}
_PACKAGES = ("sgm", "sgm.models")
# UNetModel arguments of the pinned sgm that the fork dropped, with the only value SDXL uses
_DROPPED_UNET_ARGS = {
    "legacy": False,
    "use_spatial_transformer": True,
    "use_fp16": False,
    "use_new_attention_order": False,
    "n_embed": None,
    "use_fairscale_checkpoint": False,
    "offload_to_cpu": False,
    "transformer_depth_middle": None,
}

_source: str | None = None


def _fork_name(name: str) -> str | None:
    if name in _RENAMED:
        return _RENAMED[name]
    if name.startswith("sgm.modules."):
        return FORK + name[len("sgm.modules") :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _SgmAliases(importlib.abc.MetaPathFinder):
    """Answers `sgm.*` imports with the fork's already-imported modules (so classes are the same
    objects whichever name a config uses)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in _PACKAGES:
            module = types.ModuleType(fullname, "alias package: see lora_forge.host.sgm_compat")
            module.__path__ = []
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=True)
        fork = _fork_name(fullname)
        if fork is None:
            return None
        try:
            module = importlib.import_module(fork)
        except ImportError:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=hasattr(module, "__path__"))


def _cuda_autocast(f: Any) -> Any:
    """The pinned sgm's `sgm.util.autocast` decorator (the fork applies its own context manager
    without calling it, which turns CLIP-L's forward into a function factory)."""
    import functools

    @functools.wraps(f)
    def do_autocast(*args: Any, **kwargs: Any) -> Any:
        import torch

        if not torch.cuda.is_available():
            return f(*args, **kwargs)
        get_dtype = getattr(torch, "get_autocast_dtype", None)  # torch ≥ 2.4; older: the GPU-only getter
        dtype = get_dtype("cuda") if get_dtype else torch.get_autocast_gpu_dtype()
        with torch.autocast("cuda", dtype=dtype, cache_enabled=torch.is_autocast_cache_enabled()):
            return f(*args, **kwargs)

    return do_autocast


def _keeping_weighting(fork_init: Any) -> Any:
    def init(self: Any, *args: Any, weighting_config: Any = None, **kwargs: Any) -> None:
        fork_init(self, *args, **kwargs)
        if weighting_config is not None:  # the pinned sgm's Denoiser keeps its loss weighting
            self.weighting = importlib.import_module("imaginairy.utils").instantiate_from_config(weighting_config)

    return init


def _patch_fork() -> None:
    """The evening-outs listed in the module docstring."""
    attention = importlib.import_module(f"{FORK}.attention")
    openaimodel = importlib.import_module(f"{FORK}.diffusionmodules.openaimodel")
    encoders = importlib.import_module(f"{FORK}.encoders.modules")
    autoencoder = importlib.import_module(f"{FORK}.autoencoder")
    fork_pkg = importlib.import_module(FORK)

    denoiser = importlib.import_module(f"{FORK}.diffusionmodules.denoiser")
    openaimodel.SpatialTransformer = attention.SpatialTransformer
    fork_pkg.GeneralConditioner = encoders.GeneralConditioner
    for cls in vars(encoders).values():
        forward = vars(cls).get("forward") if isinstance(cls, type) else None
        if isinstance(forward, contextlib.ContextDecorator) and getattr(forward, "args", None):
            cls.forward = _cuda_autocast(forward.args[0])

    unet_cls = openaimodel.UNetModel
    fork_init = unet_cls.__init__

    def unet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        for name, expected in _DROPPED_UNET_ARGS.items():
            if name in kwargs and kwargs.pop(name) != expected:
                raise ForgeError(f"this sgm copy cannot build a UNet with {name} other than {expected!r}")
        fork_init(self, *args, **kwargs)

    unet_cls.__init__ = unet_init

    for cls in (denoiser.Denoiser, denoiser.DiscreteDenoiser):
        cls.__init__ = _keeping_weighting(cls.__init__)

    class AutoencoderKLInferenceWrapper(autoencoder.AutoencoderKL):
        """The pinned sgm's SDXL VAE class: encode() returns a sample of the posterior."""

        def __init__(self, embed_dim: int, **kwargs: Any) -> None:
            super().__init__(embed_dim=embed_dim, **kwargs)

        def encode(self, x: Any, return_reg_log: bool = False) -> Any:
            assert not self.training, f"{self.__class__.__name__} only supports inference currently"
            return super().encode(x, return_reg_log=return_reg_log)

    AutoencoderKLInferenceWrapper.__module__ = autoencoder.__name__
    autoencoder.AutoencoderKLInferenceWrapper = AutoencoderKLInferenceWrapper


def ensure_sgm() -> str:
    """Make `sgm` importable; returns "sgm" (the real package) or "imaginairy" (the fork, aliased).

    Raises ForgeError with what to install when neither is there.
    """
    global _source
    if _source is not None:
        return _source
    try:
        import sgm.models.diffusion
        import sgm.modules.diffusionmodules.openaimodel  # noqa: F401

        _source = "sgm"
        return _source
    except ImportError:
        for name in [n for n in sys.modules if n == "sgm" or n.startswith("sgm.")]:
            del sys.modules[name]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(f"{FORK}.diffusion")
    except ImportError as e:
        raise ForgeError(
            "SDXL models need the `sgm` package: run inside the WebUI (it has repositories/generative-models), "
            "or `pip install --no-deps imaginAIry==15.0.0 psutil torchdiffeq` for headless use"
        ) from e
    _patch_fork()
    sys.meta_path.insert(0, _SgmAliases())
    _source = "imaginairy"
    return _source
