"""What every config section shares: the error type and the strict pydantic base."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Section(BaseModel):
    # strict: a string where a number belongs is an error, not a silent coercion
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


# Ray custom resources a stage asks for, e.g. {"cpu_node": 0.01}: a node label in practice (a small
# fraction never limits how many tasks share a node). Where the job runs, not what it writes.
Resources = dict[str, Annotated[float, Field(gt=0)]]
