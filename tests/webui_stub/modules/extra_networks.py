"""modules/extra_networks.py: `<name:arg:arg>` tokens in prompts and the networks they activate."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

extra_network_registry: dict[str, Any] = {}
extra_network_aliases: dict[str, Any] = {}
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def initialize() -> None:
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network: Any) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network: Any, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


class ExtraNetworkParams:
    def __init__(self, items: list[Any] | None = None) -> None:
        self.items = items or []
        self.positional: list[Any] = []
        self.named: dict[str, Any] = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items


class ExtraNetwork:
    def __init__(self, name: str) -> None:
        self.name = name

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        raise NotImplementedError

    def deactivate(self, p: Any) -> None:
        raise NotImplementedError


def lookup_extra_networks(extra_network_data: dict[str, list[ExtraNetworkParams]]) -> dict[Any, list[Any]]:
    res: dict[Any, list[Any]] = {}
    for name, args in extra_network_data.items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is not None:
            res.setdefault(network, []).extend(args)
    return res


def activate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    """Mentioned networks get their params; every other registered one is activated with []."""
    mentioned = lookup_extra_networks(extra_network_data)
    for network, args in mentioned.items():
        network.activate(p, args)
    for network in extra_network_registry.values():
        if network not in mentioned:
            network.activate(p, [])


def deactivate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    for network in extra_network_registry.values():
        network.deactivate(p)


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    res: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def found(m: re.Match[str]) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Extra-network data of the FIRST prompt applies to the whole batch, as in the WebUI."""
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data or {}
