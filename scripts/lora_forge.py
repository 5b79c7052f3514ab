"""LoRA Forge (炼丹炉) in the WebUI: registers the 炼丹 tab, its settings and its HTTP routes.

The callbacks are lora_forge/extension.py's (the WebUI side is lora_forge/host/webui.py); the
package imports nothing heavy until a callback runs.
"""

from modules import script_callbacks

from lora_forge import extension  # the WebUI puts our folder on sys.path while it imports this file

script_callbacks.on_ui_tabs(extension.on_ui_tabs)
script_callbacks.on_ui_settings(extension.on_ui_settings)
script_callbacks.on_app_started(extension.on_app_started)
script_callbacks.on_before_ui(extension.before_ui)
