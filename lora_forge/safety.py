"""Which files the tab and the API may touch when the server is reachable by others.

The WebUI's own rule: listening beyond localhost (--listen, --share, --ngrok, --server-name) sets
`cmd_opts.disable_extension_access` unless the user passed --enable-insecure-extension-access. Our
tab takes folder and file paths as text, so on such a server anyone who reaches the page could
read or overwrite any file the WebUI process can. Under that rule every path must stay (links
followed, `..` refused) inside the WebUI's folders or our own, and a folder handed in must hold no
link leading out of them. On a local-only WebUI the policy only checks upload sizes: the user owns
the machine.

One policy, one check per kind of value (`check_value`), applied at the boundary of each face:
`lora_forge.ui.guard` for every handler input of the tab (declared once per component there),
`lora_forge.api` for every value FastAPI hands a route (path-typed fields: ReadPath/WritePath;
config dicts: the keys TrainConfig marks as paths, train.config.path_keys, which the faces pass in).
Uploads: `lora_forge.uploads`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from lora_forge.errors import ForgeError

MAX_UPLOAD_BYTES = 2 * 1024**3  # one zip of a few hundred photos fits; a stray disk image does not
# config keys nobody declared but that look like paths are checked as reads all the same
PATH_KEY_SUFFIXES = ("dir", "path", "folder", "file", "files", "resume", "ckpt", "dataset", "weights")
MAX_TREE_ENTRIES = 200_000  # a folder handed in is walked for outside links; beyond this it is refused


class Kind(enum.Enum):
    """What a value handed to a face means for the file system."""

    TEXT = "text"  # not a path (captions, prompts, names matched against a listing)
    READ = "read"  # a file or folder the handler reads
    WRITE = "write"  # a file or folder the handler writes into (or moves files in)
    LINES = "lines"  # one read path per line
    SETTINGS = "settings"  # `key = value` lines of config keys (the 训练 more-settings box)
    UPLOAD = "upload"  # gradio upload payloads; checked before gradio copies anything (uploads.py)


@dataclass(frozen=True)
class PathPolicy:
    """`enforced`: only paths inside `write_roots` (writes) or those plus `read_roots` (reads)."""

    enforced: bool = False
    write_roots: tuple[Path, ...] = ()
    read_roots: tuple[Path, ...] = ()
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    reason: str = field(default="the WebUI listens beyond this computer (--listen / --share)")
    uploads: Any = None  # an uploads.UploadLedger: the files gradio's /upload wrote, when recorded

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

    def _refuse(self, text: str, for_write: bool) -> ForgeError:
        """One answer for a path outside, whether or not anything is there: no existence probe."""
        where = ", ".join(str(r) for r in self.write_roots) or "nowhere"
        return ForgeError(
            f"not found, or outside the folders this server may {'write' if for_write else 'read'} "
            f"({self.reason}); use a folder under {where}, or start the WebUI with "
            "--enable-insecure-extension-access",
            path=text,
        )

    def check(self, path: str | os.PathLike[str], for_write: bool = False) -> Path:
        """The resolved path, or a ForgeError saying where paths may point on this server.

        Outside paths are refused from their text alone, before the disk is asked anything; the
        resolved path (links followed) must then be inside too."""
        text = str(path).strip().strip('"').strip("'")
        if not text or "\x00" in text:
            raise ForgeError("empty path" if not text else "a path cannot hold a NUL character")
        if not self.enforced:
            return Path(text).expanduser()
        if ".." in PurePath(text.replace("\\", "/")).parts:
            raise ForgeError(f"“..” is not allowed in paths on this server ({self.reason})", path=text)
        if text.startswith("~"):
            raise ForgeError(f"“~” is not allowed in paths on this server ({self.reason})", path=text)
        roots = self.allowed_roots(for_write)
        lexical = os.path.abspath(text)
        if not any(_lexically_within(lexical, root) for root in roots):
            raise self._refuse(text, for_write)
        resolved = Path(lexical).resolve()
        if not any(_lexically_within(str(resolved), root) for root in roots):
            raise self._refuse(text, for_write)
        return resolved

    def check_folder(self, path: str | os.PathLike[str], for_write: bool = False) -> Path:
        """`check`, and when it is a folder: no link inside it leads out of the allowed folders
        (a caption linked to an outside file would be read into a LoRA's metadata)."""
        resolved = self.check(path, for_write)
        if self.enforced and resolved.is_dir():
            for link in _links(resolved):
                target = os.path.realpath(link)
                if not any(_lexically_within(target, root) for root in self.allowed_roots(False)):
                    raise ForgeError(
                        f"this folder holds a link to outside the folders this server may read ({self.reason}): "
                        f"{link.relative_to(resolved)}; replace the link with a copy of the file",
                        path=str(path),
                    )
        return resolved

    def check_lines(self, text: str, for_write: bool = False) -> None:
        """A multi-line path box (one path per line, Windows quotes allowed)."""
        for line in (text or "").splitlines():
            if line.strip().strip('"').strip("'").strip():
                self.check_folder(line, for_write)

    def check_settings(self, text_or_mapping: str | Mapping[str, Any], declared: Mapping[str, bool] = {}) -> None:
        """Config keys that name files: `key = value` lines (the more-settings box) or a dict.
        `declared`: key → written, from the config's own declaration (train.config.path_keys);
        other keys that look like paths (PATH_KEY_SUFFIXES) are checked as reads all the same."""
        items = _settings_items(text_or_mapping)
        for key, value in items:
            if not isinstance(value, str) or not value.strip().strip('"').strip("'").strip():
                continue
            if key in declared or is_path_key(key):
                self.check_folder(value.strip(), declared.get(key, False))

    def check_value(self, kind: Kind, value: Any, declared: Mapping[str, bool] = {}) -> None:
        """The one check every face calls for every value it was handed (lists: each item);
        `declared`: the config keys that name files, for SETTINGS values (see check_settings)."""
        if value is None or value == "" or kind in (Kind.TEXT, Kind.UPLOAD):
            return
        if isinstance(value, (list, tuple)) and kind is not Kind.SETTINGS:
            for item in value:
                self.check_value(kind, item, declared)
            return
        if kind is Kind.SETTINGS:
            self.check_settings(value if isinstance(value, Mapping) else str(value), declared)
        elif kind is Kind.LINES:
            self.check_lines(str(value))
        else:
            self.check_folder(str(value), kind is Kind.WRITE)


def _lexically_within(path: str, root: Path) -> bool:
    """`path` (absolute, normalised, not resolved) is `root` or below it; case-blind on Windows."""
    p = os.path.normcase(os.path.normpath(path))
    r = os.path.normcase(str(root))
    return p == r or p.startswith(r.rstrip("\\/") + os.sep)


def _links(folder: Path) -> Iterator[Path]:
    """Every symlink (or Windows junction) under `folder`, without following any. Strings, not
    Paths, while walking: a dataset of thousands of files is walked on every handler call."""
    stack, seen = [str(folder)], 0
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    seen += 1
                    if seen > MAX_TREE_ENTRIES:
                        raise ForgeError(f"the folder holds more than {MAX_TREE_ENTRIES} entries", path=folder)
                    if _is_link(entry):
                        yield Path(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue


def _is_link(entry: os.DirEntry[str]) -> bool:
    """A symlink, or on Windows any reparse point (a junction is not a symlink to os.scandir on
    Python 3.10/3.11, and would otherwise be walked into as a plain folder)."""
    if entry.is_symlink():
        return True
    if os.name != "nt":  # elsewhere is_symlink answers from the directory listing, without a stat
        return False
    try:
        attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    except OSError:
        return False
    return bool(attributes & 0x400)  # FILE_ATTRIBUTE_REPARSE_POINT


def _settings_items(value: str | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [(str(k).strip(), v) for k, v in value.items()]
    out = []
    for line in (value or "").splitlines():
        key, sep, rest = line.strip().partition("=")
        if sep and key.strip() and not key.strip().startswith("#"):
            out.append((key.strip(), rest.strip()))
    return out


def is_path_key(key: str) -> bool:
    low = key.lower()
    return any(low == s or low.endswith("_" + s) or low.endswith(s) for s in PATH_KEY_SUFFIXES)


# -- path-typed request fields (the API face declares its fields with these) -----------------------


class ServerPath(str):
    """A request field naming a file or folder on the server: `check_request` holds it to the policy."""

    kind = Kind.READ

    @classmethod
    def __get_validators__(cls) -> Iterator[Any]:  # pydantic 1.x (the WebUI's FastAPI 0.94)
        yield cls._validate

    @classmethod
    def _validate(cls, value: Any) -> ServerPath:
        if not isinstance(value, str):
            raise TypeError("a path must be a string")
        return cls(value)


class ReadPath(ServerPath):
    kind = Kind.READ


class WritePath(ServerPath):
    kind = Kind.WRITE


def check_request(policy: PathPolicy, value: Any, declared: Mapping[str, bool] = {}, key: str = "") -> None:
    """Every path in what a face was handed, found by type (ServerPath), by declared config key or
    by a path-like key name, through models, dicts and lists: whatever the Content-Type was, this
    sees the values the route will use."""
    if isinstance(value, ServerPath):
        policy.check_value(value.kind, str(value))
    elif hasattr(value, "__fields__") and hasattr(value, "dict"):  # a pydantic model
        for name in value.__fields__:
            check_request(policy, getattr(value, name), declared, name)
    elif isinstance(value, Mapping):
        policy.check_settings({k: v for k, v in value.items() if isinstance(v, str)}, declared)
        for k, v in value.items():
            if not isinstance(v, str):
                check_request(policy, v, declared, str(k))
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            check_request(policy, v, declared, key)
    elif isinstance(value, str) and key and value.strip():
        policy.check_settings({key: value}, declared)
