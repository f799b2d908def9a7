"""Ulysses sequence parallelism for the VideoDiT (DeepSpeed-Ulysses; xDiT's and FastVideo's USP).

The P ranks of a sequence-parallel group hold the same batch. Each keeps 1/P of the spacetime
tokens through the whole network; only self-attention needs every token, and it gets them by an
all-to-all that trades tokens for heads: q, k, v (B, H, N/P, d) -> (B, H/P, N, d), attention over
all N tokens for H/P heads, then the inverse all-to-all. Cross-attention to the caption is local
(the text is replicated), as are the MLPs and adaLN. At the end the tokens are all-gathered, so
every rank returns the whole output and computes the same loss.

A token count that P does not divide is padded at the end to a multiple of P; the pad tokens are
masked out as keys and dropped at the end, so they change nothing. Gradients: each rank's
parameters get the part of the gradient that flows through its own tokens; the sum over the group
is the whole gradient (DeepSpeed sums over the sequence ranks when it is given `SequenceMesh` as its
mpu; the test sums them by hand). Needs heads % P == 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class SequenceParallel:
    """The group this rank shares a sequence with, its size P and this rank's index in it."""

    group: object
    size: int
    rank: int

    @classmethod
    def of(cls, group) -> SequenceParallel:
        return cls(group, dist.get_world_size(group), dist.get_rank(group))


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    """Chunk j of `scatter_dim` goes to rank j; what rank i sends lands at place i of `gather_dim`."""
    size = dist.get_world_size(group)
    inputs = [t.contiguous() for t in x.chunk(size, dim=scatter_dim)]
    outputs = [torch.empty_like(inputs[0]) for _ in range(size)]
    dist.all_to_all(outputs, inputs, group=group)
    return torch.cat(outputs, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


class _GatherTokens(torch.autograd.Function):
    """(B, N/P, C) on each rank -> (B, N, C) on every rank; backward keeps this rank's slice, since
    every rank computes the same loss from the gathered tensor (its gradient is the same everywhere)."""

    @staticmethod
    def forward(ctx, x, sp: SequenceParallel):
        ctx.sp = sp
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        dist.all_gather(parts, x.contiguous(), group=sp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.sp.size, dim=1)[ctx.sp.rank].contiguous(), None


def padded(n: int, size: int) -> int:
    """n rounded up to a multiple of size."""
    return -(-n // size) * size


def shard(x: torch.Tensor, sp: SequenceParallel, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous slice of `dim`, after zero-padding it to a multiple of P."""
    n = x.shape[dim]
    pad = padded(n, sp.size) - n
    if pad:
        widths = [0, 0] * (x.ndim - 1 - dim) + [0, pad]
        x = F.pad(x, widths)
    return x.chunk(sp.size, dim=dim)[sp.rank]


def gather_tokens(x: torch.Tensor, sp: SequenceParallel, n_real: int) -> torch.Tensor:
    """Every rank's tokens (B, N/P, C) -> the whole (B, N, C), pad tokens dropped."""
    return _GatherTokens.apply(x, sp)[:, :n_real]


def ulysses_attention(q, k, v, sp: SequenceParallel, n_real: int) -> torch.Tensor:
    """Self-attention of local q, k, v (B, H, N/P, d) over all N tokens of the group -> (B, H, N/P, d)."""
    if q.shape[1] % sp.size:
        raise ValueError(f"{q.shape[1]} heads cannot be split over {sp.size} sequence-parallel ranks")
    qkv = _AllToAll.apply(torch.stack([q, k, v]), 2, 3, sp.group)  # (3, B, H/P, N_pad, d)
    q, k, v = qkv.unbind(0)
    n_pad = q.shape[2]
    mask = None
    if n_pad != n_real:  # pad tokens are never attended to
        mask = (torch.arange(n_pad, device=q.device) < n_real)[None, None, None, :]
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H/P, N_pad, d)
    return _AllToAll.apply(x, 2, 1, sp.group)  # (B, H, N/P, d)


# ----------------------------------------------------------------------------- groups for training


class SequenceMesh:
    """Ranks as a (data, sequence) grid: ranks d*P .. d*P+P-1 share one batch (a sequence group).

    It is also DeepSpeed's `mpu` for sequence parallelism (the methods DeepSpeed-Ulysses asks for):
    ZeRO then partitions over all ranks (DeepSpeed's "sequence data parallel" group), sums gradients
    over the sequence ranks and averages them over the data ranks. Build it on every rank: creating
    process groups is a collective.
    """

    def __init__(self, sequence_parallel: int):
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % sequence_parallel:
            raise ValueError(f"train.sequence_parallel={sequence_parallel} does not divide {world} workers")
        self.sp_size, self.dp_size = sequence_parallel, world // sequence_parallel
        self.sp_rank, self.dp_rank = rank % sequence_parallel, rank // sequence_parallel
        self.sp_group = self.dp_group = None
        for d in range(self.dp_size):  # every rank creates every group, in the same order
            g = dist.new_group(list(range(d * sequence_parallel, (d + 1) * sequence_parallel)))
            self.sp_group = g if d == self.dp_rank else self.sp_group
        for s in range(sequence_parallel):
            g = dist.new_group(list(range(s, world, sequence_parallel)))
            self.dp_group = g if s == self.sp_rank else self.dp_group
        self.world_group = dist.group.WORLD

    def sequence_parallel(self) -> SequenceParallel:
        return SequenceParallel(self.sp_group, self.sp_size, self.sp_rank)

    # DeepSpeed's mpu interface (deepspeed.utils.groups asks for these by name)
    def initialize_sequence_parallel(self, *args, **kwargs):  # marks this mpu as sequence-parallel
        return None

    def get_sequence_parallel_group(self):
        return self.sp_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.sp_size

    def get_sequence_parallel_rank(self) -> int:
        return self.sp_rank

    def get_sequence_data_parallel_group(self):
        return self.world_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.sp_size * self.dp_size

    def get_sequence_data_parallel_rank(self) -> int:
        return dist.get_rank()

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0
