"""Model downloads through huggingface_hub, with a mirror endpoint and resumable transfers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.settings import ENV_MIRROR_HINT, Settings


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


# A failed automatic download (the face model at every prepare) is remembered this long, per
# endpoint, repository and file, for the process: the next prepare falls back at once instead of
# waiting for the network again. A changed endpoint is a new key, so it is tried straight away.
FAILURE_MEMORY_S = 300.0
# huggingface_hub retries a refused connection five times with back-off (~23 s) before it gives
# up; one plain request first tells "offline" apart in at most this long.
PROBE_TIMEOUT_S = 5.0
_failures: dict[tuple[str, str, str], tuple[float, str]] = {}  # (endpoint, repo, file) -> (when, error class)
_failures_lock = threading.Lock()


def _endpoint_url(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _unreachable(url: str) -> str | None:
    """The transport error's class name when the endpoint does not answer at all, else None.

    Any HTTP answer (even 404) counts as reachable: the download itself then says what is wrong.
    The client's own session is used so its proxies and headers apply."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url + "/", timeout=PROBE_TIMEOUT_S, allow_redirects=False)
    except OSError as e:  # requests' errors (refused, timeout, bad URL, offline mode) are OSErrors
        return e.__class__.__name__
    return None


def _remembered(key: tuple[str, str, str]) -> tuple[float, str] | None:
    with _failures_lock:
        found = _failures.get(key)
        if found is not None and time.monotonic() - found[0] >= FAILURE_MEMORY_S:
            del _failures[key]
            found = None
        return found


def _fail(settings: Settings, filename: str, repo_id: str, name: str, target: Path, url: str) -> ForgeError:
    """Names the endpoint that failed: with HF_ENDPOINT already set, "set HF_ENDPOINT" is no advice."""
    hint = settings.mirror_hint
    if settings.hf_endpoint and hint == ENV_MIRROR_HINT:
        hint = f"check the network and HF_ENDPOINT={settings.hf_endpoint} (unset it to use huggingface.co)"
    return ForgeError(
        f"could not download {filename} from {repo_id} at {url} ({name}); {hint}, or place the file by hand in {target}"
    )


def download(
    settings: Settings,
    repo_id: str,
    filename: str,
    revision: str | None = None,
    progress: DownloadProgress | None = None,
    remember_failure: bool = False,
) -> Path:
    """Fetch one file into our models folder (resuming a partial download) and return its path.

    The endpoint is passed explicitly rather than through HF_ENDPOINT, because huggingface_hub
    reads that variable once at import time and the user may change the mirror while running.
    `progress`, when given, is called a few times a second with the bytes received so far.
    `remember_failure` is for downloads nobody asked for by hand (a model fetched on first use):
    after a failure the same download is refused at once for FAILURE_MEMORY_S; a download the
    user started (a Download button) always tries again.
    The message keeps the hub error's class name, not its text (several lines of request ids).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    target = local_folder(settings, repo_id)
    endpoint = settings.hf_endpoint or None
    url = _endpoint_url(endpoint)
    key = (url, repo_id, filename)
    if remember_failure and (seen := _remembered(key)) is not None:
        minutes = max(1, round((FAILURE_MEMORY_S - (time.monotonic() - seen[0])) / 60))
        raise ForgeError(f"{filename} unavailable (offline?), not retried for {minutes} min ({seen[1]})")
    failed = _unreachable(url)
    if failed is not None:
        _remember(key, remember_failure, failed)
        raise _fail(settings, filename, repo_id, f"{failed}, no answer", target, url)
    target.mkdir(parents=True, exist_ok=True)
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
        _remember(key, remember_failure, e.__class__.__name__)
        raise _fail(settings, filename, repo_id, e.__class__.__name__, target, url) from e
    except OSError as e:
        _remember(key, remember_failure, e.__class__.__name__)
        raise ForgeError(
            f"could not download {filename} from {repo_id} at {url} ({e.__class__.__name__}); check the network or "
            "the mirror endpoint and download again (what arrived is kept and the download resumes), "
            f"or place the file by hand in {target}"
        ) from e
    finally:
        finished.set()
    if progress is not None:
        size = Path(path).stat().st_size
        progress(size, size)
    return Path(path)


def _remember(key: tuple[str, str, str], remember: bool, name: str) -> None:
    if remember:
        with _failures_lock:
            _failures[key] = (time.monotonic(), name)
