"""Sampling conditions from real files: where an image's or a video's latent frames go, and the flags' rules."""

from __future__ import annotations

import pytest
import torch

from infra.config import load_config
from infra.videogen import Scene, write_image, write_video
from training import conditioning
from training.conditioning import ConditionSpec
from training.models.vae import load_vae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    write_image(d / "still.png", Scene(1, kind="static", color=(220, 40, 40), textured=False), width=48, height=32)
    write_video(d / "a.mp4", [Scene(14, direction="right")], fps=8, width=48, height=32, seed=1)
    write_video(d / "b.mp4", [Scene(7, direction="left")], fps=8, width=48, height=32, seed=2)
    return d


@pytest.fixture(scope="module")
def vae():
    return load_vae("tiny-s4").eval()  # 4x temporal, 4x spatial


def _s(num_frames=9):
    return load_config(None, [f"sample.num_frames={num_frames}", "sample.height=32", "sample.width=32"]).sample


def test_animate_puts_the_image_first(files, vae):
    c = conditioning.animate(vae, None, str(files / "still.png"), _s())
    assert c.clean.shape == (1, 4, 3, 8, 8) and c.mask.tolist() == [[True, False, False]]
    alone = conditioning.encode(vae, None, conditioning.read_frames(str(files / "still.png"), size=(32, 32)))
    torch.testing.assert_close(c.clean[:, :, :1], alone)
    assert c.clean[:, :, 1:].abs().sum() == 0


def test_extend_forwards_and_backwards(files, vae):
    fwd = conditioning.extend(vae, None, str(files / "a.mp4"), 2, _s())  # the last 9 of 14 frames, then 2 new
    assert fwd.mask.tolist() == [[True, True, True, False, False]]
    last9 = conditioning.read_frames(str(files / "a.mp4"), size=(32, 32), max_frames=9, last=True)
    torch.testing.assert_close(fwd.clean[:, :, :3], conditioning.encode(vae, None, last9))
    back = conditioning.extend(vae, None, str(files / "a.mp4"), 1, _s(), backward=True)
    assert back.mask.tolist() == [[False, True, True, True]]
    assert conditioning.pixel_frames(vae, fwd.latent_frames) == 17
    with pytest.raises(ValueError, match="at least one"):
        conditioning.extend(vae, None, str(files / "a.mp4"), 0, _s())


def test_connect_and_edit(files, vae):
    c = conditioning.connect(vae, None, str(files / "a.mp4"), str(files / "b.mp4"), _s(13))
    assert c.mask.tolist() == [[True, False, False, True]]
    last_of_a = conditioning.read_frames(str(files / "a.mp4"), size=(32, 32), max_frames=1, last=True)
    torch.testing.assert_close(c.clean[:, :, :1], conditioning.encode(vae, None, last_of_a))
    e = conditioning.edit(vae, None, str(files / "a.mp4"), 0.6, _s())
    assert e.mask is None and e.strength == 0.6 and e.clean.shape[2] == 3
    batch = e.batch(2)
    assert batch["clean"].shape[0] == 2 and batch["frame_mask"] is None and batch["strength"] == 0.6


@pytest.mark.parametrize("spec,message", [
    (ConditionSpec(image="a", video="b", extend=1), "give one of"),
    (ConditionSpec(extend=2), "need --video"),
    (ConditionSpec(video="v"), "--video needs --extend"),
    (ConditionSpec(image="a", backward=True), "--backward goes with"),
])
def test_flag_rules(spec, message):
    with pytest.raises(ValueError, match=message):
        spec.check()
    assert ConditionSpec(video="v", strength=0.5).check().active and not ConditionSpec().check().active
