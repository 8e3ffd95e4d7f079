"""``python -m srcore.cli``: the ``srcore`` command."""

import sys

from srcore.cli import app

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
