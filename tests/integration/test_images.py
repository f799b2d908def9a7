"""Images and videos in one run on Ray: a world with stills -> curate -> caption (sidecars) ->
precompute (1-frame latents in T=1 buckets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.runner import run_caption
from infra import storage
from infra.config import load_config
from infra.world import write_world
from pipelines.runner import run_curate
from pipelines.runner_precompute import run_precompute

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
WORLD = ["world.videos=3", "world.eval_videos=0", "world.images=4", "world.image_format=webp", "world.sizes=[32x32]",
         "world.frames=[10, 12]", "world.scenes=[1, 2]", "curate.min_scene_len=6", "curate.measures.text=false",
         "caption.source=sidecar", "precompute.resolutions=[32]", "precompute.frame_counts=[5]",
         "precompute.aspect_ratios=['1:1']"]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", [*WORLD, *sets])


@pytest.fixture(scope="module")
def joint(ray_local, tmp_path_factory):
    """A world of videos and stills (and a broken .png) taken through curate, caption and precompute."""
    d = tmp_path_factory.mktemp("joint")
    cfg = _cfg()
    write_world(cfg.world, d / "world")
    (d / "world" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    curated = run_curate(cfg, str(d / "world" / "train"), str(d / "cur"))
    run_caption(cfg, str(d / "cur"), str(d / "cap"))
    pre = run_precompute(cfg, str(d / "cap"), str(d / "pre"))
    return d, curated, pre


def test_images_and_videos_in_one_curate_caption_precompute(joint):
    d, curated, pre = joint
    videos = storage.read_table(str(d / "cur" / "videos")).to_pylist()
    kinds = {r["uri"].rsplit("/", 1)[-1]: (r["media_type"], r["status"]) for r in videos}
    assert kinds["broken.png"] == ("image", "failed")
    assert sum(k == ("image", "ok") for k in kinds.values()) == 4 and sum(k == ("video", "ok") for k in kinds.values()) == 3
    failures = storage.read_table(str(d / "cur" / "failures")).to_pylist()
    assert [(f["uri"].rsplit("/", 1)[-1], f["stage"], f["error_type"]) for f in failures] == [
        ("broken.png", "probe", "undecodable_image")]
    clips = storage.read_table(str(d / "cap" / "clips")).to_pylist()
    images = [c for c in clips if c["media_type"] == "image"]
    assert len(images) == 4 and all(c["num_frames"] == 1 and c["motion"] is None and c["keep"] for c in images)
    assert all(" on a " in c["caption"] and " moves " not in c["caption"] for c in images)  # the stills' sidecars
    assert all(" moves " in c["caption"] for c in clips if c["media_type"] == "video")
    latents = storage.read_table(str(d / "pre" / "latents"), columns=["clip_id", "bucket", "latent_shape", "fps"])
    buckets = {r["clip_id"]: r for r in latents.to_pylist()}
    for c in images:
        assert buckets[c["clip_id"]]["bucket"] == "1x4x4" and buckets[c["clip_id"]]["latent_shape"][1] == 1
        assert buckets[c["clip_id"]]["fps"] is None
    assert {r["bucket"] for r in buckets.values()} == {"1x4x4", "2x4x4"}
    assert pre["counts"]["rows_per_bucket"]["1x4x4"] == 4
