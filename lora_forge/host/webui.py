"""The host inside the AUTOMATIC1111 WebUI (1.6 → 1.10.1): the only file that imports `modules.*`.

Every WebUI import happens inside a function: this module is imported by scripts/lora_forge.py at
WebUI start-up, and the stages it serves must stay importable (and testable) without the WebUI.
Version differences are handled by looking at what is there, not by parsing version strings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError, RenderFailed
from lora_forge.events import Progress, ProgressFn, no_progress
from lora_forge.host.base import Host, RenderRequest
from lora_forge.host.webui_train import WebUITraining
from lora_forge.settings import Settings

SETTINGS_SECTION = ("lora_forge", "LoRA Forge")
SETTINGS_CATEGORY = "training"  # a built-in category of the 1.7+ settings page
OPT_MODELS_DIR = "lora_forge_models_dir"
OPT_HF_ENDPOINT = "lora_forge_hf_endpoint"
OPT_DATASET_DIR = "lora_forge_dataset_dir"
EXTERNAL_LORA_FOLDER = "lora_forge_external"
XYZ_SCRIPT_TITLE = "X/Y/Z plot"  # the built-in script's title() in every version
MAX_BATCH = 4  # images per process_images call; the WebUI's users have 6 GB cards
EXTENSION_ROOT = Path(__file__).resolve().parents[2]


def is_forge2(sd_model: Any) -> bool:
    """Forge 2's model is a plain object without `.model`; training on it needs its own copy."""
    return hasattr(sd_model, "forge_objects") and not hasattr(sd_model, "model")


# -- settings ------------------------------------------------------------------------------------


def _option(default: Any, label: str, info: str) -> Any:
    from modules import shared

    kwargs: dict[str, Any] = {"section": SETTINGS_SECTION}
    if "category_id" in inspect.signature(shared.OptionInfo).parameters:  # 1.7+; a TypeError on 1.6
        kwargs["category_id"] = SETTINGS_CATEGORY
    return shared.OptionInfo(default, label, **kwargs).info(info)


def register_settings() -> None:
    """The LoRA Forge section of Settings (on_ui_settings)."""
    from modules import shared

    shared.opts.add_option(
        OPT_MODELS_DIR,
        _option("", "Folder for LoRA Forge downloads (tagger models)", "empty = models/lora_forge"),
    )
    shared.opts.add_option(
        OPT_HF_ENDPOINT,
        _option(
            "",
            "Hugging Face mirror for LoRA Forge downloads",
            "e.g. https://hf-mirror.com; empty = the HF_ENDPOINT environment variable, else huggingface.co",
        ),
    )
    shared.opts.add_option(
        OPT_DATASET_DIR,
        _option("", "Default dataset folder", "empty = lora_forge/datasets in the WebUI's data folder"),
    )


WEBUI_MIRROR_HINT = (
    "check the network, or set a mirror (e.g. https://hf-mirror.com) in Settings → LoRA Forge → "
    "Hugging Face mirror for LoRA Forge downloads"
)


def settings_from_opts() -> Settings:
    """Settings for the stages, read afresh each time so a change applies without a restart."""
    from modules import paths, shared

    def opt(key: str) -> str:
        return str(shared.opts.data.get(key) or "").strip()

    return Settings(
        models_dir=Path(opt(OPT_MODELS_DIR) or Path(paths.models_path) / "lora_forge"),
        dataset_dir=Path(opt(OPT_DATASET_DIR) or Path(paths.data_path) / "lora_forge" / "datasets"),
        hf_endpoint=opt(OPT_HF_ENDPOINT).rstrip("/") or os.environ.get("HF_ENDPOINT") or None,
        mirror_hint=WEBUI_MIRROR_HINT,
    )


# -- localization: ours translates our tab only ------------------------------------------------


def withdraw_own_localizations(localizations: dict[str, Any], own: set[Path], empty: Path) -> None:
    """Take our localizations/<lang>.json out of the WebUI's table, keeping each language listed.

    The WebUI merges every extension's file for a language into one dict that localization.js
    applies to the WHOLE page by exact text: our "Train", "Width", "Seed" would rename the WebUI's own
    Train tab and txt2img's fields. Our tab is translated when it is built instead (ui.translate.
    localize_components, with the same file). 1.7+ keeps a list of files per language: ours is
    removed from it. 1.6 keeps one path: when it is ours, an empty catalog stands in (so the
    language stays selectable, and the choice still reaches our tab)."""
    own_resolved = {p.resolve() for p in own}

    def is_own(f: Any) -> bool:
        try:
            return Path(f).resolve() in own_resolved
        except (OSError, ValueError):
            return False

    for stem, value in list(localizations.items()):
        if isinstance(value, list):
            localizations[stem] = [f for f in value if not is_own(f)]
        elif isinstance(value, str) and is_own(value):
            if not empty.is_file():
                empty.parent.mkdir(parents=True, exist_ok=True)
                empty.write_text("{}", encoding="utf-8")
            localizations[stem] = str(empty)


