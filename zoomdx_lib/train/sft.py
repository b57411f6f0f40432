"""Supervised fine-tuning on Zoom-then-Diagnose dialogues: loss on both assistant turns only.

Both images (the full image, then the crop of the true box) are in context. The paper trains
LoRA (r=32, LM + merger, vision frozen) on a pretrained 7B. The offline tiny model starts from
random weights, so it first gets a from-scratch stage that trains every weight (optionally opened
by a short vision warm-up), then the paper's LoRA stage. Each stage runs through the one training
loop (:mod:`zoomdx_lib.train.loop`); the step keeps `mm_token_type_ids` (3-D mRoPE) and the
two-image batches under our control.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.store import load_dialogues
from ..io import progress as progress_bar
from ..model import chat
from ..protocol import ANSWER_RE, image_paths, one_turn_question, single_turn_messages
from .common import trainable_adamw
from .loop import LoopConfig, run_loop

MODES = ("zoom", "single")


@dataclass
class SFTExample:
    """Token ids of one conversation, its loss mask (1 = assistant token) and its images."""

    ids: list
    mask: list
    images: list  # [(pixel_values, grid_thw)] in order of appearance
    sample_id: str = ""


def encode_conversation(processor, text: str, images, sample_id: str = "") -> SFTExample:
    """Encode a rendered conversation (image placeholders unexpanded) and its PIL images."""
    enc = chat.encode_images(processor, [im.convert("RGB") for im in images])
    ids = chat.tokenize(processor, chat.expand_image_tokens(text, enc.grid_thw, processor))
    return SFTExample(ids=ids, mask=chat.assistant_mask(ids, processor),
                      images=list(zip(enc.pixel_values, enc.grid_thw)), sample_id=sample_id)


def dialogue_records(data_dir, split: str, mode: str = "zoom", limit: Optional[int] = None,
                     instruct: bool = False) -> list[dict]:
    """The {"id", "messages"} records SFT trains on (image paths relative to `data_dir`).

    mode "zoom": the two-turn dialogue with the crop; "single": the no-zoom baseline from
    `dialogues_single_{split}.jsonl` (the full image answered directly, same rationale style).
    `instruct` (mode "single" only) puts :data:`~zoomdx_lib.protocol.ONE_TURN_INSTRUCTION` after each
    question, as :func:`zoomdx_lib.rl.rollout.single_turn_rollout` asks with ``instruct=True``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown SFT mode {mode!r}; use 'zoom' or 'single'")
    if instruct and mode != "single":
        raise ValueError("instruct asks the one-turn question: it applies to mode 'single' only")
    records = load_dialogues(data_dir, split, mode == "single")[:limit]
    return [_with_one_turn_instruction(r) for r in records] if instruct else records


def _with_one_turn_instruction(record: dict) -> dict:
    """A copy of a one-turn record whose user text ends with the one-turn instruction."""
    user, *rest = record["messages"]
    content = [dict(p, text=one_turn_question(p["text"])) if p.get("type") == "text" else p for p in user["content"]]
    return dict(record, messages=[dict(user, content=content), *rest])


def warmup_records(data_dir, split: str, mode: str = "zoom", limit: Optional[int] = None) -> list[dict]:
    """Short "look and answer" records for the tiny model's vision warm-up, from the same dialogues.

    One user turn with one image and the question, then only the answer tag: for mode "zoom" the
    image is the crop of the true box (what turn 2 sees), for "single" the full image. With ~50
    tokens instead of ~215 a step costs a fraction of a dialogue step, and every target token
    depends on the image, so the randomly initialised vision tower learns to see first.
    """
    out = []
    for rec in load_dialogues(data_dir, split, False)[:limit]:
        user, _, crop_turn, turn2 = rec["messages"]
        question = next(p["text"] for p in user["content"] if p.get("type") == "text")
        image = image_paths([crop_turn if mode == "zoom" else user])[0]
        answer = ANSWER_RE.search(turn2["content"][0]["text"]).group(0)
        out.append({"id": rec.get("id", ""), "messages": single_turn_messages(question, answer, image)})
    return out


