"""Open-Sora-style score suffixes on captions, shared by the caption job (which appends a clip's
scores, `caption.score_suffix`) and sampling (which appends target scores, `sample.target_scores`),
so a prompt at sampling time ends the way the training captions did."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

# Labels for score columns in the suffix (Open-Sora 1.2 appends "aesthetic score", "motion score").
SCORE_LABELS = {"aesthetic": "aesthetic score", "motion": "motion", "sharpness": "sharpness",
                "brightness": "brightness", "text_ratio": "text ratio"}


def _number(v: float) -> str:
    """One decimal, without a trailing '.0' (5.5 -> '5.5', 10.0 -> '10')."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def score_suffix(row: Mapping, keys: Sequence[str] | Mapping[str, str]) -> str:
    """'aesthetic score 5.5, motion 10' from a row's score columns; missing or NaN ones left out."""
    labels = dict(keys) if isinstance(keys, Mapping) else {k: SCORE_LABELS.get(k, k) for k in keys}
    parts = []
    for key, label in labels.items():
        v = row.get(key)
        if v is None:
            continue
        v = float(v)
        if math.isnan(v):
            continue
        parts.append(f"{label.replace('_', ' ')} {_number(v)}")
    return ", ".join(parts)


def append_scores(caption: str, row: Mapping, keys: Sequence[str] | Mapping[str, str]) -> str:
    """The caption with its score suffix as a last sentence (unchanged when there are no scores)."""
    suffix = score_suffix(row, keys) if keys else ""
    if not suffix:
        return caption
    caption = caption.rstrip()
    if caption and not re.search(r"[.!?][\"')\]]*$", caption):
        caption += "."
    return f"{caption} {suffix}.".lstrip()


def target_suffix_row(keys: Sequence[str], targets: Mapping[str, float]) -> dict[str, float]:
    """The row of target scores for `keys` (caption.score_suffix; all of targets when empty); a
    key without a target is a ValueError naming it and where to set it."""
    keys = list(keys) or list(targets)
    if not keys:
        raise ValueError("no scores to append: set sample.target_scores (e.g. {aesthetic: 6.5}) "
                         "and caption.score_suffix as the captions had them")
    missing = [k for k in keys if k not in targets]
    if missing:
        raise ValueError(f"caption.score_suffix names {missing} but sample.target_scores has no value for them")
    return {k: float(targets[k]) for k in keys}
