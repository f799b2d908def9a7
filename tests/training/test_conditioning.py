"""Frame conditioning: strategy masks, the loss on generated frames only (bit-equal when off), the
sampler keeping conditioning frames fixed, and SDEdit's partial noising."""

import pytest
import torch

from tests.training.test_flow import condition, randomize
from training import flow
from training.models.dit import build_dit


class Recorder(torch.nn.Module):
    """Records each call's x and frame_mask; `spoil` adds a huge error to the prediction of frame 0."""

    def __init__(self, model, spoil=False):
        super().__init__()
        self.model, self.config, self.calls, self.spoil = model, model.config, [], spoil

    def forward(self, x, t, tokens, mask, pooled, frame_mask=None):
        self.calls.append({"x": x.clone(), "t": t.clone(), "frame_mask": frame_mask})
        out = self.model(x, t, tokens, mask, pooled, frame_mask=frame_mask)
        if self.spoil:
            out = out.clone()
            out[:, :, 0] += 1000.0
        return out


def test_strategy_masks():
    m = lambda name, t, k=1: flow.strategy_mask(name, t, k).tolist()  # noqa: E731
    assert m("i2v", 4) == [True, False, False, False]
    assert m("extend", 5, 2) == [True, True, False, False, False]
    assert m("extend", 3, 9) == [True, True, False]  # always leaves a frame to generate
    assert m("backward", 4, 2) == [False, False, True, True]
    assert m("connect", 4) == [True, False, False, True]
    assert flow.strategy_mask("i2v", 1) is None  # an image has nothing to condition on
    assert flow.strategy_mask("connect", 2) is None
    with pytest.raises(ValueError, match="unknown conditioning strategy"):
        flow.strategy_mask("loop", 4)


def test_draw_frame_mask_follows_the_probabilities():
    assert flow.draw_frame_mask(8, 3, None) is None
    assert flow.draw_frame_mask(8, 3, {"i2v": 0.0, "connect": 0}) is None
    g = torch.Generator().manual_seed(0)
    all_i2v = flow.draw_frame_mask(6, 3, {"i2v": 1.0}, generator=g)
    assert all_i2v.tolist() == [[True, False, False]] * 6
    masks = flow.draw_frame_mask(4000, 5, {"i2v": 0.25, "extend": 0.25, "connect": 0.25}, max_k=3, generator=g)
    first_only = (masks[:, 0] & ~masks[:, 1:].any(1)).float().mean()
    connect = (masks[:, 0] & masks[:, -1] & ~masks[:, 1:-1].any(1)).float().mean()
    none = (~masks.any(1)).float().mean()
    extend = masks[:, 0] & masks[:, 1]
    assert 0.22 < none < 0.28 and 0.22 < connect < 0.28
    assert 0.28 < first_only < 0.37  # i2v, plus extension with k = 1 (a third of extensions)
    assert set(masks[extend].sum(1).tolist()) == {2, 3}  # k uniform in 1..3


def test_loss_is_bit_equal_when_conditioning_is_off():
    model = randomize(build_dit("VDiT-T/2"))
    x0 = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    losses, states = [], []
    for probs in (None, {"i2v": 0.0, "extend": 0.0, "backward": 0.0, "connect": 0.0}):
        g = torch.Generator().manual_seed(5)
        out = flow.training_loss(model, x0, condition(), generator=g, frame_probs=probs)
        assert out["frame_mask"] is None
        losses.append(out["loss"])
        states.append(g.get_state())
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(states[0], states[1])  # nothing extra was drawn


def test_loss_counts_only_the_generated_frames():
    model = randomize(build_dit("VDiT-T/2", frame_cond=True))
    x0 = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    losses = []
    for spoil in (False, True):
        rec = Recorder(model, spoil=spoil)
        out = flow.training_loss(rec, x0, condition(), generator=torch.Generator().manual_seed(5),
                                 frame_probs={"i2v": 1.0}, caption_dropout=0.0)
        call = rec.calls[0]
        assert call["frame_mask"].tolist() == [[True, False, False]] * 2
        torch.testing.assert_close(call["x"][:, :, 0], x0[:, :, 0])  # the conditioning frame is clean
        assert not torch.allclose(call["x"][:, :, 1], x0[:, :, 1])
        losses.append(out["loss"])
    torch.testing.assert_close(losses[0], losses[1])  # a wrong frame 0 costs nothing: it is given


