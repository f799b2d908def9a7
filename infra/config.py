"""The one typed, strict ReelForge config: YAML sections validated by pydantic (`extra="forbid"`).

Defaults live only in these classes. Unknown keys and wrong types fail at load with the dotted key
and the file named; `--set section.key=value` overrides go through the same validation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Section(BaseModel):
    # strict: a string where a number belongs is an error, not a silent coercion
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class CurateConfig(_Section):
    extensions: list[str] = [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg",
                             ".ts", ".flv", ".wmv", ".3gp"]
    partition_size: int = Field(16, ge=1, description="videos per output partition (unit of resume)")
    decode_timeout_s: float = Field(600.0, gt=0, description="per-video limit for probe and split")
    split_method: Literal["content", "adaptive", "threshold", "transnetv2"] = "content"
    content_threshold: float = 27.0
    adaptive_threshold: float = 3.0
    fade_threshold: float = 12.0
    transnet_threshold: float = 0.5
    min_scene_len: int = Field(15, ge=1, description="frames")
    downscale: int | Literal["auto"] = "auto"
    min_clip_s: float = Field(0.5, ge=0)
    max_clip_s: float = Field(10.0, gt=0)
    trim_frames: int = Field(0, ge=0, description="frames dropped at each cut edge")
    probe_cpus: float = Field(1.0, gt=0)
    split_cpus: float = Field(1.0, gt=0)
    concurrency: int | None = Field(None, ge=1, description="max parallel tasks per stage")


class CaptionConfig(_Section):
    model: str = "tiny-random"
    prompt: str | None = None
    max_new_tokens: int = Field(48, ge=1)
    num_frames: int = Field(6, ge=1)
    frame_size: int = Field(224, ge=8)
    batch_size: int = Field(4, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = Field(0.0, ge=0)
    prep_cpus: float = Field(1.0, gt=0)
    concurrency: int = Field(1, ge=1)
    do_sample: bool = False
    seed: int = 0
    score_suffix: list[str] = []
    clip_model: str | None = None


class PrecomputeConfig(_Section):
    vae: str = "tiny"
    text_encoder: str = "tiny"
    latent_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    resolutions: list[int] = [64]
    frame_counts: list[int] = [17]
    aspect_ratios: list[str] = ["1:1", "4:3", "16:9"]
    keep_prob: dict[str, float] = {}
    shard_rows: int = Field(256, ge=1)
    shard_bytes: int = Field(256 * 2**20, ge=1)
    batch_size: int = Field(4, ge=1)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int = Field(1, ge=1)


class TrainConfig(_Section):
    model: str = "VDiT-T/2"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(8, ge=1)
    token_budget: int | None = Field(None, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, ge=0, le=1)
    caption_dropout: float = Field(0.1, ge=0, le=1)
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    storage_path: str | None = None


class TuneConfig(_Section):
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    scheduler: str = "asha"
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    space: dict[str, dict[str, Any]] = {}


class SampleConfig(_Section):
    steps: int = Field(30, ge=1)
    cfg_scale: float = Field(5.0, ge=0)
    num_frames: int = Field(17, ge=1)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    fps: int = Field(8, ge=1)
    seed: int = 0


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


class ReelForgeConfig(_Section):
    curate: CurateConfig = CurateConfig()
    caption: CaptionConfig = CaptionConfig()
    precompute: PrecomputeConfig = PrecomputeConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    sample: SampleConfig = SampleConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none): what decides if outputs can be reused."""
        d = self.to_dict()
        picked = {k: d[k] for k in (sections or d)}
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
            text = Path(path).read_text()
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
