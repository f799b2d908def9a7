"""The caption and caption_train sections: `reelforge caption` and `reelforge train-captioner`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


class CaptionConfig(_Section):
    model: str = "tiny-random"  # a VLM by hub name or local dir (Qwen2/2.5/3-VL, LLaVA-OneVision, ...)
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
    clip_model: str | None = None  # open_clip name (e.g. ViT-L-14) or model-config .json: caption_score
    clip_pretrained: str | None = None  # open_clip tag (openai, laion2b_s32b_b82k) or a local checkpoint
    allow_random_weights: bool = Field(False, description="run the tiny-random captioner or a CLIP scorer "
                                       "without pretrained weights (tests, demos); outputs say so in capitals")
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
