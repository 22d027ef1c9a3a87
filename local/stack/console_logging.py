"""How the local stack's own components log to the console (the functions' handlers log through Powertools)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    """Readable logs for the local stack's own components; the handlers log through Powertools."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # "Found credentials in environment variables" once per boto3 client says nothing useful here.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLevelName(level)))
