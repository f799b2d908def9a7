"""VLM captioners through AutoModelForImageTextToText + AutoProcessor, one tiny instance per family.

Each family's real model and processor classes are built from a small config, with a tokenizer
trained here (tokenizers library) that carries the family's chat template, saved with
save_pretrained and loaded by path through `load_captioner`, the code a hub name goes through.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioning.captioner import CaptionStage
from captioning.models import load_captioner
from tests.tiny_vlms import BUILDERS

CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
           "qwen3_vl": "Qwen3VLForConditionalGeneration", "llava_onevision": "LlavaOnevisionForConditionalGeneration",
           "llava_next_video": "LlavaNextVideoForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}
PROMPTS = ["Describe this video in detail.", "Describe it.", "What is in this image?"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {family: build(root / family) for family, build in BUILDERS.items()}


def _clips():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8), np.zeros((4, 40, 40, 3), np.uint8),
            rng.integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)]  # the last clip is an image


def _frames_seen(inputs) -> int:
    """How many frames of the clip reached the model's vision input."""
    if "video_grid_thw" in inputs:
        return int(inputs["video_grid_thw"][0][0]) * 2  # temporal patches of 2 frames
    if "pixel_values_videos" in inputs:
        return inputs["pixel_values_videos"].shape[1]
    if "image_grid_thw" in inputs or "image_sizes" in inputs:  # one image (LLaVA: in anyres tiles)
        return 1
    return inputs["pixel_values"].shape[1]  # SmolVLM: (B, frames, 3, H, W)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_loads_by_path_and_captions_videos_and_images(family, saved):
    cap = load_captioner(saved[family])
    assert type(cap.model).__name__ == CLASSES[family] and cap.has_video and not cap.model.training
    assert cap.tokenizer.padding_side == "left"
    clips = _clips()
    video, image = cap.inputs(clips[:1], PROMPTS[:1], [8.0]), cap.inputs(clips[2:], PROMPTS[2:])
    assert _frames_seen(video) == 4 and _frames_seen(image) == 1  # caption.num_frames frames; an image alone
    texts, counts = cap.generate(clips, PROMPTS, max_new_tokens=6, fps=[8.0, 8.0, None])
    assert len(texts) == 3 and all(1 <= c <= 6 for c in counts)
    assert all(p not in t for p, t in zip(PROMPTS, texts))  # the prompt is cut from the output
    # left padding: a clip captions the same in a batch of prompts of other lengths as alone
    alone = [cap.generate([c], [p], max_new_tokens=6, fps=[f])[0][0] for c, p, f in zip(clips, PROMPTS, [8.0, 8.0, None])]
    assert texts == alone


@pytest.mark.parametrize("family", list(BUILDERS))
def test_the_frames_reach_the_model(family, saved):
    cap = load_captioner(saved[family])
    clips = _clips()
    with torch.no_grad():
        logits = [cap.model(**cap.inputs([c], ["Describe."], [8.0])).logits[0, -1] for c in clips[:2]]
    assert (logits[0] - logits[1]).abs().max() > 1e-4  # noise and black clips give different next tokens


def test_chat_template_and_frame_rate_are_the_models(saved):
    cap = load_captioner(saved["qwen3_vl"])
    ids = cap.inputs(_clips()[:1], ["Describe."], [8.0])["input_ids"][0]
    text = cap.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n") and text.rstrip().endswith("<|im_start|>assistant")
    assert "seconds>" in text  # Qwen3-VL timestamps each frame pair from the clip's frame rate


def test_caption_stage_gives_every_clip_a_caption(saved):
    stage = CaptionStage(saved["qwen2_vl"], max_new_tokens=5, batch_size=2, device="cpu")
    clips = _clips()[:2] * 2
    batch = {"clip_id": np.array([f"c{i}" for i in range(4)], dtype=object),
             "frames": np.stack(clips), "start_s": np.zeros(4), "end_s": np.full(4, 0.5)}
    out = stage(batch)
    assert all(isinstance(c, str) and c for c in out["caption"]) and not any(out["error"])
    assert set(out["caption_model"]) == {saved["qwen2_vl"]} and (out["caption_tokens"] <= 5).all()
