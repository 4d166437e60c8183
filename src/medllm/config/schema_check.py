"""Check a composed config against its schema (``medllm.config.schema``): one one-line error per mistake.

OmegaConf does the typing: merging the config into the schema's structured config refuses unknown keys
and values of the wrong type. This module turns those errors into messages that name the key (with a
"did you mean" from difflib), then applies the schema's rules (ranges, choices). ``typed`` gives a group's
settings as its schema's dataclass, checked the same way, with the schema's defaults for what it leaves out.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from medllm.config.rules import Dispatch, did_you_mean, show
from medllm.errors import ConfigError

S = TypeVar("S")


def typed(values: Mapping[str, Any] | DictConfig, schema: type[S], prefix: str = "") -> S:
    """``values`` (a group's settings, e.g. the data module's keyword arguments) as ``schema``'s dataclass:
    checked as ``validate`` checks them, every key left out taking the schema's default. ``prefix`` names the
    group in messages (``data.``)."""
    plain = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values)
    _Checker(plain).node(plain, schema, prefix)
    base = OmegaConf.structured(schema)
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if field.name in plain and _dataclass_values(hints[field.name]) is not None:
            base[field.name] = {}  # a group of groups by name is the config's own: an entry deleted stays deleted
    return OmegaConf.to_object(OmegaConf.merge(base, plain))


def validate(cfg: DictConfig, schema: type, deleted: Sequence[str] = ()) -> None:
    """Raise ConfigError naming the first key of ``cfg`` that ``schema`` refuses (Hydra's own node left out).

    ``deleted``: the keys the command line deleted (``~key``). The schema fills a missing key with its
    default when it checks, but the program would not: ``~optimizer.lr`` would train at torch's own 1e-3,
    ``~model.lora.dropout`` fail with a traceback after loading. A declared key may not be deleted, unless
    its node is optional (``~logger``); what the schema does not declare may (``~callbacks.preemption``).
    """
    mine = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    raw = OmegaConf.to_container(mine, resolve=False)
    for key in deleted:
        if _declared(key.split("."), raw, schema):
            raise ConfigError(
                f"~{key} deletes a setting the run needs: without it a library's own default would be used, "
                f"or the run would fail later. Set {key}=<value> instead."
            )
    try:
        values = OmegaConf.to_container(mine, resolve=True)
    except OmegaConfBaseException as err:  # an interpolation that can't resolve
        raise ConfigError(f"{err.full_key}: {err.msg}") from None
    _Checker(raw).node(values, schema, prefix="")


def _declared(parts: list[str], values: Any, schema: type) -> bool:
    """Whether the key ``parts`` (of the config ``values``) is one the schema declares and needs."""
    field = next((f for f in dataclasses.fields(schema) if f.name == parts[0]), None)
    if field is None:
        return False
    how, rest = field.metadata.get("dispatch"), parts[1:]
    value = values.get(parts[0]) if isinstance(values, dict) else None
    if not rest:
        return not (how is not None and how.optional)
    nested = _dataclass_in(typing.get_type_hints(schema)[field.name])
    if nested is not None:
        return _declared(rest, value, nested)
    if how is None or not isinstance(value, dict):
        return False
    if how.many if how.many is not None else how.key not in value:  # entries by name: ~callbacks.checkpoint
        value, rest = value.get(rest[0]), rest[1:]
        if not rest or not isinstance(value, dict):
            return False
    kind = value.get(how.key)
    return kind in how.schemas and _declared(rest, value, how.schemas[kind])


class _Checker:
    """Checks resolved values; names a value copied by interpolation (``data.seed: ${seed}``) by its source."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw

    def source(self, key: str) -> str:
        value = _lookup(self.raw, key)
        match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
        return self.source(match[1]) if match else key

    def node(self, values: Any, schema: type, prefix: str) -> None:
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), values)
        except ConfigKeyError as err:
            raise ConfigError(_unknown_key(prefix + err.full_key, err.object_type)) from None
        except ValidationError as err:
            key = prefix + err.full_key
            words = _type_words(key, err.object_type)
            raise ConfigError(f"{self.source(key)}={show(_lookup(values, err.full_key))} must be {words}.") from None
        self.rules(typed, schema, prefix)

    def rules(self, typed: DictConfig, schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for field in dataclasses.fields(schema):
            key = prefix + field.name
            if OmegaConf.is_missing(typed, field.name):
                continue  # ??? : a required value, named by the checks that need it
            value = typed[field.name]
            if value is None:
                continue
            named = _dataclass_values(hints[field.name])
            nested = _dataclass_in(hints[field.name])
            if named is not None:  # a group of such groups by name (stage.rewards)
                for name in value:
                    self.rules(value[name], named, f"{key}.{name}.")
            elif nested is not None:
                self.rules(value, nested, key + ".")
            elif "dispatch" in field.metadata:
                self.dispatch(OmegaConf.to_container(value), field.metadata["dispatch"], key)
            elif (rule := field.metadata.get("rule")) is not None:
                plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
                rule.check(self.source(key), plain)

    def dispatch(self, values: Any, how: Dispatch, key: str) -> None:
        many = how.many if how.many is not None else isinstance(values, dict) and how.key not in values
        nodes = values.items() if many else [(None, values)]
        for name, node in nodes:
            where = key if name is None else f"{key}.{name}"
            if not isinstance(node, dict):
                raise ConfigError(f"{where}={show(node)} must be a group of settings with {how.key}.")
            kind = node.get(how.key)
            if kind in how.schemas:
                self.node(node, how.schemas[kind], where + ".")
            elif how.strict:
                choices = tuple(how.schemas)
                hint = did_you_mean(kind, choices)
                raise ConfigError(f"{where}.{how.key}={show(kind)} must be one of {' | '.join(choices)}{hint or '.'}")


def _lookup(values: Any, key: str) -> Any:
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _unknown_key(full_key: str, object_type: type | None) -> str:
    parent, _, name = full_key.rpartition(".")
    known = [f.name for f in dataclasses.fields(object_type)] if dataclasses.is_dataclass(object_type) else []
    hint = did_you_mean(name, known, parent + "." if parent else "")
    public = [k for k in known if not k.startswith("_")]
    if not hint and known:
        hint = f"; {parent or 'the top level'} takes " + (", ".join(public) if public else "no settings")
    return f"unknown key {full_key}{hint if hint.endswith('?') else hint + '.'}"


def _type_words(full_key: str, object_type: type | None) -> str:
    name = full_key.rpartition(".")[2]
    hint = typing.get_type_hints(object_type).get(name) if dataclasses.is_dataclass(object_type) else None
    return _words(hint)


WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _words(hint: Any) -> str:
    """A type as words: Optional[int] -> "an integer or null"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        words = "a number" if set(args) == {int, float} else " or ".join(_words(a) for a in args)
        return words + (" or null" if len(args) < len(typing.get_args(hint)) else "")
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        return f"a list of {_words(item).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(hint):
        return "a group of settings"
    return WORDS.get(hint, "a value of another type")


def _dataclass_values(hint: Any) -> type | None:
    """The schema of each group in a group of groups by name: ``Reward`` in ``dict[str, Reward]``."""
    if typing.get_origin(hint) is dict:
        value = typing.get_args(hint)[1]
        return value if dataclasses.is_dataclass(value) else None
    return None


def _dataclass_in(hint: Any) -> type | None:
    """The schema of a nested group: ``Lora`` in ``Lora`` or ``Optional[Lora]``."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None
