"""Send to txt2img: the X/Y/Z plot settings against WebUI 1.10.1's scripts/xyz_grid.py, replayed the
way that script applies them (csv-parsed values, Prompt S/R = str.replace of the first value), so
every cell's prompt must carry exactly its file and strength."""

from __future__ import annotations

import csv
import json
import re
import sys
from io import StringIO
from itertools import chain
from pathlib import Path

import pytest

from lora_forge.errors import ForgeError
from lora_forge.grid.plan import EpochFile, GridPlan
from lora_forge.grid.xyz import host_layout, layout_for_version, layout_from_signature, xyz_settings

# Script.run(self, p, ...) of scripts/xyz_grid.py at v1.10.1 (82a973c), in order (read from the source).
RUN_1_10_1 = [
    "x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
    "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
    "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode",
]  # fmt: skip
# txt2img's axis list at 1.10.1: axis_options without the img2img-only entries, first eight labels.
AXES_1_10_1 = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R"]
# modules/infotext_utils.py re_param_code at 1.10.1
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _plan(stems: list[str], strengths: list[float], prompt: str = "lfchar, masterpiece, white hair") -> GridPlan:
    files = [EpochFile(Path(f"/runs/{s}.safetensors"), i + 1, False, "lfchar") for i, s in enumerate(stems)]
    return GridPlan(files, strengths, prompt, "lowres", seed=42, steps=20, width=512, height=768, trigger="lfchar")


def _csv_list(text: str) -> list[str]:
    """xyz_grid.csv_string_to_list_strip."""
    return [v.strip() for v in chain.from_iterable(csv.reader(StringIO(text), skipinitialspace=True))]


def _apply_prompt(prompt: str, negative: str, x: str, xs: list[str]) -> tuple[str, str]:
    """xyz_grid.apply_prompt."""
    if xs[0] not in prompt and xs[0] not in negative:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    return prompt.replace(xs[0], x), negative.replace(xs[0], x)


def _cells(settings) -> dict[tuple[int, int], str]:
    args = dict(zip(RUN_1_10_1, settings.script_args, strict=True))
    xs, ys = _csv_list(args["x_values"]), _csv_list(args["y_values"])
    out = {}
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            p, n = _apply_prompt(settings.prompt, settings.negative_prompt, x, xs)  # X first, as run() does
            p, n = _apply_prompt(p, n, y, ys)
            out[(ix, iy)] = p
    return out


def test_settings_match_the_1_10_1_layout():
    plan = _plan(["lfchar-000001", "lfchar-000005", "lfchar-000010"], [0.1, 0.5, 1.0])
    s = xyz_settings(plan, [f.path.stem for f in plan.files], layout_for_version("v1.10.1"))
    assert len(s.script_args) == len(RUN_1_10_1) == 18
    args = dict(zip(RUN_1_10_1, s.script_args, strict=True))
    assert AXES_1_10_1[args["x_type"]] == AXES_1_10_1[args["y_type"]] == "Prompt S/R"
    assert AXES_1_10_1[args["z_type"]] == "Nothing"
    assert args["x_values_dropdown"] == args["y_values_dropdown"] == args["z_values_dropdown"] == []
    assert args["draw_legend"] is True and args["no_fixed_seeds"] is False
    assert [args[k] for k in ("include_lone_images", "include_sub_grids", "csv_mode")] == [False] * 3
    assert [args[k] for k in ("vary_seeds_x", "vary_seeds_y", "vary_seeds_z")] == [False] * 3
    assert args["margin_size"] == 0
    assert s.api_payload["script_name"] == "x/y/z plot" and s.api_payload["script_args"] == s.script_args
    json.dumps(s.api_payload)  # sendable as is to /sdapi/v1/txt2img


def test_every_cell_prompt_carries_its_own_file_and_strength():
    # the pitfall: strength "1" inside "lfchar-000010", "0.1" inside "lfchar-000010" if written plainly
    stems = ["lfchar-000001", "lfchar-000010", "lfchar"]
    strengths = [1.0, 0.1, 0.5]
    s = xyz_settings(_plan(stems, strengths), stems)
    cells = _cells(s)
    assert len(cells) == 9
    for (ix, iy), prompt in cells.items():
        tags = re.findall(r"<lora:([^:>]+):([^>]+)>", prompt)
        assert tags == [(stems[ix], tags[0][1])], prompt
        assert float(tags[0][1]) == strengths[iy]
        assert prompt.startswith("lfchar, masterpiece, white hair ")  # the trigger word untouched


