"""Report pages of the dataset-scale jobs, in the curate report's template (report.page):
`reelforge dedup` (the funnel: clips, groups, clips removed per kind) and `reelforge balance`
(cluster sizes before and after the cap, and the share a weighted sampler gives each cluster)."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from infra import storage
from pipelines.report import _img, _pyplot, _save, page, table_html


def _kinds(manifest: dict) -> list[str]:
    """The kinds the run was configured with (all in the counts when the manifest has no config)."""
    return manifest.get("config", {}).get("dedup", {}).get("kinds") or list(manifest["counts"]["removed_by_kind"])


def dedup_funnel_chart(counts: dict, kinds: list[str], output: str) -> str:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = ["clips", "in groups", "groups", "removed", "kept"]
    vals = [counts["dataset_clips"], counts["clips_in_groups"], counts["groups"], counts["removed"],
            counts["dataset_kept"]]
    a.barh(names[::-1], vals[::-1], color="#4a78b5")
    for i, v in enumerate(vals[::-1]):
        a.text(v, i, f" {v}", va="center")
    a.set_title("dedup funnel (every indexed output)")
    removed = [counts["removed_by_kind"][k] for k in kinds]
    b.barh(kinds[::-1], removed[::-1], color="#c0504d")
    b.set_title("clips removed, by what linked them")
    return _save(fig, output, "dedup_funnel.png")


def write_dedup_report(output: str, manifest: dict) -> str:
    c = manifest["counts"]
    rows = [("curate outputs in this run", c["inputs"]), ("clips parts read (new)", c["parts_new"]),
            ("clips parts skipped (indexed before)", c["parts_skipped"]), ("clips read this run", c["clips_read"]),
            ("clips in the dataset", c["dataset_clips"]), ("clips in duplicate groups", c["clips_in_groups"]),
            ("groups", c["groups"]), ("clips removed", c["removed"]), ("clips kept", c["dataset_kept"])]
    kinds = _kinds(manifest)
    rows += [(f"pairs found this run: {k}", c["pairs"][k]) for k in kinds]
    rows += [(f"removed, linked by {k}", c["removed_by_kind"][k]) for k in kinds]
    index = [(f"{kind}: {k}", v) for kind, d in manifest.get("index", {}).items() if isinstance(d, dict)
             for k, v in d.items()]
    body = (f"<h2>Dedup funnel</h2>{table_html(('', 'count'), rows, '')}{_img(dedup_funnel_chart(c, kinds, output), 'funnel')}"
            f"<h2>Index</h2><p>Run {manifest['run']}; connected components settled in "
            f"{manifest['component_steps']} star steps.</p>{table_html(('', ''), index, 'no index read')}")
    uri = storage.join(output, "report", "index.html")
    storage.write_text(uri, page("Dedup report", output, body))
    return uri


def balance_chart(clusters: dict, output: str) -> str:
    plt = _pyplot()
    sizes, after = np.array(clusters["sizes"], float), np.array(clusters["kept_expected"], float)
    share = after * np.array(clusters["sample_weight"], float)
    order = np.argsort(-sizes)
    x = np.arange(len(sizes))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    a.bar(x, sizes[order], color="#bbbbbb", label="before (clips)")
    a.bar(x, after[order], color="#4a78b5", width=0.5, label="after the cap (expected)")
    a.set_xlabel("cluster, largest first")
    a.set_title("cluster sizes before and after")
    a.legend(fontsize=7)
    b.bar(x, (sizes / max(sizes.sum(), 1))[order], color="#bbbbbb", label="share of clips")
    b.bar(x, (share / max(share.sum(), 1e-12))[order], color="#c0504d", width=0.5, label="share sampled (weights)")
    b.set_xlabel("cluster, largest first")
    b.set_title("what training sees per cluster")
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, output, "balance.png")


def write_balance_report(output: str, manifest: dict) -> str:
    c, cl = manifest["counts"], manifest["clusters"]
    sizes = np.array(cl["sizes"])
    rows = [("curate outputs", c["inputs"]), ("clips clustered", c["clips"]), ("clusters", c["clusters"]),
            ("largest / median / smallest cluster", f"{sizes.max()} / {int(np.median(sizes))} / {sizes.min()}"),
            ("clips kept after the cap (expected)", c["kept_expected"]),
            ("sample_weight min / max", f"{min(cl['sample_weight']):.3g} / {max(cl['sample_weight']):.3g}")]
    body = f"<h2>Concept balance</h2>{table_html(('', ''), rows, '')}{_img(balance_chart(cl, output), 'balance')}"
    uri = storage.join(output, "report", "index.html")
    storage.write_text(uri, page("Balance report", output, body))
    return uri
