"""Token sequences of Zoom-then-Diagnose conversations, built with the checkpoint's own chat template.

Rollouts and SFT both go through here, so the text the model is trained on is the text it
later continues. Turn-2 inputs are built by concatenating *token ids* (prompt, the model's own
turn-1 tokens, then the crop turn), never by re-tokenising generated text, so the policy tokens
GRPO scores are exactly the ones that were sampled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..protocol import single_turn_messages, zoom_messages

_PLACEHOLDER = "\u2063ZOOMDX_TURN\u2063"


def render(processor, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Chat messages as text through the checkpoint's own chat template (images as placeholders)."""
    return processor.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(processor, question: str) -> str:
    """Turn-1 prompt text: the user turn with the full image and the question, then the assistant header."""
    return render(processor, single_turn_messages(question), add_generation_prompt=True)


def crop_turn_text(processor, question: str = "Q") -> str:
    """The text that follows the end of the model's turn 1 (after its end-of-turn token): the user turn
    with the crop image and the assistant header of turn 2. Derived from the template itself."""
    full = render(processor, zoom_messages(question, _PLACEHOLDER), add_generation_prompt=True)
    end = processor.tokenizer.eos_token  # <|im_end|> closes every turn in Qwen templates
    return full.split(_PLACEHOLDER + end, 1)[1]


def dialogue_text(processor, question: str, turn1: str, turn2: str) -> str:
    """Full Zoom-then-Diagnose conversation text (both images as placeholders)."""
    return render(processor, zoom_messages(question, turn1, turn2))


def single_turn_text(processor, question: str, answer_turn: str) -> str:
    """Single-turn (no zoom) conversation text: image + question, then one assistant turn."""
    return render(processor, single_turn_messages(question, answer_turn))


def assistant_mask(input_ids: Sequence[int], processor) -> list[int]:
    """1 for tokens inside assistant turns (content and the closing end-of-turn token), else 0.

    Works on the token ids of any Qwen-template conversation: an assistant span starts after
    `<|im_start|>assistant\\n` and ends at the next `<|im_end|>` (included).
    """
    tok = processor.tokenizer
    start_id = tok.convert_tokens_to_ids("<|im_start|>")
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    ids = list(input_ids)
    mask = [0] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == start_id and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != end_id:
                mask[j] = 1
                j += 1
            if j < len(ids):
                mask[j] = 1
            i = j
        i += 1
    return mask


@dataclass
class EncodedImages:
    pixel_values: list[torch.Tensor]   # one [n_patches, patch_dim] tensor per image
    grid_thw: list[torch.Tensor]       # one [3] tensor per image


def encode_images(processor, images) -> EncodedImages:
    """Run the image processor once over `images` and split its flat patch tensor per image."""
    if not images:
        return EncodedImages([], [])
    out = processor.image_processor(images=list(images), return_tensors="pt")
    grids = out["image_grid_thw"]
    sizes = grids.prod(-1).tolist()
    return EncodedImages(list(torch.split(out["pixel_values"], sizes, dim=0)), list(grids))


def expand_image_tokens(text: str, grids: Sequence[torch.Tensor], processor) -> str:
    """Replace each `<|image_pad|>` in `text` by as many pads as the model sees patches (after merging)."""
    merge = processor.image_processor.merge_size ** 2
    pad = processor.image_token
    parts = text.split(pad)
    if len(parts) - 1 != len(grids):
        raise ValueError(f"text has {len(parts) - 1} image placeholders but {len(grids)} images were given")
    out = parts[0]
    for grid, rest in zip(grids, parts[1:]):
        out += pad * int(grid.prod().item() // merge) + rest
    return out


def tokenize(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """Pad id lists to one [B, T] tensor; returns (input_ids, attention_mask)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "left":
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            att[i, T - len(r):] = 1
        else:
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, :len(r)] = 1
    return ids, att


def model_inputs(rows, images_per_row, processor, side: str = "left") -> dict:
    """Model kwargs for rows of token ids whose image placeholders are already expanded.

    `images_per_row[i]` is the list of (pixel_values, grid_thw) pairs for row i, in the order the
    images appear in that row. Adds `mm_token_type_ids` (1 on image tokens): without it
    transformers 5 silently falls back to 1-D positions instead of Qwen2.5-VL's 3-D mRoPE.
    """
    ids, att = pad_batch(rows, processor.tokenizer.pad_token_id, side)
    pv = [p for row in images_per_row for p, _ in row]
    grids = [g for row in images_per_row for _, g in row]
    out = dict(input_ids=ids, attention_mask=att,
               mm_token_type_ids=(ids == processor.image_token_id).long())
    if pv:
        out["pixel_values"] = torch.cat(pv, 0)
        out["image_grid_thw"] = torch.stack(grids, 0)
    return out
