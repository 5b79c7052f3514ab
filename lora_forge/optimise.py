"""优化: after a grid, what to change in the next run, from what the grid's scores measured.

The grid (lora_forge.grid.scores) recommends one epoch and strength and may warn of overfitting.
Where that cell sits tells how the run went:

- best cell at the last epoch and full strength, subject still weak → underfit: train longer
  (more epochs, a few more repeats);
- every cell alike (the LoRA changes nothing the tagger sees yet) → underfit too, wherever the
  "best" cell happens to fall;
- best cell early, or only at a low strength, or the probe's details vanish in later epochs →
  overfit: fewer repeats, stop at the recommended epoch, use a lower strength;
- otherwise the run is right: use the recommended file.

`next_config` turns the advice into a new run config layered on the previous run's config.toml,
written to the project's configs/ folder under a fresh name; the previous run is never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_text, unused_path
from lora_forge.rundir import RunDir

WEAK_FIDELITY = 0.5  # below this the subject is not reliably there
LOW_STRENGTH = 0.65  # best only at or below this strength: the LoRA is too strong
EARLY_SHARE = 0.6  # best at or before 60 % of the epochs: later epochs learned too much


@dataclass
class Advice:
    kind: str  # "underfit", "overfit", "good" or "unknown"
    summary: str
    reasons: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)  # config keys for the next run
    strength: float | None = None  # the strength to use the LoRA at

    def markdown(self) -> str:
        head = {"underfit": "Underfit", "overfit": "Overfit", "good": "Looks right", "unknown": "Not enough data"}
        lines = [f"**{head[self.kind]}** — {self.summary}"]
        lines += [f"- {r}" for r in self.reasons]
        if self.changes:
            shown = ", ".join(f"`{k} = {v}`" for k, v in self.changes.items())
            lines.append(f"\nNext run: {shown}")
        return "\n".join(lines)


def advise(scores: dict[str, Any], config: dict[str, Any]) -> Advice:
    """`scores`: GridScores.to_json(plan); `config`: the previous run's config (config.toml keys,
    with the epochs and repeats it actually trained)."""
    from lora_forge.grid.scores import learned_nothing

    rec = scores.get("recommendation")
    cells = scores.get("cells") or []
    epochs = [int(c["epoch"]) for c in cells if c.get("epoch") is not None]
    if not rec or not epochs:
        return Advice("unknown", "the grid has no scores; render it with scores on (a WD14 tagger is needed)")
    last = max(epochs)
    epoch, strength = int(rec["epoch"]), float(rec["strength"])
    strengths = sorted({float(c["strength"]) for c in cells})
    fid = next(
        (c.get("fidelity") for c in cells if int(c["epoch"]) == epoch and float(c["strength"]) == strength), None
    )
    max_epochs = int(config.get("max_train_epochs") or last or 1)
    repeats = int(config.get("num_repeats") or 0)
    warning = str(scores.get("overfitting_warning") or "")

    # a LoRA that has learned nothing yet renders like the base model in every cell: the "best" cell
    # is then noise (often the earliest epoch at the lowest strength), not a sign of overfitting
    fids = [float(c["fidelity"]) for c in cells if c.get("fidelity") is not None]
    flat = learned_nothing(fids)
    weak = epoch >= last and strength >= max(strengths) - 1e-9 and (fid is None or fid < WEAK_FIDELITY)
    if flat or weak:
        more_epochs = max(max_epochs + 1, math.ceil(max_epochs * 1.5))
        changes: dict[str, Any] = {"max_train_epochs": more_epochs}
        if repeats:
            changes["num_repeats"] = repeats + max(1, repeats // 4)
        if flat:
            return Advice(
                "underfit",
                "no epoch at any strength changes how much of the subject the grid shows: "
                "the LoRA has not learned it yet; train longer",
                [
                    f"fidelity is {_span(fids)} in every cell",
                    "if a longer run still changes nothing, raise the learning rate",
                ],
                changes,
                max(strengths),
            )
        fid_text = "unmeasured" if fid is None else f"{fid:.2f}"
        return Advice(
            "underfit",
            "the subject is still weak at the last epoch and full strength: train longer",
            [f"best cell: epoch {epoch} of {last} at strength {strength:g}, fidelity {fid_text}"],
            changes,
            strength,
        )
    reasons = []
    if warning:
        reasons.append(warning)
    if epoch <= max(1, int(last * EARLY_SHARE)) and epoch < last:
        reasons.append(f"the best epoch is {epoch} of {last}: later epochs added nothing")
    if strength <= LOW_STRENGTH and len(strengths) > 1:
        reasons.append(f"it works best at strength {strength:g}: at full strength it takes over the picture")
    if reasons:
        changes = {"max_train_epochs": max(1, epoch)}
        if repeats > 1:
            changes["num_repeats"] = max(1, round(repeats * 0.75))
        elif strength <= LOW_STRENGTH:
            lr = float(config.get("learning_rate") or 0)
            if lr:
                changes["learning_rate"] = float(f"{lr * 0.7:.3g}")
        return Advice(
            "overfit",
            f"use epoch {epoch} at strength {strength:g} now; for the next run train less",
            reasons,
            changes,
            strength,
        )
    return Advice(
        "good",
        f"use epoch {epoch} at strength {strength:g}; no change needed",
        [str(rec.get("reason", ""))] if rec.get("reason") else [],
        {},
        strength,
    )


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"between {low} and {high}"


def next_config(previous_run: Path, changes: dict[str, Any], configs_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The previous run's config with `changes` applied, saved as a new file in `configs_dir`.

    The resume and weights keys are dropped: the next run starts fresh with the new plan.
    """
    from lora_forge.train.config import TrainConfig, read_config_file

    source = RunDir(previous_run).config
    if not source.is_file():
        raise ForgeError("the previous run's config.toml is gone; start the next run from Train by hand", path=source)
    values = read_config_file(source)
    values.pop("resume", None)
    values.pop("network_weights", None)
    values.update(changes)
    config = TrainConfig.from_dict(values)
    config.validate()
    configs_dir.mkdir(parents=True, exist_ok=True)
    target = unused_path(configs_dir / f"{config.output_name}-next.toml")
    atomic_write_text(target, config.to_toml())
    return target, config.to_dict()
