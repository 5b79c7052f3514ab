"""The same grid as the WebUI's own X/Y/Z plot settings (Prompt S/R on both axes), for users who
want to tweak and rerun it in the workflow their tutorial taught.

Prompt S/R takes the FIRST value of an axis as the search string and replaces every occurrence
of it (str.replace) in the prompt, and the first value is also its own column or row. So each
search string must occur exactly once in the prompt and in no value of the other axis: with
strengths "1, 0.5" the search "1" would also hit inside "name-000010". We write the strengths
with a fixed number of decimals chosen so that the first one is unique ("0.10" for 0.1, more
digits if needed); the first epoch's network name is the X search string and must occur only
inside the `<lora:…>` tag.

The layouts (positional script_args of scripts/xyz_grid.py, and the axis index of Prompt S/R
in the txt2img list) were read from AUTOMATIC1111's source at v1.6.0, v1.7.0, v1.8.0, v1.9.0
and v1.10.1 (82a973c): 15 arguments through 1.7, 18 from 1.8 (vary_seeds_x/y/z added).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.grid.plan import GridPlan
from lora_forge.host.base import Host

SCRIPT_TITLE = "X/Y/Z plot"
PROMPT_SR = "Prompt S/R"
# txt2img's filtered axis list starts: Nothing, Seed, Var. seed, Var. strength, Steps, Hires steps,
# CFG Scale, Prompt S/R (Image CFG Scale is img2img-only and filtered out).
PROMPT_SR_INDEX = 7

_COMMON = [
    "x_type",
    "x_values",
    "x_values_dropdown",
    "y_type",
    "y_values",
    "y_values_dropdown",
    "z_type",
    "z_values",
    "z_values_dropdown",
    "draw_legend",
    "include_lone_images",
    "include_sub_grids",
    "no_fixed_seeds",
]
LAYOUTS: dict[str, list[str]] = {
    "1.6-1.7": [*_COMMON, "margin_size", "csv_mode"],
    "1.8-1.10": [*_COMMON, "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode"],
}
KNOWN_VERSIONS = "AUTOMATIC1111 1.6.0 – 1.10.1"


@dataclass
class XyzSettings:
    """What fills txt2img: the prompt with the `<lora:…>` tag, the script's arguments, and the
    same as WebUI infotext (which the WebUI's paste button turns into every field at once)."""

    layout: str
    prompt: str
    negative_prompt: str
    x_values: list[str]
    y_values: list[str]
    script_args: list[Any]
    infotext: str
    api_payload: dict[str, Any] = field(default_factory=dict)


def layout_for_version(version: str) -> str:
    """'1.6-1.7' or '1.8-1.10' for a WebUI version string like 'v1.10.1' or '1.8.0-RC'."""
    m = re.match(r"v?(\d+)\.(\d+)", (version or "").strip())
    if m and int(m[1]) == 1 and 6 <= int(m[2]) <= 7:
        return "1.6-1.7"
    if m and int(m[1]) == 1 and 8 <= int(m[2]) <= 10:
        return "1.8-1.10"
    raise ForgeError(
        f"the X/Y/Z plot layout of WebUI version {version or 'unknown'} is not known to LoRA Forge "
        f"(known: {KNOWN_VERSIONS}); use the grid here, or set the X/Y/Z plot by hand: "
        "Prompt S/R on X and Y with the values shown"
    )


def layout_from_signature(parameter_names: list[str]) -> str:
    """The layout from the running script's `run(self, p, *args)` parameter names (the WebUI host
    reads them), which is exact where version strings of forks are not."""
    names = [n for n in parameter_names if n not in ("self", "p")]
    for key, layout in LAYOUTS.items():
        if names == layout:
            return key
    raise ForgeError(
        f"this WebUI's X/Y/Z plot takes {len(names)} arguments in an order LoRA Forge does not know "
        f"(known: {KNOWN_VERSIONS}); set the X/Y/Z plot by hand: Prompt S/R on X and Y with the values shown"
    )


def axis_index(labels: list[str]) -> int:
    """Where Prompt S/R is in the running script's txt2img axis list (its dropdown is type="index")."""
    if PROMPT_SR not in labels:
        raise ForgeError("this WebUI's X/Y/Z plot has no Prompt S/R axis; set the grid up by hand")
    return labels.index(PROMPT_SR)


def host_layout(host: Host) -> tuple[str, int] | None:
    """(layout key, Prompt S/R axis index) of the host's running X/Y/Z plot script; None when the
    host has none (the settings are then shown for entering by hand)."""
    found = host.xyz_script()
    if found is None:
        return None
    parameter_names, labels = found
    return layout_from_signature(parameter_names), axis_index(labels) if labels else PROMPT_SR_INDEX


def csv_join(values: list[str]) -> str:
    """What the script's csv_string_to_list_strip reads back into `values` (quotes where needed)."""
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().strip()


def _decimals(values: list[float]) -> int:
    return max((len(f"{v:g}".partition(".")[2]) for v in values), default=0)


def strength_values(strengths: list[float], forbidden: list[str]) -> list[str]:
    """All strengths with one more decimal than they need (so '0.10, 0.50, 1.00'), more if the
    first still occurs in any of `forbidden` (the prompt and the other axis' values)."""
    for digits in range(_decimals(strengths) + 1, 9):
        values = [f"{s:.{digits}f}" for s in strengths]
        first = values[0]
        if not any(first in text for text in forbidden) and len(set(values)) == len(values):
            return values
    raise ForgeError("cannot find a spelling of the first strength that the prompt does not already contain")


def xyz_settings(
    plan: GridPlan, network_names: list[str], layout: str = "1.8-1.10", prompt_sr_index: int = PROMPT_SR_INDEX
) -> XyzSettings:
    """Prompt + script_args for the X/Y/Z plot (Prompt S/R on X = epoch files, Y = strengths).

    `network_names` are the names the host's Lora extension knows the plan's files by (one per
    file, in order; WebUIHost.network_name), usually the file stems. `prompt_sr_index` is where
    Prompt S/R sits in the running WebUI's txt2img axis list (7 in A1111; forks insert options).
    """
    if layout not in LAYOUTS:
        raise ForgeError(f"unknown X/Y/Z layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if len(network_names) != len(plan.files):
        raise ValueError("one network name per file")
    x_values = list(network_names)
    base = plan.prompt
    head = x_values[0]
    if head in base or head in plan.negative_prompt:
        raise ForgeError(
            f"the prompt already contains {head!r}, so the X/Y/Z plot's Prompt S/R would replace it there too; "
            "take the file name out of the prompt"
        )
    y_values = strength_values(plan.strengths, [base, plan.negative_prompt, *x_values])
    tag = f"<lora:{head}:{y_values[0]}>"
    prompt = f"{base} {tag}" if base else tag
    values = {
        "x_type": prompt_sr_index,
        "x_values": csv_join(x_values),
        "x_values_dropdown": [],
        "y_type": prompt_sr_index,
        "y_values": csv_join(y_values),
        "y_values_dropdown": [],
        "z_type": 0,
        "z_values": "",
        "z_values_dropdown": [],
        "draw_legend": True,
        "include_lone_images": False,
        "include_sub_grids": False,
        "no_fixed_seeds": False,
        "vary_seeds_x": False,
        "vary_seeds_y": False,
        "vary_seeds_z": False,
        "margin_size": 0,
        "csv_mode": False,
    }
    script_args = [values[name] for name in LAYOUTS[layout]]
    text = _infotext(plan, prompt, values)
    payload = {
        "prompt": prompt,
        "negative_prompt": plan.negative_prompt,
        "seed": plan.seed,
        "steps": plan.steps,
        "cfg_scale": plan.cfg_scale,
        "width": plan.width,
        "height": plan.height,
        "sampler_name": plan.sampler,
        "script_name": SCRIPT_TITLE.lower(),
        "script_args": script_args,
    }
    return XyzSettings(layout, prompt, plan.negative_prompt, x_values, y_values, script_args, text, payload)


def _infotext(plan: GridPlan, prompt: str, values: dict[str, Any]) -> str:
    """WebUI infotext that its paste button (↙ beside the prompt) reads into the txt2img fields,
    the script dropdown and the X/Y/Z controls (their infotext_fields: X Type, X Values, ...)."""
    import json

    def q(v: str) -> str:
        return json.dumps(v, ensure_ascii=False) if any(c in v for c in ',:\n"') else v

    parts = [
        f"Steps: {plan.steps}",
        f"Sampler: {plan.sampler}",
        f"CFG scale: {plan.cfg_scale:g}",
        f"Seed: {plan.seed}",
        f"Size: {plan.width}x{plan.height}",
        f"Script: {SCRIPT_TITLE}",
        f"X Type: {PROMPT_SR}",
        f"X Values: {q(values['x_values'])}",
        f"Y Type: {PROMPT_SR}",
        f"Y Values: {q(values['y_values'])}",
    ]
    return f"{prompt}\nNegative prompt: {plan.negative_prompt}\n{', '.join(parts)}"
