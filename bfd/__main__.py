"""``python -m bfd``: the ``bfd`` command (``bfd.cli.main``), for an environment whose scripts
folder is not on PATH."""

import sys

from bfd.cli import main

if __name__ == "__main__":
    sys.exit(main())
