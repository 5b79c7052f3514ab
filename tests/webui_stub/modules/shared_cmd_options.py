"""modules/shared_cmd_options.py + modules/cmd_args.py: the flags our code reads."""

from __future__ import annotations

import argparse
import os

from modules import paths_internal

parser = argparse.ArgumentParser()


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=str, default=paths_internal.data_path)
    p.add_argument("--models-dir", type=str, default=None)
    p.add_argument("--ckpt-dir", type=str, default=None)
    p.add_argument("--embeddings-dir", type=str, default=None)
    p.add_argument("--ui-settings-file", type=str, default=None)
    p.add_argument("--localizations-dir", type=str, default=None)
    p.add_argument("--no-half", action="store_true")
    p.add_argument("--no-half-vae", action="store_true")
    p.add_argument("--disable-nan-check", action="store_true")
    p.add_argument("--medvram", action="store_true")
    p.add_argument("--medvram-sdxl", action="store_true")
    p.add_argument("--lowvram", action="store_true")
    p.add_argument("--api", action="store_true")
    p.add_argument("--api-auth", type=str, default=None)
    p.add_argument("--nowebui", action="store_true")
    p.add_argument("--listen", action="store_true")
    p.add_argument("--share", action="store_true")
    p.add_argument("--hide-ui-dir-config", action="store_true")
    p.add_argument("--freeze-settings", action="store_true")
    p.add_argument("--freeze-settings-in-sections", type=str, default=None)
    p.add_argument("--freeze-specific-settings", type=str, default=None)
    p.add_argument("--skip-install", action="store_true")
    p.add_argument("--use-cpu", nargs="+", default=[])
    # extensions-builtin/Lora/preload.py
    p.add_argument("--lora-dir", type=paths_internal.normalized_filepath, default=None)
    p.add_argument("--lyco-dir-backcompat", type=paths_internal.normalized_filepath, default=None)


_add_arguments(parser)
cmd_opts = parser.parse_args([])


def parse(argv: list[str]) -> argparse.Namespace:
    """Re-parse for a new start (the real module parses sys.argv once at import)."""
    global cmd_opts
    ns = parser.parse_args(argv)
    models = ns.models_dir or paths_internal.models_path
    ns.lora_dir = ns.lora_dir or os.path.join(models, "Lora")
    ns.lyco_dir_backcompat = ns.lyco_dir_backcompat or os.path.join(models, "LyCORIS")
    ns.embeddings_dir = ns.embeddings_dir or os.path.join(paths_internal.data_path, "embeddings")
    ns.ui_settings_file = ns.ui_settings_file or os.path.join(paths_internal.data_path, "config.json")
    ns.localizations_dir = ns.localizations_dir or os.path.join(paths_internal.script_path, "localizations")
    ns.disable_extension_access = ns.listen or ns.share
    for key, value in vars(ns).items():
        setattr(cmd_opts, key, value)
    return cmd_opts
