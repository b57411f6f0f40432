"""Load a real Qwen2.5-VL checkpoint, or build the offline tiny one; the paper's LoRA set-up.

The tiny model is a genuine `Qwen2_5_VLForConditionalGeneration` with a locally trained
byte-level BPE tokenizer (Qwen2's pre-tokenizer and special tokens), a Qwen-style chat
template and a Qwen2.5-VL image processor with small pixel bounds. It is saved with
`save_pretrained` and loaded back through the same `load_model_and_processor` as a
real 7B folder, so every code path downstream is the real one.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
TAG_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>"]

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


class UnsafeCheckpointError(RuntimeError):
    """Raised when a checkpoint folder holds only pickle weights (.bin/.pt), which are never loaded."""


def _default_corpus() -> list[str]:
    try:
        from .dialogue import corpus_texts
        texts = list(corpus_texts())
    except ImportError:  # dialogue builder not importable: fall back to the label vocabulary
        texts = []
    from .schema import ATTRIBUTE_LABELS
    for attr, labels in ATTRIBUTE_LABELS.items():
        texts += [f'<answer>{{"{attr}": "{lab}"}}</answer>' for lab in labels]
    texts += ['<tool_call>{"bbox_2d": [%d, %d, %d, %d]}</tool_call>' % (i, i + 3, i + 50, i + 71) for i in range(0, 200, 7)]
    return texts


def build_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 640):
    """Train a byte-level BPE on `corpus` (default: the workbook's dialogue text) with Qwen2's
    pre-tokenizer (digits split one by one) and return a `Qwen2Tokenizer` with Qwen's special
    tokens plus the tool/think/answer tags as single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    texts = list(corpus) if corpus is not None else _default_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    import json as _json
    model_json = _json.loads(bpe.to_str())["model"]
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
    from transformers import Qwen2_5_VLConfig

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
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

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


def check_safetensors_only(path) -> None:
    """Refuse a local checkpoint folder that has pickle weights but no safetensors (pickle can run code)."""
    p = Path(path)
    if not p.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) enforces it
    has_safe = bool(glob.glob(str(p / "*.safetensors")))
    pickles = [os.path.basename(f) for pat in ("*.bin", "*.pt", "*.pth", "*.pkl") for f in glob.glob(str(p / pat))]
    if pickles and not has_safe:
        raise UnsafeCheckpointError(
            f"{p}: only pickle weights found ({', '.join(sorted(pickles))}); ZoomDx loads safetensors only. "
            "Convert with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment.")


def load_model_and_processor(path_or_id, dtype=torch.float32, device: str = "cpu", trust_remote_code: bool = False,
                             attn_implementation: Optional[str] = None, **processor_kwargs):
    """Load a Qwen2.5-VL checkpoint (the tiny one, Qwen2.5-VL-7B, Lingshu, MedVLM-R1: same class).

    safetensors only; `trust_remote_code` stays off unless the caller sets it. `processor_kwargs`
    (e.g. min_pixels/max_pixels) go to `AutoProcessor.from_pretrained`. Returns (model, processor),
    the model in eval mode on `device`.
    """
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    check_safetensors_only(path_or_id)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path_or_id, **kwargs).to(device)
    processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **processor_kwargs)
    processor.tokenizer.padding_side = "left"
    model.eval()
    return model, processor


# LM linear layers only: the vision blocks use the same MLP names, so a plain name list would hit them too.
LORA_TARGET_REGEX = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def lora_config(rank: int = 32, alpha: int = 64, dropout: float = 0.05):
    """The paper's LoRA: rank r on the language model's linear layers, the vision->language merger
    fully trained (`modules_to_save`), the vision tower frozen."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET_REGEX,
                      modules_to_save=["merger"], bias="none")


def parameter_report(model) -> dict:
    """Parameter counts: total, vision tower (blocks+patch embed), merger, language model, trainable."""
    counts = dict(total=0, vision=0, merger=0, language_model=0, trainable=0, trainable_vision_blocks=0)
    for name, p in model.named_parameters():
        n = p.numel()
        counts["total"] += n
        if ".merger." in name:
            counts["merger"] += n
        elif ".visual." in name or name.startswith("visual."):
            counts["vision"] += n
            if p.requires_grad:
                counts["trainable_vision_blocks"] += n
        else:
            counts["language_model"] += n
        if p.requires_grad:
            counts["trainable"] += n
    return counts
