"""The tune section: `reelforge tune`, its search space checked against the config's own keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from .base import _Section


# tune.space distributions and how many arguments each takes (None: a list of any length >= 1)
SPACE_DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "quniform": 3, "randint": 2, "lograndint": 2,
                       "choice": None, "grid": None}


def space_key(key: str) -> str:
    """A tune.space key as a full dotted config key: a bare name means the train section."""
    return key if "." in key else f"train.{key}"


def _field_at(key: str):
    """The pydantic field a dotted config key names, or a ValueError that says which part is wrong."""
    from pydantic.fields import FieldInfo

    from . import ReelForgeConfig  # here, not at the top: the package imports this module to build it

    model: Any = ReelForgeConfig
    parts = key.split(".")
    field: FieldInfo | None = None
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            raise ValueError(f"tune.space: '{key}' is not a config key ('{'.'.join(parts[: i + 1])}' is unknown)")
        field = fields[part]
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        raise ValueError(f"tune.space: '{key}' is a section, not a value")
    return field


class TuneConfig(_Section):
    """tune: `reelforge tune` (training/tune.py): Ray Tune over the train job's TorchTrainer."""

    num_samples: int = Field(4, ge=1, description="samples of the space (grid points are each run num_samples times)")
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: Literal["asha", "hyperband", "median", "fifo"] = "asha"
    searcher: Literal["random", "optuna", "hyperopt"] = "random"  # random: Tune's BasicVariantGenerator
    metric: str = "loss"  # any key the train loop reports (loss, grad_norm, samples_per_s, ...)
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(20, ge=1, description="steps a trial runs before ASHA/median may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA/HyperBand: keep 1/this of the trials per rung")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial (each train run has its own)")
    storage_path: str | None = None  # experiment directory when --output is not given (local or s3://)
    # dotted config keys (a bare name means train.NAME) -> one distribution, e.g.
    # train.lr: {loguniform: [1.0e-4, 3.0e-3]}, train.model: {choice: [VDiT-T/2, VDiT-S/2]}
    space: dict[str, dict[str, Any]] = {}

    def space_keys(self) -> list[str]:
        return [space_key(k) for k in self.space]

    @model_validator(mode="before")
    @classmethod
    def _flatten_space(cls, data: Any) -> Any:
        """`--set tune.space.train.lr=...` nests by section: flatten to dotted keys."""
        if not isinstance(data, dict) or not isinstance(data.get("space"), dict):
            return data

        def flat(node: dict, prefix: str) -> dict:
            out = {}
            for k, v in node.items():
                key = f"{prefix}{k}"
                is_spec = isinstance(v, dict) and len(v) == 1 and next(iter(v)) in SPACE_DISTRIBUTIONS
                out.update(flat(v, key + ".") if isinstance(v, dict) and v and not is_spec else {key: v})
            return out

        return {**data, "space": flat(data["space"], "")}

    @model_validator(mode="after")
    def _check_space(self) -> TuneConfig:
        from pydantic import TypeAdapter

        for key, spec in self.space.items():
            field = _field_at(space_key(key))
            if len(spec) != 1 or next(iter(spec)) not in SPACE_DISTRIBUTIONS:
                raise ValueError(f"tune.space.{key}: give one of {sorted(SPACE_DISTRIBUTIONS)}, got {sorted(spec)}")
            (kind, args), = spec.items()
            arity = SPACE_DISTRIBUTIONS[kind]
            if not isinstance(args, list) or (arity and len(args) != arity) or not args:
                want = f"{arity} numbers" if arity else "a non-empty list"
                raise ValueError(f"tune.space.{key}.{kind}: expected {want}, got {args!r}")
            if arity:
                if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                    raise ValueError(f"tune.space.{key}.{kind}: bounds must be numbers, got {args!r}")
                if args[0] >= args[1] or (kind.startswith("log") and args[0] <= 0):
                    raise ValueError(f"tune.space.{key}.{kind}: need 0 < low < high (log) or low < high, got {args!r}")
                if kind in ("randint", "lograndint") and not all(isinstance(a, int) for a in args[:2]):
                    raise ValueError(f"tune.space.{key}.{kind}: bounds must be integers, got {args!r}")
                sample = args[0] if kind in ("randint", "lograndint") else float(args[0])
            else:
                sample = None
            adapter = TypeAdapter(field.annotation)
            for value in args if sample is None else [sample]:
                try:
                    adapter.validate_python(value, strict=True)
                except ValidationError:
                    hint = " (an integer key: use randint/lograndint or choice)" if sample is not None else ""
                    raise ValueError(f"tune.space.{key}: {value!r} is not a valid value of {space_key(key)}"
                                     f"{hint}") from None
        return self
