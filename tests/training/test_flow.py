"""Rectified flow: interpolation, time sampling, the loss falling on one batch, Euler + CFG."""

import math

import pytest
import torch

from training import flow
from training.models.dit import build_dit


def randomize(model, seed=0, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return model


def condition(batch=2, length=5, dim=32):
    gen = torch.Generator().manual_seed(3)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    return {"text_tokens": torch.randn(batch, length, dim, generator=gen), "text_mask": mask}


class Recorder(torch.nn.Module):
    """Wraps a model and records the arguments of each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, x, t, tokens, mask, pooled):
        self.calls.append({"x": x, "t": t, "tokens": tokens, "mask": mask, "pooled": pooled})
        return self.model(x, t, tokens, mask, pooled)


def test_interpolation_endpoints_and_velocity_target():
    x0, eps = torch.randn(3, 4, 1, 2, 2), torch.randn(3, 4, 1, 2, 2)
    assert torch.equal(flow.interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(flow.interpolate(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.25, 0.5, 0.75])
    x_t = flow.interpolate(x0, eps, t)
    torch.testing.assert_close(x_t[1], 0.5 * (x0[1] + eps[1]))
    # Euler with the true velocity eps - x0 goes from noise to data exactly (straight paths).
    torch.testing.assert_close(x_t + (0 - t).view(-1, 1, 1, 1, 1) * (eps - x0), x0)


def test_time_shift_is_monotone_and_resolution_dependent():
    t = torch.linspace(0, 1, 101)
    for shift in (0.5, 1.0, 3.0):
        s = flow.shift_time(t, shift)
        assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()
    assert flow.resolution_shift(256) == 1.0
    assert flow.resolution_shift(1024) == 2.0  # 4x the tokens -> sqrt(4)
    assert flow.num_latent_tokens(build_dit("VDiT-T/2"), (2, 4, 5, 16, 15)) == 5 * 8 * 8


def test_sample_t_is_logit_normal_seeded_and_shifted():
    a = flow.sample_t(4096, torch.Generator().manual_seed(0))
    b = flow.sample_t(4096, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4096,)
    assert 0 < a.min() and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.02  # logit-normal(0, 1) is symmetric about 1/2
    shifted = flow.sample_t(4096, torch.Generator().manual_seed(0), shift=3.0)
    assert shifted.mean() > 0.65  # more tokens -> more noise


def test_training_loss_uses_the_null_condition_for_dropped_rows():
    model = Recorder(build_dit("VDiT-T/2"))
    cond, x0 = condition(), torch.randn(2, 4, 2, 4, 4)
    out = flow.training_loss(model, x0, cond, caption_dropout=1.0, generator=torch.Generator().manual_seed(0))
    assert out["loss"].ndim == 0 and out["t"].shape == (2,) and out["loss_per_sample"].shape == (2,)
    call = model.calls[-1]
    assert torch.equal(call["tokens"], torch.zeros(2, 5, 32))
    assert call["mask"].tolist() == [[True] + [False] * 4] * 2
    assert torch.equal(call["pooled"], torch.zeros(2, 32))
    flow.training_loss(model, x0, cond, caption_dropout=0.0)
    assert torch.equal(model.calls[-1]["tokens"], cond["text_tokens"])
    # At init the model predicts 0, so the loss is |eps - x0|^2 on average.
    assert 1.2 < out["loss"].item() < 3.0


def test_flow_loss_falls_on_one_fixed_batch():
    torch.manual_seed(0)
    model = build_dit("VDiT-T/2")
    grid = torch.linspace(0, math.pi, 8)
    image = torch.sin(grid)[:, None] * torch.cos(grid)[None, :]  # (8, 8)
    x0 = torch.stack([image * (c + 1) / 2 for c in range(4)])[:, None].expand(4, 3, 8, 8)
    x0 = torch.stack([x0, -x0])  # (2, 4, 3, 8, 8): two clips, told apart by their captions
    cond = condition()

    def eval_loss():  # the same t and noise every time, so losses are comparable
        with torch.no_grad():
            gen = torch.Generator().manual_seed(123)
            return flow.training_loss(model, x0, cond, caption_dropout=0.0, generator=gen, shift=1.0)["loss"].item()

    start = eval_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = flow.training_loss(model, x0, cond, generator=gen, shift=1.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = eval_loss()
    assert end < 0.25 * start, (start, end)


def euler_reference(model, shape, cond, steps, seed, shift, cfg_scale=1.0, null=None):
    """A plain loop written out here: conditional (and, if guided, separate null) passes."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    ts = flow.shift_time(torch.linspace(1, 0, steps + 1), shift)
    with torch.no_grad():
        for i in range(steps):
            t = ts[i].expand(shape[0])
            v = model(x, t, cond["text_tokens"], cond["text_mask"], cond["text_pooled"])
            if cfg_scale != 1.0:
                v_null = model(x, t, null["text_tokens"], null["text_mask"], null["text_pooled"])
                v = v_null + cfg_scale * (v - v_null)
            x = x + (ts[i + 1] - ts[i]) * v
    return x


def test_cfg_scale_one_is_exactly_the_conditional_sample():
    model = Recorder(randomize(build_dit("VDiT-T/2")).eval())
    cond = {**condition(), "text_pooled": torch.randn(2, 32)}
    shape = (2, 4, 2, 4, 6)
    x = flow.sample(model, shape, cond, steps=4, cfg_scale=1.0, generator=torch.Generator().manual_seed(5), shift=1.0)
    assert len(model.calls) == 4 and all(c["x"].shape[0] == 2 for c in model.calls)  # no null pass
    assert torch.equal(x, euler_reference(model.model, shape, cond, 4, 5, 1.0))


def test_guided_sample_matches_the_cfg_formula_and_differs_from_unguided():
    model = Recorder(randomize(build_dit("VDiT-T/2")).eval())
    cond = {**condition(), "text_pooled": torch.randn(2, 32)}
    shape = (2, 4, 1, 4, 4)
    x = flow.sample(model, shape, cond, steps=3, cfg_scale=4.0, generator=torch.Generator().manual_seed(5), shift=2.0)
    assert len(model.calls) == 3 and all(c["x"].shape[0] == 4 for c in model.calls)  # [cond; null]
    ref = euler_reference(model.model, shape, cond, 3, 5, 2.0, cfg_scale=4.0, null=flow.null_condition(cond))
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    plain = flow.sample(model.model, shape, cond, steps=3, cfg_scale=1.0, generator=torch.Generator().manual_seed(5), shift=2.0)
    assert (x - plain).abs().max() > 1e-3


def test_sampler_is_deterministic_for_a_fixed_generator():
    model = randomize(build_dit("VDiT-T/2")).eval()
    cond, shape = condition(), (2, 4, 2, 4, 4)
    a = flow.sample(model, shape, cond, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(1))
    b = flow.sample(model, shape, cond, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(1))
    c = flow.sample(model, shape, cond, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


def test_null_condition_of_another_length_is_padded():
    model = Recorder(randomize(build_dit("VDiT-T/2")).eval())
    cond = condition(length=5)
    null = {"text_tokens": torch.zeros(1, 2, 32), "text_mask": torch.tensor([[True, False]])}
    flow.sample(model, (2, 4, 1, 4, 4), cond, null_cond=null, steps=1, cfg_scale=2.0)
    call = model.calls[0]
    assert call["tokens"].shape == (4, 5, 32)
    assert call["mask"][2:].tolist() == [[True] + [False] * 4] * 2
    with pytest.raises(KeyError):
        flow.sample(model, (2, 4, 1, 4, 4), {"text_tokens": cond["text_tokens"]}, steps=1)
