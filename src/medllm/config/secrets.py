"""What counts as a secret, and redacting it from everything a run writes or logs.

A secret is the value of a secret-looking key (``*_key``, ``*_token``, ``*secret*``, ``*password*``...),
a string in a known token format (``hf_...``, ``sk-...``, a password inside a URL), the value of a
secret-looking environment variable (``WANDB_API_KEY``, ``HF_TOKEN``...), or a value this run was told
is secret with :func:`remember_secrets` (the command line's secret overrides: their values show up
elsewhere too, e.g. in Hydra's ``override_dirname``). Each becomes ``<redacted>``.

Imports stay light (no torch, transformers or peft): the Hydra callback that writes ``.hydra/`` uses
this before train.py picks the backend.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

REDACTED = "<redacted>"
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "pwd", "passphrase", "credential", "credentials"}
_SECRET_WORDS |= {"apikey", "auth", "bearer", "cookie"}
_SECRET_LAST_WORDS = {"key", "token"}  # api_key, hf_token; not num_key_value_heads, max_new_tokens
_NOT_SECRET = {f"{t}_token" for t in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}  # tokenizer settings
_NOT_SECRET |= {"pwd", "oldpwd"}  # the shell's working directories, not a password
_SECRET_VALUE = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys
    r"|\bhf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,})"  # GitHub
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")  # https://user:password@host
# Shorter values are redacted where they sit under a secret key, but not searched for in free text,
# where "abc" would also match inside ordinary words.
_MIN_TEXT_SECRET = 4
_remembered: set[str] = set()


def is_secret_key(name: Any) -> bool:
    """Whether a config key (or an environment variable's name) names a secret."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()
    if name in _NOT_SECRET:
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", name) if w]
    return bool(words) and (words[-1] in _SECRET_LAST_WORDS or any(w in _SECRET_WORDS for w in words))


def _is_secret_override(arg: str) -> bool:
    key, sep, _ = arg.partition("=")
    return bool(sep) and is_secret_key(key.lstrip("+~-").rsplit(".", 1)[-1])


def remember_secrets(overrides: list[str]) -> None:
    """Treat the values of these command-line overrides' secret keys as secrets wherever they appear."""
    for arg in overrides:
        value = arg.partition("=")[2].strip("'\"")
        if _is_secret_override(arg) and len(value) >= _MIN_TEXT_SECRET:
            _remembered.add(value)


def known_secrets() -> list[str]:
    """Secret values to search for in text: secret environment variables' and remembered ones, longest first."""
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= 8} | _remembered
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for secret in known_secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    return _SECRET_VALUE.sub(REDACTED, text)


def redact_secrets(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a config (a container) with the values of secret-looking keys and secret-looking strings
    replaced by ``<redacted>``; empty values (None, "") stay as they are."""
    secrets = known_secrets() if secrets is None else secrets
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(k) and v not in (None, "") else redact_secrets(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v, secrets) for v in value)
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with secret overrides (``+data.hf_token=...``) and secret-looking values redacted."""
    secrets = known_secrets()
    hidden = [f"{arg.partition('=')[0]}={REDACTED}" if _is_secret_override(arg) else arg for arg in argv]
    return [redact_text(arg, secrets) for arg in hidden]


def _redacting_factory(make_record):
    def make(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it when it is emitted
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    make.redacts_secrets = True
    return make


def redact_log_records() -> None:
    """Redact every log record's message as it is made, whichever handler (console, train.log) writes it."""
    make_record = logging.getLogRecordFactory()
    if not getattr(make_record, "redacts_secrets", False):
        logging.setLogRecordFactory(_redacting_factory(make_record))
