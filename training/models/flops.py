"""Parameter and FLOP counts of a VideoDiT (what MFU and the presets' sizes are computed from)."""

from __future__ import annotations

import math

import torch.nn as nn


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(config, num_tokens: int, text_len: int) -> float:
    """Forward FLOPs per video token (multiply-add = 2), attention included.

    Training costs about 3x this (forward + backward), so MFU = 3 * flops_per_token * tokens/s
    / peak. Per-sample work (adaLN, text projections) is spread over the num_tokens tokens.
    """
    D, N, L, depth = config.hidden, num_tokens, text_len, config.depth
    mlp_hidden = int(D * config.mlp_ratio)
    patch_dim = math.prod(config.patch) * config.in_channels
    self_attn = 2 * 4 * D * D + 2 * 2 * N * D  # qkv + out projections, QK^T and AV
    cross_attn = 2 * 2 * D * D + 2 * 2 * L * D + 2 * 2 * D * D * L / N  # q + out, attn, k/v of text
    mlp = 2 * 2 * D * mlp_hidden
    ada_ln = 2 * 6 * D * D / N
    per_block = self_attn + cross_attn + mlp + ada_ln
    embed = 2 * patch_dim * D + 2 * D * patch_dim + 2 * 2 * D * D / N  # patch in/out, final adaLN
    text = 2 * (config.text_dim * D + D * D) * (L + 1) / N  # token and pooled projections
    timestep = 2 * (256 * D + D * D) / N
    return depth * per_block + embed + text + timestep
