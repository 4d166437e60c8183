"""eval.py scores an adapter with the settings it was trained with, read from its run record.

``take_run_settings`` fills the eval config from the record train.py saved in the adapter folder
(``medllm.runs.record``): every setting of ``TAKEN`` that the command line leaves alone gets the run's
value, so ``eval.py benchmark=medical_o1_val adapter_path=<run>/adapter`` scores the run's own model on
the rows it held out, and benchmarks prompt with the run's instruction, with nothing retyped. A setting
the command line gives must equal the run's where it decides which model is scored or which rows are
held out (``MUST_MATCH``): otherwise one line names the key, the run's value and the given one. Other
given settings (the backend, the seed of a subsample) win; this machine's settings (``EVAL_OWN``) are
never taken from the run.

One evaluation scores every adapter on one base with one prompt, so the runs of several adapters must
agree on the base and the instruction (for medical_o1_val, on the whole data split too). The first
adapter's run gives the settings. Adapters without a record (older runs, hand-made) are scored with
the config as composed.

Imports stay light (no torch, transformers or peft): eval.py calls this before it picks the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from medllm.config.inputs import find_adapters
from medllm.config.rules import show
from medllm.config.schema import scores_held_out
from medllm.config.secrets import REDACTED
from medllm.data.chat_format import QUESTION, R1ChatFormat
from medllm.data.fingerprint import split_fingerprint
from medllm.errors import ConfigError
from medllm.runs.record import RECORD_FILE, RunRecord

log = logging.getLogger(__name__)

# Taken from the run unless the command line sets them; seed and max_seq_length first, since the model
# and data groups interpolate them.
TAKEN = ("seed", "max_seq_length", "model", "data")
# What decides which model is scored and which rows are held out: a given value must equal the run's.
MUST_MATCH = ("max_seq_length", "model.name_or_path", "model.revision", "model.tiny", "model.load_in_4bit", "data")
# This machine's paths and workers, and batch shapes that change no score: eval.yaml's (or the command
# line's) apply, never the run's.
EVAL_OWN = (
    "data.cache_dir",
    "data.num_workers",
    "data.num_proc",
    "data.batch_size",
    "data.eval_batch_size",
    "data.pad_to_multiple_of",
    "data.packing",
    "data.packed_static_shape",
    "data.group_by_length",
    "data.phi_check",
    "data.test_path",
    "data.hub_token",  # this machine's credential
)
# Contradictions named in the error (a group such as model=... can contradict a dozen keys).
MAX_SHOWN = 4
# What the runs of adapters scored together must share: one base, one prompt.
SHARED_BY_ADAPTERS = ("model.name_or_path", "model.revision", "model.tiny", "model.load_in_4bit", "data.instruction")


def given_keys(overrides: Sequence[str]) -> list[str]:
    """The keys and groups the command line sets (Hydra's task overrides, e.g. ``model``, ``data.path``)."""
    return [override.key_or_group for override in OverridesParser.create().parse_overrides(list(overrides))]


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """``{dotted key: value}`` for each leaf (lists and empty dicts are leaves)."""
    if isinstance(value, dict) and value:
        leaves = {}
        for key, item in value.items():
            leaves.update(_leaves(item, f"{prefix}.{key}"))
        return leaves
    return {prefix: value}


def _same(key: str, run: Any, given: Any) -> bool:
    """Equal values; paths equal when they name the same file, however written."""
    if key.endswith("path") and isinstance(run, str) and isinstance(given, str):
        return Path(run).expanduser().resolve() == Path(given).expanduser().resolve()
    return run == given


def _resolved(cfg: DictConfig, name: str) -> Any:
    value = OmegaConf.select(cfg, name)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_records(adapters: Sequence[str]) -> dict[str, RunRecord]:
    """``{adapter: record}`` for the adapters that have one, in order."""
    return {path: record for path in adapters if (record := RunRecord.read(path)) is not None}


def _differences(run: dict[str, Any], other: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """``key: a vs b`` for the leaves under ``keys`` where two runs' configs differ."""
    a = {k: v for name in TAKEN if name in run for k, v in _leaves(run[name], name).items()}
    b = {k: v for name in TAKEN if name in other for k, v in _leaves(other[name], name).items()}
    return [
        f"{key}: {show(a.get(key))} vs {show(b.get(key))}"
        for key in sorted(set(a) | set(b))
        if _under(key, keys) and not _under(key, EVAL_OWN) and not _same(key, a.get(key), b.get(key))
    ]


def check_runs_agree(records: dict[str, RunRecord], held_out: bool) -> None:
    """ConfigError unless the adapters' runs share the base and prompt (and the data split, ``held_out``)."""
    (first, record), *others = records.items()
    keys = (*SHARED_BY_ADAPTERS, "data") if held_out else SHARED_BY_ADAPTERS
    for path, other in others:
        differences = _differences(record.config, other.config, keys)
        if differences:
            what = "one base, one prompt and one validation split" if held_out else "one base and one prompt"
            raise ConfigError(
                f"{first} and {path} were trained with different settings ({'; '.join(differences)}); one "
                f"evaluation scores every adapter with {what}: evaluate them in separate runs."
            )


def _take(cfg: DictConfig, name: str, run_value: Any, given: list[str]) -> tuple[list[tuple], list[str]]:
    """Set ``cfg[name]`` to the run's value, keeping the leaves the command line gives and ``EVAL_OWN`` ones.

    Returns the contradictions (``(key, run's, given)`` where a given ``MUST_MATCH`` leaf differs) and the
    ``key=value`` of each leaf taken that changed.
    """
    ran, now = _leaves(run_value, name), _leaves(_resolved(cfg, name), name)
    raw = _leaves(OmegaConf.to_container(cfg, resolve=False).get(name), name)
    # The record holds secrets redacted: such a value can't be taken back, the composed one stays.
    hidden = [key for key, value in ran.items() if isinstance(value, str) and REDACTED in value]
    for key in hidden:
        if not _under(key, EVAL_OWN):
            log.warning(
                "%s: the run's value was redacted in its record; using this command's (%s)", key, show(now.get(key))
            )
    own = (*EVAL_OWN, *hidden)
    contradictions, taken = [], []
    for key in sorted(set(ran) | set(now)):
        if _under(key, own):
            continue
        if not _under(key, given):
            if ran.get(key) != now.get(key):
                taken.append(f"{key}={show(ran.get(key))}")
        elif _under(key, MUST_MATCH) and not _same(key, ran.get(key), now.get(key)):
            contradictions.append((key, ran.get(key), now.get(key)))
    # This machine's own settings stay where the run's group has them too: a run of another kind of data (GRPO's
    # problems) has no SFT row settings to take them into.
    same_kind = ran.get(f"{name}._target_") == now.get(f"{name}._target_")
    kept = {
        key: value
        for key, value in raw.items()
        if _under(key, given) or (_under(key, own) and (same_kind or key in ran))
    }
    with open_dict(cfg):
        cfg[name] = run_value
        for key, value in kept.items():  # unresolved: an interpolation follows what it points at
            OmegaConf.update(cfg, key, value, force_add=True)
        for key in set(hidden) - set(kept):  # not in this command's config either: no value, not the mask
            OmegaConf.update(cfg, key, now.get(key), force_add=True)
    return contradictions, taken


def _contradiction_error(source: str, contradictions: list[tuple], given: list[str]) -> ConfigError:
    """One line: the keys typed on the command line first, then those a group (``model=...``) set."""
    contradictions.sort(key=lambda c: c[0] not in given)
    shown = [f"{key}: the run's {show(ran)}, given {show(now)}" for key, ran, now in contradictions[:MAX_SHOWN]]
    if len(contradictions) > MAX_SHOWN:
        shown.append(f"{len(contradictions) - MAX_SHOWN} more")
    culprits = sorted({g for key, _, _ in contradictions for g in given if _under(key, [g])})
    return ConfigError(
        f"the command line contradicts the run that trained {source} ({'; '.join(shown)}); leave out "
        f"{', '.join(culprits)}: eval.py takes them from {Path(source) / RECORD_FILE}."
    )


def take_run_settings(cfg: DictConfig, overrides: Sequence[str]) -> RunRecord | None:
    """Fill ``cfg`` (in place) with the settings of the run that trained its first recorded adapter.

    ``overrides`` are the command line's (``HydraConfig.get().overrides.task``). Returns the record used,
    or None where no adapter has one (``cfg`` is then left as composed).
    """
    records = run_records(find_adapters(cfg.get("adapter_path"), cfg.get("adapters"), cfg.get("sweep_dir")))
    if not records:
        return None
    check_runs_agree(records, held_out=scores_held_out(cfg))
    source, record = next(iter(records.items()))
    given = given_keys(overrides)
    contradictions, taken = [], []
    for name in TAKEN:  # in order: seed and max_seq_length before the groups that interpolate them
        if name in record.config:
            found, changed = _take(cfg, name, record.config[name], given)
            contradictions += found
            taken += changed
    if contradictions:
        raise _contradiction_error(source, contradictions, given)
    log.info("settings of the run that trained %s: %s", source, ", ".join(taken) or "as composed")
    return record


def check_held_out(val_examples: Any, records: dict[str, RunRecord]) -> None:
    """The validation rows must be those each adapter's run held out (same count, same digest)."""
    now = split_fingerprint(val_examples)
    for path, record in records.items():
        ran = record.data_split.get("val")
        if ran is None:
            continue
        if ran != now:
            raise ConfigError(
                f"the validation rows differ from those the run of {path} held out (the run: {ran['rows']} rows, "
                f"digest {ran['digest']}; now: {now['rows']} rows, digest {now['digest']}): the data file, the "
                "tokenizer or the chat format changed since training, so its held-out loss can't be measured."
            )
        log.info("validation rows: the %d rows the run of %s held out (digest %s)", now["rows"], path, now["digest"])


def check_prompt(chat_format: R1ChatFormat, records: dict[str, RunRecord]) -> None:
    """Warn where the prompt evaluation builds differs from the one an adapter was trained on."""
    prompt = chat_format.generation_prompt(QUESTION)
    for path, record in records.items():
        trained = record.chat_format.get("generation_prompt")
        if trained is not None and trained != prompt:
            log.warning(
                "%s was trained on prompts %r, evaluated with %r (benchmark.instruction, or the chat format's "
                "code, changed): its scores measure another prompt",
                path,
                trained,
                prompt,
            )
