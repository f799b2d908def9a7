"""Pretrained diffusers VAEs, every family: a tiny instance of the real class is saved with save_pretrained
and loaded by path through `load_vae("diffusers:PATH")`, exactly as a hub name goes.

For each family: compression and frame rule come from the model; the normalisation is the one its
diffusers pipeline inverts; encode -> normalise -> store (the latents codec) -> load -> denormalise
-> decode gives diffusers' own encode/decode; the identity tells a different VAE apart.
"""

from __future__ import annotations

import json

import pytest
import torch

from infra.schema import tensor_from_bytes, tensor_to_bytes
from tests.tiny_models import VAE_FAMILIES, build_vae, save_vae
from training.models.diffusers_vae import parse_spec
from training.models.hub import ModelUnavailable
from training.models.latents import LatentSpec, describe_vae
from training.models.vae import load_decoding_vae, load_vae

FAMILIES = list(VAE_FAMILIES)


def _pipeline_decode_input(family: str, model, z: torch.Tensor) -> torch.Tensor:
    """What each family's diffusers pipeline hands to vae.decode for DiT latents z (copied formulas)."""
    cfg = model.config
    if family == "wan":  # pipeline_wan: latents / (1 / std) + mean
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        return z / (1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)) + mean
    if family in ("cogvideox", "hunyuanvideo"):  # 1 / scaling_factor * latents
        return z / cfg.scaling_factor
    if family == "ltx-video":  # _denormalize_latents: latents * std / scaling_factor + mean (buffers)
        return z * model.latents_std.view(1, -1, 1, 1, 1) / cfg.scaling_factor + model.latents_mean.view(1, -1, 1, 1, 1)
    if family == "mochi":
        mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
        return z * std / cfg.scaling_factor + mean
    if family == "cosmos":  # per channel and latent frame; ReelForge's rectified flow takes sigma_data = 1
        c, t = cfg.latent_channels, z.shape[2]
        mean, std = (torch.tensor(v).view(1, c, -1, 1, 1)[:, :, :t] for v in (cfg.latents_mean, cfg.latents_std))
        return z * std / 1.0 + mean
    return z / cfg.scaling_factor + cfg.shift_factor  # SD3 / Flux


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    return {f: save_vae(f, root / f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_by_path_with_its_geometry_and_normalisation(family, saved):
    cls, _, frames, temporal, spatial = VAE_FAMILIES[family]
    vae = load_vae(f"diffusers:{saved[family]}", tiling=False, slicing=False)
    assert type(vae.model).__name__ == cls and vae.family == family
    assert (vae.temporal_compression, vae.spatial_compression) == (temporal, spatial)
    spec = describe_vae(vae, f"diffusers:{saved[family]}")
    assert spec.frames_ok(frames) and not spec.frames_ok(frames + 1) or temporal == 1
    model = build_vae(family)  # the same seeded weights: the pipeline's formula on the same latents
    z = torch.randn(2, vae.latent_channels, 3, 4, 4)
    torch.testing.assert_close(vae.latent_norm.denormalize(z), _pipeline_decode_input(family, model, z))
    torch.testing.assert_close(vae.latent_norm.normalize(vae.latent_norm.denormalize(z)), z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_the_latents_codec_equals_diffusers(family, saved):
    """encode -> normalise -> store -> load -> denormalise -> decode == diffusers' own encode/decode."""
    _, _, frames, _, spatial = VAE_FAMILIES[family]
    torch.manual_seed(1)
    x = torch.rand(1, 3, frames, 32, 32) * 2 - 1
    vae = load_vae(f"diffusers:{saved[family]}", tiling=False, slicing=False)
    spec = describe_vae(vae, f"diffusers:{saved[family]}")
    with torch.no_grad():
        z = spec.norm.normalize(vae.encode(x).mode())  # what precompute stores
        stored = tensor_to_bytes(z[0], "float32")
        back = tensor_from_bytes(stored, list(z[0].shape), "float32")[None]
        ours = vae.decode(spec.norm.denormalize(back))
        model = build_vae(family)
        if family == "image":  # a 2D VAE on each frame: an image is a 1-frame video
            frames_2d = x[0].permute(1, 0, 2, 3)  # (T, 3, H, W)
            ref = model.decode(model.encode(frames_2d).latent_dist.mode()).sample.permute(1, 0, 2, 3)[None]
        else:
            ref = model.decode(model.encode(x).latent_dist.mode()).sample
    assert z.shape[1:] == (vae.latent_channels, vae.latent_frames(frames), 32 // spatial, 32 // spatial)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_identity_tells_another_vae_apart_and_sample_refuses_it(saved, tmp_path):
    spec_a = f"diffusers:{saved['wan']}"
    other = save_vae("wan", tmp_path / "other", seed=1)  # same class and config, other weights
    a = describe_vae(load_vae(spec_a), spec_a)
    moved = describe_vae(load_vae(f"diffusers:{saved['wan']}/"), "diffusers:elsewhere")  # same model, other spec
    assert a.vae_id == moved.vae_id and a.vae_id.startswith("AutoencoderKLWan:")
    b = describe_vae(load_vae(f"diffusers:{other}"), f"diffusers:{other}")
    assert a.vae_id != b.vae_id
    restored = LatentSpec.from_row(a.vae, a.vae_id, a.norm_json())
    assert restored == a and json.loads(a.norm_json())["family"] == "wan"
    _, norm = load_decoding_vae(spec_a, a.to_meta())
    assert norm == a.norm
    with pytest.raises(ValueError, match="different model") as info:
        load_decoding_vae(f"diffusers:{other}", a.to_meta())
    assert saved["wan"] in str(info.value) and str(other) in str(info.value)


def test_pipeline_subfolder_spec_and_bf16_identity(tmp_path):
    repo = save_vae("cogvideox", tmp_path / "repo", subfolder="vae")
    assert parse_spec(f"diffusers:{repo}:vae") == (repo, "vae")
    assert parse_spec("diffusers:THUDM/CogVideoX-2b:vae") == ("THUDM/CogVideoX-2b", "vae")
    assert parse_spec("diffusers:org/name") == ("org/name", None)
    vae = load_vae(f"diffusers:{repo}:vae")
    assert vae.family == "cogvideox"
    half = load_vae(f"diffusers:{repo}:vae", dtype=torch.bfloat16)  # a GPU encoder's dtype: the same VAE
    assert describe_vae(half, "x").vae_id == describe_vae(vae, "x").vae_id
    z = half.encode(torch.zeros(1, 3, 5, 16, 16)).mode()
    assert z.dtype == torch.float32 and z.shape == (1, 4, 2, 2, 2)


def test_tiling_runs_large_frames_in_tiles(saved):
    """With small tiles, a frame larger than a tile is encoded tile by tile (blended) and stays close."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    plain = load_vae(f"diffusers:{saved['wan']}", tiling=False)
    tiled = load_vae(f"diffusers:{saved['wan']}", tiling=True, tile_px=32)
    assert tiled.model.use_tiling and tiled.model.tile_sample_min_height == 32
    with torch.no_grad():
        a, b = plain.encode(x).mode(), tiled.encode(x).mode()
    assert a.shape == b.shape and not torch.equal(a, b)
    assert (a - b).abs().mean() < 0.5 * a.abs().mean()


def test_missing_vae_offline_names_the_model_and_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as info:
        load_vae("diffusers:reelforge-tests/no-such-vae:vae")
    msg = str(info.value)
    assert "reelforge-tests/no-such-vae" in msg and "HF_HUB_OFFLINE" in msg and "local directory" in msg
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_vae(f"diffusers:{tmp_path / 'nope'}")
