"""A synthetic video world with ground-truth captions: coloured shapes moving on plain or striped
backgrounds, several scenes per file with hard cuts, one caption per scene in a sidecar file.

`write_world(cfg, out_dir)` writes, deterministically from `world.seed`:
    DIR/train/world-0000.mp4 + world-0000.json   scenes drawn from every (colour, direction, shape) combo
                                                 except `world.holdout`
    DIR/eval/world-0000.mp4 + world-0000.json    the held-out combos only (all combos without one)
    DIR/world.json                               the index: files, split, vocab, counts
    DIR/train/image-0000.png + image-0000.json   `world.images` stills (a shape, no motion): one-frame clips
The sidecar `VIDEO.json` is a list of {start_frame, end_frame, start_s, end_s, caption,
attributes: {color, shape, direction, background, textured[, second]}} (end exclusive); with
`world.sidecar: txt` single-scene files get `VIDEO.txt` holding the caption instead. An image's
sidecar has one entry, frames [0, 1), no seconds and no direction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.config import WorldConfig
from infra.videogen import Scene, Sprite, write_image, write_video

SPLITS = ("train", "eval")


@dataclass
class ScenePlan:
    """One scene to render: the videogen Scene, its caption and its attributes."""

    scene: Scene
    caption: str
    attributes: dict


def caption_text(attrs: dict) -> str:
    """'a red square moves left on a gray background' (and a second shape when there is one);
    without a direction (an image) 'a red square on a gray background'."""
    if not attrs.get("direction"):
        return f"a {attrs['color']} {attrs['shape']} on a {attrs['background']} background"
    first = f"a {attrs['color']} {attrs['shape']} moves {attrs['direction']}"
    second = attrs.get("second")
    if second:
        first += f" and a {second['color']} {second['shape']} moves {second['direction']}"
    return f"{first} on a {attrs['background']} background"


# Words a short prompt may use for the world's vocabulary.
_SYNONYMS = {"leftwards": "left", "leftward": "left", "rightwards": "right", "rightward": "right", "upwards": "up",
             "upward": "up", "downwards": "down", "downward": "down", "ball": "circle", "disc": "circle",
             "disk": "circle", "box": "square", "grey": "gray"}


def extend_prompt(text: str, cfg: WorldConfig, image: bool = False) -> str:
    """A short prompt ('red ball going left') in the world's caption template ('a red circle moves
    left on a black background'): what it names, and the vocabulary's first colour, shape, direction
    (none for an image) or background for what it leaves out. A prompt that names none of the
    world's colours, shapes or directions is returned as it is."""
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
    background = next((w for i, w in enumerate(words) if w in cfg.backgrounds and (
        words[i + 1:i + 2] == ["background"] or words[max(0, i - 1):i] in (["on"], ["over"]))), None)
    color = next((w for w in words if w in cfg.shape_colors and w != background), None)
    shape = next((w for w in words if w in cfg.shapes), None)
    direction = next((w for w in words if w in cfg.directions), None)
    if color is None and shape is None and direction is None:
        return text
    color = color or cfg.shape_colors[0]
    background = background or next(b for b in cfg.backgrounds if b != color)
    attrs = {"color": color, "shape": shape or cfg.shapes[0], "background": background,
             "direction": None if image else direction or cfg.directions[0]}
    return caption_text(attrs)


def _held(cfg: WorldConfig) -> set[tuple[str, ...]]:
    return {tuple(c.split(":")) for c in cfg.holdout}


def held_out(cfg: WorldConfig, color: str, direction: str, shape: str | None = None,
             background: str | None = None) -> bool:
    """Whether `world.holdout` keeps this scene out of train: an entry names a prefix of
    color:direction:shape:background (a pair with every shape and background, ..., one exact caption)."""
    held, key = _held(cfg), (color, direction, shape, background)
    return any(key[:n] in held for n in range(2, 5) if None not in key[:n])


def _in_split(cfg: WorldConfig, split: str, *key: str) -> bool:
    """Whether some completion of `key` (colour, direction[, shape[, background]]) is in the split:
    train has what is not held out; eval has only what is (everything when nothing is held out)."""
    if not cfg.holdout:
        return True
    if len(key) == 4:
        return held_out(cfg, *key) == (split == "eval")
    c, d, s = (*key, None)[:3]
    nxt = [(x,) for x in cfg.shapes] if s is None else [(x,) for x in cfg.backgrounds if x != c]
    return any(_in_split(cfg, split, *key, *n) for n in nxt)


