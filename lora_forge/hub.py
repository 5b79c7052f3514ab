"""Model downloads through huggingface_hub, with a mirror endpoint and resumable transfers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.settings import Settings


def local_folder(settings: Settings, repo_id: str) -> Path:
    """Our models folder keeps one sub-folder per hub repository, readable by people."""
    return settings.models_dir / repo_id.replace("/", "--")


# huggingface_hub keeps an interrupted transfer here (inside local_dir) and resumes it next time.
PARTIAL_GLOB = ".cache/huggingface/download/**/*.incomplete"

# (bytes_done, bytes_total or None when the server did not say)
DownloadProgress = Callable[[int, "int | None"], None]


def partial_files(folder: Path) -> list[Path]:
    """Interrupted downloads waiting in `folder`, so the UI can say "partial" instead of "absent"."""
    return sorted(folder.glob(PARTIAL_GLOB)) if folder.is_dir() else []


def _watch_partial(folder: Path, total: int | None, progress: DownloadProgress, done: threading.Event) -> None:
    """hf_hub_download takes no progress callback: poll the size of its .incomplete file instead."""
    last = -1
    while not done.wait(0.25):
        size = sum(p.stat().st_size for p in partial_files(folder) if p.exists())
        if size != last:
            last = size
            progress(size, total)


def _remote_size(repo_id: str, filename: str, revision: str | None, endpoint: str | None) -> int | None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    return get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)).size


def download(
    settings: Settings,
    repo_id: str,
    filename: str,
    revision: str | None = None,
    progress: DownloadProgress | None = None,
) -> Path:
    """Fetch one file into our models folder (resuming a partial download) and return its path.

    The endpoint is passed explicitly rather than through HF_ENDPOINT, because huggingface_hub
    reads that variable once at import time and the user may change the mirror while running.
    `progress`, when given, is called a few times a second with the bytes received so far.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    target = local_folder(settings, repo_id)
    target.mkdir(parents=True, exist_ok=True)
    endpoint = settings.hf_endpoint or None
    finished = threading.Event()
    try:
        if progress is not None:
            # One HEAD for the total; its network errors are reported below like the download's own.
            total = _remote_size(repo_id, filename, revision, endpoint)
            progress(0, total)
            threading.Thread(target=_watch_partial, args=(target, total, progress, finished), daemon=True).start()
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=target,
            endpoint=endpoint,
        )
    except HfHubHTTPError as e:
        raise ForgeError(
            f"could not download {filename} from {repo_id} ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
            "check the network or set a mirror endpoint (e.g. https://hf-mirror.com) in the LoRA Forge settings, "
            f"or place the file by hand in {target}"
        ) from e
    except OSError as e:
        raise ForgeError(
            f"could not download {filename} from {repo_id}: {e}; check the network or the mirror endpoint and "
            f"download again (what arrived is kept and the download resumes), or place the file by hand in {target}"
        ) from e
    finally:
        finished.set()
    if progress is not None:
        size = Path(path).stat().st_size
        progress(size, size)
    return Path(path)
