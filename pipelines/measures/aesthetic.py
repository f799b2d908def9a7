"""Aesthetic score: a LAION-style linear or MLP head on L2-normalised open_clip image embeddings.

The head loads from a file the user gives (`curate.measures.aesthetic_weights`): a safetensors
file, or a torch state dict read with `weights_only=True` (no code runs from the file). Its Linear
layers run in key order with nothing between them, as in LAION's improved aesthetic predictor
(whose Dropout layers are no-ops at inference).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch.save'd state dict (optionally under "state_dict")."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


class AestheticHead(nn.Module):
    """A chain of Linear layers ending in one score; built from whatever Linear weights a state dict has."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> AestheticHead:
        weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.ndim == 2), key=_natural)
        if not weights:
            raise ValueError("no Linear weights in the aesthetic head file")
        shapes = [tuple(state[k].shape) for k in weights]  # (out, in) each
        if any(a[0] != b[1] for a, b in zip(shapes, shapes[1:])) or shapes[-1][0] != 1:
            raise ValueError(f"aesthetic head layers do not chain to one score: {shapes}")
        head = cls([shapes[0][1]] + [s[0] for s in shapes])
        for layer, k in zip(head.layers, weights):
            layer.weight.data.copy_(state[k].float())
            bias = state.get(k[: -len("weight")] + "bias")
            layer.bias.data.copy_(bias.float() if bias is not None else torch.zeros_like(layer.bias))
        return head.eval()

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = emb  # (N, D), L2-normalised CLIP image embeddings
        for layer in self.layers:
            x = layer(x)
        return x[:, 0]  # (N,)


def load_head(path: str) -> AestheticHead:
    return AestheticHead.from_state_dict(load_state_dict(path))
