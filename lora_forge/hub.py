"""Model downloads through huggingface_hub, with a mirror endpoint and resumable transfers."""

from __future__ import annotations

from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.settings import Settings


def local_folder(settings: Settings, repo_id: str) -> Path:
    """Our models folder keeps one sub-folder per hub repository, readable by people."""
    return settings.models_dir / repo_id.replace("/", "--")


def download(settings: Settings, repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Fetch one file into our models folder (resuming a partial download) and return its path.

    The endpoint is passed explicitly rather than through HF_ENDPOINT, because huggingface_hub
    reads that variable once at import time and the user may change the mirror while running.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    target = local_folder(settings, repo_id)
    target.mkdir(parents=True, exist_ok=True)
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=target,
            endpoint=settings.hf_endpoint or None,
        )
    except HfHubHTTPError as e:
        raise ForgeError(
            f"could not download {filename} from {repo_id} ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
            "check the network or set a mirror endpoint (e.g. https://hf-mirror.com) in the LoRA Forge settings, "
            f"or place the file by hand in {target}"
        ) from e
    except OSError as e:
        raise ForgeError(
            f"could not download {filename} from {repo_id}: {e}; check the network or the mirror endpoint, "
            f"or place the file by hand in {target}"
        ) from e
    return Path(path)
