"""LoRA Forge's share of the WebUI's start-up, against what the WebUI itself does before it.

Each round is a fresh Python process (start-up cost is import cost, which a warm process hides),
run against the stand-in WebUI (tests/webui_stub, 1.10.1 signatures):
  baseline - what any WebUI start does before extensions: import torch, numpy, PIL, gradio and
             fastapi, then the stand-in's own start (command line, settings, the built-in Lora
             extension's script). The real WebUI 1.10.1 start is ~11 s on this kind of machine, so
             this baseline is a lower bound and the ratio an upper bound.
  ours     - everything LoRA Forge adds on top, as the WebUI's own start-up breakdown counts it:
             "load scripts" (importing scripts/lora_forge.py, registering its callbacks), and in
             "create ui" on_ui_settings, on_ui_tabs building the 炼丹 tab with every section present,
             rendering it into its TabItem and ui-config.json's walk over its components
             (ui_loadsave.add_block + dump_defaults, tests/webui_stub/modules/ui_loadsave.py); then
             on_app_started mounting the API routes.
Rounds alternate with a throw-away process so neither side always runs first on a warm disk cache;
medians are reported. The limit is 300 ms for ours.

Two things the WebUI's real start has that a bare stand-in would otherwise get wrong:
  - bytecode: the WebUI writes and reuses .pyc files, so every start after the first imports our
    modules from bytecode. The children run with PYTHONDONTWRITEBYTECODE unset (a test shell may set
    it) and the throw-away first child writes the .pyc files (into __pycache__, git-ignored).
  - the garbage collector: importing torch and gradio leaves a full (generation 2) collection of
    their ~10^6 objects pending, which the stand-in's short start does not reach; it would fall into
    whatever runs next and cost 250-400 ms there. The real WebUI allocates far more before it loads
    extension scripts (its own scripts, model lists, UI settings), so that pass is its own cost: the
    baseline ends with gc.collect(). A full pass that our part itself triggers is still counted in
    ours, and shown as gc2_ms.

    python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "webui_stub"
LIMIT_MS = 300.0


def child() -> None:
    """One measured start; prints a JSON object of milliseconds."""
    sys.path[:0] = [str(STUB), str(ROOT)]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    t = {}
    start = time.perf_counter()
    import fastapi
    import gradio
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch  # noqa: F401

    t["imports"] = time.perf_counter() - start
    import webui_stub
    from modules import script_callbacks, scripts

    root = Path(tempfile.mkdtemp(prefix="lf-startup-"))
    s = time.perf_counter()
    stub = webui_stub.start(root, None)  # no extension installed yet
    gc.collect()  # the full pass the WebUI's own start pays before extensions load (see the docstring)
    t["webui_start"] = time.perf_counter() - s
    baseline = time.perf_counter() - start

    (root / "extensions" / "lora-forge").symlink_to(ROOT, target_is_directory=True)
    gc2: list[float] = []
    gc_timer = _gc_timer(gc2)
    gc.callbacks.append(gc_timer)
    s = time.perf_counter()
    scripts.load_extension_scripts(str(root / "extensions" / "lora-forge"))  # as load_scripts() would
    script_callbacks.before_ui_callback()  # ours, plus the Lora extension's (small, counted against us)
    t["script_import"] = time.perf_counter() - s
    s = time.perf_counter()
    script_callbacks.ui_settings_callback()
    t["on_ui_settings"] = time.perf_counter() - s
    import importlib

    from lora_forge.cli import module_exists
    from lora_forge.ui import tab

    t["on_ui_tabs"] = 0.0  # filled below; keeps the printed order
    for name in [m for m in tab.SECTIONS if module_exists(m)]:  # part of on_ui_tabs, shown apart
        short = name.rsplit(".", 1)[1]
        s = time.perf_counter()
        module = importlib.import_module(name)
        t[f"  of which import {short}"] = time.perf_counter() - s
        module.build = _timed(module.build, t, f"  of which build {short}")
    s = time.perf_counter()
    tabs = stub.build_ui()
    t["on_ui_tabs"] = time.perf_counter() - s + sum(v for k, v in t.items() if "of which import" in k)
    # The rest of what the WebUI's "create ui" line counts for a tab (modules/ui.py create_ui, 1.10.1):
    # rendering the returned Blocks into its TabItem, then ui-config.json's walk over every component
    # (ui_loadsave.add_block) and writing the file with the new defaults.
    from modules.ui_loadsave import UiLoadsave

    loadsave = UiLoadsave(str(root / "ui-config.json"))
    with gradio.Blocks(analytics_enabled=False), gradio.Tabs(elem_id="tabs"):
        s = time.perf_counter()  # the page's own set-up at its end is the WebUI's (one per page)
        for interface, label, ifid in tabs:
            with gradio.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                interface.render()
            loadsave.add_block(interface, ifid)
        loadsave.dump_defaults()
        t["render_and_ui_config"] = time.perf_counter() - s
    gc.callbacks.remove(gc_timer)  # the floor is not ours
    s = time.perf_counter()
    with gradio.Blocks(analytics_enabled=False):
        gradio.Textbox()
    t["gradio_floor"] = time.perf_counter() - s  # what any one-box tab costs gradio 3.41 (not in ours)
    assert [title for _b, title, _id in tabs] == ["炼丹"], tabs
    gc.callbacks.append(gc_timer)
    s = time.perf_counter()
    stub.app_started(fastapi.FastAPI())
    t["on_app_started"] = time.perf_counter() - s
    ours = t["script_import"] + t["on_ui_settings"] + t["on_ui_tabs"] + t["render_and_ui_config"] + t["on_app_started"]
    t["gc2"] = sum(gc2)  # full collections during ours, already counted in ours
    heavy = [m for m in ("cv2", "onnxruntime", "skimage") if m in sys.modules]
    print(
        json.dumps(
            {"baseline": baseline * 1000, "ours": ours * 1000, "heavy": heavy, **{k: v * 1000 for k, v in t.items()}}
        )
    )


def _gc_timer(durations: list[float]):
    """A gc callback that appends the duration of every generation-2 collection to `durations`."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            durations.append(time.perf_counter() - started[0])

    return callback


def _timed(build, t: dict[str, float], key: str):
    """A section's build(ctx), timed into t[key] (includes what it imports while building)."""

    def wrapper(*args, **kwargs):
        s = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            t[key] = time.perf_counter() - s

    return wrapper


def run_child() -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as the WebUI runs: .pyc written once, then reused
    r = subprocess.run(
        [sys.executable, __file__, "--child"], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    run_child()  # warm the disk cache for both sides alike
    results = []
    for i in range(args.rounds):
        results.append(run_child())
        r = results[-1]
        print(f"round {i + 1}: baseline {r['baseline']:.0f} ms, ours {r['ours']:.0f} ms")
    keys = [k for r in results for k in r if k != "heavy"]
    med = {k: statistics.median(r.get(k, 0.0) for r in results) for k in dict.fromkeys(keys)}
    for k in med:
        if k not in ("baseline", "ours"):
            print(f"  {k:<30} {med[k]:8.1f} ms (median)")
    heavy = sorted({m for r in results for m in r["heavy"]})
    if heavy:
        print(f"  heavy modules our start-up imported: {', '.join(heavy)}")
    ratio = med["ours"] / med["baseline"]
    ok = med["ours"] < LIMIT_MS and not heavy
    print(
        f"RESULT startup ours_ms={med['ours']:.0f} baseline_ms={med['baseline']:.0f} ratio={ratio:.3f} "
        f"limit_ms={LIMIT_MS:.0f} ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
