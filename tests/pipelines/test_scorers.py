"""Scorers with real weights by name or path: the open_clip tower from a pretrained checkpoint (a tag such
as ViT-L-14's openai / laion2b_s32b_b82k, or a local file) and the LAION aesthetic MLP head from a file;
CLIPScore reads caption.clip_pretrained and eval.clip_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infra.config import load_config
from pipelines.measures.embed import ClipMeasure
from tests.tiny_models import TINY_CLIP
from training.models.clip import ClipImages, ClipScorer, _pretrained_source, is_random_clip, load_clip
from training.models.hub import ModelUnavailable



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny open_clip config, a checkpoint of other weights than the seeded random tower's, and a head
    in the layout of LAION's improved aesthetic predictor (Linear layers with Dropouts between)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("scorers")
    cfg = d / "rf-scorer-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    model, _ = load_clip(str(cfg), None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "clip.safetensors"))
    dims = [16, 32, 8, 4, 2, 1]  # 768 -> 1024 -> 128 -> 64 -> 16 -> 1 in the real one
    layers = [torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:])]
    state = {f"layers.{i}.{k}": v for i, layer in zip((0, 2, 4, 6, 7), layers) for k, v in layer.state_dict().items()}
    torch.save(state, d / "sac+logos+ava1-l14-linearMSE.pth")
    return str(cfg), str(d / "clip.safetensors"), str(d / "sac+logos+ava1-l14-linearMSE.pth"), model, layers


def _frames(n=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 2, 48, 64, 3), dtype=np.uint8)  # n clips of 2 frames


def test_aesthetic_uses_the_pretrained_tower_and_the_laion_head(trained):
    cfg, weights, head_file, model, layers = trained
    measure = ClipMeasure(cfg, weights, head_file)
    out = measure.measure(_frames())
    assert not is_random_clip(cfg, weights)
    with torch.no_grad():
        emb = ClipImages(model.eval()).embed(_frames())  # (n*2, 16), L2-normalised
        score = emb
        for layer in layers:
            score = layer(score)
        want = score[:, 0].view(3, 2).mean(1)
        want_emb = F.normalize(emb.view(3, 2, 16).mean(1), dim=-1)
    np.testing.assert_allclose([o["aesthetic"] for o in out], want.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([o["embedding"] for o in out], want_emb.numpy(), atol=2e-3)
    random = ClipMeasure(cfg, None, head_file).measure(_frames())  # the seeded random tower differs
    assert not np.allclose([o["aesthetic"] for o in random], want.numpy(), atol=1e-4)


def test_vit_l_14_tags_resolve_offline_only_from_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for tag in ("openai", "laion2b_s32b_b82k"):
        with pytest.raises(ModelUnavailable) as info:
            _pretrained_source("ViT-L-14", tag)
        assert f"open_clip ViT-L-14 ({tag})" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    with pytest.raises(ValueError, match="openai"):
        _pretrained_source("ViT-L-14", "no-such-tag")


def test_openai_weights_get_the_quick_gelu_tower(monkeypatch):
    """OpenAI's CLIP was trained with QuickGELU: the tower is built to match the tag, not the name's default."""
    import open_clip

    import training.models.clip as clip

    seen = {}
    monkeypatch.setattr(clip, "_pretrained_source", lambda name, tag: open_clip.get_pretrained_cfg(name, tag))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: seen.update(k) or torch.nn.Linear(1, 1))
    load_clip("ViT-L-14", "openai")
    assert seen["force_quick_gelu"] is True and seen["pretrained"] == "openai"
    load_clip("ViT-L-14", "laion2b_s32b_b82k")
    assert seen["force_quick_gelu"] is False


def test_clip_score_reads_caption_and_eval_clip_pretrained(trained):
    from captioning.runner import _stage_kwargs
    from training.evaluate import _clip_for_eval

    cfg, weights, _, model, _ = trained
    c = load_config(None, [f"caption.clip_model={cfg}", f"caption.clip_pretrained={weights}"])
    kwargs = _stage_kwargs(c, "some/captioner")
    assert (kwargs["clip_model"], kwargs["clip_pretrained"]) == (cfg, weights)
    assert _clip_for_eval(c) == ((cfg, weights), [])  # eval falls back to the caption section's scorer
    e = load_config(None, [f"eval.clip_model={cfg}", f"eval.clip_pretrained={weights}"])
    assert _clip_for_eval(e) == ((cfg, weights), [])
    scorer = ClipScorer(cfg, weights)
    assert not scorer.random
    frames = _frames(2)
    got = scorer.score(list(frames), ["a red square", "a blue circle"])
    with torch.no_grad():
        img = ClipImages(model.eval()).embed(frames).view(2, 2, 16)
        txt = model.encode_text(scorer.tokenizer(["a red square", "a blue circle"]), normalize=True)
    np.testing.assert_allclose(got, (img * txt[:, None]).sum(-1).mean(1).numpy(), rtol=1e-4, atol=1e-5)
