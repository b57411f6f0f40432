"""Build the offline tiny Qwen2.5-VL: a locally trained tokenizer, a small config, random weights.

The tiny model is a genuine `Qwen2_5_VLForConditionalGeneration` with a byte-level BPE tokenizer
(Qwen2's pre-tokenizer and special tokens) trained on the workbook's own dialogue text, a
Qwen-style chat template and a Qwen2.5-VL image processor with small pixel bounds, saved with
`save_pretrained` so that :func:`zoomdx_lib.model.load.load_model_and_processor` loads it like any
real checkpoint. No hub, no download.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from ..data.dialogue import corpus_texts
from ..protocol import TAGS, format_answer, format_tool_call
from ..schema import ATTRIBUTE_LABELS

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
TAG_TOKENS = list(TAGS)

# Qwen2.5-VL's message layout, without the default system prompt (saves ~20 tokens a turn on
# the tiny model). A real checkpoint keeps its own template.
_TINY_TURN_START = "{%- for message in messages -%}<|im_start|>{{ message['role'] }}{{ '\\n' }}"
_TINY_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
_TINY_END = "{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
TINY_CHAT_TEMPLATE = _TINY_TURN_START + _TINY_CONTENT + "<|im_end|>{{ '\\n' }}" + _TINY_END

# The same text with {% generation %} markers around each assistant turn's content and its <|im_end|>
# (what the explicit loss trains), so TRL's collator can mask everything else.
TINY_TRAINING_CHAT_TEMPLATE = (
    _TINY_TURN_START
    + "{%- if message['role'] == 'assistant' -%}{%- generation -%}" + _TINY_CONTENT
    + "<|im_end|>{%- endgeneration -%}{{ '\\n' }}{%- else -%}" + _TINY_CONTENT + "<|im_end|>{{ '\\n' }}{%- endif -%}"
    + _TINY_END
)


# Qwen2.5-VL-7B-Instruct's own chat template (default system prompt, vision placeholders, add_vision_id).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-VL's special tokens, in its vocabulary's order; <tool_call> and </tool_call> are added
# (non-special) tokens there, while <think> and <answer> are plain text split by the BPE.
QWEN25_VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
SHAPES = ("tiny", "paper")


def _default_corpus() -> list[str]:
    """Every dialogue phrasing, every answer and a spread of tool calls (digits of every position)."""
    texts = list(corpus_texts())
    for attr, labels in ATTRIBUTE_LABELS.items():
        texts += [format_answer(attr, lab) for lab in labels]
    texts += [format_tool_call((i, i + 3, i + 50, i + 71)) for i in range(0, 200, 7)]
    return texts


def build_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 640, shape: str = "tiny"):
    """Train a byte-level BPE on `corpus` (default: the workbook's dialogue text) with Qwen2's
    pre-tokenizer (digits split one by one) and return a `Qwen2Tokenizer`.

    shape "tiny": Qwen's vision special tokens, the tool/think/answer tags as single tokens and a
    compact chat template without a system prompt. shape "paper": Qwen2.5-VL's special tokens,
    only <tool_call> / </tool_call> added (as in its vocabulary) and its own chat template.
    """
    texts = list(corpus) if corpus is not None else _default_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tok = Qwen2Tokenizer(vocab=model_json["vocab"], merges=merges, unk_token="<|endoftext|>",
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {SHAPES}")
    special = SPECIAL_TOKENS if shape == "tiny" else QWEN25_VL_SPECIAL_TOKENS
    tags = TAG_TOKENS if shape == "tiny" else ["<tool_call>", "</tool_call>"]
    tok.add_special_tokens({"additional_special_tokens": [t for t in special if t != "<|endoftext|>"]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    tok.chat_template = TINY_CHAT_TEMPLATE if shape == "tiny" else QWEN25_VL_CHAT_TEMPLATE
    return tok


def tiny_config(tokenizer, text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=768,
                vision_hidden=128, vision_depth=4, vision_heads=4, vision_intermediate=384):
    """A small `Qwen2_5_VLConfig` sized for 2 CPU cores.

    mRoPE sections are interleaved (t, h, w, t, h, w, ... one frequency each; they sum to head_dim / 2).
    Qwen2.5-VL's own [16, 24, 24] gives time the highest frequencies and width the lowest: in a
    64-wide tiny head that leaves width rotating < 0.03 rad across a whole 8-token image row, so the
    language model can barely tell left from right. The stock implementation takes any list of
    sections and cycles t/h/w over them, so interleaving is a config choice, not a code change.
    """
    head_dim = text_hidden // text_heads
    half = head_dim // 2
    mrope = [1] * half
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_intermediate,
                num_hidden_layers=text_layers, num_attention_heads=text_heads, num_key_value_heads=text_kv_heads,
                max_position_embeddings=4096, max_window_layers=text_layers,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate,
                  num_heads=vision_heads, out_hidden_size=text_hidden, window_size=112,
                  fullatt_block_indexes=list(range(vision_depth)), patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return _qwen_config(ids, text, vision, tie_word_embeddings=True)


def _qwen_config(ids: dict, text: dict, vision: dict, tie_word_embeddings: bool) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config from text and vision sub-configs, with the special tokens' ids wired in."""
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=tie_word_embeddings,
                            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                            pad_token_id=ids["<|endoftext|>"])


