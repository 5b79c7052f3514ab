"""Uploads: only files gradio's /upload wrote for a request, within the size limit, then removed.

gradio 3.41's upload inputs take a JSON payload `{"name": PATH, "is_file": true}` and copy PATH —
any file the server can read — into the request. The browser and gradio_client send exactly that
after POSTing the file to /upload, so the check is: PATH is one /upload returned (UploadLedger,
filled by `record_uploads` wrapped around that route) and not yet used, a regular file, within the
size limit. Nothing is copied: the handler gets the uploaded file itself (UploadedFile), and the
tab's boundary (ui/guard.py) removes it when the handler is done or the upload is refused.
Without a ledger (a page whose /upload route we did not wrap) an upload must at least lie where
/upload puts files: `<upload folder>/<40 hex digits>/<name>`.

Also here, for our own page (`python -m lora_forge ui`): `ServerGate`, the ASGI layer in front of
gradio that serves only files gradio made for our outputs and never fetches a URL.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

LEDGER_SIZE = 10_000  # uploads remembered at once (oldest forgotten first)
LEDGER_SECONDS = 24 * 3600
_TOKEN_DIR = re.compile(r"^[0-9a-f]{40}$")


def default_upload_dir() -> Path:
    """Where gradio 3.41's /upload writes (App.uploaded_file_dir)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


class UploadLedger:
    """The files /upload wrote and no handler has used yet. `recording` once the route is wrapped."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(os.path.abspath(folder or default_upload_dir()))
        self.recording = False
        self._paths: OrderedDict[str, float] = OrderedDict()
        self._used: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, paths: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for p in paths:
                self._paths[_key(p)] = now
            while len(self._paths) > LEDGER_SIZE:
                self._paths.popitem(last=False)

    def take(self, path: str) -> bool:
        """True once for a recorded, fresh upload; it is then marked used (one use per upload)."""
        key = _key(path)
        with self._lock:
            at = self._paths.pop(key, None)
            if at is not None:
                self._used[key] = None
                while len(self._used) > LEDGER_SIZE:
                    self._used.popitem(last=False)
        return at is not None and time.monotonic() - at < LEDGER_SECONDS

    def used(self, path: str) -> bool:
        """An upload a handler already had (and removed): the page still shows it in its File box."""
        with self._lock:
            return _key(path) in self._used


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


@dataclass
class UploadedFile:
    """What a handler gets for one upload: `.name` is the file, `.orig_name` the name dropped."""

    name: str
    orig_name: str

    def discard(self) -> None:
        """Remove the file and its token folder (gradio makes one folder per upload)."""
        path = Path(self.name)
        path.unlink(missing_ok=True)
        if _TOKEN_DIR.match(path.parent.name):
            try:
                path.parent.rmdir()
            except OSError:
                pass  # not empty: not only ours


def discard(value: Any) -> None:
    """Remove every UploadedFile in a handler input (one or a list)."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, UploadedFile):
            item.discard()


def _too_big(size: int, limit: int, name: str) -> ForgeError:
    return ForgeError(
        f"the upload is {size / 1024**2:.0f} MB; the limit is {limit / 1024**2:.0f} MB "
        "(copy large archives to the server and enter their folder instead)",
        path=name,
    )


def _refused(name: str) -> ForgeError:
    return ForgeError("not a file uploaded with this request; drop the file again", path=Path(str(name)).name)


def accept(policy: Any, item: Any) -> UploadedFile | None:
    """One upload payload as the file it names, or a ForgeError; nothing is copied. None for an
    upload already used and removed (a File box keeps showing it: pressing the button again
    works on the other inputs instead of failing)."""
    if not isinstance(item, dict):
        raise _refused(str(item))
    limit = policy.max_upload_bytes
    ledger = getattr(policy, "uploads", None)
    if item.get("is_file"):
        name = item.get("name")
        if not isinstance(name, str) or not name or "\x00" in name:
            raise _refused(str(name))
        path = os.path.abspath(name)
        if ledger is not None and ledger.recording:
            if ledger.used(path):
                return None
            if not ledger.take(path):
                raise _refused(name)
        else:
            folder = ledger.folder if ledger is not None else Path(os.path.abspath(default_upload_dir()))
            parent = Path(path).parent
            if os.path.normcase(str(parent.parent)) != os.path.normcase(str(folder)) or not _TOKEN_DIR.match(
                parent.name
            ):
                raise _refused(name)
        try:
            st = os.lstat(path)
        except OSError:
            raise _refused(name) from None
        if not stat.S_ISREG(st.st_mode):
            raise _refused(name)
        upload = UploadedFile(path, str(item.get("orig_name") or Path(path).name))
        if st.st_size > limit:
            upload.discard()
            raise _too_big(st.st_size, limit, upload.orig_name)
        return upload
    data = item.get("data")
    if not isinstance(data, str):
        raise _refused(str(item.get("name")))
    encoded = data.rsplit(",", 1)[-1]
    if len(encoded) // 4 * 3 > limit:  # before decoding a byte of it
        raise _too_big(len(encoded) // 4 * 3, limit, str(item.get("name") or "upload"))
    try:
        raw = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        raise ForgeError("the upload is not valid base64 data") from None
    folder = (ledger.folder if ledger is not None else default_upload_dir()) / secrets.token_hex(20)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c for c in Path(str(item.get("name") or "upload")).name if c.isalnum() or c in "._- ") or "upload"
    target = folder / safe[:200]
    target.write_bytes(raw)
    return UploadedFile(str(target), safe)


