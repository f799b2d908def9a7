"""VideoDiT: shapes on many grids, adaLN-Zero init, caption padding, checkpointing, save/load, FLOPs."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import training.models.dit as dit_module
from training.models.dit import VDIT_PRESETS, VideoDiT, VideoDiTConfig, build_dit, flops_per_token, num_params


def randomize(model, seed=0, std=0.05):
    """Give every parameter (the zero-initialised ones too) small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return model


def text(batch=2, length=5, dim=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, dim, generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i in range(batch):
        mask[i, : max(1, length - 2 * i)] = True  # rows of different caption lengths
    return tokens, mask


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2)])
@pytest.mark.parametrize("grid", [(1, 8, 8), (3, 6, 10), (5, 4, 12), (2, 7, 9), (1, 5, 3)])
def test_output_shape_matches_input_on_any_grid(patch, grid):
    model = randomize(build_dit("VDiT-T/2", patch=patch)).eval()
    x = torch.randn(2, 4, *grid)
    tokens, mask = text()
    out = model(x, torch.rand(2), tokens, mask)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_adaln_zero_init_gives_exactly_zero_output_and_identity_blocks():
    model = build_dit("VDiT-T/2")
    x = torch.randn(2, 4, 3, 8, 8)
    tokens, mask = text()
    assert torch.equal(model(x, torch.rand(2), tokens, mask), torch.zeros_like(x))
    h, c, ctx = torch.randn(2, 48, 32), torch.randn(2, 32), torch.randn(2, 5, 32)
    rope = dit_module.rope_3d((3, 4, 4), 16, 10000.0)
    for block in model.blocks:
        assert torch.equal(block(h, c, ctx, mask, rope), h)
    model.final_layer.linear.bias.data.fill_(0.1)  # the check above is not vacuous
    assert model(x, torch.rand(2), tokens, mask).abs().min() > 0


def test_padded_caption_tokens_do_not_change_the_output():
    model = randomize(build_dit("VDiT-T/2")).eval()
    x, t = torch.randn(2, 4, 2, 6, 8), torch.rand(2)
    tokens, mask = text(length=5)
    garbage = torch.randn(2, 4, 32) * 1e3
    garbage[0, 0, 0], garbage[1, 1, 3] = float("nan"), float("inf")
    padded_tokens = torch.cat([tokens, garbage], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    # Masked positions of the short row carry garbage too.
    padded_tokens[1, 3:5] = 7e2
    with torch.no_grad():
        ref = model(x, t, tokens, mask)
        out = model(x, t, padded_tokens, padded_mask)
        changed = tokens.clone()
        changed[1, 0] += 1.0  # a real token of row 1
        other = model(x, t, changed, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (other[1] - ref[1]).abs().max() > 1e-3  # real tokens do matter
    torch.testing.assert_close(other[0], ref[0], atol=1e-6, rtol=1e-6)  # rows are independent


def test_caption_with_no_real_token_gives_finite_output():
    model = randomize(build_dit("VDiT-T/2")).eval()
    tokens, mask = text()
    mask[1] = False
    out = model(torch.randn(2, 4, 1, 4, 4), torch.rand(2), tokens, mask)
    assert torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    assert VideoDiT.supports_gradient_checkpointing
    calls = []
    real_checkpoint = dit_module.checkpoint
    monkeypatch.setattr(dit_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    x, t = torch.randn(2, 4, 3, 6, 6), torch.rand(2)
    tokens, mask = text()
    grads, state = [], randomize(build_dit("VDiT-T/2")).state_dict()
    for flag in (False, True):
        model = build_dit("VDiT-T/2")
        model.load_state_dict(state)
        model.gradient_checkpointing = flag
        model(x, t, tokens, mask).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert len(calls) == len(model.blocks)  # checkpointing really ran, once per block
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert sum(g.abs().sum() for g in grads[0].values()) > 0


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    model = randomize(build_dit("VDiT-T/2", patch=(1, 2, 2), text_dim=24)).eval()
    model.save_pretrained(tmp_path / "dit")
    assert sorted(p.name for p in (tmp_path / "dit").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.config == model.config
    x, t = torch.randn(1, 4, 2, 4, 6), torch.rand(1)
    tokens, mask = torch.randn(1, 3, 24), torch.ones(1, 3, dtype=torch.bool)
    assert torch.equal(loaded(x, t, tokens, mask), model(x, t, tokens, mask))
    config = json.loads((tmp_path / "dit" / "config.json").read_text())
    (tmp_path / "dit" / "config.json").write_text(json.dumps({**config, "hiden": 3}))
    with pytest.raises(ValueError, match="hiden"):
        VideoDiT.from_pretrained(tmp_path / "dit")


def test_presets_and_parameter_counts():
    assert set(VDIT_PRESETS) == {"VDiT-T/2", "VDiT-3XS/2", "VDiT-2XS/2", "VDiT-XS/2", "VDiT-S/2", "VDiT-B/2",
                                 "VDiT-L/2", "VDiT-XL/2"}
    expected_millions = {"VDiT-S/2": 40.5, "VDiT-B/2": 160.3, "VDiT-L/2": 561.4, "VDiT-XL/2": 827.0}
    for name, millions in expected_millions.items():  # the numbers in dit.py's preset comment
        with torch.device("meta"):
            count = num_params(build_dit(name))
        assert abs(count / 1e6 - millions) < 0.1, (name, count)
    assert num_params(build_dit("VDiT-T/2")) < 100_000


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="divisible"):
        VideoDiTConfig(hidden=30, heads=4)
    with pytest.raises(KeyError, match="VDiT-S/2"):
        build_dit("VDiT-M/2")


@pytest.mark.parametrize("grid,text_len", [((3, 8, 8), 5), ((5, 16, 12), 7), ((1, 8, 8), 20)])
def test_flops_per_token_matches_counted_matmul_flops(grid, text_len):
    config = VDIT_PRESETS["VDiT-T/2"]
    model = VideoDiT(config)
    x = torch.randn(2, 4, *grid)
    num_tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    # The math backend decomposes attention into bmm, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.rand(2), torch.randn(2, text_len, 32), torch.ones(2, text_len, dtype=torch.bool))
    predicted = 2 * num_tokens * flops_per_token(config, num_tokens, text_len)
    assert abs(counter.get_total_flops() / predicted - 1) < 0.01
