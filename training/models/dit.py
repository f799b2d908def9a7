"""VideoDiT: a diffusion transformer over spacetime latent patches.

After facebookresearch/DiT `models.py`, extended to video: Conv3d patch embedding over latents
(B, C, T, H, W), 3D rotary position embedding computed from the actual patch grid (so any
T x H x W works, images being T=1), adaLN-Zero on the timestep plus pooled text, self-attention
over all spacetime tokens, cross-attention to caption tokens with a padding mask. Optional: a
per-frame conditioning mask (clean frames for image-to-video, extension, connecting; `frame_cond`)
and Ulysses sequence parallelism over a process group (training/models/parallel.py).

Presets (VDIT_PRESETS) follow DiT's sizes; parameters at in_channels=16, text_dim=768:
VDiT-S/2 40.5M, VDiT-B/2 160.3M, VDiT-L/2 561.4M, VDiT-XL/2 827.0M (VDiT-T/2, for tests, 0.063M;
VDiT-XS/2, the synthetic-world learning run on CPU, 1.67M at in_channels=4, text_dim=384; VDiT-3XS/2 and
VDiT-2XS/2, its narrower cuts for the compute-scaling run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from training.models import parallel
from training.models.flops import flops_per_token, num_params  # noqa: F401  (re-exported: their old home)
from training.models.io import PretrainedMixin, from_preset


@dataclass(frozen=True)
class VideoDiTConfig:
    """Architecture of a VideoDiT; saved as config.json beside the weights."""

    in_channels: int = 16  # latent channels of the VAE
    hidden: int = 1152
    depth: int = 28
    heads: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    text_dim: int = 768  # width of the text encoder's token embeddings
    mlp_ratio: float = 4.0
    qk_norm: bool = True  # RMSNorm on q and k keeps attention logits bounded in bf16
    rope_theta: float = 10000.0
    # Frame conditioning (image-to-video, extension, connecting): clean latent frames given as input,
    # marked by a per-frame mask; their tokens get a learned embedding and the t = 0 modulation.
    frame_cond: bool = False

    def __post_init__(self):
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        head_dim = self.hidden // self.heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head_dim={head_dim} must be even and >= 6 for 3D RoPE")


#################################################################################
#                        Rotary position embedding (3D)                         #
#################################################################################


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Split the head dim into (t, h, w) rotary parts, each even; time gets the remainder."""
    dh = dw = 2 * (head_dim // 6)
    return head_dim - dh - dw, dh, dw


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float, device=None):
    """(cos, sin), each (N, head_dim/2), for the patch grid T' x H' x W' flattened as (t h w)."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # (N, 3)
    angles = []
    for i, dim in enumerate(rope_split(head_dim)):
        inv_freq = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        angles.append(pos[:, i : i + 1] * inv_freq)  # (N, dim/2)
    angles = torch.cat(angles, -1)  # (N, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (B, heads, N, head_dim); computed in float32."""
    x1, x2 = rearrange(x.float(), "... (d r) -> r ... d", r=2)  # each (B, heads, N, hd/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)  # (B, heads, N, hd/2, 2)
    return rearrange(out, "... d r -> ... (d r)").type_as(x)


#################################################################################
#               Embedding Layers for Patches, Timesteps and Text                #
#################################################################################


class PatchEmbed3D(nn.Module):
    """Latent (B, C, T, H, W) -> tokens (B, N, D) by a Conv3d with stride = patch."""

    def __init__(self, in_channels: int, hidden: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x):
        x = self.proj(x)  # (B, D, T', H', W')
        return rearrange(x, "b d t h w -> b (t h w) d"), tuple(x.shape[2:])


class TimestepEmbedder(nn.Module):
    """Scalar t in [0, 1] -> (B, D) via sinusoids of 1000 t (DiT's frequency range) and an MLP."""

    def __init__(self, hidden: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, dim/2)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (B, D)


