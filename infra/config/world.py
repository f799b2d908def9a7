"""The world section: the synthetic video world of `reelforge demo-data`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


class WorldConfig(_Section):
    """world: the synthetic video world of `reelforge demo-data` (infra/world.py) and its eval split."""

    seed: int = 0
    videos: int = Field(150, ge=1, description="training files (DIR/train/): ~440 scenes, what train-captioner needs")
    eval_videos: int = Field(30, ge=0, description="eval files (DIR/eval/): only held-out combos when holdout is set")
    images: int = Field(0, ge=0, description="still images in DIR/train/ (image-0000.png + .json): one-frame clips")
    image_format: Literal["png", "jpg", "webp"] = "png"
    scenes: list[int] = [2, 4]  # scenes per file: min, max
    frames: list[int] = [16, 32]  # frames per scene: min, max
    sizes: list[str] = ["64x64"]  # WxH, one picked per file
    fps: int = Field(8, ge=1)
    colors: dict[str, list[int]] = {  # the palette (RGB) that shape colours and backgrounds name
        "red": [220, 40, 40], "green": [40, 180, 60], "blue": [40, 80, 220], "yellow": [235, 215, 50],
        # black and white stay inside curate's black_luma/washed_luma, so default filters keep them
        "black": [40, 40, 40], "gray": [128, 128, 128], "white": [220, 220, 220]}
    shape_colors: list[str] = ["red", "green", "blue", "yellow"]
    backgrounds: list[str] = ["black", "gray", "white"]
    shapes: list[Literal["square", "circle", "triangle"]] = ["square", "circle", "triangle"]
    directions: list[Literal["left", "right", "up", "down"]] = ["left", "right", "up", "down"]
    textured: float = Field(0.5, ge=0, le=1, description="chance a background has stripes and grain")
    two_shapes: float = Field(0.0, ge=0, le=1, description="chance a scene has a second moving shape")
    shape_size: float = Field(0.25, gt=0, le=0.5, description="shape side / short side of the frame")
    travel: list[float] = [0.5, 0.9]  # fraction of the free span a shape crosses in its scene (its speed)
    # combos never in train files, "color:direction[:shape[:background]]": "red:left" holds the pair out with
    # every shape and background; "red:left:circle:black" only that one caption (the eval split has only these)
    holdout: list[str] = []
    sidecar: Literal["json", "txt", "both"] = "json"  # txt: one caption per file, single-scene files only
    crf: int = Field(18, ge=0, le=51)
    eval_prompts: int = Field(8, ge=1, description="prompts `reelforge eval` samples per run")

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        for key in ("scenes", "frames", "travel"):
            v = getattr(self, key)
            if len(v) != 2 or not 0 < v[0] <= v[1]:
                raise ValueError(f"{key} must be [min, max] with 0 < min <= max, got {v}")
        if self.frames[0] < 2 or self.travel[1] > 1:
            raise ValueError("frames min must be >= 2 and travel max <= 1")
        bad = [c for c in self.colors.values() if len(c) != 3 or not all(0 <= x <= 255 for x in c)]
        unknown = sorted(set(self.shape_colors + self.backgrounds) - set(self.colors))
        if bad or unknown:
            raise ValueError(f"colors must map names to [r, g, b] in 0..255 (bad: {bad}); unknown names: {unknown}")
        for size in self.sizes:
            w, _, h = size.partition("x")
            if not (w.isdigit() and h.isdigit() and int(w) >= 16 and int(h) >= 16):
                raise ValueError(f"sizes entries are WxH with both >= 16, got {size!r}")
        if self.scenes[1] > 1 and len(self.backgrounds) < 2:
            raise ValueError("hard cuts need >= 2 backgrounds (consecutive scenes differ in background)")
        for combo in self.holdout:
            parts, names = combo.split(":"), (self.shape_colors, self.directions, self.shapes, self.backgrounds)
            if not (2 <= len(parts) <= 4 and all(p in n for p, n in zip(parts, names))):
                raise ValueError("holdout entries are 'color:direction[:shape[:background]]' (shape_colors, "
                                 f"directions, shapes, backgrounds), got {combo!r}")
        held = {tuple(c.split(":")) for c in self.holdout}
        if all(any(k[:n] in held for n in (2, 3, 4)) for k in ((c, d, s, b) for c in self.shape_colors
               for d in self.directions for s in self.shapes for b in self.backgrounds if b != c)):
            raise ValueError("holdout leaves no combination to train on")
        if self.sidecar != "json" and self.scenes != [1, 1]:
            raise ValueError("sidecar 'txt'/'both' needs single-scene files (scenes: [1, 1])")
        return self
