"""Rectified flow: the training objective and an Euler sampler with classifier-free guidance.

Functions, not model state (as DiT's `diffusion/` and diffusers' schedulers keep them apart).
Convention: t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t eps, and the model predicts the
velocity dx_t/dt = eps - x0.

A condition `cond` is a dict with `text_tokens` (B, L, D), `text_mask` (B, L) bool (True = real
token) and optionally `text_pooled` (B, D); absent, pooled text is the masked mean of the tokens.

The null condition (caption dropout, the unconditional branch of CFG) is all-zero tokens with
only the first token marked real, and zero pooled text. One visible zero token makes the
cross-attention return a learned constant (the projection biases) rather than nothing, so the
model learns its own "no caption" embedding; it needs no text encoder and matches any L.

Frame conditioning (Open-Sora 1.2's mask strategies): a per-frame mask (B, T) marks latent frames
given clean (t = 0) as conditioning: the first frame (image-to-video), the first k (extension),
the last k (backward extension), the first and the last (connecting, interpolation). Training
draws a strategy per item and counts the loss on the generated frames only; the sampler keeps the
conditioning frames fixed. With every probability at 0 nothing is drawn: plain text-to-video.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BASE_TOKENS = 256  # DiT's 256x256 images: a 32x32 latent in 2x2 patches


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with t (B,) broadcast over the other dims."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * eps


def resolution_shift(num_tokens: int, base_tokens: int = BASE_TOKENS) -> float:
    """SD3's resolution-dependent shift, sqrt(m / n) for m tokens against a base of n, at least 1.

    More tokens carry more redundant signal, so the same noise level destroys less of it; the
    shift moves t towards noise (shift > 1) for larger grids. It is not taken below 1 for smaller
    ones: that would move training towards data, away from the high-noise steps where layout,
    colour and motion are decided (a 3x8x8 latent: 0.43, and the DiT of configs/learn-shapes.yaml
    learned direction markedly slower than at 1).
    """
    return max(1.0, math.sqrt(num_tokens / base_tokens))


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift t / (1 + (shift - 1) t): monotone on [0, 1], fixes 0 and 1 (SD3 eq. 23)."""
    return shift * t / (1 + (shift - 1) * t)


def num_latent_tokens(model, latent_shape) -> int:
    """Tokens the model sees for a latent (..., T, H, W), from its patch (DDP/DeepSpeed unwrapped)."""
    config = getattr(getattr(model, "module", model), "config", None)
    patch = getattr(config, "patch", (1, 2, 2))
    return math.prod(math.ceil(n / p) for n, p in zip(latent_shape[-3:], patch))


