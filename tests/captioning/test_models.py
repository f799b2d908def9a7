"""Captioner loading: a tiny GIT saved with save_pretrained loads through the production path."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from captioning.models import (PLACEHOLDER_FILE, CaptionerNotAvailable, build_tiny_captioner,
                               is_placeholder, load_captioner)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny_captioner"), seed=0, num_frames=6)


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    return load_captioner(tiny_dir)


def _clips():
    rng = np.random.default_rng(0)
    return [np.zeros((6, 40, 40, 3), np.uint8), np.full((6, 40, 40, 3), 255, np.uint8),
            rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)]


def test_tiny_dir_is_a_marked_save_pretrained_dir(tiny_dir, tmp_path):
    names = {p.name for p in Path(tiny_dir).iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", PLACEHOLDER_FILE} <= names
    config = json.loads((Path(tiny_dir) / "config.json").read_text())
    assert config["model_type"] == "git" and config["num_image_with_embedding"] == 6
    assert is_placeholder(tiny_dir)
    assert not is_placeholder(tmp_path) and not is_placeholder("org/some-hub-model")


def test_loads_through_auto_classes(captioner):
    assert type(captioner.model).__name__ == "GitForCausalLM"
    assert type(captioner.processor).__name__ == "GitProcessor"
    assert captioner.num_frames == 6 and not captioner.model.training


def test_generate_gives_text_and_token_counts(captioner):
    texts, counts = captioner.generate(_clips(), "a video of", max_new_tokens=12)
    assert len(texts) == 3 and all(isinstance(t, str) and t.strip() for t in texts)
    assert all(4 <= c <= 12 for c in counts)  # min_new_tokens=4 in the tiny generation config


def test_frames_reach_the_model(captioner):
    texts, _ = captioner.generate(_clips(), "a video of", max_new_tokens=8)
    assert len(set(texts)) > 1  # black, white and noise clips do not all read the same


def test_frame_count_is_adapted_to_the_model(captioner):
    few, many = np.zeros((2, 40, 40, 3), np.uint8), np.zeros((11, 40, 40, 3), np.uint8)
    texts, _ = captioner.generate([few, many], ["a", "a video of a"], max_new_tokens=5)
    assert len(texts) == 2 and all(texts)


def test_sampling_is_seeded(captioner):
    clips = _clips()
    a, _ = captioner.generate(clips, "a video of", max_new_tokens=8, do_sample=True, seed=1)
    b, _ = captioner.generate(clips, "a video of", max_new_tokens=8, do_sample=True, seed=1)
    c, _ = captioner.generate(clips, "a video of", max_new_tokens=8, do_sample=True, seed=2)
    assert a == b and a != c


def test_unknown_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CaptionerNotAvailable) as info:
        load_captioner("reelforge-tests/no-such-captioner")
    msg = str(info.value)
    assert "reelforge-tests/no-such-captioner" in msg and "HF_HUB_OFFLINE" in msg
    assert "save_pretrained" in msg


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CaptionerNotAvailable, match="does not exist"):
        load_captioner(str(tmp_path / "nope"))
