"""What every config section shares: the error type and the strict pydantic base."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Section(BaseModel):
    # strict: a string where a number belongs is an error, not a silent coercion
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
