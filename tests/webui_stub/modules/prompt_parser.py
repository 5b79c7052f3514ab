"""modules/prompt_parser.py: `SdConditioning`, the prompt list that carries the render size (1.10.1)."""

from __future__ import annotations

from typing import Any


class SdConditioning(list):
    """A list of prompts with `width`, `height`, `is_negative_prompt` (SDXL reads the size from it)."""

    def __init__(
        self,
        prompts: Any,
        is_negative_prompt: bool = False,
        width: Any = None,
        height: Any = None,
        copy_from: Any = None,
    ) -> None:
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