class TextEmbedder(nn.Module):
    """Projects text features (..., Dtext) to the model width (..., D)."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden)
        )

    def forward(self, x):
        return self.mlp(x)


#################################################################################
#                                 Core DiT Block                                #
#################################################################################


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def token_modulation(ada_ln: nn.Module, c, frames=None):
    """adaLN parameters (B, 1, k*D) of c; with frames = (c0, token_mask), the tokens of conditioning
    frames take those of c0 (t = 0: they are clean) instead -> (B, N, k*D)."""
    mod = ada_ln(c)[:, None]
    if frames is None:
        return mod
    c0, tokens = frames
    return torch.where(tokens[..., None], ada_ln(c0)[:, None], mod)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hidden // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x, rope, seq=None):
        qkv = rearrange(self.qkv(x), "b n (k h d) -> k b h n d", k=3, h=self.heads)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd); N/P local tokens under sequence parallelism
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        if seq is None:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)
        else:  # seq = (SequenceParallel, real token count): all-to-all over heads (Ulysses)
            x = parallel.ulysses_attention(q, k, v, *seq)  # (B, heads, N/P, hd)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))  # (B, N, D)


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hidden // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x, ctx, ctx_mask):
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, N, hd)
        k, v = rearrange(self.kv(ctx), "b l (k h d) -> k b h l d", k=2, h=self.heads).unbind(0)
        # A caption with no real token would make softmax over nothing (NaN): let it attend to
        # all (zeroed) tokens, then drop its output.
        has_text = ctx_mask.any(-1)  # (B,)
        attn_mask = (ctx_mask | ~has_text[:, None])[:, None, None, :]  # (B, 1, 1, L)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=attn_mask)
        x = self.proj(rearrange(x, "b h n d -> b n (h d)"))  # (B, N, D)
        return x * has_text[:, None, None].to(x.dtype)


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VideoDiTBlock(nn.Module):
    """Self-attention and MLP with adaLN-Zero; cross-attention to text in between (PixArt)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=True, eps=1e-6)
        self.cross_attn = CrossAttention(hidden, heads, qk_norm)
        self.norm3 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c, ctx, ctx_mask, rope, frames=None, seq=None):
        mod = token_modulation(self.adaLN_modulation, c, frames)  # (B, 1 or N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope, seq)
        x = x + self.cross_attn(self.norm2(x), ctx, ctx_mask)
        x = x + gate_mlp * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return x  # (B, N, D)


#################################################################################
#                                 Final Layer                                   #
#################################################################################


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c, frames=None):
        shift, scale = token_modulation(self.adaLN_modulation, c, frames).chunk(2, dim=-1)  # each (B, 1|N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, pt*ph*pw*C)


#################################################################################
#                                 The Model                                     #
#################################################################################


