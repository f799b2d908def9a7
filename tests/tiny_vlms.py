"""Tiny randomly initialised instances of real VLM classes, saved with save_pretrained, for offline tests.

Each builder trains a byte-level BPE tokenizer in-process with the `tokenizers` library (the
family's special tokens included), gives it the family's chat template, builds the family's real
image/video processors and model class from a small config, and writes all of it to a directory:
exactly what `load_captioner(path)` reads for a hub model. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a the red blue green yellow square circle moves left right up down on white black background "
         "video shows scene camera light dark person walks car drives slowly quickly frame clip of and in").split()
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_OV_TEMPLATE = (  # Qwen2-style turns with <image>/<video> placeholders, as llava-onevision-qwen2
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'video' %}<video>\n{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_NEXT_VIDEO_TEMPLATE = (  # Vicuna-style USER/ASSISTANT turns
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'video' %}<video>\n{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def train_tokenizer(specials: list[str], template: str, **roles):
    """A byte-level BPE tokenizer trained here on a few words; `specials` first in the vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    fast.chat_template = template
    return fast


def _ids(tokenizer, *tokens):
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text(tok, **kw) -> dict:
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024, **kw}


def _save(out, model, processor, tokenizer) -> str:
    out = Path(out)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    # a random model would often stop at once or emit markup: a few plain tokens make a caption
    gen.min_new_tokens = 3
    gen.suppress_tokens = [i for i, t in tokenizer.added_tokens_decoder.items()
                           if t.special and i != tokenizer.eos_token_id]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


