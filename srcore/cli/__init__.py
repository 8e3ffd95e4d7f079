"""``srcore`` command line, one module per command group: ``zoo`` (models, profile), ``evaluate``
(eval), ``upscale``, ``export``, ``data`` (sample, prepare), ``train`` (train, distill) and ``stack``;
``common`` holds the application and what the commands share. Each command parses its options and
calls the library; a ``SrcoreError`` ends it with one line (``exits_on_error``)."""

from srcore.cli import data, evaluate, export, stack, train, upscale, zoo  # noqa: F401  (they register)
from srcore.cli.common import app

__all__ = ["app"]