class VideoDiT(PretrainedMixin, nn.Module):
    """Predicts the rectified-flow velocity for latents (B, C, T, H, W); output has x's shape."""

    config_class = VideoDiTConfig
    supports_gradient_checkpointing = True

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        self.config = config
        c = config
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed3D(c.in_channels, c.hidden, c.patch)
        self.t_embedder = TimestepEmbedder(c.hidden)
        self.text_embedder = TextEmbedder(c.text_dim, c.hidden)
        self.pooled_embedder = TextEmbedder(c.text_dim, c.hidden)
        self.blocks = nn.ModuleList(
            [VideoDiTBlock(c.hidden, c.heads, c.mlp_ratio, c.qk_norm) for _ in range(c.depth)]
        )
        self.final_layer = FinalLayer(c.hidden, math.prod(c.patch), c.in_channels)
        if c.frame_cond:  # added to the tokens of the clean conditioning frames
            self.cond_embed = nn.Parameter(torch.zeros(c.hidden))
        self.sequence_parallel: parallel.SequenceParallel | None = None  # set by training (Ulysses)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        # Patch embedding like nn.Linear (DiT), not Conv3d's default fan-in init.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for mlp in (self.t_embedder.mlp, self.text_embedder.mlp, self.pooled_embedder.mlp):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity (gates and cross-attn output at zero).
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.config.frame_cond:
            nn.init.normal_(self.cond_embed, std=0.02)

    def _pad_to_patch(self, x):
        """Zero-pad T, H, W at the end up to multiples of the patch; the output is cropped back."""
        pads = [(-n) % p for n, p in zip(x.shape[2:], self.config.patch)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        return x

    def _frame_tokens(self, frame_mask, grid) -> torch.Tensor:
        """Per-frame mask (B, T) -> per-token (B, N): a token is conditioning when all its frames are."""
        pt = self.config.patch[0]
        m = F.pad(frame_mask.bool(), (0, grid[0] * pt - frame_mask.shape[1]), value=False)
        m = rearrange(m, "b (t p) -> b t p", p=pt).all(-1)  # (B, T')
        return m[:, :, None].expand(-1, -1, grid[1] * grid[2]).reshape(m.shape[0], -1)  # (B, N)

    def _text(self, text_tokens, text_mask, text_pooled, dtype):
        """Padded tokens zeroed (whatever a collator left there cannot leak: 0 * inf = nan) and the
        pooled vector (the masked mean of the tokens when not given)."""
        text_mask = text_mask.bool()
        text_tokens = text_tokens.to(dtype).masked_fill(~text_mask[..., None], 0.0)
        if text_pooled is None:
            denom = text_mask.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
            text_pooled = text_tokens.sum(1) / denom.to(text_tokens.dtype)  # (B, Dtext)
        return text_tokens, text_mask, text_pooled.to(dtype)

    def forward(self, x, t, text_tokens, text_mask=None, text_pooled=None, frame_mask=None):
        """x (B, C, T, H, W), t (B,) in [0, 1], text_tokens (B, L, Dtext), text_mask (B, L) bool
        with True = real token, text_pooled (B, Dtext) or None (masked mean of the tokens),
        frame_mask (B, T) bool or None: True = a clean conditioning frame (needs config.frame_cond)."""
        B, C, T, H, W = x.shape
        if t.ndim == 0:
            t = t.expand(B)
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=x.device)
        dtype = self.x_embedder.proj.weight.dtype  # float32 text into a bf16 model is fine
        text_tokens, text_mask, text_pooled = self._text(text_tokens, text_mask, text_pooled, dtype)
        # 1. patchify
        x, grid = self.x_embedder(self._pad_to_patch(x.to(dtype)))  # (B, N, D), N = T'*H'*W'
        rope = rope_3d(grid, self.config.hidden // self.config.heads, self.config.rope_theta, x.device)
        # 2. conditioning: timestep + pooled text -> c, caption tokens -> ctx, conditioning frames
        pooled = self.pooled_embedder(text_pooled)  # (B, D)
        c = self.t_embedder(t) + pooled  # (B, D)
        ctx = self.text_embedder(text_tokens)  # (B, L, D)
        frames, given = None, frame_mask is not None and bool(frame_mask.any())
        if given and not self.config.frame_cond:
            raise ValueError("this VideoDiT was built without frame conditioning (frame_cond=False)")
        if self.config.frame_cond:  # always in the graph: every rank's gradients then cover the same parameters
            tokens = self._frame_tokens(frame_mask.to(x.device), grid) if given else x.new_zeros(x.shape[:2], dtype=torch.bool)
            x = x + tokens[..., None].to(dtype) * self.cond_embed  # (B, N, D)
            frames = (self.t_embedder(torch.zeros_like(t)) + pooled, tokens) if given else None
        # 3. sequence parallelism (Ulysses): this rank keeps N/P tokens, with their global positions
        sp, n_real, seq = self.sequence_parallel, x.shape[1], None
        if sp is not None and sp.size > 1:
            x, rope = parallel.shard(x, sp), tuple(parallel.shard(r, sp, dim=0) for r in rope)
            frames = frames and (frames[0], parallel.shard(frames[1], sp))
            seq = (sp, n_real)
        # 4. transformer blocks
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, ctx, text_mask, rope, frames, seq, use_reentrant=False)
            else:
                x = block(x, c, ctx, text_mask, rope, frames, seq)  # (B, N, D)
        # 5. final layer + unpatchify
        x = self.final_layer(x, c, frames)  # (B, N, pt*ph*pw*C)
        if seq is not None:
            x = parallel.gather_tokens(x, sp, n_real)  # (B, N, pt*ph*pw*C) on every rank
        pt, ph, pw = self.config.patch
        x = rearrange(
            x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
            t=grid[0], h=grid[1], w=grid[2], pt=pt, ph=ph, pw=pw,
        )  # (B, C, T'*pt, H'*ph, W'*pw)
        return x[:, :, :T, :H, :W]


#################################################################################
#                                   VideoDiT Configs                            #
#################################################################################

# Parameter counts (num_params; see the module docstring) are checked by tests/training/test_dit.py.
VDIT_PRESETS = {
    "VDiT-T/2": VideoDiTConfig(in_channels=4, hidden=32, depth=2, heads=2, text_dim=32),
    # the synthetic-world learning run on 2 CPU cores (configs/learn-shapes.yaml)
    "VDiT-XS/2": VideoDiTConfig(in_channels=4, hidden=128, depth=4, heads=4, text_dim=384),
    # narrower XS for `bench/learn.py --scaling` (0.45M and 0.97M at in_channels=3, text_dim=384)
    "VDiT-3XS/2": VideoDiTConfig(in_channels=4, hidden=64, depth=4, heads=4, text_dim=384),
    "VDiT-2XS/2": VideoDiTConfig(in_channels=4, hidden=96, depth=4, heads=4, text_dim=384),
    "VDiT-S/2": VideoDiTConfig(hidden=384, depth=12, heads=6),
    "VDiT-B/2": VideoDiTConfig(hidden=768, depth=12, heads=12),
    "VDiT-L/2": VideoDiTConfig(hidden=1024, depth=24, heads=16),
    "VDiT-XL/2": VideoDiTConfig(hidden=1152, depth=28, heads=16),
}


def build_dit(preset_or_config: str | VideoDiTConfig, **overrides) -> VideoDiT:
    """A VideoDiT from a preset name or a config, with fields overridden (e.g. text_dim=384)."""
    return from_preset(VideoDiT, VDIT_PRESETS, preset_or_config, "preset", **overrides)