def split_shapes(cfg: WorldConfig, split: str, color: str, direction: str) -> list[str]:
    """The shapes a split draws for a (colour, direction) pair (see held_out)."""
    return [s for s in cfg.shapes if _in_split(cfg, split, color, direction, s)]


def split_backgrounds(cfg: WorldConfig, split: str, color: str, direction: str, shape: str) -> list[str]:
    """The backgrounds (never the shape's colour) a split draws for a (colour, direction, shape)."""
    return [b for b in cfg.backgrounds if b != color and _in_split(cfg, split, color, direction, shape, b)]


def combos(cfg: WorldConfig, split: str) -> list[tuple[str, str]]:
    """(colour, direction) pairs a split draws from: those with a shape in the split (split_shapes)."""
    every = [(c, d) for c in cfg.shape_colors for d in cfg.directions]
    return [p for p in every if split_shapes(cfg, split, *p)]


def _parse_size(size: str) -> tuple[int, int]:
    w, h = size.split("x")
    return int(w), int(h)


def _motion(rng: np.random.Generator, cfg: WorldConfig, direction: str, n: int, w: int, h: int):
    """(speed px/frame, start as fractions of W, H) so the shape crosses `travel` of its free span
    in `n` frames without ever leaving the frame (no wrap-around)."""
    side = max(1, int(min(h, w) * cfg.shape_size))
    horizontal = direction in ("left", "right")
    room = (w if horizontal else h) - side
    dist = rng.uniform(*cfg.travel) * room
    along = rng.uniform(0, room - dist) + (dist if direction in ("left", "up") else 0.0)
    across = rng.uniform(0, (h if horizontal else w) - side)
    # Start a quarter pixel in: int() truncation then never rounds a position off the grid edge.
    x, y = (along, across) if horizontal else (across, along)
    return dist / max(1, n - 1), ((x + 0.25) / w, (y + 0.25) / h)


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def plan_scene(rng: np.random.Generator, cfg: WorldConfig, pairs: list[tuple[str, str]], w: int, h: int,
               prev_bg: str | None, split: str = "train") -> ScenePlan:
    """Draw one scene: a combo, a shape, a background unlike the shape and the previous scene."""
    color, direction = _pick(rng, pairs)
    shape = _pick(rng, split_shapes(cfg, split, color, direction))
    allowed = split_backgrounds(cfg, split, color, direction, shape)
    bgs = [b for b in allowed if b != prev_bg] or allowed
    background = _pick(rng, bgs)
    n = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    textured = bool(rng.random() < cfg.textured)
    speed, start = _motion(rng, cfg, direction, n, w, h)
    attrs = {"color": color, "shape": shape, "direction": direction, "background": background,
             "textured": textured}
    sprites: tuple[Sprite, ...] = ()
    if rng.random() < cfg.two_shapes:
        others = [c for c in cfg.shape_colors if c not in (color, background)]
        if others:
            c2, d2, s2 = _pick(rng, others), _pick(rng, list(cfg.directions)), _pick(rng, list(cfg.shapes))
            sp2, st2 = _motion(rng, cfg, d2, n, w, h)
            sprites = (Sprite(tuple(cfg.colors[c2]), s2, d2, sp2, st2, cfg.shape_size),)
            attrs["second"] = {"color": c2, "shape": s2, "direction": d2}
    scene = Scene(n, kind="moving", color=tuple(cfg.colors[color]), bg=tuple(cfg.colors[background]),
                  direction=direction, speed=speed, shape=shape, size=cfg.shape_size, start=start,
                  textured=textured, sprites=sprites)
    return ScenePlan(scene, caption_text(attrs), attrs)


