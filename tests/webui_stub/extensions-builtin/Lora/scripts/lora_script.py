"""extensions-builtin/Lora/scripts/lora_script.py: registers the `lora` extra network before the UI
is built (the Lora cards page then lists the files, which list_available_networks stands in for)."""

import extra_networks_lora
import networks
from modules import extra_networks, script_callbacks


def before_ui() -> None:
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)
    extra_networks.register_extra_network_alias(networks.extra_network_lora, "lyco")
    networks.list_available_networks()


script_callbacks.on_before_ui(before_ui)
