"""The data-quality report of a curate output: DST/report/index.html plus PNGs, all links relative.

The funnel (inputs -> ok -> clips -> kept, and each drop reason), a histogram of every measure
with its filter thresholds drawn, duration and resolution distributions, the dropped clips listed
by reason, and contact sheets of kept and dropped clips with their scores (and captions when the
table has them). Clips dropped as unsafe are listed, never shown: no thumbnail of one is decoded,
cached or drawn. Thumbnails are cached under report/thumbs/, so a report rebuilt without decoding
(after --refilter) still shows them. `page` is the template the dedup and balance reports share.
"""

from __future__ import annotations

import collections
import html
import io
import logging

import cv2
import numpy as np
import pyarrow as pa

from infra import storage
from infra.config import ReelForgeConfig
from pipelines import filters
from infra.schema import CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA

log = logging.getLogger(__name__)
MEASURES = ["motion", "sharpness", "brightness", "black_ratio", "washed_ratio", "text_ratio", "aesthetic", "nsfw_score"]
UNSHOWN = {"unsafe"}  # drop reasons whose clips are listed but never pictured
LISTED = 20  # dropped clip ids listed per reason
SHEET_TILES = 24
THUMB_SIDE = 96


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: str, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    storage.write_bytes(storage.join(output, "report", name), buf.getvalue())
    return name


def _thresholds(cfg: ReelForgeConfig) -> dict[str, list[tuple[str, float]]]:
    """{value name: [(filter key, threshold), ...]} for the filters that are on."""
    out: dict[str, list] = collections.defaultdict(list)
    for key, name, _ in filters.FILTERS:
        v = getattr(cfg.curate.filters, key)
        if v is not None:
            out[name].append((key, float(v)))
    return out


# ----------------------------------------------------------------------------- charts
def funnel_chart(stats: dict, reasons: dict[str, int], output: str) -> str:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = ["inputs", "videos ok", "clips", "kept"]
    a.barh(names[::-1], [stats[n] for n in names][::-1], color="#4a78b5")
    a.set_title("funnel")
    for i, n in enumerate(names[::-1]):
        a.text(stats[n], i, f" {stats[n]}", va="center")
    if reasons:
        b.barh(list(reasons)[::-1], list(reasons.values())[::-1], color="#c0504d")
    b.set_title("clips dropped, by first failing filter")
    return _save(fig, output, "funnel.png")


def histogram(name: str, values: np.ndarray, lines: list[tuple[str, float]], output: str, log_x: bool = False) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3))
    v = values[np.isfinite(values)]
    if log_x:
        v = np.log10(np.maximum(v, 1e-3))
        lines = [(k, float(np.log10(max(t, 1e-3)))) for k, t in lines]
    ax.hist(v, bins=30, color="#4a78b5")
    for key, t in lines:
        ax.axvline(t, color="#c0504d", linestyle="--", label=key)
    if lines:
        ax.legend(fontsize=7)
    ax.set_title(f"{'log10 ' if log_x else ''}{name} (n={v.size})")
    return _save(fig, output, f"hist_{name}.png")


def resolution_chart(t: pa.Table, output: str) -> str:
    plt = _pyplot()
    sizes = collections.Counter(f"{w}x{h}" for w, h in zip(t["width"].to_pylist(), t["height"].to_pylist()))
    top = sizes.most_common(12)
    fig, ax = plt.subplots(figsize=(4.8, 3))
    ax.barh([k for k, _ in top][::-1], [n for _, n in top][::-1], color="#4a78b5")
    ax.set_title("clip resolution (w x h)")
    return _save(fig, output, "resolution.png")