def plan_video(cfg: WorldConfig, split: str, index: int) -> tuple[tuple[int, int], list[ScenePlan]]:
    """The size and scenes of one file; each file has its own generator, so files are independent."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    w, h = _parse_size(_pick(rng, list(cfg.sizes)))
    pairs = combos(cfg, split)
    plans: list[ScenePlan] = []
    for _ in range(int(rng.integers(cfg.scenes[0], cfg.scenes[1] + 1))):
        plans.append(plan_scene(rng, cfg, pairs, w, h, plans[-1].attributes["background"] if plans else None, split))
    return (w, h), plans


def sidecar_rows(plans: list[ScenePlan], fps: float) -> list[dict]:
    """The VIDEO.json rows: frame range (end exclusive), seconds, caption and attributes per scene."""
    rows, start = [], 0
    for p in plans:
        end = start + p.scene.num_frames
        rows.append({"start_frame": start, "end_frame": end, "start_s": start / fps, "end_s": end / fps,
                     "caption": p.caption, "attributes": p.attributes})
        start = end
    return rows


def write_world_video(cfg: WorldConfig, split: str, index: int, directory: Path) -> dict:
    """Encode one file and its sidecar; returns its index entry."""
    (w, h), plans = plan_video(cfg, split, index)
    path = directory / f"world-{index:04d}.mp4"
    truth = write_video(path, [p.scene for p in plans], fps=cfg.fps, width=w, height=h,
                        draw_frame_number=False, crf=cfg.crf, seed=cfg.seed * 100_003 + index)
    rows = sidecar_rows(plans, float(truth["fps"]))
    if cfg.sidecar in ("json", "both"):
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    if cfg.sidecar in ("txt", "both"):
        path.with_suffix(".txt").write_text(rows[0]["caption"] + "\n")
    return {"file": f"{split}/{path.name}", "split": split, "width": w, "height": h,
            "num_frames": truth["num_frames"], "cuts": truth["cuts"], "scenes": rows}


def write_world_image(cfg: WorldConfig, index: int, directory: Path) -> dict:
    """One still (any colour, shape and background, the shape anywhere) and its sidecar; its index entry."""
    rng = np.random.default_rng([cfg.seed, len(SPLITS), index])
    w, h = _parse_size(_pick(rng, list(cfg.sizes)))
    color, shape = _pick(rng, list(cfg.shape_colors)), _pick(rng, list(cfg.shapes))
    background = _pick(rng, [b for b in cfg.backgrounds if b != color])
    side = max(1, int(min(h, w) * cfg.shape_size))
    start = ((rng.uniform(0, w - side) + 0.25) / w, (rng.uniform(0, h - side) + 0.25) / h)
    textured = bool(rng.random() < cfg.textured)
    scene = Scene(1, kind="static", color=tuple(cfg.colors[color]), bg=tuple(cfg.colors[background]), shape=shape,
                  size=cfg.shape_size, start=start, textured=textured)
    path = write_image(directory / f"image-{index:04d}.{cfg.image_format}", scene, width=w, height=h,
                       seed=cfg.seed * 100_003 + 50_000 + index)
    attrs = {"color": color, "shape": shape, "direction": None, "background": background, "textured": textured}
    rows = [{"start_frame": 0, "end_frame": 1, "start_s": None, "end_s": None, "caption": caption_text(attrs),
             "attributes": attrs}]
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return {"file": f"train/{path.name}", "split": "train", "media_type": "image", "width": w, "height": h,
            "num_frames": 1, "cuts": [], "scenes": rows}


def write_world(cfg: WorldConfig, out_dir: str | Path, progress=None) -> dict:
    """Write the train and eval files, the train images, their sidecars and DIR/world.json; returns the index."""
    out = Path(out_dir)
    entries = []
    for split, count in (("train", cfg.videos), ("eval", cfg.eval_videos)):
        directory = out / split
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            entries.append(write_world_video(cfg, split, i, directory))
            if progress:
                progress(entries[-1])
    for i in range(cfg.images):
        entries.append(write_world_image(cfg, i, out / "train"))
    index = {
        "config": cfg.model_dump(mode="json"),
        "holdout": list(cfg.holdout),
        "counts": {s: {"videos": sum(e["split"] == s and "media_type" not in e for e in entries),
                       "images": sum(e["split"] == s and e.get("media_type") == "image" for e in entries),
                       "scenes": sum(len(e["scenes"]) for e in entries if e["split"] == s)} for s in SPLITS},
        "files": entries,
    }
    (out / "world.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def world_clips(root: str | Path, split: str | None = None) -> list[dict]:
    """Clip rows (uri, frames, seconds, fps, caption, attributes) of every scene in a world's index."""
    from infra import storage

    root = str(root)
    index = json.loads(storage.read_text(storage.join(root, "world.json")))  # local or s3://
    fps = float(index["config"]["fps"])
    rows = []
    for e in index["files"]:
        if split and e["split"] != split:
            continue
        image = e.get("media_type") == "image"
        for s in e["scenes"]:
            rows.append({"uri": storage.join(root, e["file"]), "split": e["split"], "fps": None if image else fps,
                         "media_type": "image" if image else "video", **s})
    return rows
