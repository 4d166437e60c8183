"""Fixtures of every test (tests/helpers/fixtures.py); the helpers the tests share live in tests/helpers."""

from tests.helpers.fixtures import _isolated_cache, tokenizer  # noqa: F401  (pytest finds fixtures by name)
