"""The train and sample sections: the DiT job, its VAE (train.vae) and sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


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
    # A still is read as one frame repeated num_frames times: a clip where nothing moves. False trains on
    # the video clips only (a causal VAE encodes an image as a video's frame 0 alone, which every video has).
    images: bool = True
    log_every: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class ConditioningConfig(_Section):
    """train.conditioning: the chance that a batch item gets clean latent frames as conditioning
    (Open-Sora 1.2's mask strategies); the rest stay text-to-video (the default: all 0)."""

    i2v: float = Field(0.0, ge=0, le=1, description="the first frame (image-to-video)")
    extend: float = Field(0.0, ge=0, le=1, description="the first k frames (extension forwards)")
    backward: float = Field(0.0, ge=0, le=1, description="the last k frames (extension backwards)")
    connect: float = Field(0.0, ge=0, le=1, description="the first and last frames (connecting, interpolation)")
    extend_frames: int = Field(1, ge=1, description="k is drawn uniformly in 1..extend_frames (latent frames)")

    @model_validator(mode="after")
    def _at_most_one(self) -> ConditioningConfig:
        total = self.i2v + self.extend + self.backward + self.connect
        if total > 1 + 1e-9:
            raise ValueError(f"the probabilities add up to {total:g}, more than 1")
        return self

    def probs(self) -> dict[str, float]:
        return {"i2v": self.i2v, "extend": self.extend, "backward": self.backward, "connect": self.connect}

    @property
    def enabled(self) -> bool:
        return any(self.probs().values())


class ZeroCommConfig(_Section):
    """train.zero: how ZeRO 1/2 exchange gradients (DeepSpeed's zero_optimization keys). None keeps
    DeepSpeed's default."""

    reduce_scatter: bool | None = Field(None, description="False: one all-reduce of the averaged gradients")
    overlap_comm: bool | None = Field(None, description="reduce buckets while backward still runs")
    contiguous_gradients: bool | None = None
    bucket_mb: float | None = Field(None, gt=0, description="reduce and all-gather bucket size, MB of fp32")

    def ds_keys(self) -> dict:
        """The set keys as DeepSpeed zero_optimization entries (bucket sizes in elements)."""
        out = {k: v for k, v in self.model_dump(exclude={"bucket_mb"}).items() if v is not None}
        if self.bucket_mb is not None:
            out["reduce_bucket_size"] = out["allgather_bucket_size"] = int(self.bucket_mb * 2**20 / 4)
        return out


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
    time_shift: float | None = Field(None, gt=0, description="flow time shift of the noise levels trained on (> 1: "
                                     "noisier); None: by the latent token count, at least 1")
    conditioning: ConditioningConfig = ConditioningConfig()  # any p > 0 builds the DiT with frame_cond
    image_ratio: float | None = Field(None, ge=0, le=1, description="share of image (T=1) batches; None: as "
                                      "many as the data has")
    sequence_parallel: int = Field(1, ge=1, description="Ulysses: ranks that split one batch's tokens "
                                   "(divides num_workers and the model's heads)")
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # data: batches never mix buckets; sizes are per worker
    batch_size: int = Field(8, ge=1, description="rows per worker micro-batch, any bucket")
    batch_sizes: dict[str, int] = {}  # per-bucket override, e.g. {"5x8x8": 16}
    token_budget: int | None = Field(None, ge=1, description="latent tokens per worker batch (wins over batch_size)")
    shuffle_buffer: int = Field(1024, ge=1, description="rows shuffled together before bucketing")
    cache_mb: int = Field(1024, ge=0, description="replay a worker's row groups from memory after epoch 0 (as many as fit)")
    prefetch: int = Field(2, ge=1, description="row groups a worker reads ahead in a background thread")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step (global batch = "
                                  "num_workers x batch_size x grad_accum_steps)")
    # DeepSpeed ZeRO and Ray Train
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 only
    zero: ZeroCommConfig = ZeroCommConfig()
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources: dict[str, float] = {}  # Ray custom resources per worker, e.g. {gpu_node: 0.01}
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # of the workers' bundles
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


class SampleConfig(_Section):
    allow_random_weights: bool = Field(False, description="decode with a random VAE / text encoder (tests, demos)")
    steps: int = Field(30, ge=1)
    cfg_scale: float = Field(5.0, ge=0)
    time_shift: float | None = Field(None, gt=0, description="flow time shift of the sampling steps (> 1: more "
                                     "steps at high noise); None: by the latent token count, at least 1")
    num_frames: int = Field(17, ge=1)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    fps: int = Field(8, ge=1)
    # prompt extension: "world" (the synthetic world's caption template) or a causal LM by name or path,
    # prompted with `prompt_shots` real captions from the captions table `prompt_examples`
    prompt_extension: str | None = None
    prompt_examples: str | None = None  # a caption/curate output root or a latents root: its `caption` column
    prompt_shots: int = Field(4, ge=1)
    prompt_max_new_tokens: int = Field(60, ge=1)
    target_scores: dict[str, float] = {}  # `--scores`: appended as caption.score_suffix appended them in training
    seed: int = 0


class EvalConfig(_Section):
    """eval: `reelforge eval` (held-out prompts; CLIP score when a model is set)."""

    clip_model: str | None = None  # open_clip name for the CLIP score; None: caption.clip_model's, else off
    clip_pretrained: str | None = None  # open_clip tag or local checkpoint (with caption.clip_model: its)
    allow_random_weights: bool = Field(False, description="sample with a random VAE / text encoder or score "
                                       "with a random CLIP (tests, demos)")
