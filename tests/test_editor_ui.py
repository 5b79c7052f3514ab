"""The 编辑 section in real headless Chromium: filter by a tag, batch-remove it, save, undo, save again,
with the caption files on disk checked after each save; and the keyboard shortcuts, which must not
fire while the user types (in our caption box or in another tab's prompt box) or when the tab is hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lora_forge.dataset.captions import list_history
from tests.browser import js_errors, wait_gradio

TAGS = ["1girl", "solo", "smile", "hat", "outdoors", "sky", "blue eyes"]


def make_dataset(folder: Path, n: int = 12) -> dict[str, str]:
    folder.mkdir()
    texts = {}
    for i in range(n):
        tags = [TAGS[(i + k) % len(TAGS)] for k in range(4)]
        Image.new("RGB", (64, 96), (i * 20, 100, 200 - i * 10)).save(folder / f"img{i:02d}.png")
        text = ", ".join(tags)
        (folder / f"img{i:02d}.txt").write_text(text, encoding="utf-8")
        texts[f"img{i:02d}.txt"] = text
    return texts


def disk(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text("utf-8") for p in sorted(folder.glob("*.txt"))}


def status(page) -> str:
    return page.inner_text("#lora_forge_editor_status")


def wait_status(page, text: str) -> None:
    page.wait_for_function(
        "t => (document.querySelector('#lora_forge_editor_status') || {}).innerText?.includes(t)", arg=text
    )


def wait_message(page, text: str) -> None:
    page.wait_for_function(
        "t => (document.querySelector('#lora_forge_editor_msg') || {}).innerText?.includes(t)", arg=text
    )


def wait_tag_listed(page, tag: str, listed: bool) -> None:
    page.wait_for_function(
        """([tag, listed]) => listed === [...document.querySelectorAll('#lora_forge_editor_tags td')]
            .some(td => td.innerText.trim() === tag)""",
        arg=[tag, listed],
    )


def open_editor(page, url: str, folder: Path, n: int) -> None:
    page.goto(url)
    wait_gradio(page)
    page.locator("#lora_forge_sections > .tab-nav > button", has_text="Edit tags").click()
    page.fill("#lora_forge_dataset_dir textarea", str(folder))
    page.click("#lora_forge_editor_load")
    wait_status(page, f"{n} images")
    wait_tag_listed(page, "1girl", listed=True)
    page.wait_for_function("() => document.querySelectorAll('#lora_forge_editor_gallery img').length > 0")


@pytest.mark.browser
def test_filter_batch_remove_save_undo_save_checks_the_files(tab_url: str, page, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    original = make_dataset(folder)
    with_hat = sorted(name for name, text in original.items() if "hat" in text.split(", "))
    open_editor(page, tab_url, folder, 12)
    assert page.locator("#lora_forge_editor_gallery img").count() == 12

    # click the tag in the tag list: the gallery shows only the images that have it
    page.locator("#lora_forge_editor_tags td", has_text="hat").first.click()
    wait_message(page, f"{len(with_hat)} of 12 images match")
    assert page.input_value("#lora_forge_editor_all textarea") == "hat"
    page.wait_for_function(
        "n => document.querySelectorAll('#lora_forge_editor_gallery img').length === n", arg=len(with_hat)
    )

    # batch remove with preview: nothing changes before Apply
    page.fill("#lora_forge_editor_op_tags textarea", "hat")
    page.click("#lora_forge_editor_preview")
    page.wait_for_function(
        "() => document.querySelector('#lora_forge_editor_preview_text').innerText.includes('would change')"
    )
    assert f"{len(with_hat)} of {len(with_hat)} caption(s) would change" in page.inner_text(
        "#lora_forge_editor_preview_text"
    )
    assert "hat" in page.inner_text("#lora_forge_editor_preview_rows")
    assert disk(folder) == original
    page.click("#lora_forge_editor_apply")
    wait_status(page, f"{len(with_hat)} unsaved")
    wait_tag_listed(page, "hat", listed=False)
    assert disk(folder) == original  # still nothing written

    page.click("#lora_forge_editor_save")
    wait_status(page, "all saved")
    after_save = disk(folder)
    for name, text in original.items():
        expected = ", ".join(t for t in text.split(", ") if t != "hat")
        assert after_save[name] == expected

    page.click("#lora_forge_editor_undo")
    wait_status(page, f"{len(with_hat)} unsaved")
    wait_tag_listed(page, "hat", listed=True)
    page.click("#lora_forge_editor_save")
    wait_status(page, "all saved")
    assert disk(folder) == original
    assert [len(e.files) for e in list_history(folder)] == [len(with_hat), len(with_hat)]

    # a caption typed into the box is kept when the user moves on without pressing Apply
    first = page.inner_text("#lora_forge_editor_current").split(" ")[0]
    page.fill("#lora_forge_editor_caption textarea", "typed, then moved on")
    page.click("#lora_forge_editor_next")
    wait_status(page, "1 unsaved")
    page.click("#lora_forge_editor_save")
    wait_status(page, "all saved")
    assert (folder / first).with_suffix(".txt").read_text("utf-8") == "typed, then moved on"
    assert js_errors(page) == []


@pytest.mark.browser
def test_bad_regex_and_missing_folder_show_a_message_not_a_traceback(tab_url: str, page, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    make_dataset(folder, n=3)
    page.goto(tab_url)
    wait_gradio(page)
    page.locator("#lora_forge_sections > .tab-nav > button", has_text="Edit tags").click()
    page.fill("#lora_forge_dataset_dir textarea", str(tmp_path / "nope"))
    page.click("#lora_forge_editor_load")
    wait_message(page, "does not exist")
    page.fill("#lora_forge_dataset_dir textarea", str(folder))
    page.click("#lora_forge_editor_load")
    wait_status(page, "3 images")
    page.locator("#lora_forge_editor_op input").click()
    page.locator("ul.options li", has_text="Regex replace").click()
    page.fill("#lora_forge_editor_op_tags textarea", "(unclosed")
    page.click("#lora_forge_editor_preview")
    wait_message(page, "not a valid regular expression")
    assert page.locator("#lora_forge_editor_apply").is_disabled()
    assert js_errors(page) == []


@pytest.fixture
def webui_like_url(serve_blocks) -> str:
    """Our tab next to a txt2img tab with a prompt box, in one document, as in the WebUI."""
    import gradio as gr

    from lora_forge.settings import Settings
    from lora_forge.ui import tab
    from lora_forge.ui.app import page_assets
    from lora_forge.ui.context import UiContext

    css, js = page_assets()
    ours = tab.build(UiContext(host=lambda: None, settings=Settings.from_env))
    with gr.Blocks(css=css, analytics_enabled=False) as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", elem_id="tab_txt2img"):
                gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
            with gr.Tab("炼丹", elem_id="tab_lora_forge"):
                ours.render()
        demo.load(None, None, None, _js=f"() => {{ {js}\n}}")
    return serve_blocks(demo)


def current(page) -> str:
    return page.inner_text("#lora_forge_editor_current")


@pytest.mark.browser
def test_shortcuts_act_only_in_the_visible_editor_and_never_while_typing(webui_like_url, page, tmp_path) -> None:
    folder = tmp_path / "set"
    make_dataset(folder, n=5)
    page.goto(webui_like_url)
    wait_gradio(page)
    page.locator("#tabs > .tab-nav > button", has_text="炼丹").click()
    page.locator("#lora_forge_sections > .tab-nav > button", has_text="Edit tags").click()
    page.fill("#lora_forge_dataset_dir textarea", str(folder))
    page.click("#lora_forge_editor_load")
    wait_status(page, "5 images")
    assert current(page).startswith("img00.png (1 / 5)")

    # typing in our own caption box: arrows move the caret, not the image
    page.click("#lora_forge_editor_caption textarea")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Control+z")
    page.wait_for_timeout(500)
    assert current(page).startswith("img00.png")

    # outside text fields the shortcuts work: → next image, edit, Ctrl+Z undo, Ctrl+S save
    page.click("#lora_forge_editor_status")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#lora_forge_editor_current').innerText.startsWith('img01')")
    page.fill("#lora_forge_editor_caption textarea", "edited, by hand")
    page.click("#lora_forge_editor_apply_caption")
    wait_status(page, "1 unsaved")
    page.click("#lora_forge_editor_status")
    page.keyboard.press("Control+z")
    wait_status(page, "all saved")  # undone: nothing differs from the disk
    page.keyboard.press("Control+Shift+z")
    wait_status(page, "1 unsaved")
    page.keyboard.press("Control+s")
    wait_status(page, "all saved")
    assert (folder / "img01.txt").read_text("utf-8") == "edited, by hand"

    # on the txt2img tab our editor is hidden: keys do nothing to it, typed or not
    page.locator("#tabs > .tab-nav > button", has_text="txt2img").click()
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.click()
    page.keyboard.type("masterpiece")
    page.keyboard.press("Control+z")  # the browser's own undo in the prompt box
    page.keyboard.press("ArrowLeft")
    page.click("body", position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Control+z")
    page.wait_for_timeout(700)
    page.locator("#tabs > .tab-nav > button", has_text="炼丹").click()
    assert current(page).startswith("img01")
    assert "undo 1 / redo 0" in status(page)
    assert (folder / "img01.txt").read_text("utf-8") == "edited, by hand"
    assert js_errors(page) == []


@pytest.mark.browser
def test_trigger_word_selection_and_history_rollback(tab_url: str, page, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    original = make_dataset(folder, n=4)
    open_editor(page, tab_url, folder, 4)

    # trigger word first in every caption, saved
    page.fill("#lora_forge_editor_trigger textarea", "sks")
    page.click("#lora_forge_editor_add_trigger")
    wait_status(page, "4 unsaved")
    page.click("#lora_forge_editor_save")
    wait_status(page, "all saved")
    assert all(text.startswith("sks, ") for text in disk(folder).values())

    # pick two images one by one and edit only those
    page.click("#lora_forge_editor_select")  # img00
    wait_status(page, "1 selected")
    page.click("#lora_forge_editor_next")
    page.click("#lora_forge_editor_next")
    page.wait_for_function("() => document.querySelector('#lora_forge_editor_current').innerText.startsWith('img02')")
    page.click("#lora_forge_editor_select")
    wait_status(page, "2 selected")
    page.locator("#lora_forge_editor_op input").click()
    page.locator("ul.options li", has_text="Add tags").click()
    page.fill("#lora_forge_editor_op_tags textarea", "picked")
    page.locator("#lora_forge_editor_scope label", has_text="Selected images").click()
    page.click("#lora_forge_editor_preview")
    page.wait_for_function(
        "() => document.querySelector('#lora_forge_editor_preview_text').innerText.includes('2 of 2')"
    )
    page.click("#lora_forge_editor_apply")
    wait_status(page, "2 unsaved")
    page.click("#lora_forge_editor_save")
    wait_status(page, "all saved")
    picked = sorted(name for name, text in disk(folder).items() if text.endswith(", picked"))
    assert picked == ["img00.txt", "img02.txt"]

    # roll back the first save (the trigger word) from the history list: every file as it was,
    # since the second save's files are rolled back to their state before the first save too
    page.locator("#lora_forge_editor_history_box .label-wrap").click()
    page.locator("#lora_forge_editor_history input").click()
    # the list refreshes right after each save
    page.wait_for_function("() => document.querySelectorAll('ul.options li').length === 2")
    options = page.locator("ul.options li")
    options.nth(1).click()  # newest first: the second entry is the trigger-word save
    page.click("#lora_forge_editor_rollback")
    wait_message(page, "caption file(s) restored")
    assert disk(folder) == original
    assert js_errors(page) == []