def _randn(shape, generator, device, dtype=torch.float32):
    """Normal noise drawn on the generator's device (reproducible across devices), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _rand(n, generator, device):
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def sample_t(batch: int, generator=None, shift: float = 1.0, *, mean=0.0, std=1.0, device="cpu"):
    """Logit-normal t (SD3: sigmoid of N(mean, std)), then time-shifted; shape (batch,)."""
    u = _randn((batch,), generator, device) * std + mean
    return shift_time(torch.sigmoid(u), shift)


#################################################################################
#                                 Conditions                                    #
#################################################################################


def _with_pooled(cond: dict) -> dict:
    """Fill text_pooled with the masked mean of the tokens when it is absent."""
    if cond.get("text_pooled") is not None:
        return cond
    mask = cond["text_mask"].bool()
    tokens = cond["text_tokens"].masked_fill(~mask[..., None], 0.0)
    pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(tokens.dtype)
    return {**cond, "text_pooled": pooled}


def null_condition(cond: dict) -> dict:
    """The null condition shaped like cond: zero tokens, one real token, zero pooled text."""
    tokens = torch.zeros_like(cond["text_tokens"])
    mask = torch.zeros_like(cond["text_mask"], dtype=torch.bool)
    mask[:, 0] = True
    return {"text_tokens": tokens, "text_mask": mask, "text_pooled": tokens[:, 0].clone()}


def _align(cond: dict, batch: int, length: int) -> dict:
    """Expand a batch-1 condition to `batch` rows and pad its tokens (masked) to `length`."""
    cond = _with_pooled(cond)
    tokens, mask, pooled = cond["text_tokens"], cond["text_mask"].bool(), cond["text_pooled"]
    if tokens.shape[0] == 1 and batch > 1:
        tokens, mask, pooled = tokens.expand(batch, -1, -1), mask.expand(batch, -1), pooled.expand(batch, -1)
    pad = length - tokens.shape[1]
    if pad > 0:
        tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)
    return {"text_tokens": tokens, "text_mask": mask, "text_pooled": pooled}


def _pair(cond: dict, null_cond: dict | None, batch: int) -> tuple[dict, dict]:
    """cond and null_cond with pooled text, the same batch and the same token length."""
    cond = _with_pooled(cond)
    null_cond = null_condition(cond) if null_cond is None else null_cond
    length = max(cond["text_tokens"].shape[1], null_cond["text_tokens"].shape[1])
    return _align(cond, batch, length), _align(null_cond, batch, length)


def _select(drop: torch.Tensor, null: dict, cond: dict) -> dict:
    """Row-wise: null where drop is True, cond elsewhere."""
    out = {}
    for key in ("text_tokens", "text_mask", "text_pooled"):
        d = drop.view(-1, *([1] * (cond[key].ndim - 1)))
        out[key] = torch.where(d, null[key].to(cond[key].dtype), cond[key])
    return out


def _call(model, x, t, cond: dict, frame_mask=None):
    dtype = next(model.parameters()).dtype
    pooled = cond["text_pooled"].to(dtype)
    if frame_mask is None:
        return model(x.to(dtype), t, cond["text_tokens"].to(dtype), cond["text_mask"], pooled)
    return model(x.to(dtype), t, cond["text_tokens"].to(dtype), cond["text_mask"], pooled, frame_mask=frame_mask)


#################################################################################
#                              Frame conditioning                               #
#################################################################################

STRATEGIES = ("i2v", "extend", "backward", "connect")


def strategy_mask(strategy: str, num_frames: int, k: int = 1) -> torch.Tensor | None:
    """(T,) bool: the latent frames a strategy gives clean, or None when T leaves nothing to generate."""
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if strategy == "i2v" and num_frames >= 2:
        mask[0] = True
    elif strategy == "extend" and num_frames >= 2:
        mask[: max(1, min(k, num_frames - 1))] = True
    elif strategy == "backward" and num_frames >= 2:
        mask[num_frames - max(1, min(k, num_frames - 1)):] = True
    elif strategy == "connect" and num_frames >= 3:
        mask[0] = mask[-1] = True
    elif strategy not in STRATEGIES:
        raise ValueError(f"unknown conditioning strategy {strategy!r}; expected one of {STRATEGIES}")
    return mask if mask.any() else None


def draw_frame_mask(batch: int, num_frames: int, probs: dict[str, float] | None, max_k: int = 1,
                    generator=None, device="cpu") -> torch.Tensor | None:
    """(B, T) bool with one strategy per item drawn with `probs` (the rest: none, text-to-video);
    extension's k is uniform in 1..max_k. None, drawing nothing, when every probability is 0."""
    probs = {k: float(v) for k, v in (probs or {}).items() if v}
    if not probs:
        return None
    u, ks = _rand(batch, generator, "cpu"), _rand(batch, generator, "cpu")
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    for i in range(batch):
        edge = 0.0
        for name in STRATEGIES:
            edge += probs.get(name, 0.0)
            if u[i] < edge:
                m = strategy_mask(name, num_frames, 1 + int(ks[i] * max(1, max_k)))
                mask[i] = m if m is not None else mask[i]
                break
    return mask.to(device) if mask.any() else None


