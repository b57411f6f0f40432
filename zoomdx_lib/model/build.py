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
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)


def _default_corpus() -> list[str]:
    """Every dialogue phrasing, every answer and a spread of tool calls (digits of every position)."""
    texts = list(corpus_texts())
    for attr, labels in ATTRIBUTE_LABELS.items():
        texts += [format_answer(attr, lab) for lab in labels]
    texts += [format_tool_call((i, i + 3, i + 50, i + 71)) for i in range(0, 200, 7)]
    return texts


def build_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 640):
    """Train a byte-level BPE on `corpus` (default: the workbook's dialogue text) with Qwen2's
    pre-tokenizer (digits split one by one) and return a `Qwen2Tokenizer` with Qwen's special
    tokens plus the tool/think/answer tags as single tokens."""
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
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok.chat_template = TINY_CHAT_TEMPLATE
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
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
                            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                            pad_token_id=ids["<|endoftext|>"])


def build_tiny_checkpoint(path, min_pixels: int = 112 * 112, max_pixels: int = 224 * 224, seed: int = 0,
                          corpus: Optional[Iterable[str]] = None, **sizes) -> Path:
    """Build the offline tiny Qwen2.5-VL (random init), its tokenizer and processor, and save all
    with `save_pretrained` (safetensors) into `path`. `sizes` go to `tiny_config`. Returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(corpus)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=TINY_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tok, **sizes))
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