def test_first_strength_spelled_uniquely_when_the_prompt_holds_it():
    stems = ["lfchar-000001", "lfchar-000002"]
    plan = _plan(stems, [0.5, 1.0], prompt="lfchar, (smile:0.50), white hair")
    s = xyz_settings(plan, stems)
    assert s.y_values[0] == "0.500" and s.y_values[1] == "1.000"
    assert "(smile:0.50)" in _cells(s)[(1, 1)]


def test_prompt_holding_the_first_file_name_is_refused():
    with pytest.raises(ForgeError, match="already contains 'lfchar-000001'"):
        xyz_settings(_plan(["lfchar-000001"], [1.0], prompt="lfchar-000001 style"), ["lfchar-000001"])


def test_1_6_layout_and_unknown_versions():
    stems = ["a-000001", "a-000002"]
    s = xyz_settings(_plan(stems, [0.5, 1.0]), stems, layout_for_version("1.6.0"))
    assert len(s.script_args) == 15
    assert s.script_args[13:] == [0, False]  # margin_size, csv_mode right after no_fixed_seeds
    assert layout_for_version("v1.7.0") == "1.6-1.7" and layout_for_version("1.9.4") == "1.8-1.10"
    for version in ("v1.11.0", "f2.0.1v1.10.1-previous", "1.5.2", ""):
        with pytest.raises(ForgeError, match="not known to LoRA Forge"):
            layout_for_version(version)


def test_layout_from_the_running_scripts_signature():
    assert layout_from_signature(["self", "p", *RUN_1_10_1]) == "1.8-1.10"
    reforge = [*RUN_1_10_1[:10], "draw_individual_labels", "skip_grid", "items_per_grid", *RUN_1_10_1[10:]]
    with pytest.raises(ForgeError, match="21 arguments in an order LoRA Forge does not know"):
        layout_from_signature(["self", "p", *reforge])


def test_infotext_pastes_into_the_script_fields():
    stems = ["lfchar-000001", "lfchar-000002"]
    s = xyz_settings(_plan(stems, [0.5, 1.0]), stems)
    *lines, last = s.infotext.split("\n")
    assert lines == [s.prompt, "Negative prompt: lowres"]
    params = {k: json.loads(v) if v.startswith('"') else v for k, v in RE_PARAM.findall(last)}
    assert params["Script"] == "X/Y/Z plot"
    assert params["X Type"] == params["Y Type"] == "Prompt S/R"
    assert _csv_list(params["X Values"]) == stems
    assert _csv_list(params["Y Values"]) == ["0.50", "1.00"]
    assert (params["Steps"], params["Seed"], params["Size"]) == ("20", "42", "512x768")


def test_webui_host_reads_the_layout_from_the_loaded_script(monkeypatch):
    stub = str(Path(__file__).resolve().parent / "webui_stub")
    if stub not in sys.path:
        sys.path.insert(0, stub)
    from modules import scripts

    from lora_forge.host.webui import WebUIHost

    class Option:
        def __init__(self, label: str) -> None:
            self.label = label

    namespace: dict = {}
    exec(f"def run(self, p, {', '.join(RUN_1_10_1)}): pass", namespace)  # 1.10.1's signature

    class XYZ:
        run = namespace["run"]

        def __init__(self) -> None:
            self.current_axis_options = [Option(a) for a in ["Nothing", "Seed", "Distilled CFG", *AXES_1_10_1[2:]]]

        def title(self) -> str:
            return "X/Y/Z plot"

    runner = type("Runner", (), {"selectable_scripts": [XYZ()]})()
    monkeypatch.setattr(scripts, "scripts_txt2img", runner, raising=False)
    assert host_layout(WebUIHost()) == ("1.8-1.10", 8)  # a fork that inserted an axis: index 8
    monkeypatch.setattr(scripts, "scripts_txt2img", type("Runner", (), {"selectable_scripts": []})(), raising=False)
    with pytest.raises(ForgeError, match="X/Y/Z plot script is not loaded"):
        host_layout(WebUIHost())
