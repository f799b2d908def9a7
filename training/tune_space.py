"""`tune.space` as Ray Tune domains, and a trial's sampled values applied to the config (validated)."""

from __future__ import annotations

import json
from typing import Any

from infra.config import ConfigError, ReelForgeConfig, _apply_override, _format_errors, space_key


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`tune.space` (validated by TuneConfig) as Ray Tune domains, keyed by full dotted config keys."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        if kind == "loguniform":
            out[space_key(key)] = tune.loguniform(*args)
        elif kind == "uniform":
            out[space_key(key)] = tune.uniform(*args)
        elif kind == "quniform":
            out[space_key(key)] = tune.quniform(*args)
        elif kind == "randint":  # both ends included, as a user reads [low, high]
            out[space_key(key)] = tune.randint(args[0], args[1] + 1)
        elif kind == "lograndint":
            out[space_key(key)] = tune.lograndint(args[0], args[1] + 1)
        elif kind == "choice":
            out[space_key(key)] = tune.choice(list(args))
        elif kind == "grid":
            out[space_key(key)] = tune.grid_search(list(args))
        else:  # TuneConfig rejects these at load
            raise ValueError(f"tune.space.{key}: unknown distribution {kind!r}")
    return out


def plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the samplers


def apply_trial(base: ReelForgeConfig, params: dict[str, Any]) -> ReelForgeConfig:
    """The base config with a trial's values (dotted keys) applied and validated."""
    from pydantic import ValidationError

    data = base.to_dict()
    for key, value in params.items():
        _apply_override(data, key.split("."), plain(value), f"{key}={value}")
    try:
        return ReelForgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "tune trial " + json.dumps(params, default=str))) from None


def categorical_values(space: dict) -> list[tuple[str, Any]]:
    return [(space_key(k), v) for k, spec in space.items() for kind, args in spec.items()
            if kind in ("choice", "grid") for v in args]


def check_space(cfg: ReelForgeConfig) -> None:
    """Every choice/grid value must make a valid config: fail before any trial starts, naming the key."""
    for key, value in categorical_values(cfg.tune.space):
        apply_trial(cfg, {key: value})