def _masked_mean(err: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of err (B, C, T, H, W) over the generated (unmasked) frames only -> (B,)."""
    keep = (~frame_mask)[:, None, :, None, None].expand_as(err).to(err.dtype)
    return (err * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp(min=1)


#################################################################################
#                           Objective and sampler                               #
#################################################################################


def training_loss(
    model, x0, cond: dict, *, caption_dropout=0.1, null_cond=None, generator=None, shift=None,
    frame_probs: dict[str, float] | None = None, max_k: int = 1,
) -> dict:
    """Rectified-flow MSE on the velocity for latents x0 (B, C, T, H, W).

    Each row's condition is replaced by the null one with probability caption_dropout (for CFG).
    shift=None takes resolution_shift of the model's token count. frame_probs ({strategy: p},
    STRATEGIES) gives some items clean conditioning frames (draw_frame_mask), which the loss
    skips. Returns loss (scalar), t (B,), loss_per_sample (B,, detached) and frame_mask (or None).
    """
    batch, device = x0.shape[0], x0.device
    if shift is None:
        shift = resolution_shift(num_latent_tokens(model, x0.shape))
    t = sample_t(batch, generator, shift, device=device)
    eps = _randn(x0.shape, generator, device, x0.dtype)
    x_t = interpolate(x0, eps, t)  # (B, C, T, H, W)
    cond, null = _pair(cond, null_cond, batch)
    if caption_dropout > 0:
        cond = _select(_rand(batch, generator, device) < caption_dropout, null, cond)
    frame_mask = draw_frame_mask(batch, x0.shape[2], frame_probs, max_k, generator, device)
    if frame_mask is None:  # text-to-video: exactly the plain objective
        pred = _call(model, x_t, t, cond)  # (B, C, T, H, W)
        per_sample = (pred.float() - (eps - x0).float()).pow(2).flatten(1).mean(1)  # (B,)
    else:
        x_t = torch.where(frame_mask[:, None, :, None, None], x0, x_t)  # conditioning frames are clean
        pred = _call(model, x_t, t, cond, frame_mask)  # (B, C, T, H, W)
        per_sample = _masked_mean((pred.float() - (eps - x0).float()).pow(2), frame_mask)  # (B,)
    return {"loss": per_sample.mean(), "t": t, "loss_per_sample": per_sample.detach(), "frame_mask": frame_mask}


def timesteps(steps: int, shift: float = 1.0, device="cpu") -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniform then time-shifted."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def _start(ts: torch.Tensor, strength: float) -> int:
    """Index of the first time at or below `strength` (SDEdit starts there; 1.0: from pure noise)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return int(torch.nonzero(ts <= strength + 1e-6)[0])


@torch.no_grad()
def sample(
    model, shape, cond: dict, null_cond=None, steps=30, cfg_scale=5.0, generator=None, shift=None,
    *, clean: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None, strength: float = 1.0,
) -> torch.Tensor:
    """Euler integration of the velocity from t=1 to t=0; returns x0 (float32) of `shape`.

    With cfg_scale != 1 the model runs once on [cond; null] (2B rows) and the velocity is
    v_null + cfg_scale (v_cond - v_null); with cfg_scale == 1 the null pass is skipped, so the
    result is exactly the plain conditional sample. `clean` (B, C, T, H, W) latents with
    `frame_mask` (B, T): those frames stay fixed (given clean to a frame_cond model; re-noised to the
    current t for a model trained without frame conditioning). strength < 1 starts from `clean`
    noised to t = strength (SDEdit: an edit that keeps the layout).
    """
    device, batch = next(model.parameters()).device, shape[0]
    if shift is None:
        shift = resolution_shift(num_latent_tokens(model, shape))
    x = _randn(shape, generator, device)  # (B, C, T, H, W) at t = 1
    ts = timesteps(steps, shift, device)
    first = _start(ts, strength)
    if first > 0 or frame_mask is not None:
        if clean is None:
            raise ValueError("strength < 1 and frame_mask need the clean latents")
        clean = clean.to(device, torch.float32)
    if first > 0:
        x = interpolate(clean, x, ts[first].expand(batch))
    fixed = _frame_fixer(model, clean, frame_mask, generator, device)
    cond, null = _pair(cond, null_cond, batch)
    guided = cfg_scale != 1.0
    if guided:
        both = {k: torch.cat([cond[k], null[k]]) for k in cond}
    for i in range(first, steps):
        t = ts[i].expand(batch)
        x, mask = fixed(x, ts[i])
        if guided:
            mask2 = None if mask is None else torch.cat([mask, mask])
            v_cond, v_null = _call(model, torch.cat([x, x]), torch.cat([t, t]), both, mask2).float().chunk(2)
            v = v_null + cfg_scale * (v_cond - v_null)
        else:
            v = _call(model, x, t, cond, mask).float()
        x = x + (ts[i + 1] - ts[i]) * v
    return fixed(x, ts[-1])[0]


def _frame_fixer(model, clean, frame_mask, generator, device):
    """x, t -> (x with the conditioning frames put back, the mask to give the model or None)."""
    if frame_mask is None or not bool(frame_mask.any()):
        return lambda x, t: (x, None)
    m = frame_mask.to(device).bool()
    where = m[:, None, :, None, None]
    if getattr(getattr(getattr(model, "module", model), "config", None), "frame_cond", False):
        return lambda x, t: (torch.where(where, clean, x), m)
    noise = _randn(clean.shape, generator, device)  # replacement: the clean frames at the current noise level
    return lambda x, t: (torch.where(where, interpolate(clean, noise, t.expand(clean.shape[0])), x), None)
