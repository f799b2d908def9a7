"""Prompt extension: a short user prompt -> the detailed caption style the DiT was trained on.

The Sora report extends short prompts with a language model before sampling, since the model only
saw long, detailed captions. `sample.prompt_extension` chooses how:
- "world": the synthetic world's caption template (infra.world.extend_prompt), rule based, so
  the demo shows extension without pretending a language model runs;
- anything else: a causal language model by hub name or local `save_pretrained` directory
  (transformers' AutoModelForCausalLM), prompted with `sample.prompt_shots` real captions from the
  captions table `sample.prompt_examples` (a caption/curate output root or a latents root), so
  it writes in the style of the training captions. Greedy decoding: the same prompt, the same text.
`with_scores` appends target scores as the caption job appended measured ones (caption.score_suffix).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from infra import storage
from infra.captions import append_scores, target_suffix_row

log = logging.getLogger(__name__)
INSTRUCTION = "Rewrite the short prompt as one detailed video caption in the style of these captions."


def example_captions(root: str, n: int, seed: int = 0) -> list[str]:
    """n distinct captions from the `caption` column under root (clips/, latents/ or the folder itself),
    a seeded pick so the same table gives the same examples."""
    import numpy as np

    for folder in (storage.join(root, "clips"), storage.join(root, "latents"), root):
        try:
            table = storage.read_table(folder, columns=["caption"])
            break
        except (FileNotFoundError, KeyError, ValueError):
            continue
    else:
        raise FileNotFoundError(f"sample.prompt_examples: no table with a caption column under {root}")
    captions = sorted({c.strip() for c in table["caption"].to_pylist() if c and c.strip()})
    if not captions:
        raise ValueError(f"sample.prompt_examples: the captions under {root} are all empty")
    order = np.random.default_rng(seed).permutation(len(captions))[:n]
    return [captions[i] for i in sorted(order)]


def few_shot_prompt(short: str, examples: list[str]) -> str:
    """The text the language model continues: the instruction, the real captions, the short prompt."""
    shots = "\n".join(f"Caption: {e}" for e in examples)
    return f"{INSTRUCTION}\n\n{shots}\n\nShort prompt: {short.strip()}\nCaption:"


class LMExtender:
    """A causal LM (name or path) that continues `few_shot_prompt`; its first line is the extension."""

    def __init__(self, name_or_path: str, examples: list[str], max_new_tokens: int = 60, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"sample.prompt_extension: cannot load {name_or_path!r} as a causal language model ({exc}); give "
                "a local save_pretrained directory, or a hub name already in the Hugging Face cache (offline), "
                "or 'world' for the synthetic world's rule-based extender") from None
        self.examples, self.max_new_tokens, self.device = list(examples), max_new_tokens, device

    def extend_one(self, short: str) -> str:
        import torch

        ids = self.tokenizer(few_shot_prompt(short, self.examples), return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        line = next((x.strip() for x in text.splitlines() if x.strip()), "")
        if not line:
            log.warning("prompt extension produced nothing for %r: keeping the prompt as it is", short)
        return line or short

    def __call__(self, prompts: list[str]) -> list[str]:
        return [self.extend_one(p) for p in prompts]


def build_extender(cfg, image: bool = False, device: str = "cpu") -> Callable[[list[str]], list[str]] | None:
    """The extender `sample.prompt_extension` names, or None when it is off; `image`: the prompts are
    for one-frame samples (the world template then names no motion)."""
    s = cfg.sample
    if not s.prompt_extension or s.prompt_extension == "none":
        return None
    if s.prompt_extension == "world":
        from infra.world import extend_prompt

        return lambda prompts: [extend_prompt(p, cfg.world, image=image) for p in prompts]
    if not s.prompt_examples:
        raise ValueError(f"sample.prompt_extension={s.prompt_extension!r} needs sample.prompt_examples: a caption, "
                         "curate or precompute output root whose captions show the style to write in")
    examples = example_captions(s.prompt_examples, s.prompt_shots, s.seed)
    return LMExtender(s.prompt_extension, examples, s.prompt_max_new_tokens, device)


def with_scores(cfg, prompts: list[str]) -> list[str]:
    """Each prompt with the score suffix training captions got (caption.score_suffix), at sample.target_scores."""
    row = target_suffix_row(cfg.caption.score_suffix, cfg.sample.target_scores)
    return [append_scores(p, row, list(row)) for p in prompts]
