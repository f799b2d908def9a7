"""Tiny randomly initialised instances of real pretrained-model classes (diffusers VAEs, T5/UMT5/CLIP
text encoders), saved with save_pretrained so tests load them by path exactly as a hub name loads.

Configs follow diffusers' and transformers' own model tests (1-layer blocks, 8-32 channels). The
latent statistics are set to non-trivial values so a normalisation that ignores them is caught.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CLIP = {  # a 1-layer open_clip model config (open_clip.add_model_config reads it from a .json file)
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# family -> (diffusers class, tiny config, frames a clip takes (1 + k * temporal), temporal, spatial)
VAE_FAMILIES = {
    "wan": ("AutoencoderKLWan", dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.05],
                                     latents_std=[1.5, 0.5, 2.0, 1.2]), 9, 4, 8),
    "cogvideox": ("AutoencoderKLCogVideoX", dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                                 norm_num_groups=4, temporal_compression_ratio=4), 9, 4, 8),
    "hunyuanvideo": ("AutoencoderKLHunyuanVideo", dict(latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                                       layers_per_block=1, norm_num_groups=4), 9, 4, 8),
    "ltx-video": ("AutoencoderKLLTXVideo", dict(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        patch_size=1, patch_size_t=1, scaling_factor=0.8), 9, 4, 4),
    "mochi": ("AutoencoderKLMochi", dict(latent_channels=4, encoder_block_out_channels=(32, 32, 32, 32),
                                         decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
                                         latents_mean=(0.05, -0.1, 0.0, 0.2), latents_std=(0.9, 1.1, 0.8, 1.3),
                                         scaling_factor=0.9), 7, 6, 8),
    "cosmos": ("AutoencoderKLCosmos", dict(
        latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decode_block_out_channels=(8, 8, 8, 8),
        attention_resolutions=(8,), resolution=64, num_layers=1, patch_size=4, spatial_compression_ratio=4,
        temporal_compression_ratio=4,  # a mean/std per channel and latent frame (4 x 4), as Cosmos 1.0 keeps them
        latents_mean=[0.01 * i for i in range(16)], latents_std=[0.5 + 0.05 * i for i in range(16)]), 9, 4, 4),
    "image": ("AutoencoderKL", dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                                    sample_size=32, shift_factor=0.1159, scaling_factor=0.3611), 3, 1, 2),  # Flux-style
}


def build_vae(family: str, seed: int = 0):
    """The tiny diffusers model of `family`, random but seeded (LTX's statistics set in its buffers)."""
    import diffusers

    cls, config, *_ = VAE_FAMILIES[family]
    torch.manual_seed(seed)
    model = getattr(diffusers, cls)(**config).eval()
    if family == "ltx-video":  # LTX keeps latents_mean/std as buffers saved with the weights
        model.latents_mean.copy_(torch.tensor([0.1, -0.1, 0.2, 0.0, 0.05, -0.05, 0.15, 0.3]))
        model.latents_std.copy_(torch.tensor([1.2, 0.8, 1.0, 1.5, 0.9, 1.1, 0.7, 1.3]))
    return model


def save_vae(family: str, out, subfolder: str | None = None, seed: int = 0) -> str:
    """save_pretrained of the tiny `family` VAE into out (or out/subfolder, as a pipeline repo holds it)."""
    path = Path(out) / subfolder if subfolder else Path(out)
    build_vae(family, seed).save_pretrained(path)
    return str(out)


# ----------------------------------------------------------------------------- text encoders


def _tokenizer(pad: str = "<pad>", eos: str = "</s>", unk: str = "<unk>", **roles):
    """A word-level BPE tokenizer trained here; T5-style (pad 0, eos 1) unless told otherwise."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_vlms import CORPUS

    specials = [pad, eos, unk, *roles.values()]
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk,
                                   model_max_length=64, **{f"{k}_token": v for k, v in roles.items()})


def save_text_encoder(kind: str, out, subfolder: str | None = None, seed: int = 0) -> str:
    """A tiny T5EncoderModel ("t5"), UMT5EncoderModel ("umt5") or CLIPTextModel ("clip") + tokenizer in out."""
    import transformers as tf

    torch.manual_seed(seed)
    tok = _tokenizer()
    if kind in ("t5", "umt5"):
        config_cls, model_cls = (tf.T5Config, tf.T5EncoderModel) if kind == "t5" else (tf.UMT5Config, tf.UMT5EncoderModel)
        config = config_cls(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    else:
        config_cls, model_cls = tf.CLIPTextConfig, tf.CLIPTextModel
        config = config_cls(vocab_size=len(tok), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    path = Path(out) / subfolder if subfolder else Path(out)
    model_cls(config).eval().save_pretrained(path)
    tok.save_pretrained(Path(out) / "tokenizer" if subfolder else path)  # a pipeline repo keeps it beside
    return str(out)
