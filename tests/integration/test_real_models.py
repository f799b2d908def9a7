"""The whole flow through real model classes, loaded by path as hub names are: curate -> caption with a
Qwen2-VL -> precompute with a Wan VAE and a T5 encoder -> train -> sample. Tiny random instances of
the real classes are built here and saved with save_pretrained; nothing reaches the network, and no
section allows random weights, so none of ReelForge's own placeholders can slip in."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from tests.tiny_models import save_text_encoder, save_vae
from tests.tiny_vlms import build_qwen_vl
from training.data import read_latents
from training.models.latents import LatentSpec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cfg(models: dict, *sets):
    return load_config(ROOT / "configs" / "tiny.yaml", [
        f"caption.model={models['captioner']}", "caption.num_frames=4", "caption.frame_size=32",
        "caption.max_new_tokens=6", f"precompute.vae=diffusers:{models['vae']}:vae",
        f"precompute.text_encoder=hf:{models['t5']}:text_encoder", "precompute.resolutions=[32]",
        "precompute.frame_counts=[9]", "precompute.aspect_ratios=['1:1']", "train.steps=4", "train.checkpoint_every=4",
        "train.batch_size=2", "train.num_workers=1", "train.cpus_per_worker=1.0", "train.warmup_steps=1",
        "curate.measures.text=false", "curate.report=false",  # what this test is about starts after curate
        "sample.steps=2", "sample.num_frames=9", "sample.height=32", "sample.width=32",
        *[f"{s}.allow_random_weights=false" for s in ("caption", "precompute", "sample", "eval")], *sets])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"captioner": build_qwen_vl(d / "qwen2-vl", "qwen2_vl"),
            "vae": save_vae("wan", d / "wan-repo", subfolder="vae"),  # a pipeline repo: REPO/vae, REPO/text_encoder
            "t5": save_text_encoder("t5", d / "wan-repo", subfolder="text_encoder"),
            "other_vae": save_vae("wan", d / "other-wan", seed=1)}


def test_curate_caption_precompute_train_sample_with_real_classes(ray_local, models, tmp_path):
    from captioning.runner import run_caption
    from pipelines.runner import run_curate
    from pipelines.runner_precompute import run_precompute
    from training.sample import sample_to_files
    from training.train import run_train

    src = tmp_path / "src"
    src.mkdir()
    for i, color in enumerate([(220, 40, 40), (40, 200, 60)]):
        write_video(src / f"v{i}.mp4", [Scene(20, color=color), Scene(20, direction="left")], fps=12, width=48,
                    height=48, seed=i)
    cfg = _cfg(models)
    run_curate(cfg, str(src), str(tmp_path / "cur"))

    cap = run_caption(cfg, str(tmp_path / "cur"))  # Qwen2-VL: chat template, video turn, left-padded batches
    clips = storage.read_table(str(tmp_path / "cur" / "captioned" / "clips")).to_pylist()
    kept = [c for c in clips if c["keep"] is not False]
    assert kept and all(c["caption"] and c["caption_model"] == models["captioner"] for c in kept)
    assert cap["counts"]["captioned"] == len(kept) and not cap["placeholder"] and cap["random_weights"] == []

    pre = run_precompute(cfg, str(tmp_path / "cur" / "captioned"), str(tmp_path / "lat"))
    m = pre["models"]
    assert m["vae_id"].startswith("AutoencoderKLWan:") and m["latent"]["family"] == "wan" and m["random_weights"] == []
    assert m["latent"]["norm"]["mean"] == [0.1, -0.2, 0.3, 0.05]  # Wan's latents_mean from its config
    rows = read_latents(str(tmp_path / "lat")).to_pylist()
    assert len(rows) == pre["counts"]["encoded"] > 0
    assert {tuple(r["latent_shape"]) for r in rows} == {(4, 3, 4, 4)}  # z_dim 4; 9 frames -> 3; 32 px / 8
    assert {r["text_emb_shape"][1] for r in rows} == {24}  # the T5's d_model
    spec = LatentSpec.from_row(rows[0]["vae"], rows[0]["vae_id"], rows[0]["latent_norm"])
    assert spec.vae_id == m["vae_id"] and spec.temporal == 4 and spec.spatial == 8

    summary = run_train(cfg, str(tmp_path / "lat"), str(tmp_path / "run"))
    ckpt = Path(summary["checkpoint"])
    assert summary["step"] == 4
    dit = json.loads((ckpt / "dit" / "config.json").read_text())
    assert (dit["in_channels"], dit["text_dim"]) == (4, 24)  # read from the latents table, never by hand
    assert json.loads((ckpt / "meta.json").read_text())["vae_id"] == m["vae_id"]

    paths = sample_to_files(cfg, ckpt, ["a red square moves left"], tmp_path / "samples")
    with av.open(str(paths[0])) as f:
        frames = list(f.decode(video=0))
    assert len(frames) == 9 and (frames[0].width, frames[0].height) == (32, 32)
    with pytest.raises(ValueError, match="different model"):  # a different VAE than the latents' is refused
        sample_to_files(cfg, ckpt, ["x"], tmp_path / "other", vae_spec=f"diffusers:{models['other_vae']}")
