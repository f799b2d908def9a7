"""The one typed, strict ReelForge config: YAML sections validated by pydantic (`extra="forbid"`).

Defaults live only in these classes. Unknown keys and wrong types fail at load with the dotted key
and the file named; `--set section.key=value` overrides go through the same validation.

Each job's section lives in its own module (curate, caption, world, precompute, train + sample + eval, tune, curation); this
module holds the small shared sections, the whole `ReelForgeConfig`, loading, and re-exports them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from .base import ConfigError, _Section
from .caption import CaptionConfig, CaptionTrainConfig
from .curate import CurateConfig, DedupConfig, FiltersConfig, MaterializeConfig, MeasuresConfig
from .curation import BalanceConfig, DedupJobConfig, SafetyConfig, SelectionConfig
from .precompute import PrecomputeConfig
from .train import ConditioningConfig, EvalConfig, SampleConfig, TrainConfig, VaeTrainConfig, ZeroCommConfig
from .tune import SPACE_DISTRIBUTIONS, TuneConfig, _field_at, space_key
from .world import WorldConfig

__all__ = [
    "ConfigError", "_Section", "MeasuresConfig", "FiltersConfig", "DedupConfig", "MaterializeConfig",
    "CurateConfig", "CaptionConfig", "CaptionTrainConfig", "WorldConfig", "PrecomputeConfig", "VaeTrainConfig",
    "TrainConfig", "ZeroCommConfig", "ConditioningConfig", "SampleConfig", "EvalConfig", "SPACE_DISTRIBUTIONS", "space_key", "_field_at", "TuneConfig",
    "RayConfig", "StorageConfig", "ReelForgeConfig", "SafetyConfig", "DedupJobConfig", "BalanceConfig",
    "SelectionConfig", "_format_errors", "parse_override", "_apply_override", "load_config",
]


class RayConfig(_Section):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    include_dashboard: bool = False
    object_store_memory: int | None = None


class StorageConfig(_Section):
    s3_endpoint: str | None = None
    region: str | None = None
    retries: int = Field(5, ge=1)
    backoff_s: float = Field(0.2, ge=0)
    # every node mounts the same filesystem at the same path (NFS, FSx, ...): local paths are then
    # allowed on a multi-node cluster (infra.runtime.require_shared_paths)
    shared_filesystem: bool = False


class ReelForgeConfig(_Section):
    curate: CurateConfig = CurateConfig()
    caption: CaptionConfig = CaptionConfig()
    precompute: PrecomputeConfig = PrecomputeConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()
    caption_train: CaptionTrainConfig = CaptionTrainConfig()
    world: WorldConfig = WorldConfig()
    safety: SafetyConfig = SafetyConfig()
    dedup: DedupJobConfig = DedupJobConfig()
    balance: BalanceConfig = BalanceConfig()
    selection: SelectionConfig = SelectionConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str, exclude: tuple[str, ...] = ()) -> str:
        """Short hash of the named sections (all when none): what decides if outputs can be reused.

        `exclude` drops dotted keys (e.g. "curate.filters") that are re-applied without recomputing.
        """
        d = self.to_dict()
        picked = {k: d[k] for k in (sections or d)}
        for key in exclude:
            *parents, leaf = key.split(".")
            node = picked
            for p in parents:
                node = node.get(p, {})
            node.pop(leaf, None)
        return hashlib.sha1(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- loading


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: key must be section.key (e.g. train.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ReelForgeConfig:
    """Load a YAML config (or the defaults when path is None) and apply `--set` overrides."""
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        try:
            # "env:NAME" reads the YAML from an environment variable: how `reelforge submit`
            # ships the resolved config to a remote cluster without touching its files.
            text = os.environ[str(path)[4:]] if str(path).startswith("env:") else Path(path).read_text()
        except KeyError:
            raise ConfigError(f"{source}: environment variable {str(path)[4:]} is not set") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded or {}
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(data, parts, value, text)
    try:
        return ReelForgeConfig.model_validate(data)
    except ValidationError as err:
        where = source + (" with --set " + ", ".join(overrides) if overrides else "")
        raise ConfigError(_format_errors(err, where)) from None
