"""Our gradio page answers clicks that work longer than 5 s (gradio 3.41's queue relay with httpx 0.25+).

Kept apart from the whole-flow tests: after them in one session this test was seen to hang."""

from __future__ import annotations

import time

import pytest

from tests.browser import js_errors, wait_gradio


@pytest.mark.browser
def test_a_click_that_works_longer_than_5_s_gets_its_answer(serve_blocks, page) -> None:
    """Loading a checkpoint on the first Start or Resume takes longer than httpx's default 5 s,
    which gradio 3.41's queue relay applies with httpx 0.25+: the page showed "Error" while the
    work went on. Our page (and this harness, through the same function) lifts it."""
    import gradio as gr

    def slow() -> str:
        time.sleep(5.5)
        return "loaded"

    with gr.Blocks(analytics_enabled=False) as demo:
        button = gr.Button("Start", elem_id="slow_go")
        out = gr.Textbox(elem_id="slow_out")
        button.click(slow, None, out)
    page.goto(serve_blocks(demo))
    wait_gradio(page)
    page.click("#slow_go")
    page.wait_for_function("() => document.querySelector('#slow_out textarea').value === 'loaded'", timeout=30_000)
    assert js_errors(page) == []
