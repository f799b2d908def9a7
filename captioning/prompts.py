"""Captioning prompts, per-row templates and caption clean-up (score suffixes: infra/captions.py)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from infra.captions import SCORE_LABELS, append_scores, score_suffix  # noqa: F401  (re-exported)

DEFAULT_PROMPT = (
    "Describe this video in detail: the main subjects and their actions, the setting, the "
    "lighting and colours, and how the camera moves."
)
PROMPTS = {
    "dense": DEFAULT_PROMPT,
    "short": "Describe this video in one sentence.",
    # Templates take clip columns by name; see render_prompt.
    "dense_with_length": (
        "This clip is {duration_s:.1f} seconds long. Describe it in detail: the main subjects "
        "and their actions, the setting, the lighting and colours, and how the camera moves."
    ),
}
_SPECIAL = re.compile(
    r"<\|[^|<>]{1,40}\|>"  # <|im_end|>, <|endoftext|>, <|video_pad|>
    r"|</?s>|<pad>|<unk>|<eos>|<bos>|<image>|<video>|<end_of_turn>|<start_of_turn>"
    r"|\[(?:CLS|SEP|PAD|MASK|UNK)\]|\[unused\d+\]"
)
_ROLE = re.compile(r"^\s*(?:assistant|ASSISTANT|Assistant|model)\s*[:\n]\s*")
# A sentence end: . ! or ? (and closing quotes/brackets) followed by a space or the end, so
# "5.5" and "e.g.x" are not sentence ends.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "st.")


def template_fields(template: str) -> list[str]:
    """Names of the {fields} a prompt template uses."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def render_prompt(template: str, row: Mapping) -> str:
    """Fill a template's {fields} from a clip row; a missing field is a KeyError naming it."""
    missing = [f for f in template_fields(template) if f not in row]
    if missing:
        raise KeyError(f"prompt template needs column(s) {missing} that the clip row lacks")
    return template.format_map(row)


def _strip_echo(text: str, prompt: str) -> str:
    """Text after a leading copy of the prompt, matched on letters and digits only (tokenizers
    lowercase, drop accents or respace punctuation when decoding)."""
    want = [c for c in prompt.lower() if c.isalnum()]
    if not want:
        return text
    k = 0
    for pos, c in enumerate(text):
        if c.isalnum():
            if c.lower() != want[k]:
                return text
            k += 1
            if k == len(want):
                rest = text[pos + 1 :]
                return rest.lstrip(" \t\n:.,;-")
        elif not (c.isspace() or c in string.punctuation):
            return text
    return text


def clean_caption(text: str, prompt: str = "") -> str:
    """Strip special tokens, a role marker and an echoed prompt; collapse whitespace; cut an
    unfinished last sentence (a text with no sentence end at all is kept whole)."""
    text = _SPECIAL.sub(" ", text or "")
    text = _ROLE.sub("", text)
    text = " ".join(text.split())
    if prompt:
        text = _ROLE.sub("", _strip_echo(text, " ".join(prompt.split())))
    text = re.sub(r"\s+([.,!?;:])", r"\1", text).strip()  # "a cat ." -> "a cat."
    ends = [m for m in _SENTENCE_END.finditer(text)
            if not text[: m.end()].lower().endswith(_ABBREVIATIONS)]
    if ends and ends[-1].end() < len(text):
        cut = text[: ends[-1].end()].strip()
        # Keep the whole text when the cut would leave no words (". a cat sits").
        if any(c.isalnum() for c in cut):
            text = cut
    return text
