"""The one error of using a trained network, so the CLI turns every such failure into a message.

Loading a model source, running it and reading or writing image files all fail with
:class:`UpscaleError`, whose message names the source, the device or the file.
"""

from __future__ import annotations

__all__ = ["UpscaleError"]


class UpscaleError(RuntimeError):
    """A model source or an image file that cannot be used; the message names it."""
