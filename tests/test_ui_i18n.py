"""Runtime messages (status lines, step notes, hints, advice, errors) reach the page in the user's
language: lora_forge.i18n matches the finished English text against the templates in
localizations/zh_CN.json.

What counts as a runtime message (test_every_runtime_message_has_a_template):
- the message of every ForgeError(...) raised in the package, except in modules only the command
  line shows (cli/, selftest stages: a terminal, English like the logs);
- the message of every Progress(...) event (the tab shows them as progress lines);
- every string literal or f-string that reads as prose (two words or more) in the modules whose
  text the tab shows: the sections (lora_forge/ui/), the project bar's steps and hints
  (project.py), the advice (optimise.py) and the core functions whose results the sections print
  verbatim (DISPLAY_MODULES); not docstrings, not arguments of gr.* component constructors (their
  strings are checked by test_ui_l10n against the built tab), not log calls, not the messages of
  programming errors (raise ValueError/RuntimeError…), not strings compared against.
An f-string counts as covered when its text, with each {…} filled by a stand-in value, is
translated by the catalog (so the template's literal text is right). ALLOWED lists reviewed
exceptions, each with its reason.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lora_forge import i18n
from tests.blocks_support import call
from tests.browser import js_errors, wait_gradio
from tests.test_flow_browser import _fill, _wait_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lora_forge"
CLI_ONLY = re.compile(r"(^|/)(cli/\w+|selftest|selftest_stage|standalone_selftest)\.py$")
DISPLAY_MODULES = [
    "ui/*.py",
    "project.py",
    "app/*.py",
    "optimise.py",
    "dataset/editor_view.py",
    "grid/scores.py",
    "grid/job.py",
    "dataset/prepare.py",
    "tagger/batch.py",
    "train/presets.py",
    "grid/plan.py",
    "grid/size.py",
    "host/webui_train.py",
]
# two words with a space between, or a label such as "Error:" / "**Failed:**"
PROSE = re.compile(r"[A-Za-z]{2,}[,;:.!?'’)*]*\s+[(“\"'*`]*[A-Za-z]{2,}|(?<![\w.-])[A-Z][a-z]{2,}:")
# calls whose string arguments are never shown: command-line help, string tests and edits
NOT_SHOWN = {"print", "add_argument", "startswith", "endswith", "removeprefix", "removesuffix", "split", "join"}
NOT_FORGE = {"ValueError", "RuntimeError", "TypeError", "KeyError", "AssertionError", "NotImplementedError"}
# Reviewed literals that are not messages for the page: (file, text) → why
ALLOWED: dict[tuple[str, str], str] = {
    ("lora_forge/ui/app.py", "LoRA Forge (炼丹炉)"): "the product's name, the same in every language",
    ("lora_forge/app/train.py", "memory estimate"): "the job name the host's lock logs",
    ("lora_forge/app/train.py", "training run ⟨0⟩"): "the job's thread name, in the console's log only",
    ("lora_forge/dataset/editor_view.py", "tag editor"): "the reason stored in the caption history file",
    ("lora_forge/grid/plan.py", "masterpiece, best quality"): "a prompt: model input, never translated",
    ("lora_forge/grid/plan.py", "white hair, red dress"): "a prompt: model input, never translated",
    (
        "lora_forge/grid/plan.py",
        "lowres, bad anatomy, bad hands, worst quality, low quality, jpeg artifacts, blurry",
    ): "a prompt: model input, never translated",
    ("lora_forge/host/webui_train.py", "LoRA Forge: training “⟨0⟩” — ⟨1⟩. ⟨2⟩⟨3⟩"): (
        "the WebUI's own job text (txt2img's progress line while we train), outside the tab"
    ),
}
FINISHED = (
    "Finished: {step} steps. {n} LoRA file(s) in {run_dir}. Try one in txt2img with `<lora:{name}:0.8>`, or "
    "compare every epoch at several strengths in the Test grid section."
)
STOPPED = (
    "Stopped ({reason}) at step {step}. {n} LoRA file(s) in {run_dir}. Try one in txt2img with `<lora:{name}:0.8>`, "
    "or compare every epoch at several strengths in the Test grid section. Press Resume to continue this run."
)
PLAN = "{views} image views per epoch ({plain} images × {repeats} repeats), {epochs} epochs, {total} steps"
JAVASCRIPT = re.compile(r"=>|\bfunction\s*\(|\bdocument\.|\bwindow\.")
# Pieces of a message assembled from several literals: (file, piece) → the catalog template that
# covers the assembled message (test_fragments_are_covered_by_their_assembled_template checks it)
FRAGMENTS: dict[tuple[str, str], str] = {
    ("lora_forge/dataset/editor_view.py", " (no caption file yet)"): "{name} (no caption file yet)",
    ("lora_forge/dataset/prepare.py", " (less than half)"): "small: short side {short} px < {size} (less than half)",
    (
        "lora_forge/grid/job.py",
        "⟨0⟩ × ⟨1⟩ grid in ⟨2⟩s⟨3⟩, saved to ⟨4⟩",
    ): "{n} × {m} grid in {seconds}s, saved to {where}",
    ("lora_forge/grid/job.py", " (partial: ⟨0⟩ of ⟨1⟩ cells, ⟨2⟩)"): (
        "{n} × {m} grid in {seconds}s (partial: {rendered} of {cells} cells, {reason}), saved to {where}"
    ),
    ("lora_forge/app/train.py", "Finished: ⟨0⟩ steps"): FINISHED,
    ("lora_forge/app/train.py", "Stopped (⟨0⟩) at step ⟨1⟩"): STOPPED,
    (
        "lora_forge/app/train.py",
        "⟨0⟩. ⟨1⟩ LoRA file(s) in ⟨2⟩. Try one in txt2img with `<lora:⟨3⟩:0.8>`, or compare every epoch at "
        "several strengths in the Test grid section.",
    ): FINISHED,
    ("lora_forge/app/train.py", " Press Resume to continue this run."): STOPPED,
    ("lora_forge/train/presets.py", "⟨0⟩ image views per epoch (⟨1⟩ images × ⟨2⟩ repeats"): PLAN,
    ("lora_forge/train/presets.py", "⟨0⟩, ⟨1⟩ epochs, ⟨2⟩ steps"): PLAN,
    ("lora_forge/ui/train.py", "; this will not fit: lower the batch size, the resolution or the rank"): (
        "the card has {total} GiB ({device}); this will not fit: lower the batch size, the resolution or the rank"
    ),
}
STAND_IN = "⟨{}⟩"


@dataclass(frozen=True)
class Literal:
    file: str
    line: int
    kind: str  # "error", "progress" or "display"
    text: str  # holes filled with stand-ins


def sample(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out, hole = [], 0
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            else:
                out.append(STAND_IN.format(hole))
                hole += 1
        return "".join(out)
    return None


def _call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else ""
        return f"{base}.{f.attr}"
    return ""


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _docstrings(tree: ast.AST) -> set[ast.AST]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(first.value)
    return out


def _excluded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a gr.* constructor, a log/print call, a non-ForgeError raise, or a comparison."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Compare):
            return True
        if isinstance(parent, ast.Call):
            name = _call_name(parent)
            if name.startswith("gr.") and name != "gr.update" and child is not parent.func:
                return True
            if name.split(".")[0] in ("log", "logging", "logger", "warnings") or name.split(".")[-1] in NOT_SHOWN:
                return True
            if any(k is child and k.arg in ("_js", "name") for k in parent.keywords):
                return True  # javascript, a thread's name
            if name in NOT_FORGE:
                return True
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            return False
        child, parent = parent, parents.get(parent)
    return False


def runtime_literals() -> list[Literal]:
    display = {p for pattern in DISPLAY_MODULES for p in PACKAGE.glob(pattern)}
    found: list[Literal] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen: set[ast.AST] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node).rsplit(".", 1)[-1]
            arg = None
            if name == "ForgeError" and not CLI_ONLY.search(rel) and node.args:
                arg, kind = node.args[0], "error"
            elif name == "Progress":
                arg = (
                    node.args[2]
                    if len(node.args) > 2
                    else next((k.value for k in node.keywords if k.arg == "message"), None)
                )
                kind = "progress"
            text = sample(arg) if arg is not None else None
            if text is not None and text.strip():
                seen.add(arg)
                found.append(Literal(rel, arg.lineno, kind, text))
        if path not in display:
            continue
        parents, docs = _parents(tree), _docstrings(tree)
        inner = {v for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if node in seen or node in docs or node in inner or _excluded(node, parents):
                continue
            text = sample(node)
            if text is None:
                continue
            if PROSE.search(re.sub(r"<[^<>]*>|⟨\d+⟩", "", text)) and not JAVASCRIPT.search(text):
                found.append(Literal(rel, node.lineno, "display", text))
    return found


def covered(tr: i18n.Translator, text: str) -> bool:
    """Translated by the catalog as a whole (Markdown), or for HTML, every text node that reads as
    prose is (how the boundary translates HTML outputs)."""
    if tr.text(text) != text:
        return True
    nodes = [n for n in re.split(r"<[^<>]*>", text) if PROSE.search(re.sub(r"⟨\d+⟩", "", n))]
    return ("</" in text) and all(tr.text(n.strip()) != n.strip() for n in nodes)


def test_the_scan_finds_the_messages_it_is_meant_to_find():
    literals = runtime_literals()
    texts = {(lit.kind, lit.text) for lit in literals}
    # a ForgeError deep in the core, a section's status line, a step note and a hint
    assert ("error", "give the project a name (any language)") in texts
    assert ("display", "Select an image in the gallery first.") in texts
    assert any(k == "display" and t.startswith("Next: bring your images in") for k, t in texts)
    assert sum(1 for lit in literals if lit.kind == "error") > 150
    # component labels and docstrings are not runtime messages
    assert not any(t == "Prepare images" for _, t in texts)


def test_every_runtime_message_has_a_template():
    tr = i18n.translator("zh_CN")
    missing = [
        lit
        for lit in runtime_literals()
        if (lit.file, lit.text) not in ALLOWED and (lit.file, lit.text) not in FRAGMENTS and not covered(tr, lit.text)
    ]
    report = "\n".join(f"{m.file}:{m.line} [{m.kind}] {m.text!r}" for m in missing)
    assert not missing, f"{len(missing)} runtime messages without a zh_CN template:\n{report}"


def test_fragments_and_allowances_are_current_and_fragments_have_their_template():
    """An entry for a literal that no longer exists must go; a fragment's assembled template must
    be in the catalog (so the message the user sees is translated even though its pieces are not)."""
    present = {(lit.file, lit.text) for lit in runtime_literals()}
    stale = [k for k in [*ALLOWED, *FRAGMENTS] if k not in present]
    assert stale == []
    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    assert [t for t in FRAGMENTS.values() if t not in zh] == []


# -- the translator on real messages -------------------------------------------------------------

ENGLISH_PROSE = re.compile(r"[A-Za-z]{3,} [A-Za-z]{3,} [A-Za-z]{3,}")


def english_left(text: str) -> list[str]:
    """Runs of three English words outside `code` spans (paths, config keys and names stay)."""
    return ENGLISH_PROSE.findall(re.sub(r"`[^`]*`", "", text))


def test_a_forge_error_from_the_core_reads_in_chinese_with_its_path(tmp_path):
    from lora_forge.errors import ForgeError
    from lora_forge.tagger.batch import list_images

    missing = tmp_path / "数据 集" / "no such"
    with pytest.raises(ForgeError) as caught:
        list_images(missing)
    shown = i18n.translate(f"**Error:** {caught.value}", "zh_CN")
    assert shown.startswith("**出错：** ")
    assert str(missing) in shown and "文件夹不存在" in shown and english_left(shown) == []
    # the core and the command line keep English
    assert str(caught.value).endswith("no such folder; give the folder of prepared images")
    assert i18n.translate(f"**Error:** {caught.value}", "None") == f"**Error:** {caught.value}"


def test_values_stay_verbatim_and_unknown_text_stays_english():
    tr = i18n.translator("zh_CN")
    # a project called "Train" is a value, not the word 训练
    assert tr.text("Opened project “Train”.") == "已打开项目“Train”。"
    assert tr.text("Created project “a”b” in `C:\\x y\\z`.") == "已创建项目“a”b”，位于 `C:\\x y\\z`。"
    unknown = "Something we never wrote a template for, 42 times."
    assert tr.text(unknown) == unknown
    assert tr.text("") == "" and tr.html("") == ""
    # a message inside a message: the error placeholder is translated too, its path kept
    nested = "**Failed:** /data/set: the dataset folder does not exist"
    assert tr.text(nested) == "**失败：** /data/set: 数据集文件夹不存在"


def test_every_template_keeps_every_value():
    """A translation may drop only English grammar ("was"/"were"), never a value."""
    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    grammar_only = {"were"}
    lost = {
        k: v
        for k, v in zh.items()
        if sorted(set(i18n.PLACEHOLDER.findall(k)) - grammar_only) != sorted(set(i18n.PLACEHOLDER.findall(v)))
    }
    assert lost == {}


def test_language_follows_the_users_choice(monkeypatch):
    assert i18n.resolve_language("None") == "en"
    assert i18n.resolve_language(None) == "en"
    assert i18n.resolve_language("zh_CN") == "zh_CN"
    assert i18n.resolve_language("zh-Hans (Stable)") == "zh_CN"  # the Chinese localization extension's names
    assert i18n.resolve_language("zh_TW") == "en"  # no traditional-Chinese catalog: English, not simplified
    assert i18n.resolve_language("fr_FR") == "en"
    monkeypatch.delenv(i18n.ENV_LANG, raising=False)
    assert i18n.env_language() == "en"
    monkeypatch.setenv(i18n.ENV_LANG, "zh_CN")
    from lora_forge.ui.context import UiContext

    assert UiContext(host=lambda: None, settings=lambda: None).tr("nothing to save") == "没有需要保存的修改"


def test_step_notes_hints_and_advice_read_in_chinese(tmp_path):
    from PIL import Image

    from lora_forge import optimise, project
    from lora_forge.app import steps
    from lora_forge.ui.projects import steps_html

    tr = i18n.translator("zh_CN")
    p = project.create(tmp_path, "猫")
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(p.dataset_dir / f"{i}.png")
    for i in range(2):
        (p.dataset_dir / f"{i}.txt").write_text("cat", encoding="utf-8")
    states = steps.step_states(p)
    hint = tr.text(steps.next_hint(states))
    assert hint == "需要处理 — 标签：3 张图片中有 1 张没有标注"
    chips = tr.html(steps_html(states))
    assert "3 张图片" in chips and "需要处理" in chips and english_left(re.sub(r"<[^>]*>", " ", chips)) == []

    cells = [{"epoch": e, "strength": s, "fidelity": 0.9} for e in (1, 2, 3, 4) for s in (0.5, 1.0)]
    scores = {"cells": cells, "recommendation": {"epoch": 1, "strength": 0.5, "reason": ""}}
    advice = optimise.advise(scores, {"max_train_epochs": 4, "num_repeats": 8})
    assert advice.kind == "overfit"
    shown = tr.text(advice.markdown())
    assert shown.startswith("**过拟合** — 现在先用第 1 轮、权重 0.5") and english_left(shown) == []
    assert "`max_train_epochs = 1`" in shown  # config keys stay as they are written in config.toml


def test_a_webui_user_who_chose_chinese_gets_chinese_messages(tmp_path, monkeypatch):
    """Inside the WebUI the language is Settings → User interface → Localization (shared.opts),
    read through the host layer; the tab's handlers answer in it, in-process."""
    import sys

    stub = ROOT / "tests" / "webui_stub"
    if str(stub) not in sys.path:
        sys.path.insert(0, str(stub))
    from modules import shared

    from lora_forge import extension
    from lora_forge.host import webui

    webui.register_settings()
    monkeypatch.setitem(shared.opts.data, webui.OPT_DATASET_DIR, str(tmp_path / "projects"))

    def create(language: str, name: str) -> str:
        monkeypatch.setitem(shared.opts.data, "localization", language)
        [(blocks, _, _)] = extension.on_ui_tabs()
        return call(blocks, "on_create", name)["lora_forge_project_msg"]

    folder = tmp_path / "projects" / "project"
    assert create("zh_CN", "猫猫") == f"已创建项目“猫猫”，位于 `{folder}`。"
    assert create("zh_CN", "猫猫") == "**出错：** 已经有名为“猫猫”的项目；请打开它，或换一个名字"
    assert create("None", "狗") == f"Created project “狗” in `{folder}-2`."