# ----------------------------------------------------------------------------- contact sheets
def _thumbs(output: str, rows: list[dict], decode: bool) -> dict[str, np.ndarray | None]:
    """Middle-frame thumbnail per clip: the report's cache first, then (when allowed) the source video."""
    from infra.video import sample_video

    out: dict[str, np.ndarray | None] = {}
    todo: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        uri = storage.join(output, "report", "thumbs", f"{r['clip_id']}.png")
        if storage.exists(uri):
            out[r["clip_id"]] = cv2.imdecode(np.frombuffer(storage.read_bytes(uri), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        elif decode:
            mid = (r["start_frame"] + r["end_frame"]) // 2
            todo[r["uri"]].append({**r, "start_frame": mid, "end_frame": mid + 1})
    for src, clips in todo.items():
        try:
            frames, _ = sample_video(src, clips, k=1, short_side=THUMB_SIDE, pairs=False)
        except Exception as exc:  # noqa: BLE001 - a missing source shows as an empty tile
            log.warning("report: no thumbnails from %s: %s", src, exc)
            continue
        for c, f in zip(clips, frames[:, 0]):
            out[c["clip_id"]] = f
            ok, png = cv2.imencode(".png", np.ascontiguousarray(f[..., ::-1]))
            if ok:
                storage.write_bytes(storage.join(output, "report", "thumbs", f"{c['clip_id']}.png"), png.tobytes())
    return out


def _forget_unshown(output: str, clip_ids: list[str]) -> None:
    """Delete cached thumbnails of clips now dropped for an UNSHOWN reason (e.g. after --refilter)."""
    cached = set(storage.list_files(storage.join(output, "report", "thumbs"))) if clip_ids else set()
    for cid in clip_ids:
        uri = storage.join(output, "report", "thumbs", f"{cid}.png")
        if uri in cached:
            storage.delete(uri)


def _label(r: dict) -> str:
    short = {"motion": "mot", "sharpness": "sharp", "brightness": "bright", "text_ratio": "text", "aesthetic": "aes"}
    parts = [f"{v} {r[k]:.3g}" for k, v in short.items() if r.get(k) is not None and np.isfinite(r[k])]
    lines = [r["clip_id"][-12:], " ".join(parts[:3]), " ".join(parts[3:])]
    if r.get("drop_reason"):
        lines.append(f"dropped: {r['drop_reason']}")
    if r.get("caption"):
        lines.append(r["caption"][:40])
    return "\n".join(x for x in lines if x)


def contact_sheet(rows: list[dict], thumbs: dict, title: str, output: str, name: str) -> str:
    plt = _pyplot()
    cols = 6
    n = max(1, len(rows))
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(cols * 2.2, 2.3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        img = thumbs.get(r["clip_id"])
        ax.imshow(img if img is not None else np.full((THUMB_SIDE, THUMB_SIDE, 3), 200, np.uint8))
        ax.set_title(_label(r) if img is not None else _label(r) + "\n(no thumbnail)", fontsize=6)
    if not rows:
        axes.flat[0].text(0.5, 0.5, "none", ha="center")
    fig.suptitle(title)
    return _save(fig, output, name)


def _sheet_rows(keep: np.ndarray, reasons: list) -> tuple[np.ndarray, np.ndarray]:
    """Row indices: up to SHEET_TILES kept clips, and dropped clips taken in turn from every drop reason
    (except UNSHOWN ones)."""
    kept = np.flatnonzero(keep)[:SHEET_TILES]
    by_reason: dict[str, list] = collections.defaultdict(list)
    for i in np.flatnonzero(~keep):
        if reasons[i] not in UNSHOWN and len(by_reason[reasons[i]]) < SHEET_TILES:
            by_reason[reasons[i]].append(i)
    dropped: list[int] = []
    while len(dropped) < SHEET_TILES and any(by_reason.values()):
        for reason in sorted(by_reason, key=str):
            if by_reason[reason] and len(dropped) < SHEET_TILES:
                dropped.append(by_reason[reason].pop(0))
    return kept, np.array(dropped, dtype=np.int64)


# ----------------------------------------------------------------------------- the page
def _read(output: str, table: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    uri = storage.join(output, table)
    return storage.read_table(uri, schema=schema, columns=columns)


def write_report(output: str, cfg: ReelForgeConfig, decode: bool = True) -> str:
    """Write DST/report/index.html and its PNGs; returns the page's URI. `decode=False` never opens video."""
    videos = _read(output, "videos", VIDEOS_SCHEMA, ["status"])
    failures = _read(output, "failures", FAILURES_SCHEMA, ["stage"])
    clips_t = storage.read_table(storage.join(output, "clips"), schema=CLIPS_SCHEMA)
    cols = clips_t.column_names
    clips_t = clips_t.select([c for c in cols if c != "embedding"])  # the largest column, unused here
    keep = np.array([k is not False for k in clips_t["keep"].to_pylist()], dtype=bool)  # null: not decided yet
    drop_reasons = clips_t["drop_reason"].to_pylist()
    stats = {"inputs": videos.num_rows, "videos ok": videos["status"].to_pylist().count("ok"),
             "clips": clips_t.num_rows, "kept": int(keep.sum())}
    reasons = filters.drop_counts([r for r, k in zip(drop_reasons, keep) if not k])
    lines = _thresholds(cfg)
    values = filters.derived_values(clips_t)
    charts = [funnel_chart(stats, reasons, output)]
    dists = [histogram("duration_s", values["duration_s"], lines["duration_s"], output),
             resolution_chart(clips_t, output)]
    hists = [histogram(m, values[m], lines[m], output, log_x=(m == "sharpness"))
             for m in MEASURES if np.isfinite(values[m]).any()]
    _forget_unshown(output, [c for c, r in zip(clips_t["clip_id"].to_pylist(), drop_reasons) if r in UNSHOWN])
    kept_idx, dropped_idx = _sheet_rows(keep, drop_reasons)
    kept, dropped = clips_t.take(kept_idx).to_pylist(), clips_t.take(dropped_idx).to_pylist()
    thumbs = _thumbs(output, kept + dropped, decode)
    sheets = [contact_sheet(kept, thumbs, f"kept clips (first {len(kept)} of {stats['kept']})", output, "kept.png"),
              contact_sheet(dropped, thumbs, f"dropped clips ({len(dropped)} of {clips_t.num_rows - stats['kept']})",
                            output, "dropped.png")]
    page = _html(output, stats, reasons, collections.Counter(failures["stage"].to_pylist()), charts, dists, hists,
                 sheets, cols, _dropped_list(clips_t, keep, drop_reasons))
    m = cfg.curate.measures
    if m.clip_model and m.allow_random_weights and not m.clip_pretrained:  # allowed, so said loudly
        page = page.replace("<h2>Funnel</h2>", f'<p style="color:#b00;font-weight:bold">WARNING: THE OPEN_CLIP TOWER '
                            f'{html.escape(m.clip_model)} IS RANDOMLY INITIALISED: EMBEDDINGS AND AESTHETIC SCORES '
                            'MEAN NOTHING</p>\n<h2>Funnel</h2>', 1)
    uri = storage.join(output, "report", "index.html")
    storage.write_text(uri, page)
    return uri


def _dropped_list(t: pa.Table, keep: np.ndarray, reasons: list) -> dict[str, list[str]]:
    """{reason: up to LISTED "clip_id (score)" lines} of the dropped clips."""
    nsfw = t["nsfw_score"].to_pylist() if "nsfw_score" in t.column_names else [None] * t.num_rows
    out: dict[str, list[str]] = collections.defaultdict(list)
    for i, cid in zip(np.flatnonzero(~keep), t.take(np.flatnonzero(~keep))["clip_id"].to_pylist()):
        r = reasons[i] or "not decided"
        if len(out[r]) < LISTED:
            out[r].append(cid + (f" (nsfw {nsfw[i]:.2f}, not shown)" if r in UNSHOWN and nsfw[i] is not None else ""))
    return dict(out)


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def table_html(header: tuple[str, str], rows, empty: str) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return (f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
            f"{body or f'<tr><td colspan=2>{html.escape(empty)}</td></tr>'}</table>")


def page(title: str, subtitle: str, body: str) -> str:
    """The report pages' shared template: one self-contained HTML file, images beside it."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ReelForge {html.escape(title.lower())}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 10px;text-align:left}} figure{{display:inline-block;margin:6px}}
img{{max-width:100%;border:1px solid #ddd}} h2{{border-bottom:1px solid #ccc}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
{body}
</body></html>
"""


def _html(output, stats, reasons, failed, charts, dists, hists, sheets, cols, dropped) -> str:
    listed = "".join(f"<h3>{html.escape(r)} ({reasons.get(r, len(ids))})</h3><p>{html.escape(', '.join(ids))}</p>"
                     for r, ids in dropped.items()) or "<p>no clip dropped</p>"
    body = f"""<h2>Funnel</h2>{table_html(("stage", "count"), stats.items(), "")}
{table_html(("dropped by", "clips"), reasons.items(), "no clip dropped")}
{table_html(("failed at", "inputs"), sorted(failed.items()), "no input failed")}
{''.join(_img(c, 'funnel') for c in charts)}
<h2>Durations and resolutions</h2>{''.join(_img(d, d[:-4]) for d in dists)}
<h2>Measures</h2><p>Dashed lines: the filter thresholds in force.</p>{''.join(_img(h, h[5:-4]) for h in hists)}
<h2>Dropped clips, by reason</h2><p>The first {LISTED} of each reason. Clips dropped as unsafe are listed
without thumbnails.</p>{listed}
<h2>Contact sheets</h2>{''.join(_img(s, s[:-4] + ' clips') for s in sheets)}
<p>Columns in the clips table: {html.escape(', '.join(cols))}</p>"""
    return page("Curate report", output, body)
