"""The weight-free pooling codec (training/models/pool_vae.py): shapes, an exact round trip of what it
keeps, and the VAE interface precompute and sample use."""

from __future__ import annotations

import pytest
import torch

from training.models.latents import describe_vae
from training.models.pool_vae import PoolVAE
from training.models.vae import is_random_vae, load_vae


def test_pool8_by_spec_keeps_block_colours_and_every_fourth_frame():
    vae = load_vae("pool8")
    assert isinstance(vae, PoolVAE) and not is_random_vae("pool8")
    x = torch.full((2, 3, 9, 64, 64), -1.0)
    x[:, 0, :, 8:16, 16:24] = 1.0  # a red 8x8 block on one latent pixel
    z = vae.encode(x).mode()
    assert z.shape == (2, 3, 3, 8, 8) == (2, vae.latent_channels, vae.latent_frames(9), 8, 8)
    torch.testing.assert_close(vae.encode(x).sample(), z, atol=1e-5, rtol=0)  # a point posterior (std ~3e-7)
    y = vae.decode(z)
    assert y.shape == x.shape and torch.equal(y, x)  # block-aligned, frame-constant content comes back exactly


def test_decode_holds_each_latent_frame_for_its_window():
    vae = load_vae("pool4")
    z = torch.arange(3, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(1, 3, 3, 2, 2)
    y = vae.decode(z)  # (1, 3, 9, 8, 8)
    assert y[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_interface_for_precompute_and_sample():
    vae = load_vae("pool8")
    spec = describe_vae(vae, "pool8")
    assert (spec.latent_channels, spec.temporal, spec.spatial, spec.random) == (3, 4, 8, False)
    assert next(vae.parameters()).dtype == torch.float32 and not any(p.requires_grad for p in vae.parameters())
    with pytest.raises(ValueError, match="1 \\+ k\\*4"):
        vae.latent_frames(8)
    with pytest.raises(ValueError, match="unknown VAE 'poolx'"):
        load_vae("poolx")


def test_stack_keeps_every_frame_in_the_channels():
    vae = load_vae("pool4stack")
    assert vae.latent_channels == 12 and describe_vae(vae, "pool4stack").latent_channels == 12
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    z = vae.encode(x).mode()
    assert z.shape == (2, 12, 3, 4, 4)
    pooled = torch.nn.functional.avg_pool3d(x, (1, 4, 4))
    torch.testing.assert_close(z[:, 3:6, 1], pooled[:, :, 2])  # latent frame 1, 2nd stacked frame = frame 2
    torch.testing.assert_close(z[:, 9:12, 2], pooled[:, :, 8])
    y = vae.decode(z)  # every frame comes back, each pooled 4x4 (frame 0 from its 4 identical copies)
    assert y.shape == x.shape
    torch.testing.assert_close(torch.nn.functional.avg_pool3d(y, (1, 4, 4)), pooled)