def fix_localizations() -> None:
    """on_before_ui: withdraw_own_localizations on the WebUI's localization table."""
    from modules import localization

    own = set((EXTENSION_ROOT / "localizations").glob("*.json"))
    empty = Path(tempfile.gettempdir()) / "lora_forge_l10n" / "empty.json"
    withdraw_own_localizations(localization.localizations, own, empty)


def _cmd_opts() -> Any:
    from modules import shared

    return shared.cmd_opts


# -- the host ------------------------------------------------------------------------------------


def _networks() -> Any:
    """The built-in Lora extension's module (top-level `networks`, cached once its script loaded)."""
    module = sys.modules.get("networks")
    if module is None or not hasattr(module, "available_networks"):
        raise ForgeError("the built-in Lora extension is not loaded: enable it in Extensions, then restart the WebUI")
    return module


def _lookup(networks: Any, name: str) -> Any:
    """How the Lora extension resolves `<lora:name>`: by alias, or by file name when aliases clash."""
    if name.lower() in networks.forbidden_network_aliases:
        return networks.available_networks.get(name)
    return networks.available_network_aliases.get(name)


def _same_file(entry: Any, path: Path) -> bool:
    return entry is not None and Path(entry.filename).resolve() == path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


# The thread that holds queue_lock through exclusive(): the lock is global and not re-entrant, so
# whoever holds it (any WebUIHost) may render without taking it again.
_lock_owner: dict[str, int] = {}


