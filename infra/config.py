"""The one typed, strict ReelForge config: YAML sections validated by pydantic (`extra="forbid"`).

Defaults live only in these classes. Unknown keys and wrong types fail at load with the dotted key
and the file named; `--set section.key=value` overrides go through the same validation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Section(BaseModel):
    # strict: a string where a number belongs is an error, not a silent coercion
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class MeasuresConfig(_Section):
    """curate.measures: what is computed per clip (changing it recomputes partitions)."""

    frames_per_clip: int = Field(4, ge=1, description="frames sampled per clip for every measure")
    short_side: int = Field(160, ge=16, description="measure downscale (short side, never upscaled)")
    motion: bool = True  # Farneback optical flow + static flag
    quality: bool = True  # sharpness, brightness, black/washed-out ratios
    text: bool = True  # text_ratio from the rapidocr PP-OCR detection model
    embedding: bool = True  # phash always; an open_clip embedding when clip_model is set
    static_motion: float = Field(0.05, ge=0, description="motion below which a clip is static")
    black_luma: float = Field(20.0, ge=0, le=255, description="a frame darker than this is black")
    washed_luma: float = Field(235.0, ge=0, le=255, description="a frame brighter than this is washed out")
    ocr_side: int = Field(320, ge=32, description="long side the text detector sees")
    clip_model: str | None = None  # open_clip name or a model-config .json path
    clip_pretrained: str | None = None  # open_clip tag or local checkpoint; None = random init
    aesthetic_weights: str | None = None  # linear/MLP head (.safetensors or torch file); None = off
    frames_cpus: float = Field(1.0, gt=0)
    cheap_cpus: float = Field(1.0, gt=0, description="motion + quality + phash task")
    ocr_cpus: float = Field(1.0, gt=0)
    ocr_gpus: float = Field(0.0, ge=0)
    ocr_concurrency: int = Field(1, ge=1, description="OCR actors")
    clip_cpus: float = Field(1.0, gt=0)
    clip_gpus: float = Field(0.0, ge=0)
    clip_concurrency: int = Field(1, ge=1, description="open_clip actors")

    @model_validator(mode="after")
    def _aesthetic_needs_clip(self) -> MeasuresConfig:
        if self.aesthetic_weights and not self.clip_model:
            raise ValueError("aesthetic_weights needs clip_model (the image tower the head was trained on)")
        return self


class FiltersConfig(_Section):
    """curate.filters: thresholds (None = off); re-applied by every job end and `curate --refilter`."""

    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_short_side: int | None = None  # resolution, px
    min_aspect: float | None = None  # width / height
    max_aspect: float | None = None
    min_fps: float | None = None
    max_fps: float | None = None
    min_motion: float | None = None
    max_motion: float | None = None
    min_sharpness: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    max_black_ratio: float | None = 0.5
    max_washed_ratio: float | None = 0.5
    max_text_ratio: float | None = None
    min_aesthetic: float | None = None


class DedupConfig(_Section):
    """curate.dedup: near-duplicates over the whole clips table (LSH buckets, then exact checks)."""

    enabled: bool = True
    method: Literal["auto", "embedding", "phash"] = "auto"  # auto: embedding when every clip has one
    min_cosine: float = Field(0.95, gt=0, le=1)
    max_hamming: int = Field(4, ge=0, le=32, description="bits of 64; bands = max_hamming + 1")
    lsh_bands: int = Field(16, ge=1, description="embedding: random-hyperplane bands")
    lsh_rows: int = Field(12, ge=1, le=62, description="embedding: hyperplanes per band")
    seed: int = 0


class MaterializeConfig(_Section):
    """curate.materialize: write each kept clip as its own H.264 mp4 (off by default)."""

    enabled: bool = False
    fps: float | None = Field(None, gt=0, description="None = the source rate")
    short_side: int | None = Field(None, ge=16, description="None = source size")
    max_frames: int | None = Field(None, ge=1)
    crf: int = Field(23, ge=0, le=51)
    cpus: float = Field(1.0, gt=0)


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
    measures: MeasuresConfig = MeasuresConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    materialize: MaterializeConfig = MaterializeConfig()
    report: bool = True  # write DST/report/ at the end of the job


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
    # Existing captions (captioning/sidecar.py): a sidecar next to each video (VIDEO.json per scene,
    # VIDEO.txt per file), a manifest file (Parquet/CSV: uri, caption), and/or the model above.
    source: Literal["model", "sidecar", "manifest", "sidecar+model"] = "model"
    manifest: str | None = None  # Parquet or CSV with columns uri (or clip_id) and caption

    @model_validator(mode="after")
    def _manifest_given(self) -> CaptionConfig:
        if self.source == "manifest" and not self.manifest:
            raise ValueError("source 'manifest' needs caption.manifest (a Parquet/CSV file: uri, caption)")
        return self


class CaptionTrainConfig(_Section):
    """caption_train: `reelforge train-captioner`, a small GIT trained on clips with existing captions."""

    init: str | None = None  # a save_pretrained GIT dir to fine-tune; None = a new one from the sizes below
    hidden_size: int = Field(64, ge=8, description="text decoder width (word embeddings tied to the output)")
    layers: int = Field(2, ge=1, description="text decoder layers")
    heads: int = Field(4, ge=1, description="attention heads (decoder and vision)")
    vision_hidden_size: int = Field(64, ge=8)
    vision_layers: int = Field(1, ge=1)
    image_size: int = Field(16, ge=8, description="frames are resized to this square")
    patch_size: int = Field(4, ge=1, description="small patches: a shape is a token or two, easy to localise")
    num_frames: int = Field(4, ge=1)
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(16, ge=1, description="per worker")
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_clips: int | None = Field(None, ge=1, description="train on at most this many captioned clips")
    flips: bool = True  # add mirrored copies of each clip, swapping left/right and up/down in its caption
    # At BERT's 0.02 the decoder's attention adds ~0.3% of image signal to a text token at step 0 and
    # the model learns to ignore the frames; at 0.3 it is ~50%, and direction is learned.
    init_std: float = Field(0.3, gt=0, description="GitConfig.initializer_range (BERT: 0.02)")
    dropout: float = Field(0.0, ge=0, lt=1, description="text decoder dropout (GIT: 0.1)")
    frame_embedding_std: float = Field(1.0, ge=0, description="init of GIT's per-frame embeddings (GIT: 0)")
    position_embedding_std: float = Field(0.3, ge=0, description="init of the ViT position embeddings (CLIP: 0.02)")
    num_workers: int = Field(2, ge=0, description="Ray Train workers (DDP, gloo on CPU); 0 = in this process")
    use_gpu: bool = False
    log_every: int = Field(50, ge=1)
    seed: int = 0


class WorldConfig(_Section):
    """world: the synthetic video world of `reelforge demo-data` (infra/world.py) and its eval split."""

    seed: int = 0
    videos: int = Field(150, ge=1, description="training files (DIR/train/): ~440 scenes, what train-captioner needs")
    eval_videos: int = Field(30, ge=0, description="eval files (DIR/eval/): only held-out combos when holdout is set")
    scenes: list[int] = [2, 4]  # scenes per file: min, max
    frames: list[int] = [16, 32]  # frames per scene: min, max
    sizes: list[str] = ["64x64"]  # WxH, one picked per file
    fps: int = Field(8, ge=1)
    colors: dict[str, list[int]] = {  # the palette (RGB) that shape colours and backgrounds name
        "red": [220, 40, 40], "green": [40, 180, 60], "blue": [40, 80, 220], "yellow": [235, 215, 50],
        # black and white stay inside curate's black_luma/washed_luma, so default filters keep them
        "black": [40, 40, 40], "gray": [128, 128, 128], "white": [220, 220, 220]}
    shape_colors: list[str] = ["red", "green", "blue", "yellow"]
    backgrounds: list[str] = ["black", "gray", "white"]
    shapes: list[Literal["square", "circle", "triangle"]] = ["square", "circle", "triangle"]
    directions: list[Literal["left", "right", "up", "down"]] = ["left", "right", "up", "down"]
    textured: float = Field(0.5, ge=0, le=1, description="chance a background has stripes and grain")
    two_shapes: float = Field(0.0, ge=0, le=1, description="chance a scene has a second moving shape")
    shape_size: float = Field(0.25, gt=0, le=0.5, description="shape side / short side of the frame")
    travel: list[float] = [0.5, 0.9]  # fraction of the free span a shape crosses in its scene (its speed)
    holdout: list[str] = []  # "color:direction" combos never in train files, e.g. ["red:left"]
    sidecar: Literal["json", "txt", "both"] = "json"  # txt: one caption per file, single-scene files only
    crf: int = Field(18, ge=0, le=51)
    eval_prompts: int = Field(8, ge=1, description="prompts `reelforge eval` samples per run")

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        for key in ("scenes", "frames", "travel"):
            v = getattr(self, key)
            if len(v) != 2 or not 0 < v[0] <= v[1]:
                raise ValueError(f"{key} must be [min, max] with 0 < min <= max, got {v}")
        if self.frames[0] < 2 or self.travel[1] > 1:
            raise ValueError("frames min must be >= 2 and travel max <= 1")
        bad = [c for c in self.colors.values() if len(c) != 3 or not all(0 <= x <= 255 for x in c)]
        unknown = sorted(set(self.shape_colors + self.backgrounds) - set(self.colors))
        if bad or unknown:
            raise ValueError(f"colors must map names to [r, g, b] in 0..255 (bad: {bad}); unknown names: {unknown}")
        for size in self.sizes:
            w, _, h = size.partition("x")
            if not (w.isdigit() and h.isdigit() and int(w) >= 16 and int(h) >= 16):
                raise ValueError(f"sizes entries are WxH with both >= 16, got {size!r}")
        if self.scenes[1] > 1 and len(self.backgrounds) < 2:
            raise ValueError("hard cuts need >= 2 backgrounds (consecutive scenes differ in background)")
        for combo in self.holdout:
            color, _, direction = combo.partition(":")
            if color not in self.shape_colors or direction not in self.directions:
                raise ValueError(f"holdout entries are 'color:direction' (shape_colors, directions), got {combo!r}")
        if len(set(self.holdout)) >= len(self.shape_colors) * len(self.directions):
            raise ValueError("holdout leaves no combination to train on")
        if self.sidecar != "json" and self.scenes != [1, 1]:
            raise ValueError("sidecar 'txt'/'both' needs single-scene files (scenes: [1, 1])")
        return self


class PrecomputeConfig(_Section):
    vae: str = "tiny"
    text_encoder: str = "tiny"
    latent_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    resolutions: list[int] = [64]
    frame_counts: list[int] = [17]
    aspect_ratios: list[str] = ["1:1", "4:3", "16:9"]
    keep_prob: dict[str, float] = {}
    frame_stride: int = Field(1, ge=1, description="take every k-th source frame (lower fps, longer span)")
    batch_invariant: bool = Field(True, description="encode clip by clip so outputs never depend on batching "
                                  "(bit-equal resume); false batches the VAE for throughput")
    seed: int = 0  # for the per-bucket keep draws
    shard_rows: int = Field(256, ge=1)
    shard_bytes: int = Field(256 * 2**20, ge=1)
    batch_size: int = Field(4, ge=1)
    prep_cpus: float = Field(1.0, gt=0)
    prep_concurrency: int = Field(4, ge=1, description="max decode tasks at once")
    encode_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int = Field(1, ge=1, description="encoder actors")


class VaeTrainConfig(_Section):
    """train.vae: `reelforge train-vae` (single process, plain torch) on frames of kept clips."""

    preset: str = "tiny"  # VideoVAE preset, or a save_pretrained dir to continue from
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2, ge=1)
    num_frames: int = Field(9, ge=1, description="1 + k * the VAE's temporal compression")
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    kl_weight: float = Field(1e-6, ge=0)
    # l1 sticks at the background on small shapes over flat backgrounds (the median of a pixel that is
    # rarely the shape is the background); mse learns them (the synthetic world: configs/learn-shapes.yaml)
    recon_loss: Literal["l1", "mse"] = "l1"
    grad_clip: float = Field(1.0, gt=0)
    max_clips: int | None = Field(None, ge=1, description="decode at most this many clips")
    log_every: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class TrainConfig(_Section):
    """train: the DiT job (Ray Train + DeepSpeed ZeRO); see README "Training"."""

    model: str = "VDiT-T/2"
    # optimisation: AdamW, linear warmup then cosine from lr to min_lr at `steps`
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(0.0, ge=0, description="cosine floor")
    weight_decay: float = Field(0.0, ge=0)
    betas: list[float] = [0.9, 0.999]  # AdamW (beta1, beta2)
    warmup_steps: int = Field(100, ge=0)
    steps: int = Field(1000, ge=1, description="total optimizer steps (the LR schedule's length)")
    stop_at_step: int | None = Field(None, ge=1, description="end this run here (checkpointed); a re-run resumes")
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, ge=0, le=1, description="capped by (1+step)/(10+step) early on")
    caption_dropout: float = Field(0.1, ge=0, le=1)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # data: batches never mix buckets; sizes are per worker
    batch_size: int = Field(8, ge=1, description="rows per worker batch, any bucket")
    batch_sizes: dict[str, int] = {}  # per-bucket override, e.g. {"5x8x8": 16}
    token_budget: int | None = Field(None, ge=1, description="latent tokens per worker batch (wins over batch_size)")
    shuffle_buffer: int = Field(1024, ge=1, description="rows shuffled together before bucketing")
    cache_mb: int = Field(1024, ge=0, description="replay a worker's rows from memory after epoch 0 if they fit")
    # DeepSpeed ZeRO and Ray Train
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 only
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="leave CPUs free for Ray Data ingest")
    max_failures: int = Field(1, ge=0)
    # checkpoints, metrics, samples
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    peak_tflops: float = Field(989.0, gt=0, description="per-worker peak for MFU (H100 dense bf16: 989)")
    samples: bool = False  # rank 0 samples sample_prompts into CKPT/samples/ at each checkpoint
    sample_prompts: list[str] = ["a red square moves left", "a blue circle grows"]
    seed: int = 0
    storage_path: str | None = None  # run directory when --output is not given
    debug_dir: str | None = None  # per-rank pid files and batch traces (ops and fault tests)
    vae: VaeTrainConfig = VaeTrainConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        bad = [k for k, v in self.batch_sizes.items() if v < 1]
        if bad:
            raise ValueError(f"batch_sizes must be >= 1 (got {bad})")
        return self


# tune.space distributions and how many arguments each takes (None: a list of any length >= 1)
SPACE_DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "quniform": 3, "randint": 2, "lograndint": 2,
                       "choice": None, "grid": None}


def space_key(key: str) -> str:
    """A tune.space key as a full dotted config key: a bare name means the train section."""
    return key if "." in key else f"train.{key}"


def _field_at(key: str):
    """The pydantic field a dotted config key names, or a ValueError that says which part is wrong."""
    from pydantic.fields import FieldInfo

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
    caption_train: CaptionTrainConfig = CaptionTrainConfig()
    world: WorldConfig = WorldConfig()

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
