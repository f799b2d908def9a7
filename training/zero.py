"""DeepSpeed ZeRO touch points without Ray: the engine config, whole weights and EMA gathered under
ZeRO-3, and the checkpoint a training run writes and resumes from.

Checkpoint layout (one directory; every rank writes its own files into it):
    deepspeed/           engine.save_checkpoint: model, optimizer shards per rank (tag "state")
    dit/, ema/           whole weights via VideoDiT.save_pretrained (rank 0), what sample.py loads
    meta.json            {"vae", "text_encoder", "step", "world_size", "zero_stage", ...} (rank 0)
    config.yaml          the resolved config (rank 0)
    train_state/rank-R.pt  step, epoch, RNG states and the noise generator of rank R
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

from training.models.dit import VideoDiT

log = logging.getLogger(__name__)
TAG = "state"


def precision(use_gpu: bool, setting: str) -> str:
    """"bf16" or "fp32": auto picks bf16 on GPU and fp32 on CPU (bf16 matmuls are slow there)."""
    if setting == "auto":
        return "bf16" if use_gpu else "fp32"
    return setting


def ds_config(t, world_size: int, prec: str) -> dict:
    """The DeepSpeed config of a TrainConfig: ZeRO stage and offload, accumulation, clipping, precision."""
    zero: dict = {"stage": t.zero_stage, **t.zero.ds_keys()}
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
    if t.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": t.use_gpu}
    return {
        # Batches vary by bucket; DeepSpeed only uses these sizes for its own throughput prints.
        # The accumulation steps are real: backward scales each loss by 1/steps (see micro_step).
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.batch_size * world_size * t.grad_accum_steps,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": prec == "bf16"},
        "steps_per_print": 10**9,  # the loop logs its own metrics
        # A torch AdamW avoids JIT-building DeepSpeed's CPU Adam; it is fine under offload too.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def data_ranks(t) -> int:
    """Data-parallel ranks: the workers over train.sequence_parallel (the ranks of a sequence group
    share one batch)."""
    if t.num_workers % t.sequence_parallel:
        raise ValueError(f"train.sequence_parallel={t.sequence_parallel} must divide train.num_workers={t.num_workers}")
    return t.num_workers // t.sequence_parallel


def sequence_mesh(t):
    """The workers as a (data, sequence) grid when train.sequence_parallel > 1 (a collective: every
    rank builds it), else None. It is DeepSpeed's mpu: ZeRO sums gradients over a sequence group and
    averages them over the data ranks."""
    if t.sequence_parallel == 1:
        return None
    from training.models.parallel import SequenceMesh

    return SequenceMesh(t.sequence_parallel)


def micro_step(engine, loss_fn, boundary: bool, timings: dict | None = None) -> torch.Tensor:
    """Forward (loss_fn), backward and engine.step() of one micro-batch; the optimizer steps (and
    clips, and reduces ZeRO's gradients) only when `boundary`, the last micro-batch of a step.
    DeepSpeed divides the loss by gradient_accumulation_steps, so the accumulated gradient is the
    mean over micro-batches. The boundary is set explicitly, never inferred from DeepSpeed's
    micro-step counter, which a checkpoint does not restore. `timings` gets the seconds of each
    part (forward_s, backward_s: with ZeRO-2's gradient reduction, step_s: the partitioned
    optimizer step and the parameter all-gather)."""
    engine.set_gradient_accumulation_boundary(boundary)
    t0 = time.perf_counter()
    loss = loss_fn()
    t1 = time.perf_counter()
    engine.backward(loss)
    t2 = time.perf_counter()
    engine.step()
    if timings is not None:
        timings.update(forward_s=t1 - t0, backward_s=t2 - t1, step_s=time.perf_counter() - t2)
    return loss


def skip_inference_shm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce on the CPU accelerator.

    TorchBackend builds `deepspeed_shm_comm` (two C++ files against torch's headers: ~1 min on 2
    cores, more on a slow one) the first time any process initialises DeepSpeed, yet only its
    `inference_all_reduce` uses it; training's collectives are torch.distributed's (gloo here).
    Marking the op incompatible makes `build_shm_op` return None, which DeepSpeed handles.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # a module-level dict, kept once probed


# ----------------------------------------------------------------------------- whole weights


def ema_sources(model, stage: int) -> list[torch.Tensor]:
    """What the EMA tracks: the parameters, or under ZeRO-3 this rank's partitions of them."""
    params = list(model.parameters())
    return [p.ds_tensor for p in params] if stage == 3 else [p.data for p in params]


@contextlib.contextmanager
def gathered(model, stage: int):
    """Whole parameters inside the block on every rank (a collective under ZeRO-3)."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def gather_ema(ema, model, stage: int) -> dict[str, torch.Tensor]:
    """The EMA as a whole float32 state dict on every rank (all-gathers partitions under ZeRO-3)."""
    out = {}
    # NCCL moves CUDA tensors only; partitions offloaded to the CPU travel through the GPU.
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    for (name, p), shard in zip(model.named_parameters(), ema.shadow, strict=True):
        if stage != 3:
            out[name] = shard.detach().cpu()
            continue
        # ZeRO-3 keeps rank r's slice [r*n, (r+1)*n) of the flattened, zero-padded parameter.
        shard = shard.to(comm) if comm is not None else shard
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, shard)
        out[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu()
    return out


def ema_from_whole(state: dict, model, stage: int) -> list[torch.Tensor]:
    """EMA tensors for this rank from a whole state dict (the inverse of gather_ema)."""
    out = []
    for (name, p) in model.named_parameters():
        whole = state[name].float()
        if stage != 3:
            out.append(whole.to(p.device))
            continue
        n = p.ds_tensor.numel()
        flat = F.pad(whole.reshape(-1), (0, n * dist.get_world_size() - whole.numel()))
        out.append(flat[dist.get_rank() * n:(dist.get_rank() + 1) * n].to(p.ds_tensor.device))
    return out


def param_digest(model) -> tuple[str, float]:
    """(sha1 of every parameter's bytes, sum of all parameters): call inside `gathered`."""
    h, total = hashlib.sha1(), 0.0
    for p in model.parameters():
        data = p.detach().float().cpu().contiguous()
        h.update(data.numpy().tobytes())
        total += float(data.double().sum())
    return h.hexdigest()[:16], total


def save_pretrained_state(config, state: dict, directory: Path) -> None:
    """VideoDiT.save_pretrained of a state dict, without allocating a second model."""
    with torch.device("meta"):
        model = VideoDiT(config)
    model.load_state_dict(state, assign=True)
    model.save_pretrained(directory)


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor: the whole state then loads with torch.load(weights_only=True)
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, engine, ema, stage: int, train_state: dict, meta: dict, config_yaml: str) -> dict:
    """Write this rank's part of a checkpoint (a collective: every rank calls it); returns the
    parameter digests of all ranks, gathered."""
    directory, rank = Path(directory), dist.get_rank()
    engine.save_checkpoint(str(directory / "deepspeed"), tag=TAG)
    ema_state = gather_ema(ema, engine.module, stage)
    with gathered(engine.module, stage):
        digest = param_digest(engine.module)
        if rank == 0:
            engine.module.save_pretrained(directory / "dit")
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if rank == 0:
        save_pretrained_state(engine.module.config, ema_state, directory / "ema")
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        (directory / "config.yaml").write_text(config_yaml)
    (directory / "train_state").mkdir(parents=True, exist_ok=True)
    torch.save({**train_state, "rng": rng_state()}, directory / "train_state" / f"rank-{rank}.pt")
    return {"param_sha": [d[0] for d in digests], "param_sum": [d[1] for d in digests]}


def load_checkpoint(directory, engine, ema, stage: int) -> dict:
    """Restore engine (weights, optimizer), EMA and RNG from a checkpoint; returns the train state."""
    directory, rank, world = Path(directory), dist.get_rank(), dist.get_world_size()
    meta = json.loads((directory / "meta.json").read_text())
    if meta["world_size"] != world or meta["zero_stage"] != stage:
        raise ValueError(f"checkpoint {directory} was written by {meta['world_size']} workers at ZeRO-"
                         f"{meta['zero_stage']}; this run has {world} at ZeRO-{stage}: resume with the same")
    path, _ = engine.load_checkpoint(str(directory / "deepspeed"), tag=TAG, load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory / 'deepspeed'}")
    ema_state = load_file(str(directory / "ema" / "model.safetensors"))
    ema.load_state_dict({"shadow": ema_from_whole(ema_state, engine.module, stage)})
    state = torch.load(directory / "train_state" / f"rank-{rank}.pt", weights_only=True)
    set_rng_state(state.pop("rng"))
    log.info("rank %d resumed from %s at step %d", rank, directory, state["step"])
    return state
