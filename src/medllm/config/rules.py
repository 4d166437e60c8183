"""The schema's vocabulary: a key's default and the rule its value must follow.

    lr: float = setting(2.0e-4, above(0))
    dropout: float = setting(0.0, between(0, 1, high_open=True))
    source: str = setting("sample", one_of("sample", "hub", "local"))
    optimizer: Any = dispatch("_target_", {"torch.optim.AdamW": AdamW})

OmegaConf checks the types and refuses unknown keys; a rule says what a type can't (ranges, choices).
Light on purpose (no torch): configs are checked before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from medllm.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a value must be, in words ("a number > 0"), and the test of it. ``choices`` feeds "did you mean"."""

    expect: str
    ok: Callable[[Any], bool]
    choices: tuple = ()

    def check(self, key: str, value: Any) -> None:
        """ConfigError naming ``key`` (as the command line spells it) unless ``value`` follows the rule."""
        if not self.ok(value):
            raise ConfigError(f"{key}={show(value)} must be {self.expect}{did_you_mean(value, self.choices) or '.'}")


@dataclass(frozen=True)
class Listed:
    """``one_of`` over choices listed when a value is checked, not when the schema is defined: the modules
    of a package, where a new one is a new choice (``model.backend``)."""

    list_choices: Callable[[], tuple]

    def check(self, key: str, value: Any) -> None:
        one_of(*self.list_choices()).check(key, value)


@dataclass(frozen=True)
class Dispatch:
    """A node whose schema depends on one of its values, e.g. an optimizer on its ``_target_``.

    strict: a value without a schema is an error (a benchmark name); else it passes unchecked (a user's
    own class). many: the node is a dict of such nodes (callbacks by name); None: either, a node without
    ``key`` being a dict of them (``logger``: one logger, or several by name with ``logger=many``).
    optional: the node may be left out (``~logger``: no logger); other declared keys may not be deleted.
    """

    key: str
    schemas: dict[str, type]
    strict: bool = False
    many: bool | None = False
    optional: bool = False


def setting(
    default: Any = MISSING, rule: Rule | Listed | None = None, *, factory: Callable[[], Any] | None = None
) -> Any:
    """A schema field: its default (or ``factory`` for lists) and the rule its value must follow (None: any)."""
    metadata = {"rule": rule} if rule else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def dispatch(
    key: str, schemas: dict[str, type], *, strict: bool = False, many: bool | None = False, optional: bool = False
) -> Any:
    return dataclasses.field(default=None, metadata={"dispatch": Dispatch(key, schemas, strict, many, optional)})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _with_special(expect: str, ok: Callable[[Any], bool], special: dict[Any, str]) -> Rule:
    """``special``: values allowed outside the range, each with its meaning ({-1: "run max_epochs"})."""
    words = "".join(f", or {value} ({meaning})" for value, meaning in special.items())
    return Rule(expect + words, lambda v: one_of(*special).ok(v) or ok(v))


def above(bound: float, special: dict[Any, str] | None = None) -> Rule:
    return _with_special(f"a number > {bound}", lambda v: _number(v) and v > bound, special or {})


def at_least(bound: float, special: dict[Any, str] | None = None) -> Rule:
    return _with_special(f"a number >= {bound}", lambda v: _number(v) and v >= bound, special or {})


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return _number(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    return Rule(f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}", ok)


def one_of(*choices: Any) -> Rule:
    """Exact choices; True is not 1 here (``gradient_checkpointing: true | unsloth``)."""

    def ok(v: Any) -> bool:
        return any(v == c and type(v) is type(c) for c in choices)

    return Rule("one of " + " | ".join(dict.fromkeys(show(c) for c in choices)), ok, choices)


def fraction_or_count(*, min_count: int, zero_fraction: bool = False, whole_fraction: bool = True) -> Rule:
    """A float is a fraction (of rows, of an epoch), an int a count: 1.0 and 1 mean different things."""
    fraction = between(0, 1, low_open=not zero_fraction, high_open=not whole_fraction)

    def ok(v: Any) -> bool:
        return fraction.ok(v) if isinstance(v, float) else _number(v) and v >= min_count

    expect = f"a fraction {fraction.expect.removeprefix('a number ')} or a whole count >= {min_count}"
    if not whole_fraction:
        expect += f" (a float is a fraction: for {min_count} row(s) write {min_count}, not {float(min_count)})"
    return Rule(expect, ok)


def show(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def did_you_mean(value: Any, choices: Iterable[Any], prefix: str = "") -> str:
    """``"; did you mean <prefix><choice>?"`` for the choice closest to ``value``; "" when none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""
