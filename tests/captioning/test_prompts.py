"""Prompt templates, score suffixes and caption clean-up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from captioning.prompts import (DEFAULT_PROMPT, PROMPTS, append_scores, clean_caption,
                                render_prompt, score_suffix, template_fields)

PROMPT = "Describe this video in detail."


@pytest.mark.parametrize("text, expected", [
    # The prompt echoed back, as a decoder-only model or a lowercasing tokenizer returns it.
    ("Describe this video in detail. A cat sits on a mat.", "A cat sits on a mat."),
    ("describe this video in detail . a cat sits on a mat .", "a cat sits on a mat."),
    # Special tokens, role markers and whitespace.
    ("<|im_start|>assistant\n  A dog   runs\n on grass.<|im_end|>", "A dog runs on grass."),
    ("[CLS] a red car drives by. [SEP] [PAD] [PAD]", "a red car drives by."),
    ("<s> A bird flies.</s>", "A bird flies."),
    # An unfinished last sentence is cut; text with no sentence end is kept whole.
    ("A man walks. He then turns to the", "A man walks."),
    ("a man walking on a beach at sunset", "a man walking on a beach at sunset"),
    ('She says "hello." Then she', 'She says "hello."'),
    # Decimals and abbreviations are not sentence ends.
    ("A 2.5 metre wall, e.g. brick. Then a", "A 2.5 metre wall, e.g. brick."),
    # A cut that would leave no words keeps the text.
    (". a cat sits", ". a cat sits"),
    ("", ""),
])
def test_clean_caption(text, expected):
    assert clean_caption(text, PROMPT) == expected


def test_clean_caption_keeps_text_that_only_starts_like_the_prompt():
    assert clean_caption("Describe this scene: a lake.", PROMPT) == "Describe this scene: a lake."
    assert clean_caption("A lake at dawn.", "") == "A lake at dawn."


def test_score_suffix_open_sora_style():
    row = {"aesthetic": np.float64(5.53), "motion": 10.0, "sharpness": float("nan")}
    assert score_suffix(row, ["aesthetic", "motion"]) == "aesthetic score 5.5, motion 10"
    assert score_suffix(row, ["aesthetic", "sharpness", "missing"]) == "aesthetic score 5.5"
    assert score_suffix(row, {"motion": "motion score"}) == "motion score 10"
    assert score_suffix(row, []) == ""


def test_append_scores():
    row = {"aesthetic": 5.53, "motion": 10.02}
    assert append_scores("A cat sits.", row, ["aesthetic", "motion"]) == \
        "A cat sits. aesthetic score 5.5, motion 10."
    assert append_scores("a cat sits", row, ["aesthetic"]) == "a cat sits. aesthetic score 5.5."
    assert append_scores("a cat sits", {"aesthetic": math.nan}, ["aesthetic"]) == "a cat sits"
    assert append_scores("a cat sits", row, []) == "a cat sits"


def test_templates():
    assert template_fields(DEFAULT_PROMPT) == []
    assert template_fields(PROMPTS["dense_with_length"]) == ["duration_s"]
    assert render_prompt("A {num_frames}-frame clip at {fps:.0f} fps.",
                         {"num_frames": np.int64(48), "fps": np.float64(23.976)}) == \
        "A 48-frame clip at 24 fps."
    with pytest.raises(KeyError, match="duration_s"):
        render_prompt(PROMPTS["dense_with_length"], {"fps": 24.0})
