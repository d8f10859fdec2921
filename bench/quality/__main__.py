"""``python -m bench.quality``: see ``bench/quality/__init__.py`` or ``--help``."""

import sys

from bench.quality.cli import main

if __name__ == "__main__":
    sys.exit(main())
