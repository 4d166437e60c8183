"""Errors of the user's input (config, data, model choice), reported as one clear message, no traceback."""


class MedllmError(Exception):
    """Something the user can fix; the message says what and how."""


class ConfigError(MedllmError, ValueError):
    """A config value that can't work; the message names the key."""
