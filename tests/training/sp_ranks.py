"""Helper for test_parallel.py: a forward and backward of a tiny VideoDiT under Ulysses sequence
parallelism on 2 gloo ranks (spawned here); rank 0 saves the output and the gradients summed over the
group. Run as a script: python tests/training/sp_ranks.py OUT.pt PORT"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def inputs():
    """The batch both runs see: 27 tokens (3 x 3 x 3 after 1x2x2 patches), odd on purpose."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 6, 6, generator=g)
    t = torch.tensor([0.3, 0.8])
    text = torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    frames = torch.tensor([[True, False, False], [True, False, True]])  # i2v and connect
    return x, t, text, mask, frames


def model():
    from training.models.dit import build_dit

    torch.manual_seed(0)
    m = build_dit("VDiT-T/2", frame_cond=True)
    for p in m.parameters():  # adaLN-Zero starts as the identity: move off it so every path counts
        p.data.add_(0.05 * torch.randn_like(p))
    return m


def forward_backward(m):
    """(output, loss gradients: {"x": ..., name: ...}) of a fixed loss of the model's output."""
    x, t, text, mask, frames = inputs()
    x.requires_grad_(True)
    out = m(x, t, text, mask, frame_mask=frames)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + out.pow(2).mean()
    loss.backward()
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in m.named_parameters()}}


def _rank(rank: int, world: int, out_path: str, port: str) -> None:
    from training.models.parallel import SequenceParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = model()
    m.sequence_parallel = SequenceParallel.of(dist.group.WORLD)
    out, grads = forward_backward(m)
    for g in grads.values():  # each rank holds the part that flowed through its own tokens
        dist.all_reduce(g)
    outs = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(outs, out)
    if rank == 0:
        torch.save({"out": outs, "grads": grads}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_rank, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
