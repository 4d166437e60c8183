"""The entry points' command line: a sweep's shared settings checked once, and a "did you mean" for an override
Hydra refuses before medllm's own checks run.

``optimizer.lrr=1e-4`` (no ``+``) fails inside Hydra's composition, which says "Could not override
'optimizer.lrr'. To append to your config use +optimizer.lrr=1e-4": advice that adds the typo. When an
entry point exits that way, the composition is repeated without that override and the key is matched
against its neighbours: "did you mean optimizer.lr?".
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from medllm.config.secrets import redact_text, remember_secrets
from medllm.config.sweep_check import shared_settings_error

REFUSED = re.compile(r"Could not override '([^']+)'")
# The Optuna sweeper's search space, which takes its ranges from the command line's sweeps of the keys.
SEARCH_SPACE = "hydra.sweeper.params."
QUOTES = "\"'"
# Hydra's advice after refusing an override of a key the config lacks.
APPEND_ADVICE = "To append to your config use +"


def hint(conf_dir: Path, config_name: str, argv: Sequence[str]) -> str | None:
    """ "did you mean <key>?" when Hydra refused an override of ``argv`` as an unknown key; else None."""
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    for arg in overrides:  # Hydra: "Sweeping over Hydra's configuration is not supported"
        key, _, value = arg.partition("=")
        if key.lstrip("+").startswith(SEARCH_SPACE):
            name = key.lstrip("+")[len(SEARCH_SPACE) :]
            return f"to change a search range, sweep the key itself: '{name}={value.strip(QUOTES)}'"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        try:
            compose(config_name, overrides=overrides)
            return None
        except OverrideParseException:  # a syntax error: Hydra's own message says where
            return None
        except ConfigCompositionException as err:
            refused = REFUSED.search(str(err))
        if refused is None:
            return None
        key = refused.group(1)
        others = [o for o in overrides if o.split("=", 1)[0] != key]
        try:
            cfg = compose(config_name, overrides=others)
        except ConfigCompositionException:
            return None
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    close = difflib.get_close_matches(name, [str(k) for k in node], n=1)
    return f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else None


def run(
    main: Callable[[], object],
    conf_dir: Path,
    config_name: str,
    check_sweep: Callable[[DictConfig], None] | None = None,
) -> None:
    """Runs a ``@hydra.main`` entry point as its command line: for a sweep (``-m``), ``check_sweep`` on the settings
    every job shares first, once (``medllm.config.sweep_check``); after Hydra's own error exit, the hint, if any."""
    remember_secrets(sys.argv[1:])  # data.hub_token=hf_...: its value is hidden in all that follows
    if check_sweep is not None:
        shared = shared_settings_error(conf_dir, config_name, sys.argv[1:], check_sweep)
        if shared:
            sys.exit(f"error: {redact_text(shared)}\n(a setting every job of the sweep shares: no job was launched)")
    try:
        # Hydra prints its own refusals, echoing the override ("To append to your config use +data.hub_token=..."):
        # what it writes to the console passes through the redaction too.
        # Its advice to append a refused key ("To append to your config use +optimizer.lrr=...") is held back: a
        # typo gets "did you mean optimizer.lr?" instead, and only a key with nothing close gets the advice.
        with _redacted(sys, "stderr") as held, _redacted(sys, "stdout"):
            main()
    except SystemExit as stop:
        if stop.code == 1:  # how Hydra ends on its errors (medllm's own end with "error: ...")
            text = hint(conf_dir, config_name, sys.argv[1:])
            for line in [text] if text else held:
                print(redact_text(line), file=sys.stderr)
        raise


class _RedactingStream:
    """A text stream that writes ``redact_text`` of what it is given to ``stream``, holding back Hydra's advice
    to append a refused key (``held``)."""

    def __init__(self, stream: TextIO, held: list[str]) -> None:
        self._stream, self.held = stream, held

    def write(self, text: str) -> int:
        if APPEND_ADVICE in text:
            lines = text.split("\n")
            self.held.extend(line for line in lines if line.startswith(APPEND_ADVICE))
            text = "\n".join(line for line in lines if not line.startswith(APPEND_ADVICE))
        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ... as the stream has them
        return getattr(self._stream, name)


@contextmanager
def _redacted(module: Any, name: str) -> Iterator[list[str]]:
    stream, held = getattr(module, name), []
    setattr(module, name, _RedactingStream(stream, held))
    try:
        yield held
    finally:
        if isinstance(getattr(module, name), _RedactingStream):  # unless something replaced it meanwhile
            setattr(module, name, stream)