def test_the_model_sees_the_mask():
    model = randomize(build_dit("VDiT-T/2", frame_cond=True))
    x, t, cond = torch.randn(1, 4, 3, 4, 4), torch.tensor([0.5]), condition(1)
    plain = model(x, t, cond["text_tokens"])
    masked = model(x, t, cond["text_tokens"], frame_mask=torch.tensor([[True, False, False]]))
    assert not torch.allclose(plain, masked)
    torch.testing.assert_close(model(x, t, cond["text_tokens"], frame_mask=torch.zeros(1, 3, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match="without frame conditioning"):
        build_dit("VDiT-T/2")(x, t, cond["text_tokens"], frame_mask=torch.tensor([[True, False, False]]))


@pytest.mark.parametrize("frame_cond", [True, False])
def test_sampler_keeps_the_conditioning_frames_fixed(frame_cond):
    rec = Recorder(randomize(build_dit("VDiT-T/2", frame_cond=frame_cond)))
    clean = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True, False, False, True], [True, True, False, False]])  # connect, extend
    out = flow.sample(rec, clean.shape, condition(), steps=4, cfg_scale=3.0,
                      generator=torch.Generator().manual_seed(0), clean=clean, frame_mask=mask)
    where = mask[:, None, :, None, None].expand_as(clean)
    assert torch.equal(out[where], clean[where])
    assert not torch.allclose(out[~where], clean[~where])
    for call in rec.calls:
        x = call["x"][:2]  # the conditional half of the CFG batch
        if frame_cond:  # given clean, with the mask
            assert torch.equal(x[where], clean[where]) and call["frame_mask"][:2].equal(mask)
        else:  # replacement: the clean frames noised to the current t; no mask for a model without it
            assert call["frame_mask"] is None
    assert len(rec.calls) == 4


def test_sdedit_starts_from_the_noised_input():
    rec = Recorder(randomize(build_dit("VDiT-T/2")))
    clean = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    out = flow.sample(rec, clean.shape, condition(1), steps=10, cfg_scale=1.0, shift=1.0,
                      generator=torch.Generator().manual_seed(0), clean=clean, strength=0.3)
    assert len(rec.calls) == 3  # t = 0.3, 0.2, 0.1
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rec.calls[0]["x"], flow.interpolate(clean, noise, torch.tensor([0.3])))
    assert (out - clean).abs().mean() < (noise - clean).abs().mean() / 2
    with pytest.raises(ValueError, match="strength"):
        flow.sample(rec, clean.shape, condition(1), steps=2, clean=clean, strength=0.0)


def test_batch_loss_with_the_config_off_is_the_plain_loss():
    from infra.config import ConditioningConfig
    from training.step import batch_loss

    model = randomize(build_dit("VDiT-T/2"))
    g = torch.Generator().manual_seed(2)
    batch = {"latent": torch.randn(2, 4, 3, 4, 4, generator=g), **condition()}
    plain = batch_loss(model, batch, caption_dropout=0.5, generator=torch.Generator().manual_seed(9))
    off = batch_loss(model, batch, caption_dropout=0.5, generator=torch.Generator().manual_seed(9),
                     conditioning=ConditioningConfig())
    assert torch.equal(plain, off)
    on = batch_loss(randomize(build_dit("VDiT-T/2", frame_cond=True)), batch, caption_dropout=0.5,
                    generator=torch.Generator().manual_seed(9), conditioning=ConditioningConfig(connect=1.0))
    assert torch.isfinite(on)


@pytest.mark.parametrize("mask", [None, torch.tensor([[True, False, False]])])
def test_every_parameter_gets_a_gradient_with_or_without_a_mask(mask):
    # ZeRO reduces gradients parameter by parameter: a rank whose batch drew no conditioning must still
    # produce one for the conditioning embedding, or the ranks' collectives no longer match.
    model = randomize(build_dit("VDiT-T/2", frame_cond=True))
    model(torch.randn(1, 4, 3, 4, 4), torch.tensor([0.5]), condition(1)["text_tokens"], frame_mask=mask).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
