"""No silent random weights, and one clear message for a model that is not there.

Every job that loads a VAE, text encoder, captioner or scorer refuses randomly initialised weights
unless its section sets allow_random_weights (and then says so in capitals); offline, a hub name
that is not in the cache fails the job at start, naming the model and how to provide it, with exit
code 2 and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra.config import load_config
from training.models.hub import ModelUnavailable, RandomWeightsRefused

ROOT = Path(__file__).resolve().parents[2]


def test_precompute_refuses_random_vae_and_text_encoder_unless_allowed():
    from pipelines.runner_precompute import models_at_start

    with pytest.raises(RandomWeightsRefused) as info:
        models_at_start(load_config(None, ["precompute.vae=base"]))
    msg = str(info.value)
    assert "VAE 'base'" in msg and "TEXT ENCODER 'tiny'" in msg and "precompute.allow_random_weights: true" in msg
    spec, notes = models_at_start(load_config(None, ["precompute.allow_random_weights=true"]))
    assert spec.random and notes == ["VAE 'tiny' IS RANDOMLY INITIALISED: ITS OUTPUTS MEAN NOTHING",
                                     "TEXT ENCODER 'tiny' IS RANDOMLY INITIALISED: ITS OUTPUTS MEAN NOTHING"]
    spec, notes = models_at_start(load_config(None, ["precompute.text_encoder=minilm", "precompute.vae=tiny",
                                                     "precompute.allow_random_weights=true"]))
    assert notes == [notes[0]] and "VAE" in notes[0]  # MiniLM carries real weights


def test_caption_refuses_the_placeholder_and_a_random_scorer(tmp_path):
    from captioning.resolve import models_at_start

    with pytest.raises(RandomWeightsRefused, match="CAPTIONER 'tiny-random'.*caption.allow_random_weights"):
        models_at_start(load_config(None), None, model_free=False)
    assert models_at_start(load_config(None), None, model_free=True) == []  # sidecar captions load no model
    cfg = load_config(None, ["caption.model=some/vlm", "caption.clip_model=ViT-B-32"])
    with pytest.raises(RandomWeightsRefused, match="CLIP SCORER 'ViT-B-32'"):
        models_at_start(cfg, None, model_free=False)
    allowed = load_config(None, ["caption.clip_model=ViT-B-32", "caption.allow_random_weights=true"])
    assert len(models_at_start(allowed, None, model_free=False)) == 2


def test_sample_eval_and_curate_refuse_random_models():
    from pipelines.measures.embed import models_at_start
    from training.evaluate import _clip_for_eval
    from training.models.vae import refuse_random_models

    with pytest.raises(RandomWeightsRefused, match="sample.allow_random_weights"):
        refuse_random_models("tiny", "minilm", "sample", allowed=False)
    assert refuse_random_models("some/dir", "minilm", "sample", allowed=False) == []
    with pytest.raises(RandomWeightsRefused, match="eval.allow_random_weights"):
        _clip_for_eval(load_config(None, ["caption.clip_model=ViT-B-32"]))  # eval falls back to caption's model
    assert _clip_for_eval(load_config(None, ["eval.clip_model=ViT-B-32", "eval.allow_random_weights=true"])) == \
        (("ViT-B-32", None), ["CLIP SCORER 'ViT-B-32' IS RANDOMLY INITIALISED: ITS OUTPUTS MEAN NOTHING"])
    with pytest.raises(RandomWeightsRefused, match="curate.measures.allow_random_weights"):
        models_at_start(load_config(None, ["curate.measures.clip_model=ViT-B-32"]).curate.measures)


def test_offline_missing_models_fail_at_start_by_name(monkeypatch):
    from captioning.resolve import check_available
    from pipelines.runner_precompute import models_at_start

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, ["precompute.vae=diffusers:reelforge-tests/no-vae:vae", "precompute.text_encoder=minilm"])
    with pytest.raises(ModelUnavailable) as info:
        models_at_start(cfg)
    assert "'reelforge-tests/no-vae'" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    with pytest.raises(ModelUnavailable, match="reelforge-tests/no-vlm"):
        check_available("reelforge-tests/no-vlm")


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_cli_says_it_in_one_message_with_exit_code_2(cli_env, tmp_path):
    res = _cli("precompute", "--clips", str(tmp_path), "--set", "precompute.vae=base", env=cli_env)
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    assert "model error" in res.stderr and "VAE 'base' IS RANDOMLY INITIALISED" in res.stderr
    res = _cli("precompute", "--clips", str(tmp_path), "--set", "precompute.vae=diffusers:reelforge-tests/no-vae",
               "--set", "precompute.text_encoder=minilm", env={**cli_env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    err = " ".join(res.stderr.split())
    assert "cannot load VAE 'reelforge-tests/no-vae'" in err and "HF_HUB_OFFLINE" in err and "hf download" in err


@pytest.mark.parametrize("preset", ["single-gpu.yaml", "cluster.yaml"])
def test_presets_name_real_models_that_fit_and_refuse_random_weights(preset, monkeypatch):
    from pipelines.runner_precompute import models_at_start
    from training.models.text import is_random_text_encoder
    from training.models.vae import is_random_vae

    cfg = load_config(ROOT / "configs" / preset)
    p = cfg.precompute
    assert p.vae.startswith("diffusers:Wan-AI/") and p.text_encoder.startswith("hf:Wan-AI/")  # one pipeline's pair
    assert p.vae.split(":")[1] == p.text_encoder.split(":")[1] and cfg.caption.model.startswith("Qwen/Qwen2.5-VL")
    assert not is_random_vae(p.vae) and not is_random_text_encoder(p.text_encoder)
    assert not any(getattr(cfg, s).allow_random_weights for s in ("caption", "precompute", "sample", "eval"))
    with pytest.raises(RandomWeightsRefused):
        models_at_start(load_config(ROOT / "configs" / preset, ["precompute.vae=base"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no Wan in its cache: one clear message
    with pytest.raises(ModelUnavailable, match="Wan-AI/Wan2.1-T2V"):
        models_at_start(cfg)
