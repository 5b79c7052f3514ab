"""Build a gr.Blocks that will only be rendered into another page, without gradio's page set-up.

gradio 3.41 finishes every top-level Blocks (`Blocks.__exit__`) by building its page config and a
whole FastAPI app (routes.App.create_app). Our tab is such a Blocks: the WebUI renders it into its
own page (modules/ui.py create_ui), and our standalone page renders it into its own; `queue()` and
`launch()` build config and app again for the page that is served. For the tab both were thrown
away, yet they were the largest single cost of building it (0.1-0.8 s of the WebUI's "create ui"
on a busy 2-core machine, bench/startup.py). Inside `rendered_elsewhere()` they are skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def rendered_elsewhere() -> Iterator[None]:
    """While building a Blocks that is rendered into another one (never launched itself)."""
    from gradio import blocks, routes

    create_app, get_config_file = routes.App.__dict__["create_app"], blocks.Blocks.get_config_file

    def no_app(*_args: Any, **_kwargs: Any) -> None:
        return None

    def no_config(_self: Any) -> dict[str, Any]:
        return {}

    routes.App.create_app = staticmethod(no_app)  # type: ignore[method-assign]
    blocks.Blocks.get_config_file = no_config  # type: ignore[method-assign]
    try:
        yield
    finally:
        routes.App.create_app = create_app  # type: ignore[method-assign]
        blocks.Blocks.get_config_file = get_config_file  # type: ignore[method-assign]
