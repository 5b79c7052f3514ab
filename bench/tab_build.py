"""Building the 炼丹 tab as the WebUI does (extension.on_ui_tabs), with and without gradio's page
set-up at the end of the tab's Blocks (lora_forge/ui/subblocks.py): the part of the WebUI's
"create ui" time that skipping it saves. One process against the stand-in WebUI, imports warmed
first; rounds interleaved (the order flips each round), medians reported.

    python bench/tab_build.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests" / "webui_stub"), str(ROOT)]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import webui_stub
    from modules import scripts

    root = Path(tempfile.mkdtemp(prefix="lf-tab-build-"))
    webui_stub.start(root, None)
    (root / "extensions" / "lora-forge").symlink_to(ROOT, target_is_directory=True)
    scripts.load_extension_scripts(str(root / "extensions" / "lora-forge"))
    from lora_forge import extension
    from lora_forge.ui import subblocks

    skipping = subblocks.rendered_elsewhere
    extension.on_ui_tabs()  # imports and first-use caches on both sides' account
    times: dict[str, list[float]] = {"skipped": [], "gradio": []}
    for i in range(args.rounds):
        for mode in ("skipped", "gradio") if i % 2 == 0 else ("gradio", "skipped"):
            subblocks.rendered_elsewhere = skipping if mode == "skipped" else contextlib.nullcontext  # type: ignore[assignment]
            s = time.perf_counter()
            extension.on_ui_tabs()
            times[mode].append(time.perf_counter() - s)
    subblocks.rendered_elsewhere = skipping  # type: ignore[assignment]
    ours, base = (statistics.median(times[k]) * 1000 for k in ("skipped", "gradio"))
    print(f"tab build: {ours:.0f} ms without gradio's page set-up, {base:.0f} ms with it (medians)")
    print(f"RESULT tab_build ours_ms={ours:.0f} baseline_ms={base:.0f} ratio={ours / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
