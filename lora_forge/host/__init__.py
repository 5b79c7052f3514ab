"""The environment around the model. `webui` is the ONLY module of lora_forge that imports the
WebUI's `modules.*` (lazily); `standalone` builds the same `ldm` objects from a checkpoint file."""

from lora_forge.host.base import Host, LoraRef, RenderRequest

__all__ = ["Host", "LoraRef", "RenderRequest"]
