"""OUTPUT/index.html of `reelforge demo`: the stage table, the eval's held-out prompts beside their
generated clips (a grid of animated WebP previews, which any browser plays without an H.264 codec),
the DiT's loss curve, and the curation report's funnel."""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path

PREVIEW_SIZE = 128  # pixels: the 64 px samples scaled up (nearest), so the shapes stay sharp


def animated_preview(mp4: str | Path, out: str | Path, fps: float = 8.0) -> str:
    """mp4 -> an animated, endlessly looping WebP beside it (decoded with PyAV); returns its path."""
    import av
    from PIL import Image

    with av.open(str(mp4)) as f:
        frames = [fr.to_image() for fr in f.decode(video=0)]
    if not frames:
        raise ValueError(f"{mp4}: no frames")
    scale = max(1, PREVIEW_SIZE // max(frames[0].size))
    frames = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in frames]
    frames[0].save(str(out), format="WEBP", save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                   loop=0, lossless=True)
    return str(out)


def loss_curve(rows: list[dict], out: str | Path) -> str | None:
    """The logged loss against the step as a PNG (matplotlib, headless); None when nothing was logged."""
    points = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(*zip(*points), marker="o", color="#4a78b5")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title("DiT training loss")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    Path(out).write_bytes(buf.getvalue())
    return str(out)


def _verdict(expected: dict, checked: dict) -> str:
    """`colour ✓ direction ✗ shape ✓`: what the checker saw in the clip against the prompt."""
    marks = []
    for key in ("color", "direction", "shape"):
        if key in expected:
            ok = checked.get(key) == expected[key]
            marks.append(f"{key} {'&#10003;' if ok else '&#10007; (' + html.escape(str(checked.get(key))) + ')'}")
    return " ".join(marks)


def eval_grid(eval_dir: str, root: str) -> str:
    """The held-out prompts with their generated clips as animated previews, and the checker's verdict."""
    report_path = Path(eval_dir, "eval.json")
    if not report_path.exists():
        return "<p>no eval</p>"
    per_prompt = json.loads(report_path.read_text()).get("sample", {}).get("per_prompt", [])
    cells = []
    for i, p in enumerate(per_prompt):
        mp4 = Path(eval_dir, f"eval-{i:03d}.mp4")
        if not mp4.exists():
            continue
        webp = animated_preview(mp4, mp4.with_suffix(".webp"))
        cells.append(f'<figure><img src="{html.escape(os.path.relpath(webp, root))}" width="{PREVIEW_SIZE}" '
                     f'alt="{html.escape(p["prompt"])}"><figcaption>{html.escape(p["prompt"])}<br><small>'
                     f'{_verdict(p.get("attributes", {}), p.get("checked", {}))}</small></figcaption></figure>')
    return f'<div class="grid">{"".join(cells)}</div>'


def demo_page(summary: dict, train_dir: str, eval_dir: str) -> str:
    """OUTPUT/index.html: the stage table, the eval grid, the loss curve, the funnel, links and the sample mp4."""
    from training.metrics import read_metrics

    root = summary["output"]

    def rel(path: str) -> str:
        return html.escape(os.path.relpath(path, root))

    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(r['detail'])}</td><td>{r['seconds']:.1f}</td></tr>"
                   for n, r in summary["stages"].items())
    curve = loss_curve(read_metrics(train_dir), Path(root, "loss.png"))
    funnel = Path(os.path.dirname(summary["report"]), "funnel.png")
    prompt = html.escape(summary["stages"]["sample"]["prompt"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ReelForge demo</title>
<style>body{{font-family:sans-serif;max-width:64em;margin:2em auto}}td,th{{padding:.2em .6em;text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}.grid{{display:flex;flex-wrap:wrap;gap:1em}}
figure{{margin:0;width:{PREVIEW_SIZE + 60}px}}figcaption{{font-size:.85em}}img{{image-rendering:pixelated}}</style>
</head><body>
<h1>ReelForge demo</h1>
<table><tr><th>stage</th><th>result</th><th>seconds</th></tr>{rows}
<tr><th>total</th><th></th><th>{summary['total_seconds']:.1f}</th></tr></table>
<h2>Held-out prompts and what the DiT made of them</h2>
<p>{html.escape(summary["stages"]["eval"]["detail"])}</p>
{eval_grid(eval_dir, root)}
<h2>Training loss</h2>
{f'<img src="{rel(curve)}" alt="loss curve">' if curve else '<p>no loss logged</p>'}
<h2>Curation funnel</h2>
{f'<img src="{rel(str(funnel))}" alt="curation funnel">' if funnel.exists() else '<p>no curation report</p>'}
<h2>Sample</h2><p>{prompt}</p>
<video src="{rel(summary['mp4'])}" controls loop autoplay muted width="256"></video>
<h2>Outputs</h2><ul>
<li><a href="{rel(summary['report'])}">curation report</a> (funnel, measures, contact sheets, failures)</li>
<li>tables: <code>curate/{{videos,clips,failures}}/</code>, <code>captioned/clips/</code>,
<code>precompute/latents/</code></li>
<li>checkpoint: <code>{rel(summary['checkpoint'])}</code></li>
<li>eval: <code>eval/eval.json</code>, its mp4s and previews; the resolved config: <code>config.yaml</code></li>
</ul></body></html>
"""
