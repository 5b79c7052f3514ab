"""Edit the captions of a dataset from the command line: add, remove, replace, regex, front, dedupe.

Operations run in the order given on the command line, on every image or on those chosen with
--where/--any/--without; the result is saved like the editor saves (only changed files, atomically,
with a history entry that --rollback undoes). Without operations it lists the tags with counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from typing import Any

from lora_forge.dataset.captions import list_history, prune_history, rollback
from lora_forge.dataset.editor import Dataset, load_translations, tag_table
from lora_forge.dataset.editor_ops import POSITIONS, REGEX_SCOPES, SORT_KEYS, build_op
from lora_forge.dataset.lock import dataset_lock
from lora_forge.errors import ForgeError

_UNESCAPED_EQ = re.compile(r"(?<!\\)=")


class _OpAction(argparse.Action):
    """Collects operations in command-line order (argparse's append would group them by flag)."""

    def __call__(self, parser, namespace, values, option_string=None):
        ops = getattr(namespace, "ops", None) or []
        ops.append((self.dest, values))
        namespace.ops = ops


def _pair(text: str, what: str) -> tuple[str, str]:
    """`A=B`, split at the first `=` not written as `\\=` (kaomoji like `=_=` are tags too)."""
    parts = _UNESCAPED_EQ.split(text, maxsplit=1)
    if len(parts) != 2:
        raise ForgeError(f"{what} needs the form OLD=NEW (write a literal '=' as '\\=')")
    return parts[0], parts[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="dataset folder (images with .txt captions beside them)")
    g = p.add_argument_group("operations (applied in the order given)")
    g.add_argument("--add", action=_OpAction, metavar="TAGS", help="add tag(s), comma separated, at --position")
    g.add_argument("--remove", action=_OpAction, metavar="TAGS", help="remove tag(s)")
    g.add_argument("--replace", action=_OpAction, metavar="OLD=NEW", help="replace a tag (NEW empty deletes it)")
    g.add_argument("--regex", action=_OpAction, metavar="PAT=REPL", help="regular-expression replace, see --scope")
    g.add_argument("--front", action=_OpAction, metavar="TAGS", help="move tag(s) to the front")
    g.add_argument("--dedupe", action=_OpAction, nargs=0, help="remove duplicate tags")
    g.add_argument("--sort", action=_OpAction, choices=SORT_KEYS, help="sort the tags of each caption")
    g.add_argument("--underscores", action=_OpAction, nargs=0, help="long_hair → long hair (kaomoji kept)")
    g.add_argument("--trigger", metavar="WORD", help="put the trigger word first in every caption (added if missing)")
    g.add_argument("--position", default="back", help="where --add puts tags: front, back or an index (default back)")
    g.add_argument("--scope", choices=REGEX_SCOPES, default="tag", help="--regex works on each tag or whole caption")
    s = p.add_argument_group("which images (default: all)")
    s.add_argument("--where", action="append", default=[], metavar="TAG", help="images with this tag (AND)")
    s.add_argument("--any", action="append", default=[], metavar="TAG", help="images with any of these tags (OR)")
    s.add_argument("--without", action="append", default=[], metavar="TAG", help="images without this tag (NOT)")
    o = p.add_argument_group("output and history")
    o.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    o.add_argument("--top", type=int, default=30, help="tags listed when no operation is given (default 30)")
    o.add_argument("--translations", metavar="CSV", help="a tag,translation file to show beside the listed tags")
    o.add_argument("--history", action="store_true", help="list earlier saves, newest first")
    o.add_argument("--rollback", metavar="ID", help="put back the captions as they were before save ID")
    o.add_argument("--prune-history", type=int, metavar="N", help="delete all but the newest N history entries")


def _position(text: str) -> str | int:
    if text in POSITIONS:
        return text
    try:
        return int(text)
    except ValueError:
        raise ForgeError(f"--position must be front, back or a number, not {text!r}") from None


def _op_from_flag(flag: str, value: Any, args: argparse.Namespace, ds: Dataset):
    if flag == "add":
        return build_op("add", tags=value, position=_position(args.position))
    if flag in ("remove", "front"):
        return build_op(flag, tags=value)
    if flag == "replace":
        old, new = _pair(value, "--replace")
        return build_op("replace", old=old.replace("\\=", "="), new=new.replace("\\=", "="))
    if flag == "regex":
        pattern, repl = _pair(value, "--regex")
        return build_op("regex", pattern=pattern, repl=repl, scope=args.scope)
    if flag == "sort":
        return build_op("sort", key=value, counts=ds.counts())
    return build_op(flag)


def _emit(args: argparse.Namespace, data: dict[str, Any], lines: list[str]) -> None:
    """Print the result; a character the console cannot show (a GBK console and an emoji tag, or
    the undecodable bytes of a non-UTF-8 file name) is escaped instead of ending the command."""
    text = json.dumps(data, ensure_ascii=False, indent=1) if args.json else "\n".join(lines)
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.history:
        entries = list_history(args.dir)
        data = {"history": [e.to_json() for e in entries]}
        lines = [f"{e.id}  {e.state:8}  {len(e.files):5} file(s)  {e.reason}" for e in entries] or ["no saves yet"]
        _emit(args, data, lines)
        return 0
    if args.prune_history is not None:
        if args.prune_history < 0:
            raise ForgeError("--prune-history needs a number of entries to keep (0 or more)")
        n = prune_history(args.dir, args.prune_history)
        _emit(args, {"pruned": n}, [f"deleted {n} old history entr{'y' if n == 1 else 'ies'}"])
        return 0
    if args.rollback:
        entry = rollback(args.dir, args.rollback)
        n = len(entry.files) if entry else 0
        hid = entry.id if entry else None
        _emit(args, {"rolled_back": args.rollback, "written": n, "history": hid}, [f"restored {n} caption file(s)"])
        return 0

    writes = bool(getattr(args, "ops", None) or args.trigger) and not args.dry_run
    # A writing command holds the dataset's lock from reading to saving: a second `tags` on the same
    # folder waits, then edits what the first one saved, so both edits land.
    with dataset_lock(args.dir) if writes else contextlib.nullcontext():
        return _edit(args)


def _edit(args: argparse.Namespace) -> int:
    ds = Dataset.load(args.dir)
    ds.trigger = args.trigger
    ids = ds.filter(args.where, args.any, args.without)
    ops = [_op_from_flag(flag, value, args, ds) for flag, value in (getattr(args, "ops", None) or [])]
    if args.trigger:
        ops.insert(0, build_op("add", tags=args.trigger, position="front"))
    notes = ds.report.notes()

    if not ops:
        tr = load_translations(args.translations) if args.translations else None
        rows = tag_table(ds, limit=args.top, translations=tr)
        data = {"dataset": str(ds.root), "notes": notes, "selected": len(ids), "tags": rows}
        _emit(args, data, [*notes, *(f"{count:6}  {tag}" + (f"  {t}" if t else "") for tag, count, t in rows)])
        return 0

    results, lines = [], [*notes]
    for op, label in ops:
        edit = ds.plan(ids, op, label)
        preview = ds.preview(edit, len(ids), sample=3)
        ds.apply(edit)
        results.append({"operation": label, "changed": preview.changed, "samples": preview.samples})
        lines.append(f"{label}: {preview.changed} of {len(ids)} caption(s) change")
        lines += [f"  {name}\n    - {before}\n    + {after}" for name, before, after in preview.samples]
    pending = len(ds.dirty())
    written, entry = (0, None) if args.dry_run else ds.save(reason="tags " + "; ".join(r["operation"] for r in results))
    if args.dry_run:
        lines.append(f"dry run: {pending} caption file(s) would be written; nothing was written")
    else:
        lines.append(f"wrote {written} caption file(s)" + (f"; undo with --rollback {entry.id}" if entry else ""))
    data = {
        "dataset": str(ds.root),
        "notes": notes,
        "selected": len(ids),
        "operations": results,
        "dry_run": args.dry_run,
        "would_write": pending,
        "written": written,
        "history": entry.id if entry else None,
    }
    _emit(args, data, lines)
    return 0
