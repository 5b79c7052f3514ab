"""The one exception type for mistakes a user can cause (bad file, bad option, missing model).

Anything raised as ForgeError is shown to the user as a one-line message (UI: a message box,
CLI: stderr and exit code 2); every other exception is a bug and stays loud.
"""

from __future__ import annotations


class ForgeError(Exception):
    """A problem the user can fix; the message must say what to do."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


class RenderFailed(ForgeError):
    """One picture could not be made (the WebUI's NaN check stopped it): a grid marks that cell and
    renders the others instead of ending."""