class WebUIHost(WebUITraining, Host):
    name = "webui"
    status_note = ""  # kept after every status text, e.g. a failed load-back check until the run ends

    def sd_model(self) -> Any:
        from modules import shared

        model = shared.sd_model
        if model is None:
            raise ForgeError("no checkpoint is loaded: choose one in the WebUI's Stable Diffusion checkpoint list")
        if is_forge2(model):
            raise ForgeError(
                "Forge 2 builds its model for inference only, so LoRA Forge cannot train on it; "
                "use AUTOMATIC1111 1.6–1.10, reForge, or `python -m lora_forge train` on the checkpoint file"
            )
        return model

    @property
    def device(self) -> Any:
        from modules import devices

        return devices.device

    @property
    def dtype(self) -> Any:
        from modules import devices

        return getattr(devices, "dtype_unet", devices.dtype)

    def lora_dir(self) -> Path:
        from modules import paths

        return Path(getattr(_cmd_opts(), "lora_dir", None) or Path(paths.models_path) / "Lora")

    def refresh_loras(self) -> None:
        _networks().list_available_networks()

    def network_name(self, path: Path | str) -> str:
        """The name under which the Lora extension renders `path` in a `<lora:…>` token.

        A file outside the Lora folder, or one whose stem another file shadows, is hard-linked (or
        copied) once into <Lora>/lora_forge_external/ under a name that carries its content hash.
        """
        networks = _networks()
        path = Path(path).resolve()
        if not path.is_file():
            raise ForgeError(f"LoRA file not found: {path}")
        by_names = getattr(networks, "update_available_networks_by_names", None)  # 1.10+; else a full rescan

        def refresh(name: str) -> None:
            if by_names is not None:
                by_names([name])
            else:
                networks.list_available_networks()

        if not _same_file(_lookup(networks, path.stem), path):
            refresh(path.stem)
        if _same_file(_lookup(networks, path.stem), path):
            return path.stem
        folder = self.lora_dir() / EXTERNAL_LORA_FOLDER
        alias = folder / f"{path.stem}-{_file_digest(path)}{path.suffix}"
        if not alias.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = alias.with_name(alias.name + ".tmp")
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, alias)
        refresh(alias.stem)
        if not _same_file(_lookup(networks, alias.stem), alias.resolve()):
            raise ForgeError(f"the Lora extension does not see {alias}; check --lora-dir and the file's permissions")
        return alias.stem

    @contextlib.contextmanager
    def exclusive(self, job: str) -> Iterator[None]:
        """Hold the WebUI's queue_lock (FIFO, not re-entrant) with shared.state set up for `job`."""
        from modules import call_queue, shared

        if _lock_owner.get("thread") == threading.get_ident():
            yield  # already ours: txt2img inside a training job
            return
        call_queue.queue_lock.acquire()  # waits in line behind WebUI generations and API calls
        _lock_owner["thread"] = threading.get_ident()
        try:
            shared.state.begin(job=f"lora_forge: {job}")
            try:
                yield
            finally:
                shared.state.end()
        finally:
            _lock_owner.pop("thread", None)
            call_queue.queue_lock.release()

    def interrupted(self) -> bool:
        from modules import shared

        return bool(shared.state.interrupted)

    def zero_terminal_snr_sampling(self) -> bool:
        from modules import shared

        # 1.8+ (`sd_models.apply_alpha_schedule_override`); older WebUIs have no such option
        return getattr(shared.opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR"

    def report(self, event: Progress) -> None:
        from modules import shared

        state = shared.state
        if event.total:
            state.job_count = event.total
            state.job_no = event.step
        if event.message:
            state.textinfo = event.message + (f" ⚠ {self.status_note}" if self.status_note else "")
        if event.image is not None:
            state.assign_current_image(event.image)

    def training_overrides(self) -> dict[str, Any]:
        from lora_forge.host import webui_train

        return {**webui_train.medvram_overrides(), **webui_train.fp8_overrides()}

    def txt2img(self, requests: Sequence[RenderRequest], progress: ProgressFn = no_progress) -> list[Any]:
        """One process_images per group of requests alike but for the seed (the Lora extension reads
        `<lora:…>` from a batch's first prompt only, so different strengths are different calls)."""
        from modules import extra_networks, shared

        self.sd_model()
        if any(r.loras for r in requests) and "lora" not in extra_networks.extra_network_registry:
            raise ForgeError("the built-in Lora extension is not active: enable it in Extensions, then restart")
        prompts = [self._prompt(r) for r in requests]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            key = (prompts[i], r.negative_prompt, r.steps, r.cfg_scale, r.width, r.height, r.sampler)
            groups.setdefault(key, []).append(i)
        batches = [idx[k : k + MAX_BATCH] for idx in groups.values() for k in range(0, len(idx), MAX_BATCH)]
        images: list[Any] = [None] * len(requests)
        with self.exclusive("txt2img"):
            state = shared.state
            saved = (state.job_count, state.job_no, state.textinfo)
            state.job_count, state.job_no = len(batches), 0
            try:
                done = 0
                for batch in batches:
                    rendered = self._render(requests[batch[0]], prompts[batch[0]], batch, requests)
                    for i, image in zip(batch, rendered, strict=True):
                        images[i] = image
                    done += len(batch)
                    progress(Progress(done, len(requests), f"rendered {done}/{len(requests)}"))
            finally:
                state.job_count, state.job_no, state.textinfo = saved
                state.sampling_step = 0
        return images

    def annotate_grid(self, cells: Sequence[Any], rows: int, x_labels: list[str], y_labels: list[str]) -> Any:
        """The WebUI's own grid (images.image_grid + draw_grid_annotations), as its X/Y/Z plots look."""
        from modules import images

        grid = images.image_grid(list(cells), rows=rows)
        w, h = max(c.width for c in cells), max(c.height for c in cells)
        hor = [[images.GridAnnotation(t)] for t in x_labels]
        ver = [[images.GridAnnotation(t)] for t in y_labels]
        return images.draw_grid_annotations(grid, w, h, hor, ver, 0)

    def save_grid(self, image: Any, infotext: str) -> Path | None:
        """images.save_image(grid=True) into the folder the WebUI's own grids go to."""
        from modules import images, paths, shared

        opts = shared.opts
        folder = (
            getattr(opts, "outdir_grids", "")
            or getattr(opts, "outdir_txt2img_grids", "")
            or str(Path(paths.data_path) / "outputs" / "txt2img-grids")
        )
        fullfn, _txt = images.save_image(image, folder, "lora_forge_grid", extension="png", info=infotext, grid=True)
        return Path(fullfn)

    def xyz_script(self) -> tuple[list[str], list[str]]:
        """The loaded X/Y/Z plot script's `run` parameter names and txt2img axis labels; grid.xyz
        reads its layout from them rather than from a version string (forks keep A1111's numbers)."""
        from modules import scripts

        runner = getattr(scripts, "scripts_txt2img", None)
        script = next((s for s in getattr(runner, "selectable_scripts", []) if s.title() == XYZ_SCRIPT_TITLE), None)
        if script is None:
            raise ForgeError(
                "the WebUI's X/Y/Z plot script is not loaded (Settings → Scripts); set the grid up by hand"
            )
        labels = [o.label for o in getattr(script, "current_axis_options", [])]
        return list(inspect.signature(script.run).parameters), labels

    def _prompt(self, r: RenderRequest) -> str:
        tokens = [f"<lora:{self.network_name(lora.path)}:{lora.strength:g}>" for lora in r.loras]
        return " ".join([r.prompt, *tokens]) if tokens else r.prompt

    def _render(self, r: RenderRequest, prompt: str, batch: list[int], requests: Sequence[RenderRequest]) -> list[Any]:
        from modules import processing, shared

        if shared.state.interrupted:
            raise ForgeError("rendering was interrupted")
        fields = {f.name for f in dataclasses.fields(processing.StableDiffusionProcessingTxt2Img)}
        wanted = {
            "prompt": prompt,
            "negative_prompt": r.negative_prompt,
            "seed": [requests[i].seed for i in batch],
            "sampler_name": r.sampler,
            "batch_size": len(batch),
            "n_iter": 1,
            "steps": r.steps,
            "cfg_scale": r.cfg_scale,
            "width": r.width,
            "height": r.height,
            "do_not_save_samples": True,
            "do_not_save_grid": True,
        }
        p = processing.StableDiffusionProcessingTxt2Img(**{k: v for k, v in wanted.items() if k in fields})
        with contextlib.closing(p):
            try:
                processed = processing.process_images(p)
            except Exception as e:
                if type(e).__name__ != "NansException":  # modules.devices.NansException, by name: forks move it
                    raise
                raise RenderFailed(nan_reason(str(e))) from e
        missing = [line for line in processed.comments.splitlines() if "not found:" in line]
        if missing:  # 1.10: "Lora not found: a, b"; 1.6-1.9: "Networks not found: a, b"
            raise ForgeError(f"the WebUI did not apply a LoRA file ({missing[0]}); press 🔄 on its Lora tab and retry")
        out = processed.images[processed.index_of_first_image :]
        if len(out) < len(batch):
            raise ForgeError("rendering was interrupted")
        return out[: len(batch)]


# -- what lora_forge/extension.py registers ---------------------------------------------------------

_host: WebUIHost | None = None


def host() -> WebUIHost:
    """One host per process: it survives "Reload UI", which re-runs scripts/lora_forge.py."""
    global _host
    if _host is None:
        _host = WebUIHost()
    return _host


def path_policy() -> Any:
    """The WebUI's rule for extensions (cmd_opts.disable_extension_access: --listen, --share,
    --ngrok or --server-name without --enable-insecure-extension-access) as a PathPolicy: then
    paths must stay inside the WebUI's folders and ours. Read afresh per use (cheap)."""
    from modules import paths

    from lora_forge import uploads
    from lora_forge.safety import PathPolicy

    opts = _cmd_opts()
    settings = settings_from_opts()
    return PathPolicy.build(
        bool(getattr(opts, "disable_extension_access", False)),
        [paths.data_path, paths.models_path, host().lora_dir(), settings.dataset_dir, settings.models_dir],
        [paths.script_path, getattr(opts, "ckpt_dir", None)],
        uploads=uploads.installed(),  # the files the WebUI's /upload wrote (extension.on_app_started)
    )


def ui_language() -> str:
    """The user's choice in Settings → User interface → Localization ("None" = English), read per
    message so the tab's runtime messages follow what the page's labels show."""
    from modules import shared

    return str(getattr(shared.opts, "localization", "None") or "None")


def keep_on_sys_path() -> None:
    """The WebUI puts the extension folder on sys.path only while it imports scripts/lora_forge.py;
    processes that re-import lora_forge by name (spawned workers) need it for good."""
    root = str(EXTENSION_ROOT)
    if root not in sys.path:
        sys.path.append(root)


def nan_reason(webui_message: str) -> str:
    """The WebUI's NaN-check message, shortened to where it happened plus the usual causes."""
    what = "the VAE" if "VAE" in webui_message else "the UNet" if "Unet" in webui_message else "the model"
    return (
        f"NaN in {what}: the WebUI's NaN check stopped this picture; common causes: this negative prompt on this "
        "model, an fp16 VAE (start the WebUI with --no-half-vae), or the LoRA at this strength"
    )
