"""Which files the tab and the API may touch when the server is reachable by others.

The WebUI's own rule: listening beyond localhost (--listen, --share, --ngrok, --server-name) sets
`cmd_opts.disable_extension_access` unless the user passed --enable-insecure-extension-access. Our
tab takes folder and file paths as text, so on such a server anyone who reaches the page could
read or overwrite any file the WebUI process can. Under that rule every path must resolve (links
followed, `..` refused) into the WebUI's folders or our own, and uploads are size-limited. On a
local-only WebUI the policy only checks upload sizes: the user owns the machine.

The policy lives in one place: `lora_forge.ui.tab` applies it to every path input of every
section, `lora_forge.api` to every path field of a request.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import is_within

MAX_UPLOAD_BYTES = 2 * 1024**3  # one zip of a few hundred photos fits; a stray disk image does not
# the request fields (JSON body or query) the API treats as paths
PATH_KEY_SUFFIXES = ("dir", "path", "folder", "file", "files", "resume", "ckpt", "dataset")


@dataclass(frozen=True)
class PathPolicy:
    """`enforced`: only paths inside `write_roots` (writes) or those plus `read_roots` (reads)."""

    enforced: bool = False
    write_roots: tuple[Path, ...] = ()
    read_roots: tuple[Path, ...] = ()  # e.g. gradio's upload folder: read, never written
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    reason: str = field(default="the WebUI listens beyond this computer (--listen / --share)")

    @classmethod
    def build(
        cls,
        enforced: bool,
        write_roots: Iterable[str | os.PathLike[str] | None],
        read_roots: Iterable[str | os.PathLike[str] | None] = (),
        **kwargs: Any,
    ) -> PathPolicy:
        def clean(roots: Iterable[Any]) -> tuple[Path, ...]:
            out: list[Path] = []
            for r in roots:
                if r is None or not str(r).strip():
                    continue
                p = Path(r).expanduser().resolve()
                if p not in out:
                    out.append(p)
            return tuple(out)

        return cls(enforced, clean(write_roots), clean(read_roots), **kwargs)

    def allowed_roots(self, for_write: bool = False) -> tuple[Path, ...]:
        return self.write_roots if for_write else self.write_roots + self.read_roots

    def check(self, path: str | os.PathLike[str], for_write: bool = False) -> Path:
        """The resolved path, or a ForgeError saying where paths may point on this server."""
        text = str(path).strip().strip('"').strip("'")
        if not text:
            raise ForgeError("empty path")
        if not self.enforced:
            return Path(text).expanduser()
        if ".." in PurePath(text.replace("\\", "/")).parts:
            raise ForgeError(f"“..” is not allowed in paths on this server ({self.reason})", path=text)
        if text.startswith("~"):
            raise ForgeError(f"“~” is not allowed in paths on this server ({self.reason})", path=text)
        resolved = Path(text).resolve()
        roots = self.allowed_roots(for_write)
        if not any(is_within(resolved, root) for root in roots):
            where = ", ".join(str(r) for r in self.write_roots) or "nowhere"
            raise ForgeError(
                f"outside the folders this server may {'write' if for_write else 'read'} ({self.reason}); "
                f"use a folder under {where}, or start the WebUI with --enable-insecure-extension-access",
                path=text,
            )
        return resolved

    def check_lines(self, text: str, for_write: bool = False) -> None:
        """A multi-line path box (one path per line, Windows quotes allowed)."""
        for line in (text or "").splitlines():
            if line.strip().strip('"').strip("'").strip():
                self.check(line, for_write)

    def check_upload(self, files: Any) -> None:
        """Uploaded files (gradio 3.41 tempfile wrappers, 4.x paths) within the size limit."""
        items = files if isinstance(files, (list, tuple)) else [files] if files else []
        for f in items:
            name = getattr(f, "name", f)
            if not isinstance(name, (str, os.PathLike)):
                continue
            try:
                size = os.path.getsize(name)
            except OSError:
                continue
            if size > self.max_upload_bytes:
                raise ForgeError(
                    f"the upload is {size / 1024**2:.0f} MB; the limit is {self.max_upload_bytes / 1024**2:.0f} MB "
                    "(copy large archives to the server and enter their folder instead)",
                    path=Path(name).name,
                )


def is_path_key(key: str) -> bool:
    low = key.lower()
    return any(low == s or low.endswith("_" + s) or low.endswith(s) for s in PATH_KEY_SUFFIXES)


def check_request_values(policy: PathPolicy, values: Any, key: str = "") -> None:
    """Every string under a path-like key of a request body (nested dicts and lists too)."""
    if isinstance(values, dict):
        for k, v in values.items():
            check_request_values(policy, v, str(k))
    elif isinstance(values, (list, tuple)):
        for v in values:
            check_request_values(policy, v, key)
    elif isinstance(values, str) and key and is_path_key(key) and values.strip():
        # the server writes into data and output folders; anything else a request names is read
        policy.check(values, for_write=key.lower().endswith(("data_dir", "output_dir", "out", "folder")))
