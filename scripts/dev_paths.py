"""Put the repository's import roots on this interpreter's path: `make` runs it once per venv.

The roots are the repository itself (the CDK app, infra/, local/, bench/, scripts' imports), the
shared Lambda layer's package and the Python client. They go into a .pth file in the venv's
site-packages, so app.py, scripts/ and bench/ import them without editing sys.path.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTS = (ROOT, ROOT / "layers" / "shared" / "python", ROOT / "clients" / "python")
PTH_NAME = "quanttrade-dev.pth"


def main() -> None:
    target = Path(sysconfig.get_path("purelib")) / PTH_NAME
    target.write_text("".join(f"{root}\n" for root in ROOTS))
    print(f"{target}: {', '.join(str(root) for root in ROOTS)}")


if __name__ == "__main__":
    main()
