"""`python -m training ...` is `digitreader train ...` (the one entry point)."""

from __future__ import annotations

import sys

from digitreader.cli.main import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
