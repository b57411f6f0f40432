"""Supervised fine-tuning on Zoom-then-Diagnose dialogues: loss on both assistant turns only.

Both images (the full image, then the crop of the true box) are in context. The paper trains
LoRA (r=32, LM + merger, vision frozen) on a pretrained 7B. The offline tiny model starts from
random weights, so it first gets a from-scratch stage that trains every weight (`stage="full"`),
then the paper's LoRA stage (`stage="lora"`). A short explicit loop is used because it is a few
lines and keeps `mm_token_type_ids` (3-D mRoPE) and the two-image batches under our control.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import chat
from .checkpoints import latest_checkpoint, load_adapter_weights, load_full_weights, load_training_state, save_checkpoint

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


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


def _dialogue_records(data_dir, split: str, single: bool, limit: Optional[int], progress: bool, desc: str):
    """The first `limit` dialogue records of a split (all when None), under a progress bar if asked."""
    from .datasets import load_dialogues

    records = load_dialogues(data_dir, split, single)[:limit]
    return tqdm(records, desc=desc, leave=False) if (progress and tqdm) else records


def load_dialogue_examples(data_dir, split: str, processor, mode: str = "zoom", limit: Optional[int] = None,
                           progress: bool = False) -> list[SFTExample]:
    """SFT examples from `data_dir/dialogues_{split}.jsonl`.

    mode "zoom": the two-turn dialogue with the crop; mode "single": the no-zoom baseline from
    `dialogues_single_{split}.jsonl` (the full image answered directly, same rationale style).
    """
    from PIL import Image

    if mode not in ("zoom", "single"):
        raise ValueError(f"unknown SFT mode {mode!r}; use 'zoom' or 'single'")
    data_dir = Path(data_dir)
    out = []
    for rec in _dialogue_records(data_dir, split, mode == "single", limit, progress, f"encode {split} ({mode})"):
        msgs = rec["messages"]
        paths = [part["image"] for m in msgs if isinstance(m["content"], list)
                 for part in m["content"] if part.get("type") == "image"]
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        images = [Image.open(data_dir / p) for p in paths]
        out.append(encode_conversation(processor, text, images, rec.get("id", "")))
    return out


def load_warmup_examples(data_dir, split: str, processor, mode: str = "zoom", limit: Optional[int] = None,
                         progress: bool = False) -> list[SFTExample]:
    """Short "look and answer" examples for the tiny model's vision warm-up, from the same dialogues.

    One user turn with one image and the question, then only the answer tag: for mode "zoom" the
    image is the crop of the true box (what turn 2 sees), for "single" the full image. With ~50
    tokens instead of ~215 a step costs a fraction of a dialogue step, and every target token
    depends on the image, so the randomly initialised vision tower learns to see first.
    """
    import re

    from PIL import Image

    data_dir = Path(data_dir)
    out = []
    for rec in _dialogue_records(data_dir, split, False, limit, progress, f"encode warm-up {split} ({mode})"):
        user, _, crop_turn, turn2 = rec["messages"]
        question = next(p["text"] for p in user["content"] if p.get("type") == "text")
        image = next(p["image"] for p in (crop_turn if mode == "zoom" else user)["content"] if p.get("type") == "image")
        answer = re.search(r"<answer>.*?</answer>", turn2["content"][0]["text"], re.S).group(0)
        text = processor.apply_chat_template([chat.user_image_message(question), chat.assistant_message(answer)],
                                             tokenize=False, add_generation_prompt=False)
        out.append(encode_conversation(processor, text, [Image.open(data_dir / image)], rec.get("id", "")))
    return out


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


def train(model, processor, examples: Sequence[SFTExample], steps: int, batch_size: int, lr: float, out_dir,
          checkpoint_every: int = 100, resume: bool = True, seed: int = 0, warmup: int = 20,
          weight_decay: float = 0.0, progress: bool = True, on_step: Optional[Callable] = None,
          device: str = "cpu") -> list[dict]:
    """Train the parameters of `model` that require grad; returns the loss history [{step, loss, lr, time_s}].

    Checkpoints go to `out_dir` every `checkpoint_every` steps and at the end; with resume=True a
    run continues from the latest complete checkpoint there (weights, optimizer, RNG, step), and
    the loss log `out_dir/loss.csv` keeps the rows written before the kill.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    start = 0
    gen = torch.Generator().manual_seed(seed)
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        if hasattr(model, "peft_config"):
            load_adapter_weights(model, ckpt)
        else:
            load_full_weights(model, ckpt)
        meta = load_training_state(ckpt, opt, sched)
        start = meta["step"]
        gen.set_state(torch.tensor(meta["extra"]["sampler_state"], dtype=torch.uint8))
    log_path = out_dir / "loss.csv"
    history = []
    if start and log_path.exists():
        with open(log_path) as f:
            history = [dict(step=int(r["step"]), loss=float(r["loss"]), lr=float(r["lr"]), time_s=float(r["time_s"]))
                       for r in csv.DictReader(f) if int(r["step"]) <= start]
    _write_log(log_path, history)
    model.train()
    bar = tqdm(range(start, steps), desc="SFT", initial=start, total=steps) if (progress and tqdm) else range(start, steps)
    for step in bar:
        t0 = time.perf_counter()
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        loss = sft_loss(model, [examples[i] for i in idx], processor, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        row = dict(step=step + 1, loss=loss.item(), lr=sched.get_last_lr()[0], time_s=time.perf_counter() - t0)
        history.append(row)
        with open(log_path, "a") as f:
            f.write(f"{row['step']},{row['loss']:.6f},{row['lr']:.3e},{row['time_s']:.4f}\n")
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if on_step is not None:
            on_step(row)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(out_dir, step + 1, model, opt, sched,
                            extra={"sampler_state": gen.get_state().tolist()})
    model.eval()
    return history


def _write_log(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.write("step,loss,lr,time_s\n")
        for r in rows:
            f.write(f"{r['step']},{r['loss']:.6f},{r['lr']:.3e},{r['time_s']:.4f}\n")


def run_sft(profile, run_dir, mode: str = "zoom", resume: bool = True, progress: bool = True,
            on_step: Optional[Callable] = None) -> dict:
    """The notebook-02 recipe for one profile: returns {base, adapter, history_warmup, history_full,
    history_lora, seconds}.

    Tiny model (profile.model_path None): build it into `run_dir/models/tiny_init`, optionally warm
    its vision up for `sft_warmup_steps` on short look-and-answer examples (`load_warmup_examples`),
    train every weight for `sft_full_steps` (saved as `models/sft_{mode}_full`), then LoRA per the paper for
    `sft_lora_steps` (adapter `models/sft_{mode}_lora`). A real checkpoint skips the first stage.
    Data come from `run_dir/data` (notebook 01). Each stage resumes from its checkpoints.
    """
    from peft import get_peft_model

    from .models import build_tiny_checkpoint, load_model_and_processor, lora_config

    run_dir, t0 = Path(run_dir), time.perf_counter()
    models = run_dir / "models"
    hp = profile.hp
    base = profile.model_path
    if base is None:
        base = models / "tiny_init"
        if not (base / "config.json").exists():
            build_tiny_checkpoint(base, profile.min_pixels, profile.max_pixels, profile.seed, **profile.tiny)
    model, processor = load_model_and_processor(base, device=profile.device, min_pixels=profile.min_pixels,
                                                max_pixels=profile.max_pixels)
    examples = load_dialogue_examples(run_dir / "data", "train", processor, mode, progress=progress)
    lora_steps = profile.sft_lora_steps
    full_steps = profile.sft_full_steps
    if mode == "single" and profile.single_turn_steps is not None:
        full_steps = profile.single_turn_steps
    hist_full, hist_warmup = [], []
    if full_steps > 0 and profile.sft_warmup_steps > 0:
        warmup = load_warmup_examples(run_dir / "data", "train", processor, mode, progress=progress)
        torch.manual_seed(profile.seed)
        hist_warmup = train(model, processor, warmup, profile.sft_warmup_steps, profile.sft_batch_size,
                            profile.sft_lr_full, run_dir / "checkpoints" / f"sft_{mode}_warmup",
                            profile.checkpoint_every, resume, profile.seed + 2, progress=progress, on_step=on_step,
                            device=profile.device)
    if full_steps > 0:
        torch.manual_seed(profile.seed)
        hist_full = train(model, processor, examples, full_steps, profile.sft_batch_size, profile.sft_lr_full,
                          run_dir / "checkpoints" / f"sft_{mode}_full", profile.checkpoint_every, resume,
                          profile.seed, progress=progress, on_step=on_step, device=profile.device)
        base = models / f"sft_{mode}_full"
        model.save_pretrained(base, safe_serialization=True)
        processor.save_pretrained(base)
    torch.manual_seed(profile.seed)
    peft_model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
    hist_lora = train(peft_model, processor, examples, lora_steps, profile.sft_batch_size, profile.sft_lr_lora,
                      run_dir / "checkpoints" / f"sft_{mode}_lora", profile.checkpoint_every, resume,
                      profile.seed + 1, progress=progress, on_step=on_step, device=profile.device)
    adapter = models / f"sft_{mode}_lora"
    peft_model.save_pretrained(adapter, safe_serialization=True)
    return dict(base=str(base), adapter=str(adapter), history_warmup=hist_warmup, history_full=hist_full,
                history_lora=hist_lora,
                seconds=time.perf_counter() - t0, n_examples=len(examples))
