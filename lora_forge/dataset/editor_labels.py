"""The tag editor's choice lists, apart from the editor itself: the 编辑 section needs them while
the WebUI builds its page, and importing lora_forge.dataset.editor_view there would put the whole
editor (dataset, operations, thumbnails) into every WebUI start."""

from __future__ import annotations

SCOPES = ("Filtered images", "Selected images", "Current image", "All images")
# label in the UI → (operation, fixed arguments)
OPERATIONS: dict[str, tuple[str, dict]] = {
    "Add tags": ("add", {}),
    "Remove tags": ("remove", {}),
    "Replace a tag": ("replace", {}),
    "Regex replace": ("regex", {}),
    "Move to front": ("front", {}),
    "Remove duplicates": ("dedupe", {}),
    "Sort tags A-Z": ("sort", {"key": "name"}),
    "Sort tags by frequency": ("sort", {"key": "count"}),
    "Underscores to spaces": ("underscores", {}),
}