# -- in the browser --------------------------------------------------------------------------------


def _md(page, elem_id: str) -> str:
    """A Markdown component's text (without gradio's progress overlay)."""
    return page.eval_on_selector(f"#{elem_id} .prose", "e => e.textContent").strip()


def _walk(page, serve_blocks, tmp_path: Path, language: str) -> dict[str, str]:
    """Create a project, put 3 images (2 captioned) into its dataset, load them in 编辑: what the
    project message, the steps, the hint and the editor status say. (Tests ask for serve_blocks
    before page, so the page closes before its server.)"""
    from PIL import Image

    from lora_forge.settings import Settings
    from lora_forge.ui.app import build_app

    root = tmp_path / language / "项目"
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=root)
    page.goto(serve_blocks(build_app(ckpt=None, settings=lambda: settings, language=language)))
    wait_gradio(page)
    _fill(page, "lora_forge_project_new", "猫猫")
    page.click("#lora_forge_project_create")
    _wait_text(page, "#lora_forge_project_msg", str(root), timeout=60_000)
    [folder] = [p for p in root.iterdir() if p.is_dir()]
    out = {"created": _md(page, "lora_forge_project_msg"), "folder": str(folder)}
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 90, 30)).save(folder / "dataset" / f"{i}.png")
    for i in range(2):
        (folder / "dataset" / f"{i}.txt").write_text("cat, solo", encoding="utf-8")
    out["create_button"] = page.inner_text("#lora_forge_project_create").strip()
    out["presets"] = page.eval_on_selector("#lora_forge_train_preset", "e => e.textContent")
    page.locator("#lora_forge_sections .tab-nav button").nth(2).click()  # 编辑 / Edit tags
    page.wait_for_function("() => (document.querySelector('#lora_forge_step_images') || {}).title?.includes('3')")
    out["steps"] = page.eval_on_selector("#lora_forge_steps", "e => e.textContent")
    out["hint"] = _md(page, "lora_forge_next")
    page.click("#lora_forge_editor_load")
    page.wait_for_function("() => document.querySelector('#lora_forge_editor_status .prose').textContent.includes('·')")
    out["status"] = _md(page, "lora_forge_editor_status")
    assert js_errors(page) == []
    return out


