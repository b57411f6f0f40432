"""The one resumable training loop that every stage (SFT, GRPO, and any later one) runs through.

A stage supplies a `step_fn(indices) -> dict` that draws nothing itself: the loop samples the
item indices of each step from its own seeded generator, calls the step, logs the returned row,
and every `checkpoint_every` steps (and at the end) saves weights or adapter, optimizer,
scheduler, torch RNG and the sampler state atomically (:mod:`zoomdx_lib.train.checkpoints`).

On resume the latest complete checkpoint is loaded and the log `out_dir/log.jsonl` is cut back
to the rows written up to that step, so a killed run continues exactly where its checkpoint
left off: same sampler draws, same RNG, same log.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from accelerate import PartialState

from ..io import append_jsonl, progress, read_jsonl, write_jsonl
from .checkpoints import latest_checkpoint, load_training_state, restore_weights, save_checkpoint

LOG_NAME = "log.jsonl"


@dataclass
class LoopConfig:
    """Steps, draws per step (batch size or prompts per step), checkpoint cadence and the sampler's seed.

    torch_seed: when set, ``torch.manual_seed(torch_seed)`` at a fresh start (a resumed run restores
    the checkpoint's RNG instead); None leaves the torch RNG as the caller set it.
    """

    steps: int
    draws_per_step: int
    checkpoint_every: int = 100
    sampler_seed: int = 0
    torch_seed: Optional[int] = None
    desc: str = "train"


def processes(device) -> PartialState:
    """This run's processes: one, or every process `accelerate launch` started. Asking for the CPU state
    when the run is not on CUDA is what makes accelerate join CPU processes over gloo."""
    return PartialState(cpu=not str(device).startswith("cuda"))


def read_log(out_dir) -> list[dict]:
    """The rows a stage logged in `out_dir` (empty when it has not started)."""
    path = Path(out_dir) / LOG_NAME
    return read_jsonl(path) if path.exists() else []


def resume_latest(out_dir, model, optimizer=None, scheduler=None) -> Optional[dict]:
    """Load the latest checkpoint in `out_dir` into `model`, `optimizer`, `scheduler` and the torch RNG;
    returns its meta (with "step"), or None when there is none."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    restore_weights(model, ckpt)
    return load_training_state(ckpt, optimizer, scheduler)


def cut_log(out_dir, start: int) -> list[dict]:
    """Rewrite `out_dir/log.jsonl` with the rows up to step `start` (none for a fresh run) and return them."""
    rows = [r for r in read_log(out_dir) if r["step"] <= start] if start else []
    write_jsonl(Path(out_dir) / LOG_NAME, rows)
    return rows


def run_loop(model, optimizer, step_fn: Callable[[list[int]], dict], n_items: int, cfg: LoopConfig, out_dir,
             scheduler=None, resume: bool = True, show_progress: bool = True,
             postfix: Optional[Callable[[dict], dict]] = None,
             callbacks: Sequence[Callable[[dict], None]] = ()) -> list[dict]:
    """Run `cfg.steps` steps of `step_fn` over `n_items` items; returns every row of the log.

    Each step draws ``cfg.draws_per_step`` indices in [0, n_items) with replacement, calls
    ``step_fn(indices)`` and logs ``{"step": k, **row}``. `postfix(row)` gives the progress bar's
    postfix; each callback is called with every row after it is logged (an exception stops the
    run there, keeping the last checkpoint). With `resume`, continues from the latest checkpoint
    in `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.sampler_seed)
    start = 0
    meta = resume_latest(out_dir, model, optimizer, scheduler) if resume else None
    if meta is not None:
        start = meta["step"]
        gen.set_state(torch.tensor(meta["extra"]["sampler_state"], dtype=torch.uint8))
    elif cfg.torch_seed is not None:
        torch.manual_seed(cfg.torch_seed)
    log_path = out_dir / LOG_NAME
    rows = cut_log(out_dir, start)
    bar = progress(range(start, cfg.steps), show_progress, desc=cfg.desc, initial=start, total=cfg.steps)
    for step in bar:
        idx = torch.randint(n_items, (cfg.draws_per_step,), generator=gen).tolist()
        row = {"step": step + 1, **step_fn(idx)}
        rows.append(row)
        append_jsonl(log_path, row)
        if postfix is not None:
            bar.set_postfix(**postfix(row))
        for callback in callbacks:
            callback(row)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out_dir, step + 1, model, optimizer, scheduler,
                            extra={"sampler_state": gen.get_state().tolist()})
    return rows
