"""Sampling end to end with tiny models, mp4 writing (decoded back with PyAV), checkpoint loading."""

import av
import numpy as np
import pytest
import torch

from training.models.dit import VideoDiT, build_dit
from training.models.text import TinyTextEncoder
from training.models.vae import build_vae
from training.sample import load_checkpoint_for_sampling, sample_video, write_mp4


def randomize(model, seed=0, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    dit = randomize(build_dit("VDiT-T/2", text_dim=32)).eval()
    return dit, build_vae("tiny").eval(), TinyTextEncoder(dim=32)


def decode_mp4(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_sample_video_shape_dtype_and_determinism(models):
    dit, vae, text = models
    prompts = ["a red ball bounces", "waves on a beach"]
    kwargs = dict(num_frames=5, height=16, width=24, steps=3, cfg_scale=3.0)
    a = sample_video(dit, vae, text, prompts, seed=7, **kwargs)
    assert a.shape == (2, 5, 16, 24, 3) and a.dtype == torch.uint8
    assert torch.equal(a, sample_video(dit, vae, text, prompts, seed=7, **kwargs))
    assert not torch.equal(a, sample_video(dit, vae, text, prompts, seed=8, **kwargs))
    # Row 1 gets the same noise with another prompt: only the prompt can change it.
    same_noise = sample_video(dit, vae, text, [prompts[0], prompts[0]], seed=7, **kwargs)
    assert torch.equal(same_noise[0], a[0]) and not torch.equal(same_noise[1], a[1])


def test_sample_video_rejects_mismatched_text_dim_and_sizes(models):
    dit, vae, _ = models
    with pytest.raises(ValueError, match="text_dim=32"):
        sample_video(dit, vae, TinyTextEncoder(dim=16), ["x"], num_frames=1, height=8, width=8, steps=1)
    with pytest.raises(ValueError, match="multiples of 8"):
        sample_video(dit, vae, TinyTextEncoder(dim=32), ["x"], num_frames=1, height=12, width=8, steps=1)


def test_write_mp4_decodes_with_the_right_frames_size_and_colors(tmp_path):
    colors = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)
    frames = np.stack([np.broadcast_to(colors[i % 3], (24, 32, 3)) for i in range(7)])  # (7, 24, 32, 3)
    path = write_mp4(torch.from_numpy(frames), tmp_path / "out" / "clip.mp4", fps=12)
    decoded = decode_mp4(path)
    assert decoded.shape == (7, 24, 32, 3)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6  # colours survive yuv420p
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 12


def test_write_mp4_pads_odd_sizes(tmp_path):
    frames = np.full((3, 21, 31, 3), 128, dtype=np.uint8)
    decoded = decode_mp4(write_mp4(frames, tmp_path / "odd.mp4", fps=24))
    assert decoded.shape == (3, 22, 32, 3)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        write_mp4(frames[0], tmp_path / "bad.mp4")


def test_load_checkpoint_prefers_ema_weights(tmp_path):
    raw = randomize(build_dit("VDiT-T/2"), seed=1)
    ema = randomize(build_dit("VDiT-T/2"), seed=2)
    raw.save_pretrained(tmp_path / "ckpt" / "dit")
    x, t = torch.randn(1, 4, 1, 4, 4), torch.rand(1)
    tokens, mask = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    loaded = load_checkpoint_for_sampling(tmp_path / "ckpt")
    assert not loaded.training
    assert torch.equal(loaded(x, t, tokens, mask), raw.eval()(x, t, tokens, mask))
    ema.save_pretrained(tmp_path / "ckpt" / "ema")
    loaded = load_checkpoint_for_sampling(tmp_path / "ckpt")
    assert isinstance(loaded, VideoDiT)
    assert torch.equal(loaded(x, t, tokens, mask), ema.eval()(x, t, tokens, mask))
    with pytest.raises(FileNotFoundError, match="dit/config.json"):
        load_checkpoint_for_sampling(tmp_path / "empty")
