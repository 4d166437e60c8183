"""A default is written once: where the schema, the YAML files and a class the config instantiates all say
what a key defaults to, they say the same thing."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import typing
from typing import Any

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from medllm.config import schema
from tests.helpers.configs import CONF, compose_train

ABSENT = object()


def defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: default}`` of a schema dataclass, nested groups flattened; dispatched groups left out."""
    hints = typing.get_type_hints(cls)
    found = {}
    for field in dataclasses.fields(cls):
        if "dispatch" in field.metadata or field.name.startswith("_"):
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        nested = next(
            (t for t in (hints[field.name], *typing.get_args(hints[field.name])) if dataclasses.is_dataclass(t)), None
        )
        if nested is not None:
            found |= defaults(nested, f"{prefix}{field.name}.")
        else:
            found[prefix + field.name] = default
    return found


def lookup(values: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(values, dict) or part not in values:
            return ABSENT
        values = values[part]
    return values


def literal(value: Any) -> bool:
    """Written in the YAML as it is: not an interpolation of another key (whose own default is compared), nor
    ``???`` (a value the command line must give: no default)."""
    return value is not ABSENT and "${" not in str(value) and value != "???"


def composed(config_name: str, *overrides: str) -> dict:
    cfg = compose_train(*overrides, "paths.output_dir=.", config_name=config_name)
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)


def disagreements(values: dict, cls: type, prefix: str = "") -> list[str]:
    return [
        f"{prefix}{key}: the YAML says {lookup(values, key)!r}, the schema {default!r}"
        for key, default in defaults(cls).items()
        if literal(lookup(values, key)) and lookup(values, key) != default
    ]


@pytest.mark.parametrize(("config_name", "cls"), [("train", schema.TrainConfig), ("eval", schema.EvalConfig)])
def test_the_schema_defaults_to_what_the_yaml_composes_by_default(config_name, cls):
    assert disagreements(composed(config_name), cls) == []


@pytest.mark.parametrize("name", sorted(schema.BENCHMARKS))
def test_each_benchmark_schema_defaults_to_its_yaml(name):
    bench = composed("eval", f"benchmark={name}")["benchmark"]
    assert bench.pop("name") == name  # the key the schema is chosen by
    assert disagreements(bench, schema.BENCHMARKS[name], "benchmark.") == []


GROUPS = {"model": schema.Model, "data": schema.Data}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_what_every_option_of_a_group_sets_alike_is_the_schemas_default(group):
    """A value all options of a group share is that group's default, whichever option is chosen: the schema must
    say the same (a key the schema defaults otherwise would tell a reader the wrong value)."""
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    values = [composed("train", f"{group}={option}")[group] for option in options]
    shared = {
        key: lookup(values[0], key)
        for key in defaults(GROUPS[group])
        if literal(lookup(values[0], key)) and all(lookup(v, key) == lookup(values[0], key) for v in values)
    }
    assert shared, group
    assert {k: v for k, v in shared.items() if v != defaults(GROUPS[group])[k]} == {}


def signature_defaults(target: str) -> dict[str, Any]:
    parameters = inspect.signature(get_method(target)).parameters.values()
    as_yaml = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in as_yaml.items()}


@pytest.mark.parametrize("table", ["OPTIMIZERS", "SCHEDULERS", "LOGGERS", "CALLBACKS"])
def test_a_group_instantiated_by_target_defaults_to_what_its_class_takes(table):
    """Where the config leaves a key of an optimizer, scheduler, logger or callback out, the class's own default
    applies: the schema, which fills it while checking, must say that default."""
    for target, cls in getattr(schema, table).items():
        if target.startswith("bitsandbytes") and importlib.util.find_spec("bitsandbytes") is None:
            continue  # the gpu extra
        taken = signature_defaults(target)
        mine = {k: v for k, v in defaults(cls).items() if k in taken}
        assert mine == {k: taken[k] for k in mine}, target
