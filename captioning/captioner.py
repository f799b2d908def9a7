"""The captioning stage: sampled frames in, captions (and an optional CLIP text-video score) out."""

from __future__ import annotations

import logging

import numpy as np
import torch

from captioning.models import is_placeholder, load_captioner, resolve_device
from captioning.prompts import (DEFAULT_PROMPT, append_scores, clean_caption, render_prompt,
                                template_fields)
from training.models.clip import ClipScorer

log = logging.getLogger(__name__)

ERROR_STAGE = "caption"


def is_oom(err: BaseException) -> bool:
    """True for a CUDA/CPU allocator out-of-memory error."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip()[:500]}"


def _sampled_fps(batch: dict, i: int, n: int) -> float | None:
    """The rate of a clip's n sampled frames (n over its duration), for VLMs that timestamp frames."""
    start, end = batch.get("start_s"), batch.get("end_s")
    if start is None or end is None or n < 2:
        return None
    try:
        duration = float(end[i]) - float(start[i])
    except (TypeError, ValueError):
        return None
    return n / duration if duration > 0 else None


# ----------------------------------------------------------------------------- the stage
class CaptionStage:
    """GPU (or CPU) stage that captions clips.

    Reads `frames` (B,N,H,W,3) uint8 from FramePrepStage (only the first for a `media_type` "image"
    row), `error`/`error_stage` (rows that already failed pass through), and any columns the prompt template or `score_suffix` names. Writes
    `caption`, `caption_model`, `caption_prompt`, `caption_score` (NaN without a CLIP model),
    `caption_tokens`, `error`, `error_stage`; drops `frames`. A batch that runs out of memory is
    split in halves down to single clips; a clip that still fails becomes an error row.
    """

    def __init__(self, model: str, prompt: str | None = None, max_new_tokens: int = 48,
                 batch_size: int = 4, dtype: str = "float32", device: str = "auto",
                 do_sample: bool = False, seed: int = 0, score_suffix: list[str] | None = None,
                 clip_model: str | None = None, clip_pretrained: str | None = None):
        self.model_name = str(model)
        self.prompt = prompt or DEFAULT_PROMPT
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.device = device
        self.do_sample = bool(do_sample)
        self.seed = int(seed)
        self.score_keys = list(score_suffix or [])
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.captioner = None
        self.scorer = None
        self.placeholder = False
        self.oom_splits = 0  # batches split after running out of memory (for logs and benches)

    def setup(self) -> None:
        """Load the captioner (and CLIP scorer) once per worker."""
        if self.captioner is not None:
            return
        device = resolve_device(self.device)
        self.captioner = load_captioner(self.model_name, dtype=self.dtype, device=device)
        self.placeholder = is_placeholder(self.model_name)  # the job refused it unless allow_random_weights
        if self.placeholder:
            log.warning("=" * 72 + "\nCAPTIONS ARE PLACEHOLDERS: %s is a tiny randomly initialised "
                        "model.\nUse a real captioner (caption.model) for training data.\n"
                        + "=" * 72, self.model_name)
        if self.clip_model:
            self.scorer = ClipScorer(self.clip_model, self.clip_pretrained, device=device)

    # -- generation with split-and-retry
    def _generate(self, frames: list, prompts: list[str], fps: list | None = None) -> list[tuple]:
        """(text, tokens, error) per clip; halves the batch on failure so one clip's error or an
        out-of-memory batch never takes the other clips down."""
        fps = fps or [None] * len(frames)
        try:
            texts, counts = self.captioner.generate(
                frames, prompts, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                seed=self.seed, fps=fps)
            return [(t, int(c), None) for t, c in zip(texts, counts)]
        except Exception as e:  # failures are data; KeyboardInterrupt still stops the job
            oom = is_oom(e)
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(frames) == 1:
                return [(None, 0, _error_text(e))]
            if oom:
                self.oom_splits += 1
                log.warning("out of memory captioning %d clips: retrying in halves", len(frames))
            else:
                log.warning("captioning %d clips failed (%s): retrying in halves to isolate it",
                            len(frames), _error_text(e))
            mid = len(frames) // 2
            return (self._generate(frames[:mid], prompts[:mid], fps[:mid])
                    + self._generate(frames[mid:], prompts[mid:], fps[mid:]))

    def _scores(self, frames: list, captions: list[str]) -> np.ndarray:
        if self.scorer is None or not captions:
            return np.full(len(captions), np.nan)
        out = []
        for s in range(0, len(captions), self.batch_size):
            try:
                out.append(self.scorer.score(frames[s : s + self.batch_size],
                                             captions[s : s + self.batch_size]))
            except Exception as e:  # a score is a measure, not the caption: keep the caption
                log.warning("caption_score failed: %s", _error_text(e))
                out.append(np.full(len(captions[s : s + self.batch_size]), np.nan))
        return np.concatenate(out)

    # -- the batch
    def _row(self, batch: dict, i: int) -> dict:
        return {k: (v[i].item() if isinstance(v[i], np.generic) else v[i])
                for k, v in batch.items() if k != "frames"}

    def _prompts(self, batch: dict, todo: list[int], errors: list, stages: list) -> dict[int, str]:
        prompts = {}
        needs_row = bool(template_fields(self.prompt))
        for i in todo:
            try:
                prompts[i] = (render_prompt(self.prompt, self._row(batch, i)) if needs_row
                              else self.prompt)
            except Exception as e:
                errors[i], stages[i] = _error_text(e), ERROR_STAGE
        return prompts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.setup()
        n = len(batch["frames"])
        # An image's one frame, so the captioner takes its image path (a 1-frame clip is an image turn).
        images = [str(k) == "image" for k in batch.get("media_type", [None] * n)]
        frames = [f[:1] if image else f for f, image in zip(batch["frames"], images)]
        errors = [v if isinstance(v, str) and v else None for v in batch.get("error", [None] * n)]
        stages = [v if errors[i] else None
                  for i, v in enumerate(batch.get("error_stage", [None] * n))]
        captions, tokens, prompts_out = [None] * n, np.zeros(n, np.int64), [None] * n
        prompts = self._prompts(batch, [i for i in range(n) if not errors[i]], errors, stages)
        todo = list(prompts)
        for s in range(0, len(todo), self.batch_size):
            idx = todo[s : s + self.batch_size]
            results = self._generate([frames[i] for i in idx], [prompts[i] for i in idx],
                                     [_sampled_fps(batch, i, len(frames[i])) for i in idx])
            for i, (text, count, err) in zip(idx, results):
                prompts_out[i], tokens[i] = prompts[i], count
                text = clean_caption(text, prompts[i]) if err is None else None
                if err is None and not text:
                    err = "EmptyCaption: the model generated no text"
                if err:
                    errors[i], stages[i] = err, ERROR_STAGE
                else:
                    captions[i] = text
        done = [i for i in range(n) if captions[i] is not None]
        scores = np.full(n, np.nan)
        scores[done] = self._scores([frames[i] for i in done], [captions[i] for i in done])
        if self.score_keys:
            for i in done:
                captions[i] = append_scores(captions[i], self._row(batch, i), self.score_keys)
        out = {k: v for k, v in batch.items() if k != "frames"}
        out["caption"] = np.array(captions, dtype=object)
        out["caption_model"] = np.array([self.model_name] * n, dtype=object)
        out["caption_prompt"] = np.array(prompts_out, dtype=object)
        out["caption_score"] = scores
        out["caption_tokens"] = tokens
        out["error"] = np.array(errors, dtype=object)
        out["error_stage"] = np.array(stages, dtype=object)
        return out
