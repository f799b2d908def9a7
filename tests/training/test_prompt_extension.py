"""Prompt extension: the world's rule-based template, a tiny real causal LM (GPT-2 class, built here)
prompted with real captions from a captions table, and target score suffixes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from infra.config import load_config
from training.prompt_extension import LMExtender, build_extender, example_captions, few_shot_prompt, with_scores

CAPTIONS = ["a red square moves left on a gray background", "a blue circle moves up on a white background",
            "a green triangle moves down on a black background", "a yellow square moves right on a gray background"]


@pytest.fixture(scope="module")
def captions_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    (root / "clips").mkdir()
    pq.write_table(pa.table({"clip_id": [f"c{i}" for i in range(5)], "caption": CAPTIONS + [None]}),
                   root / "clips" / "part-00000.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 1-layer GPT-2 with a byte-level BPE trained here; its head is set to always say ' square'."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-lm")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CAPTIONS * 4 + ["Short prompt: Caption: Rewrite detailed video style"], vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                                       tie_word_embeddings=False))
    target = tok.convert_tokens_to_ids("Ġsquare")
    with torch.no_grad():  # logits = ln_f(h) @ W^T: a constant ln_f output and one non-zero head row
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[target] = 1.0
    model.save_pretrained(out)
    return out


def test_world_extender_maps_short_prompts_to_the_caption_template():
    cfg = load_config(None, ["sample.prompt_extension=world"])
    extend = build_extender(cfg)
    assert extend(["red ball going left", "blue square over white", "a cat"]) == [
        "a red circle moves left on a black background", "a blue square moves left on a white background", "a cat"]
    assert build_extender(cfg, image=True)(["green triangle"]) == ["a green triangle on a black background"]
    assert build_extender(load_config(None)) is None


def test_examples_come_from_the_captions_table(captions_root):
    picked = example_captions(str(captions_root), 3, seed=0)
    assert len(picked) == 3 and set(picked) <= set(CAPTIONS)
    assert picked == example_captions(str(captions_root), 3, seed=0)
    prompt = few_shot_prompt("red thing", picked)
    assert all(f"Caption: {c}" in prompt for c in picked) and prompt.endswith("Short prompt: red thing\nCaption:")


def test_a_causal_lm_by_path_writes_the_extension(tiny_lm, captions_root):
    cfg = load_config(None, [f"sample.prompt_extension={tiny_lm}", f"sample.prompt_examples={captions_root}",
                             "sample.prompt_shots=2", "sample.prompt_max_new_tokens=5"])
    extend = build_extender(cfg)
    assert isinstance(extend, LMExtender) and len(extend.examples) == 2
    assert extend(["a red one"]) == ["square square square square square"]  # what the model generated


def test_missing_model_and_examples_fail_with_one_message(tmp_path, captions_root):
    cfg = load_config(None, [f"sample.prompt_extension={tmp_path / 'nope'}", f"sample.prompt_examples={captions_root}"])
    with pytest.raises(FileNotFoundError, match="sample.prompt_extension: cannot load"):
        build_extender(cfg)
    with pytest.raises(ValueError, match="needs sample.prompt_examples"):
        build_extender(load_config(None, [f"sample.prompt_extension={tmp_path}"]))


def test_target_scores_are_appended_like_the_captions():
    cfg = load_config(None, ["caption.score_suffix=[aesthetic, motion]", "sample.target_scores={aesthetic: 6.5, motion: 4}"])
    assert with_scores(cfg, ["a red square moves left"]) == ["a red square moves left. aesthetic score 6.5, motion 4."]
    with pytest.raises(ValueError, match="no value for them"):
        with_scores(load_config(None, ["caption.score_suffix=[aesthetic]"]), ["x"])
