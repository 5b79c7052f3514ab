"""modules/sd_unet.py: alternative UNets (TensorRT and the like) chosen by `opts.sd_unet`."""

from __future__ import annotations

from typing import Any

from modules import shared

unet_options: list[Any] = []
current_unet_option: Any = None
current_unet: Any = None


class SdUnetOption:
    model_name: str | None = None
    label: str | None = None

    def create_unet(self) -> Any:
        raise NotImplementedError()


class SdUnet:
    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass


def get_unet_option(option: str | None = None) -> Any:
    option = option or shared.opts.data.get("sd_unet", "Automatic")
    if option == "None":
        return None
    if option == "Automatic":
        name = getattr(getattr(shared.sd_model, "sd_checkpoint_info", None), "model_name", None)
        options = [x for x in unet_options if x.model_name == name]
        option = options[0].label if options else "None"
    return next(iter([x for x in unet_options if x.label == option]), None)


def apply_unet(option: str | None = None) -> None:
    """Same order as 1.10.1: deactivate the current one, then activate the new option (if any)."""
    global current_unet_option, current_unet

    new_option = get_unet_option(option)
    if new_option == current_unet_option:
        return
    if current_unet is not None:
        current_unet.deactivate()
    current_unet_option = new_option
    if current_unet_option is None:
        current_unet = None
        return
    current_unet = current_unet_option.create_unet()
    current_unet.option = current_unet_option
    current_unet.activate()
