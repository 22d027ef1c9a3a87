"""`python -m local ...`: the local stack's command line (see local/cli/)."""

from __future__ import annotations

import sys

from local.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
