"""LoRA Forge (炼丹炉) in the WebUI: registers the 炼丹 tab, its settings and its HTTP routes.

Everything else is in the lora_forge package (lora_forge/host/webui.py for the WebUI side), which
imports nothing heavy until a callback runs.
"""

from modules import script_callbacks

from lora_forge.host import webui  # the WebUI puts our folder on sys.path while it imports this file

script_callbacks.on_ui_tabs(webui.on_ui_tabs)
script_callbacks.on_ui_settings(webui.on_ui_settings)
script_callbacks.on_app_started(webui.on_app_started)
script_callbacks.on_before_ui(webui.before_ui)
