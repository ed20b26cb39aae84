"""Log output of every vitpipe process (the CLI, Ray Train workers, torchrun ranks): vitpipe's
own progress at INFO, everything else at WARNING, one plain line per record."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("pipelines", "launch"):
        logging.getLogger(name).setLevel(logging.INFO)
