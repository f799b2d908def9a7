"""The demo page (infra/demo_page.py): held-out prompts beside animated previews of their clips, the loss
curve and the curation funnel, all of which load in a real headless browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from infra.demo_page import PREVIEW_SIZE, animated_preview, demo_page
from tests.browser import chromium, loaded_images, needs_chromium
from training.sample import write_mp4

PROMPTS = [("a red square moves right on a white background", {"color": "red", "shape": "square", "direction": "right"}),
           ("a blue circle moves up on a black background", {"color": "blue", "shape": "circle", "direction": "up"})]


def _moving_square(t: int = 9, size: int = 64) -> np.ndarray:
    frames = np.full((t, size, size, 3), 255, np.uint8)
    for i in range(t):
        frames[i, 24:40, 4 + 4 * i : 20 + 4 * i] = (220, 30, 30)
    return frames


def _demo_output(root: Path) -> dict:
    """What run_demo leaves behind, made by hand: eval mp4s + eval.json, a metrics CSV, the funnel PNG."""
    (root / "eval").mkdir(parents=True)
    per_prompt = []
    for i, (prompt, attrs) in enumerate(PROMPTS):
        write_mp4(_moving_square(), root / "eval" / f"eval-{i:03d}.mp4", fps=8)
        per_prompt.append({"prompt": prompt, "attributes": attrs, "checked": {**attrs, "direction": "right"}})
    (root / "eval" / "eval.json").write_text(json.dumps({"sample": {"per_prompt": per_prompt}}))
    (root / "train" / "logs").mkdir(parents=True)
    (root / "train" / "logs" / "metrics.csv").write_text("step,loss\n20,1.1\n40,0.8\n60,0.6\n")
    (root / "curate" / "report").mkdir(parents=True)
    Image.new("RGB", (400, 120), (74, 120, 181)).save(root / "curate" / "report" / "funnel.png")
    write_mp4(_moving_square(), root / "samples" / "sample-0-000.mp4", fps=8)
    stages = {n: {"detail": f"{n} done", "seconds": 1.0} for n in ("curate", "train", "sample", "eval")}
    stages["sample"]["prompt"] = PROMPTS[0][0]
    return {"output": str(root), "stages": stages, "total_seconds": 4.0, "mp4": str(root / "samples" / "sample-0-000.mp4"),
            "report": str(root / "curate" / "report" / "index.html"), "checkpoint": str(root / "train" / "checkpoint_00000060")}


def test_preview_is_an_animated_looping_webp(tmp_path):
    write_mp4(_moving_square(), tmp_path / "a.mp4", fps=8)
    with Image.open(animated_preview(tmp_path / "a.mp4", tmp_path / "a.webp")) as im:
        assert im.format == "WEBP" and im.is_animated and im.n_frames == 9 and im.size == (PREVIEW_SIZE, PREVIEW_SIZE)
        first = np.asarray(im.convert("RGB"))
        im.seek(8)
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - first).mean() > 1  # the square moved


def test_page_shows_prompts_beside_their_clips_the_loss_curve_and_the_funnel(tmp_path):
    summary = _demo_output(tmp_path)
    page = demo_page(summary, str(tmp_path / "train"), str(tmp_path / "eval"))
    for i, (prompt, _) in enumerate(PROMPTS):
        assert f'<img src="eval/eval-{i:03d}.webp"' in page and prompt in page
    assert "direction &#10007; (right)" in page  # the second clip went right, not up: the verdict says so
    assert '<img src="loss.png"' in page and '<img src="curate/report/funnel.png"' in page
    assert (tmp_path / "loss.png").stat().st_size > 1000


@needs_chromium
def test_demo_page_renders_in_headless_chromium(tmp_path):
    summary = _demo_output(tmp_path / "out")
    index = tmp_path / "out" / "index.html"
    index.write_text(demo_page(summary, str(tmp_path / "out" / "train"), str(tmp_path / "out" / "eval")))
    loaded = loaded_images(index, tmp_path)
    assert set(loaded) == {"eval/eval-000.webp", "eval/eval-001.webp", "loss.png", "curate/report/funnel.png"}
    assert all(v != "ERR" and int(v) >= PREVIEW_SIZE for v in loaded.values()), loaded  # Chromium decoded each one
    dom = chromium(tmp_path, "--dump-dom", index.as_uri()).stdout
    assert dom.count("<figure>") == len(PROMPTS) and "Training loss" in dom
