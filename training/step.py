"""The plain-torch training step: rectified-flow loss on a bucket batch, LR schedule, EMA (no Ray).

train.py drives the same `batch_loss` through a DeepSpeed engine; `train_step` is the single-process
equivalent (tests, the benchmark's baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from training import flow


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup to lr over warmup_steps, then cosine from lr to min_lr at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    # The schedule is a function of the step, so resuming needs no scheduler state.
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay at a step: `decay`, capped by (1 + step) / (10 + step) so early EMA follows."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """Float32 exponential moving average of a list of tensors.

    The tensors are a model's parameters, or under ZeRO-3 each rank's partitions of them
    (`param.ds_tensor`), so the EMA is sharded exactly like the parameters.
    """

    def __init__(self, tensors: list[torch.Tensor]):
        self.shadow = [t.detach().float().clone() for t in tensors]

    @torch.no_grad()
    def update(self, tensors: list[torch.Tensor], decay: float) -> None:
        for s, t in zip(self.shadow, tensors, strict=True):
            s.lerp_(t.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        for s, t in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(t)


def batch_condition(batch: dict, device) -> dict:
    """The flow condition of a collated batch, on `device`."""
    return {"text_tokens": batch["text_tokens"].to(device), "text_mask": batch["text_mask"].to(device)}


def batch_loss(model, batch: dict, *, caption_dropout: float, generator: torch.Generator | None,
               device="cpu", conditioning=None, shift: float | None = None) -> torch.Tensor:
    """Rectified-flow loss of a collated bucket batch (see training.flow.training_loss); `conditioning`
    (train.conditioning) gives some items clean conditioning frames, None or all 0 none."""
    x0 = batch["latent"].to(device)  # (B, C, T, H, W)
    probs, max_k = (conditioning.probs(), conditioning.extend_frames) if conditioning is not None else (None, 1)
    out = flow.training_loss(model, x0, batch_condition(batch, device), caption_dropout=caption_dropout,
                             generator=generator, frame_probs=probs, max_k=max_k, shift=shift)
    return out["loss"]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, *, lr: float,
               grad_clip: float, caption_dropout: float, generator: torch.Generator | None = None,
               ema: EMA | None = None, ema_decay: float = 0.0, device="cpu") -> dict:
    """One plain-torch optimizer step."""
    model.train()
    set_lr(optimizer, lr)
    loss = batch_loss(model, batch, caption_dropout=caption_dropout, generator=generator, device=device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(list(model.parameters()), ema_decay)
    return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}
