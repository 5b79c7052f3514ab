"""The WebUI extension's registration: the 炼丹 tab, its settings, its HTTP routes and the
before-UI fixes, as the callbacks scripts/lora_forge.py hands to the WebUI's script_callbacks.

The top floor: it wires the faces (ui.tab, api) to the WebUI's host adapters (host/webui.py),
which themselves import nothing above host/. Only host/webui.py is imported at WebUI start-up;
the faces load when their callback runs.
"""

from __future__ import annotations

from typing import Any

from lora_forge.host import webui

TAB_TITLE = "炼丹"
TAB_ID = "lora_forge"


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    from lora_forge import i18n
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext
    from lora_forge.ui.subblocks import rendered_elsewhere
    from lora_forge.ui.translate import localize_components

    ctx = UiContext(
        host=webui.host, settings=webui.settings_from_opts, paths=webui.path_policy, language=webui.ui_language
    )
    with rendered_elsewhere():  # the WebUI renders the tab into its page: no page set-up of its own
        blocks = tab.build(ctx)
    # our words in the user's language, here and not through the WebUI's page-wide localization
    localize_components(blocks, i18n.translator(webui.ui_language()))
    return [(blocks, TAB_TITLE, TAB_ID)]


def on_ui_settings() -> None:
    webui.register_settings()


def before_ui() -> None:
    webui.keep_on_sys_path()
    webui.fix_localizations()


def on_app_started(_demo: Any, app: Any) -> None:
    from lora_forge import api
    from lora_forge.uploads import install_upload_recorder

    webui.keep_on_sys_path()
    install_upload_recorder(app)  # the tab's uploads: only files the WebUI's /upload wrote
    api.register(app, host=webui.host, settings=webui.settings_from_opts, paths=webui.path_policy)
