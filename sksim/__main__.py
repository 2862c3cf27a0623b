"""``python -m sksim``: the command line of :mod:`sksim.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
