"""Helpers the tests share: composed configs, the entry points run as a user runs them, tiny adapters, runs."""
