"""One check of a sweep's shared settings before Hydra launches any job (``python train.py -m ...``).

Each job checks its own config, so a mistake in a setting every job shares (``model.lora.dropout=1.5``)
failed once per job, each with a traceback, or ended an Optuna sweep after its first trial with Hydra's.
Here the config is composed with the overrides that are not swept and checked once: such a mistake ends
the command with one line, and nothing is launched. A mistake that names a swept key is left to the
jobs, whose own values of that key may be valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medllm.errors import MedllmError

MULTIRUN_FLAGS = ("-m", "--multirun")
# Another primary config than the entry point's: its jobs check it themselves.
CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")


def shared_settings_error(
    conf_dir: Path, config_name: str, argv: Sequence[str], check: Callable[[DictConfig], None]
) -> str | None:
    """The message of ``check`` on the settings all jobs of a multirun share; None when they pass, when
    ``argv`` is not a multirun, or when the settings can't be told without a running job (Hydra's own
    errors, which it reports when it composes; values only a job resolves)."""
    if not any(arg in MULTIRUN_FLAGS for arg in argv) or any(arg.split("=")[0] in CONFIG_FLAGS for arg in argv):
        return None
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
            # The jobs write under the sweep dir; without a running Hydra, ${hydra:runtime.output_dir} is unset.
            cfg.paths.output_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
    except (HydraException, OmegaConfBaseException):
        return None
    settings = {key: value for key, value in OmegaConf.to_container(cfg, resolve=False).items() if key != "hydra"}
    if "${hydra:" in repr(settings):  # e.g. logger.name=${hydra:job.override_dirname}: only a job resolves it
        return None
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    swept |= set(OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})
    try:
        check(cfg)
    except MedllmError as err:
        message = str(err)
        return None if any(key in message for key in swept) else message
    return None
