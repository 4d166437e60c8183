"""Lightning's lines are printed once, in the run's format, not once by its own handler and once by Hydra's."""

from __future__ import annotations

import logging

from medllm.runs.library_logs import once_through_the_root


def test_a_library_logger_s_own_console_handler_gives_way_to_the_root_s(tmp_path):
    root, lightning = logging.getLogger(), logging.getLogger("lightning.pytorch")
    saved = (list(root.handlers), list(lightning.handlers), lightning.propagate)
    console, kept = logging.StreamHandler(), logging.FileHandler(tmp_path / "own.log")
    try:
        root.handlers = [logging.StreamHandler()]  # as Hydra's logging sets it up
        lightning.handlers, lightning.propagate = [console, kept], False
        once_through_the_root()
        assert lightning.handlers == [kept] and lightning.propagate  # a file of its own is not a console
        root.handlers = []
        lightning.handlers = [console]
        once_through_the_root()  # no logging set up: its own handler is all it has
        assert lightning.handlers == [console]
    finally:
        root.handlers, lightning.handlers, lightning.propagate = saved
        kept.close()