# ----------------------------------------------------------------------------- Qwen2-VL, Qwen2.5-VL, Qwen3-VL


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def build_qwen_vl(out, family: str = "qwen2_vl", seed: int = 0) -> str:
    """A tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL (+ its processor) in `out`."""
    import transformers as tf

    torch.manual_seed(seed)
    tok = train_tokenizer(QWEN_SPECIALS, QWEN_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    image_id, video_id, start_id, end_id = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                "<|vision_end|>")
    patch = 16 if family == "qwen3_vl" else 14
    pixels = {"min_pixels": (2 * patch) ** 2, "max_pixels": (4 * patch) ** 2}  # 2x2 .. 4x4 patches a frame
    vision = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": patch, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3]}  # head_dim 16: 8 rotary pairs over (t, h, w)
    ids = dict(image_token_id=image_id, video_token_id=video_id, vision_start_token_id=start_id)
    if family == "qwen2_vl":
        config = tf.Qwen2VLConfig(text_config=_text(tok, rope_parameters=rope),
                                  vision_config={**vision, "embed_dim": 32, "mlp_ratio": 2}, **ids)
        model, image_proc, video_proc, proc = (tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLImageProcessor,
                                               tf.Qwen2VLVideoProcessor, tf.Qwen2VLProcessor)
    elif family == "qwen2_5_vl":
        config = tf.Qwen2_5_VLConfig(text_config=_text(tok, rope_parameters=rope),
                                     vision_config={**vision, "out_hidden_size": 32, "intermediate_size": 64,
                                                    "fullatt_block_indexes": [0], "window_size": 56}, **ids)
        model, image_proc, video_proc, proc = (tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2VLImageProcessor,
                                               tf.Qwen2VLVideoProcessor, tf.Qwen2_5_VLProcessor)
    else:
        config = tf.Qwen3VLConfig(
            text_config=_text(tok, head_dim=16, rope_parameters={**rope, "mrope_interleaved": True}),
            vision_config={**vision, "out_hidden_size": 32, "intermediate_size": 64, "num_position_embeddings": 16,
                           "deepstack_visual_indexes": [0]}, **ids, vision_end_token_id=end_id)
        model, image_proc, video_proc, proc = (tf.Qwen3VLForConditionalGeneration, tf.Qwen2VLImageProcessor,
                                               tf.Qwen3VLVideoProcessor, tf.Qwen3VLProcessor)
    size = {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
    processor = proc(image_processor=image_proc(size=size, patch_size=patch),
                     video_processor=video_proc(size=size, patch_size=patch), tokenizer=tok,
                     chat_template=QWEN_TEMPLATE)
    return _save(out, model(config).eval(), processor, tok)


# ----------------------------------------------------------------------------- LLaVA-OneVision, LLaVA-NeXT-Video


def build_llava(out, family: str = "llava_onevision", seed: int = 0) -> str:
    """A tiny LLaVA-OneVision (SigLIP + Qwen2) or LLaVA-NeXT-Video (CLIP + Llama) in `out`."""
    import transformers as tf

    torch.manual_seed(seed)
    onevision = family == "llava_onevision"
    template = LLAVA_OV_TEMPLATE if onevision else LLAVA_NEXT_VIDEO_TEMPLATE
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"] if onevision else \
        ["<unk>", "<s>", "</s>", "<image>", "<video>"]
    roles = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>") if onevision else \
        dict(bos_token="<s>", eos_token="</s>", pad_token="<unk>", unk_token="<unk>")
    tok = train_tokenizer(specials, template, **roles)
    image_id, video_id = _ids(tok, "<image>", "<video>")
    side, patch = 32, 8
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": side, "patch_size": patch}
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side]]
    size = {"height": side, "width": side}
    if onevision:
        config = tf.LlavaOnevisionConfig(
            vision_config={"model_type": "siglip_vision_model", **vision}, text_config={"model_type": "qwen2", **_text(tok)},
            image_token_index=image_id, video_token_index=video_id, image_grid_pinpoints=pinpoints,
            vision_aspect_ratio="anyres_max_1")
        processor = tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
            video_processor=tf.LlavaOnevisionVideoProcessor(size=size), tokenizer=tok, chat_template=template,
            num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_1")
        model = tf.LlavaOnevisionForConditionalGeneration(config)
    else:
        config = tf.LlavaNextVideoConfig(
            vision_config={"model_type": "clip_vision_model", **vision}, text_config={"model_type": "llama", **_text(tok)},
            image_token_index=image_id, video_token_index=video_id, image_grid_pinpoints=pinpoints,
            image_seq_length=(side // patch) ** 2, video_seq_length=(side // patch) ** 2 // 4)
        crop = {"crop_size": size, "size": {"shortest_edge": side}}
        processor = tf.LlavaNextVideoProcessor(
            image_processor=tf.LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **crop),
            video_processor=tf.LlavaNextVideoVideoProcessor(**crop), tokenizer=tok, chat_template=template,
            patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
        model = tf.LlavaNextVideoForConditionalGeneration(config)
    return _save(out, model.eval(), processor, tok)


# ----------------------------------------------------------------------------- SmolVLM


def build_smolvlm(out, seed: int = 0) -> str:
    """A tiny SmolVLM (SigLIP-style vision + Llama text, pixel shuffle) in `out`."""
    import transformers as tf

    torch.manual_seed(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<video>",
                "<fake_token_around_image>", "<global-img>"]
    tok = train_tokenizer(specials, SMOLVLM_TEMPLATE, eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
                          bos_token="<|im_start|>")
    side, patch, shuffle = 32, 8, 2
    config = tf.SmolVLMConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": side, "patch_size": patch},
        text_config={"model_type": "llama", **_text(tok)}, image_token_id=_ids(tok, "<image>")[0],
        scale_factor=shuffle)
    edge = {"longest_edge": side}
    processor = tf.SmolVLMProcessor(
        image_processor=tf.SmolVLMImageProcessor(size=edge, max_image_size=edge, do_image_splitting=False),
        video_processor=tf.SmolVLMVideoProcessor(size=edge, max_image_size=edge), tokenizer=tok,
        chat_template=SMOLVLM_TEMPLATE, image_seq_len=(side // patch) ** 2 // shuffle**2)
    return _save(out, tf.SmolVLMForConditionalGeneration(config).eval(), processor, tok)


BUILDERS = {
    "qwen2_vl": lambda out: build_qwen_vl(out, "qwen2_vl"),
    "qwen2_5_vl": lambda out: build_qwen_vl(out, "qwen2_5_vl"),
    "qwen3_vl": lambda out: build_qwen_vl(out, "qwen3_vl"),
    "llava_onevision": lambda out: build_llava(out, "llava_onevision"),
    "llava_next_video": lambda out: build_llava(out, "llava_next_video"),
    "smolvlm": build_smolvlm,
}
