"""`python -m bench.end_to_end`: the run's options, and its figures printed as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from bench import end_to_end
from bench.end_to_end.scenario import AUDIENCES, REPEATS, run


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    description = (end_to_end.__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=description)
    parser.add_argument("--audiences", type=int, nargs="+", default=list(AUDIENCES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    figures = run(args.audiences, args.repeats)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
