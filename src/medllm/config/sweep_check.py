"""One check of a sweep's shared settings before Hydra launches any job (``python train.py -m ...``).

Each job checks its own config, so a mistake in a setting every job shares (``model.lora.dropout=1.5``)
failed once per job, each with a traceback, or ended an Optuna sweep after its first trial with Hydra's.
Here the config is composed with the overrides that are not swept and checked once: such a mistake ends
the command with one line, and nothing is launched.

Checked only where that config is the jobs' own, on the machine they run on; everything else is left to
the jobs:
* jobs launched on this machine (Hydra's basic launcher): a SLURM job sees its node's GPUs, files and
  environment, not the login node's;
* no config group swept (``experiment=qlora_r16,qlora_r64``): the groups' options set other keys;
* no value only a running job resolves (``${hydra:job.override_dirname}``);
* a mistake that names a swept key: the jobs' own values of it may be valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medllm.config.checks import check_search_space
from medllm.errors import MedllmError

MULTIRUN_FLAGS = ("-m", "--multirun")
LOCAL_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def shared_settings_error(
    conf_dir: Path, config_name: str, argv: Sequence[str], check: Callable[[DictConfig], None]
) -> str | None:
    """The message of ``check`` on the settings all jobs of a multirun share; None when they pass, when
    ``argv`` is no plain multirun (``--help``, ``--config-name``, ... go to Hydra), or when the jobs must
    check them themselves (see the module's docstring)."""
    flags = [arg for arg in argv if arg.startswith("-")]
    if not flags or any(flag not in MULTIRUN_FLAGS for flag in flags):
        return None
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
            # The jobs write under the sweep dir; without a running Hydra, ${hydra:runtime.output_dir} is unset.
            cfg.paths.output_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
            cfg.hydra.mode = RunMode.MULTIRUN  # what the jobs will run in
        launcher = OmegaConf.select(cfg, "hydra.launcher._target_")
    except (HydraException, OmegaConfBaseException):
        return None
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    if "optuna" in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")).lower():
        try:  # the command line's sweeps are the Optuna study's search space
            check_search_space({o.key_or_group: o.value() for o in parsed if o.is_sweep_override()})
        except MedllmError as err:
            return str(err)
    swept |= set(OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})
    settings = {key: value for key, value in OmegaConf.to_container(cfg, resolve=False).items() if key != "hydra"}
    if (
        launcher != LOCAL_LAUNCHER
        or any((conf_dir / key).is_dir() for key in swept)  # a config group
        or "${hydra:" in repr(settings)
    ):
        return None
    try:
        check(cfg)
    except MedllmError as err:
        message = str(err)
        # A swept key's values are its jobs' to check; the sweeper's own settings (its search space) are the sweep's.
        own = message.startswith("hydra.sweeper.")
        return None if not own and any(key in message for key in swept) else message
    return None
