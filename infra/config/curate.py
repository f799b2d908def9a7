"""The curate section: measures, filters, dedup and materialize of `reelforge curate`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Resources, _Section


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
    allow_random_weights: bool = Field(False, description="run open_clip without pretrained weights (tests)")
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
    max_nsfw: float | None = 0.5  # drop_reason "unsafe"; scores come from the `safety` section's measure


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
    image_extensions: list[str] = [".jpg", ".jpeg", ".png", ".webp"]  # 1-frame clips, media_type "image"
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
    # Ray custom resources every curate stage asks for (probe, split, frames, measures, materialize),
    # e.g. {cpu_node: 0.01}: where the job runs, not what it writes (not in the fingerprint)
    resources: Resources = {}
    measures: MeasuresConfig = MeasuresConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    materialize: MaterializeConfig = MaterializeConfig()
    report: bool = True  # write DST/report/ at the end of the job

    @model_validator(mode="after")
    def _readable_images(self) -> CurateConfig:
        # the formats infra.video decodes as stills (OpenCV, no extra package)
        unknown = sorted({e.lower() for e in self.image_extensions} - {".jpg", ".jpeg", ".png", ".webp", ".bmp"})
        if unknown:
            raise ValueError(f"image_extensions {unknown}: images are read as .jpg, .jpeg, .png, .webp or .bmp")
        return self
