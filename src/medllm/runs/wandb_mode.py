"""Which mode a W&B run starts in, for every command that logs to W&B (training, evaluation).

``logger.mode`` if set, else ``WANDB_MODE`` if set, else online with an API key (``WANDB_API_KEY`` or a netrc
entry for the W&B host, as ``wandb login`` writes) and offline without one: offline needs no network, the run
is written under the run dir and uploaded later with ``wandb sync``. And the command line as W&B records it,
secrets redacted.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from medllm.config.schema import WANDB_MODE
from medllm.config.secrets import redact_argv

DEFAULT_HOST = "https://api.wandb.ai"


def has_api_key() -> bool:
    """A W&B API key in ``WANDB_API_KEY`` or in the netrc file (``$NETRC`` or ``~/.netrc``) for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    path = os.environ.get("NETRC") or Path("~/.netrc").expanduser()
    try:
        creds = netrc.netrc(path).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def resolve_mode(mode: str | None) -> tuple[str, str]:
    """The W&B mode (``logger.mode``, checked by the schema, else decided here) and why it was chosen."""
    if mode is not None:
        WANDB_MODE.check("logger.mode", mode)
        return mode, "logger.mode"
    env_mode = os.environ.get("WANDB_MODE")  # one of WANDB_ENVIRONMENT_MODES: the config checks saw to it
    if env_mode:
        return {"dryrun": "offline", "offline": "offline", "disabled": "disabled"}.get(env_mode, "online"), "WANDB_MODE"
    if has_api_key():
        return "online", "an API key is configured"
    return "offline", "no API key: neither WANDB_API_KEY nor a netrc entry from `wandb login`"


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """W&B records ``sys.argv`` with the run (wandb-metadata): hide secrets while the run starts."""
    saved = sys.argv
    sys.argv = redact_argv(saved)
    try:
        yield
    finally:
        sys.argv = saved
