"""What survives a VAE round trip: the world checker's colour/direction/shape accuracy on world clips
after encode -> decode, for VAEs by spec and for plain average pooling (a codec with no weights).

    python bench/vae_roundtrip.py [--config configs/demo.yaml] [--vae tiny --vae DIR ...] [--pool 4 --pool 8]

The DiT is scored through the VAE its latents came from, so this is the ceiling of its eval: a
VAE whose round trip loses colour or motion caps the demo's accuracy whatever the DiT learns.
Writes a small world (train split, `--videos` files) to a temporary folder; prints one JSON line
per codec.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.config import load_config  # noqa: E402
from infra.video import sample_frames  # noqa: E402
from infra.world import world_clips, write_world  # noqa: E402
from infra.worldcheck import check_video, score  # noqa: E402
from training.models.vae import load_vae  # noqa: E402


def world_videos(cfg, videos: int, frames: int, size: int) -> tuple[list[np.ndarray], list[dict]]:
    world = cfg.world.model_copy(update={"videos": videos, "eval_videos": 1})
    root = tempfile.mkdtemp(prefix="rf-bench-vae-")
    write_world(world, root)
    out, truth = [], []
    for c in world_clips(root, "train"):
        f = sample_frames(c["uri"], c["start_s"], c["end_s"], num_frames=None, fps=c["fps"], size=(size, size),
                          start_frame=c["start_frame"], end_frame=c["end_frame"], source_fps=c["fps"])
        if len(f) >= frames:
            out.append(f[:frames])
            truth.append(c["attributes"])
    return out, truth


@torch.no_grad()
def vae_round_trip(vae, v: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
    r = vae.decode(vae.encode(x).mode()).clamp(-1, 1)
    return ((r[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()


def pool_round_trip(k: int, v: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(v).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    y = F.interpolate(F.avg_pool2d(x, k), scale_factor=k, mode="nearest")
    return y.permute(0, 2, 3, 1).round().byte().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--vae", action="append", default=None, help="a VAE spec (preset, directory); repeatable")
    ap.add_argument("--pool", type=int, action="append", default=None, help="average-pool factor; repeatable")
    ap.add_argument("--videos", type=int, default=12)
    args = ap.parse_args()
    cfg = load_config(args.config)
    s = cfg.sample
    videos, truth = world_videos(cfg, args.videos, s.num_frames, s.height)
    w = cfg.world
    codecs = {"original": lambda v: v}
    for spec in args.vae or ["tiny"]:
        codecs[f"vae:{spec}"] = lambda v, m=load_vae(spec, seed=0): vae_round_trip(m, v)
    codecs.update({f"pool:{k}x": (lambda v, k=k: pool_round_trip(k, v)) for k in args.pool or [4, 8]})
    for name, codec in codecs.items():
        acc = score([check_video(codec(v), w.colors, w.shape_colors) for v in videos], truth)
        print(json.dumps({"bench": "vae_roundtrip", "codec": name, "clips": len(videos), "frames": s.num_frames,
                          "size": s.height, **{k: acc[k] for k in ("color", "direction", "shape")}}))


if __name__ == "__main__":
    main()