@pytest.mark.browser
def test_a_chinese_user_sees_chinese_status_lines_with_the_real_values(serve_blocks, page, tmp_path):
    seen = _walk(page, serve_blocks, tmp_path, "zh_CN")
    assert seen["created"].strip() == f"已创建项目“猫猫”，位于 {seen['folder']}。"
    assert seen["create_button"] == "新建项目"  # our own page translates the tab's labels too
    assert "人物" in seen["presets"] and "Person" not in seen["presets"]  # and choices, in the browser
    assert "3 张图片" in seen["steps"] and "需要处理" in seen["steps"]
    assert seen["hint"].strip() == "需要处理 — 标签：3 张图片中有 1 张没有标注"
    # the editor's status: counts from the real dataset, each part in Chinese
    assert seen["status"].startswith("3 张图片 · 显示 3 张 · ") and english_left(seen["status"]) == []


@pytest.mark.browser
def test_with_english_chosen_the_same_lines_stay_english(serve_blocks, page, tmp_path):
    seen = _walk(page, serve_blocks, tmp_path, "en")
    assert seen["created"].strip() == f"Created project “猫猫” in {seen['folder']}."
    assert seen["create_button"] == "Create project"
    assert "Person" in seen["presets"]
    assert "3 images" in seen["steps"]
    assert seen["hint"].strip() == "Needs attention — Tag: 1 of 3 images have no caption"
    assert seen["status"].startswith("3 images · 3 shown · ")
