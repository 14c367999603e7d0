"""Errors raised by the shared core. Each names the file or setting at fault."""


class StethoError(Exception):
    """Base class for every error the shared core raises on purpose."""


class AudioError(StethoError, ValueError):
    """An audio file or buffer that cannot be used (unreadable, empty, truncated, NaN/Inf...)."""


class ConfigError(StethoError, ValueError):
    """A configuration or model card that is malformed, inconsistent or from an unknown version."""
