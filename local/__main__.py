"""`python -m local ...`: the local stack's command line (see local/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# The shared package is a Lambda layer (layers/shared/python), not an installed distribution:
# put it on the path as the Lambda runtime puts /opt/python.
_LAYER = Path(__file__).resolve().parent.parent / "layers" / "shared" / "python"
if str(_LAYER) not in sys.path:
    sys.path.insert(0, str(_LAYER))

from local.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