def paper_shaped_config(tokenizer, text_hidden=128, text_layers=4, text_heads=4, text_kv_heads=2,
                        text_intermediate=384, vision_hidden=64, vision_depth=4, vision_heads=2,
                        vision_intermediate=128):
    """Qwen2.5-VL-7B's topology scaled down, for testing the paper profile's code path on CPU.

    As in the 7B: contiguous mRoPE sections in its 16 : 24 : 24 proportions (head_dim 32 -> [4, 6, 6]),
    windowed vision attention (window 112 px) with every other block full-attention (the 7B: every
    8th of 32), patch 14 / merge 2 / temporal patch 2, rope theta 1e6, untied embeddings, grouped
    query attention.
    """
    head_dim = text_hidden // text_heads
    half = head_dim // 2
    t = half * 16 // 64
    mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_intermediate,
                num_hidden_layers=text_layers, num_attention_heads=text_heads, num_key_value_heads=text_kv_heads,
                max_position_embeddings=32768, max_window_layers=text_layers, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate,
                  num_heads=vision_heads, out_hidden_size=text_hidden, window_size=112,
                  fullatt_block_indexes=list(range(1, vision_depth, 2)), patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return _qwen_config(ids, text, vision, tie_word_embeddings=False)


def build_processor(tokenizer, min_pixels: int = 112 * 112, max_pixels: int = 224 * 224) -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor around `tokenizer` (its chat template) with these pixel bounds."""
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
                               tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                               chat_template=tokenizer.chat_template)


def build_tiny_checkpoint(path, min_pixels: int = 112 * 112, max_pixels: int = 224 * 224, seed: int = 0,
                          corpus: Optional[Iterable[str]] = None, shape: str = "tiny", **sizes) -> Path:
    """Build an offline Qwen2.5-VL with random weights, its tokenizer and processor, and save all with
    `save_pretrained` (safetensors) into `path`. Returns the path.

    shape "tiny": the workbook's CPU model (:func:`tiny_config`, compact template). shape "paper": the
    7B's topology scaled down with its chat template and special tokens (:func:`paper_shaped_config`).
    `sizes` go to the config function.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(corpus, shape=shape)
    processor = build_processor(tok, min_pixels, max_pixels)
    torch.manual_seed(seed)
    make_config = tiny_config if shape == "tiny" else paper_shaped_config
    model = Qwen2_5_VLForConditionalGeneration(make_config(tok, **sizes))
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


