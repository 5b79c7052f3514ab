"""extensions-builtin/Lora/extra_networks_lora.py: `<lora:name:te:unet:dyn>` in prompts."""

from __future__ import annotations

from typing import Any

import networks
from modules import extra_networks


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__("lora")

    def activate(self, p: Any, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        names, te, unet, dyn = [], [], [], []
        for params in params_list:
            assert params.items
            names.append(params.positional[0])
            te_mult = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            te_mult = float(params.named.get("te", te_mult))
            unet_mult = float(params.positional[2]) if len(params.positional) > 2 else te_mult
            unet_mult = float(params.named.get("unet", unet_mult))
            dyn_dim = int(params.positional[3]) if len(params.positional) > 3 else None
            dyn_dim = int(params.named["dyn"]) if "dyn" in params.named else dyn_dim
            te.append(te_mult)
            unet.append(unet_mult)
            dyn.append(dyn_dim)
        networks.load_networks(names, te, unet, dyn)
        if networks.not_found:
            p.comment("Lora not found: " + ", ".join(networks.not_found))  # 1.6-1.9: "Networks not found: "

    def deactivate(self, p: Any) -> None:
        pass
