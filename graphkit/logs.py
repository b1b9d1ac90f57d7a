"""Library logging: every long step says what it does to the `graphkit.*` loggers.

Library calls take an optional `log` callback (the CLI prints it on the console); `step`
sends the same line to the module's logger too, so a program that imports graphkit sees
the steps with `logging.basicConfig(level=logging.INFO)` and the CLI with `-v`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Log = Callable[[str], None]


def step(name: str, callback: Log | None = None) -> Log:
    """A `log` function for module `name`: INFO to its logger, then the callback."""
    logger = logging.getLogger(name)

    def say(message: str) -> None:
        logger.info(message)
        if callback is not None:
            callback(message)

    return say


__all__ = ["Log", "step"]
