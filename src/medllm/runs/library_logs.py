"""Library loggers that print on their own: each of their lines once, in the run's own format and files."""

from __future__ import annotations

import logging

# Lightning adds a console handler of its own to these when it is imported before logging is set up; under
# Hydra's logging each of their lines was printed twice ("INFO: ..." and Hydra's "[time][name][INFO] - ...").
OWN_CONSOLE = ("lightning.pytorch", "lightning.fabric", "lightning")


def once_through_the_root() -> None:
    """Where the root logger has handlers (Hydra's console and train.log), these loggers' own console handlers
    are removed and their records go to the root's: one line each, in train.log too."""
    if not logging.getLogger().handlers:
        return
    for name in OWN_CONSOLE:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
