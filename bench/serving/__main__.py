"""``python -m bench.serving``: see ``bench/serving/__init__.py`` or ``--help``."""

import sys

from bench.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