def preprocess_file(policy: Any, component: Any, x: Any) -> Any:
    """A gradio File input's preprocess, checked: UploadedFile(s), or bytes for type="binary"."""
    if x is None:
        return None
    items = x if isinstance(x, list) else [x]
    accepted: list[UploadedFile] = []
    try:
        for item in items:
            upload = accept(policy, item)
            if upload is not None:
                accepted.append(upload)
    except ForgeError:
        discard(accepted)  # a refused request leaves none of its uploads behind
        raise
    if getattr(component, "type", "file") in ("binary", "bytes"):
        out: list[Any] = []
        for upload in accepted:
            out.append(Path(upload.name).read_bytes())
            upload.discard()
    else:
        out = list(accepted)
    if getattr(component, "file_count", "single") == "single":
        return out[0] if out else None
    return out


def check_payload(policy: Any, x: Any) -> None:
    """Any other input's payload: an `is_file` entry must name an upload too (gradio copies it)."""
    if isinstance(x, dict):
        if x.get("is_file"):
            name = x.get("name")
            ledger = getattr(policy, "uploads", None)
            if ledger is not None and ledger.recording:
                with ledger._lock:
                    known = _key(str(name)) in ledger._paths
                if not known:
                    raise _refused(str(name))
            else:
                accept(policy, {**x, "orig_name": None})  # shape and size; not removed here
        for v in x.values():
            check_payload(policy, v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            check_payload(policy, v)


# -- ASGI: record what /upload wrote; our own page's gate -----------------------------------------


def record_uploads(inner: Any, ledger: UploadLedger, max_bytes: int | None = None) -> Any:
    """Wrap gradio's /upload route (an ASGI app): the paths it answers go into `ledger` before the
    client sees them. With `max_bytes` (our own page) a larger body is refused before it is read."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await inner(scope, receive, send)
            return
        if max_bytes is not None:
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > max_bytes + 1024 * 1024:  # multipart framing
                await _send_json(send, 413, {"error": str(_too_big(int(length or 0), max_bytes, "upload"))})
                return
        held: list[dict[str, Any]] = []
        status = {"code": 0}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                held.append(message)
            elif message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body"):
                    if status["code"] == 200:
                        body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
                        try:
                            paths = json.loads(body)
                        except ValueError:
                            paths = []
                        ledger.record(p for p in paths if isinstance(p, str))
                    for m in held:
                        await send(m)
                    held.clear()
            else:
                await send(message)

        await inner(scope, receive, capture)

    return app


_installed: UploadLedger | None = None  # the WebUI's, once on_app_started wrapped its /upload route


def installed() -> UploadLedger | None:
    """The ledger of the WebUI's /upload route (None before on_app_started, or under --nowebui)."""
    return _installed


def install_upload_recorder(app: Any, ledger: UploadLedger | None = None, max_bytes: int | None = None) -> bool:
    """Wrap the /upload route of a running gradio app (the WebUI's, in on_app_started): from then
    on the tab accepts only uploads that route wrote, each once. Without `ledger` the process's
    own (installed()) is used."""
    global _installed
    ledger = ledger or _installed or UploadLedger()
    found = False
    for route in getattr(getattr(app, "router", None), "routes", []):
        if getattr(route, "path", None) == "/upload" and not getattr(route.app, "_lora_forge", False):
            route.app = record_uploads(route.app, ledger, max_bytes)
            route.app._lora_forge = True
            found = True
    folder = getattr(app, "uploaded_file_dir", None)
    if found and folder:
        ledger.folder = Path(os.path.abspath(folder))
    ledger.recording = ledger.recording or found
    if found and _installed is None:
        _installed = ledger
    return found


async def _send_json(send: Any, status: int, content: Any) -> None:
    body = json.dumps(content).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # a scheme of 2+ letters; "C:" is a drive


class ServerGate:
    """ASGI middleware for our own page's gradio app: `/file=` serves only files gradio made for
    our outputs (its temp_file_sets), never a URL (gradio 3.41 probes a URL synchronously on the
    event loop: pointed at itself, the page froze for good) and never other files under the
    working directory; `/proxy=` is closed (we proxy no Space). /upload is recorded and limited."""

    def __init__(self, app: Any, ledger: UploadLedger, max_bytes: int) -> None:
        self.app = app
        self.ledger = ledger
        self.max_bytes = max_bytes
        self.upload = record_uploads(app, ledger, max_bytes)
        ledger.recording = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.rstrip("/") == "/upload":
            uploaded_dir = getattr(scope.get("app"), "uploaded_file_dir", None)
            if uploaded_dir:
                self.ledger.folder = Path(os.path.abspath(uploaded_dir))
            await self.upload(scope, receive, send)
            return
        if path.startswith("/proxy="):
            await _send_json(send, 404, {"detail": "Not Found"})
            return
        if path.startswith(("/file=", "/file/")) and not self._served(scope, path[6:]):
            await _send_json(send, 404, {"detail": "File not found"})
            return
        await self.app(scope, receive, send)

    def _served(self, scope: dict[str, Any], target: str) -> bool:
        if not target or "://" in target or target.startswith(("//", "\\\\")) or _URL.match(target):
            return False
        app = scope.get("app")
        try:
            made = set().union(*app.get_blocks().temp_file_sets)
        except (AttributeError, TypeError):
            return False
        return os.path.abspath(target) in made and os.path.isfile(target) and not os.path.islink(target)
