"""The `evsectl` command (pyproject script) and `python -m evsectl`."""

from __future__ import annotations

import sys

from evsectl.cli import main

if __name__ == "__main__":
    sys.exit(main())