def encode_records(records: Sequence[dict], data_dir, processor, progress: bool = False,
                   desc: str = "encode") -> list[SFTExample]:
    """Encode {"id", "messages"} records up front (the explicit engine; TRL's collator encodes per batch)."""
    data_dir = Path(data_dir)
    out = []
    for rec in progress_bar(records, progress, desc=desc, leave=False):
        msgs = rec["messages"]
        images = [Image.open(data_dir / p) for p in image_paths(msgs)]
        out.append(encode_conversation(processor, chat.render(processor, msgs), images, rec.get("id", "")))
    return out


def load_dialogue_examples(data_dir, split: str, processor, mode: str = "zoom", limit: Optional[int] = None,
                           progress: bool = False) -> list[SFTExample]:
    """Encoded SFT examples of :func:`dialogue_records`."""
    return encode_records(dialogue_records(data_dir, split, mode, limit), data_dir, processor, progress,
                          f"encode {split} ({mode})")


def load_warmup_examples(data_dir, split: str, processor, mode: str = "zoom", limit: Optional[int] = None,
                         progress: bool = False) -> list[SFTExample]:
    """Encoded warm-up examples of :func:`warmup_records`."""
    return encode_records(warmup_records(data_dir, split, mode, limit), data_dir, processor, progress,
                          f"encode warm-up {split} ({mode})")


def sft_loss(model, batch: Sequence[SFTExample], processor, device="cpu") -> torch.Tensor:
    """Mean cross-entropy over assistant tokens of a batch (right-padded)."""
    inputs = chat.model_inputs([e.ids for e in batch], [e.images for e in batch], processor, side="right")
    T = inputs["input_ids"].shape[1]
    mask = torch.zeros((len(batch), T))
    for i, e in enumerate(batch):
        mask[i, :len(e.mask)] = torch.tensor(e.mask, dtype=torch.float)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = model(**inputs).logits[:, :-1].float()
    target = inputs["input_ids"][:, 1:]
    m = mask[:, 1:].to(device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return (nll.view_as(m) * m).sum() / m.sum().clamp(min=1)


def cosine_schedule(optimizer, steps: int, warmup: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))


def train(model, processor, examples: Sequence[SFTExample], steps: int, batch_size: int, lr: float, out_dir,
          checkpoint_every: int = 100, resume: bool = True, seed: int = 0, warmup: int = 20,
          weight_decay: float = 0.0, progress: bool = True, callbacks: Sequence[Callable] = (),
          device: str = "cpu") -> list[dict]:
    """Train the parameters of `model` that require grad; returns the loss log [{step, loss, lr, time_s}].

    Runs through :func:`zoomdx_lib.train.loop.run_loop`: checkpoints go to `out_dir` every
    `checkpoint_every` steps and at the end, a rerun with resume=True continues from the latest one,
    and the log is `out_dir/log.jsonl`. `seed` seeds the batch sampler; the torch RNG (LoRA dropout)
    is left as the caller set it.
    """
    opt = trainable_adamw(model, lr, weight_decay)
    params = opt.param_groups[0]["params"]
    sched = cosine_schedule(opt, steps, warmup)

    def step(idx: list[int]) -> dict:
        t0 = time.perf_counter()
        loss = sft_loss(model, [examples[i] for i in idx], processor, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        return dict(loss=loss.item(), lr=sched.get_last_lr()[0], time_s=time.perf_counter() - t0)

    cfg = LoopConfig(steps=steps, draws_per_step=batch_size, checkpoint_every=checkpoint_every, sampler_seed=seed,
                     desc="SFT")
    model.train()
    try:
        return run_loop(model, opt, step, len(examples), cfg, out_dir, sched, resume, progress,
                        postfix=lambda r: dict(loss=f"{r['loss']:.3f}"), callbacks=callbacks)
    finally:
        model.eval()
