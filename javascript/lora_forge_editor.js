// LoRA Forge tag editor shortcuts: ←/→ previous/next image, Ctrl+S save, Ctrl+Z undo,
// Ctrl+Shift+Z or Ctrl+Y redo (Cmd on macOS).
// They only act while our 编辑 section is on screen and never while the user types in a text
// field: in the WebUI every tab shares one document, and Ctrl+Z in the txt2img prompt box (or
// ← in any input) must keep doing what the browser does there.
(function () {
    "use strict";
    // Guard against a second run without adding another global (window.loraForge is the only one).
    var root = document.documentElement;
    if (root.dataset.loraForgeEditorKeys) {
        return;
    }
    root.dataset.loraForgeEditorKeys = "1";

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function visible(id) {
        var el = app().querySelector("#" + id);
        return !!el && el.offsetParent !== null;
    }

    // The element that really has focus: events from inside gradio's shadow root are retargeted,
    // so look at the composed path first.
    function typingTarget(event) {
        var path = typeof event.composedPath === "function" ? event.composedPath() : [];
        var el = path.length ? path[0] : event.target;
        if (!el || !el.tagName) {
            return false;
        }
        var tag = el.tagName.toLowerCase();
        return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable === true;
    }

    function press(id) {
        var button = app().querySelector("#" + id);
        if (button && !button.disabled) {
            button.click();
            return true;
        }
        return false;
    }

    function action(event) {
        var mod = event.ctrlKey || event.metaKey;
        var key = (event.key || "").toLowerCase();
        if (!mod && !event.altKey && !event.shiftKey) {
            if (event.key === "ArrowLeft") return "lora_forge_editor_prev";
            if (event.key === "ArrowRight") return "lora_forge_editor_next";
            return null;
        }
        if (mod && !event.altKey) {
            if (key === "s" && !event.shiftKey) return "lora_forge_editor_save";
            if (key === "z" && !event.shiftKey) return "lora_forge_editor_undo";
            if ((key === "z" && event.shiftKey) || (key === "y" && !event.shiftKey)) return "lora_forge_editor_redo";
        }
        return null;
    }

    function onKeyDown(event) {
        var target = action(event);
        if (!target || event.defaultPrevented || event.isComposing || typingTarget(event)) {
            return;
        }
        if (!visible("lora_forge_tab_editor") || !visible(target)) {
            return;
        }
        if (press(target)) {
            event.preventDefault(); // Ctrl+S would otherwise open the browser's "save page" dialog
        }
    }

    document.addEventListener("keydown", onKeyDown);
    if (window.loraForge) {
        window.loraForge.editorKeys = { action: action, typingTarget: typingTarget };
    }
})();
