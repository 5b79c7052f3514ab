"""LoRA Forge (炼丹炉): turn a folder of images into a LoRA inside the AUTOMATIC1111 WebUI.

The package is importable without the WebUI and without torch; every heavy import happens inside
the function that needs it, because the WebUI imports extensions at start-up.
"""

__version__ = "0.1.0"
