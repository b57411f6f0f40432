"""The scaffolding every training engine shares: one copy each of the optimiser, the dropout switch,
the loop's prompt draws as a sampler, the processes' weight check, and the callback that writes a TRL
trainer's log rows and the workbook's checkpoints.

The explicit loops (:mod:`zoomdx_lib.train.sft`, :mod:`zoomdx_lib.train.grpo`,
:mod:`zoomdx_lib.train.pretrain`) draw through :func:`zoomdx_lib.train.loop.run_loop`; the TRL engines
(:mod:`zoomdx_lib.train.sft_trainer`, :mod:`zoomdx_lib.train.grpo_trl`) replace their trainer's
shuffling sampler by :class:`FixedDraws` of :func:`loop_draws`, so both engines see the same items step
by step, and log and checkpoint through a :class:`CheckpointAndLog`.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from transformers import TrainerCallback

from ..io import append_jsonl
from .checkpoints import save_checkpoint
from .loop import LOG_NAME


def trainable_adamw(model, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW at learning rate `lr` (and `weight_decay`, default none) over the parameters of `model` that
    require grad, in the model's order."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


@contextlib.contextmanager
def dropout_off(model):
    """Every dropout of `model` at p = 0 inside the block (restored after): train mode without noise,
    so gradient checkpointing stays active while the loss pass equals the eval-mode forward."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    saved = [m.p for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, saved):
            m.p = p


def loop_draws(n_items: int, batch_size: int, steps: int, seed: int) -> list[int]:
    """Every index `run_loop` would draw in `steps` steps: ``torch.randint`` from one generator, step after step."""
    gen = torch.Generator().manual_seed(seed)
    return [i for _ in range(steps) for i in torch.randint(n_items, (batch_size,), generator=gen).tolist()]


def step_draws(n_items: int, per_step: int, steps: int, seed: int, start: int = 0) -> list[list[int]]:
    """:func:`loop_draws` step by step: the `per_step` indices of each of steps `start` .. `steps` - 1."""
    flat = loop_draws(n_items, per_step, steps, seed)
    return [flat[k * per_step:(k + 1) * per_step] for k in range(start, steps)]


class FixedDraws(torch.utils.data.Sampler):
    """A trainer's training sampler that yields the given indices in order (the loop's draws)."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    @classmethod
    def grouped(cls, steps: Sequence[Sequence[int]], G: int, repeats: int) -> "FixedDraws":
        """The draws as TRL's GRPO sampler lays them out: each step's P prompts, each G times in a row,
        the whole block repeated `repeats` times (once per accumulation step; only the first is generated for)."""
        return cls([i for idx in steps for _ in range(repeats) for i in idx for _ in range(G)])

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def rank_param_diff(model) -> float:
    """Largest difference between processes of the per-tensor float64 sums of `model`'s trainable weights
    (0.0 with one process). Every process must call it (it all-gathers)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0.0
    sums = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad]).cpu()
    gathered = [torch.empty_like(sums) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, sums)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


class CheckpointAndLog(TrainerCallback):
    """Writes a TRL trainer's ``log.jsonl`` rows and the workbook's checkpoints (main process only).

    `start` is the step the run resumed from (0 fresh), `steps` the last step, `every` the checkpoint
    cadence; `rng_state`, when set, is the checkpoint's torch RNG, restored at the first step (the trainer
    seeds torch when train() starts and its data loader draws a seed from torch when it starts iterating).
    After each step the processes compare their trainable weights (:func:`rank_param_diff`, logged as
    ``rank_param_diff`` with several processes). Each row goes to the progress `bar` (its postfix from
    `postfix(row)`) and then to every callback. A subclass says what a row holds (:meth:`log_row`).
    """

    def __init__(self, out_dir: Path, start: int, steps: int, every: int, rng_state=None,
                 callbacks: Sequence[Callable] = (), bar=None, postfix: Optional[Callable[[dict], dict]] = None):
        self.out_dir, self.start, self.steps, self.every = Path(out_dir), start, steps, every
        self.rng_state, self.callbacks, self.bar, self.postfix = rng_state, callbacks, bar, postfix
        self.t0 = time.perf_counter()
        self.rank_diff = 0.0

    def log_row(self, logs: dict, lr_scheduler) -> Optional[dict]:
        """The row (without "step") of a trainer log entry that holds a loss; None logs nothing."""
        raise NotImplementedError

    def on_step_begin(self, args, state, control, **kwargs):
        if self.rng_state is not None:   # a resumed run continues the checkpoint's RNG from its first step on
            torch.set_rng_state(self.rng_state)
            self.rng_state = None
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.rank_diff = rank_param_diff(model)   # every process calls it (it all-gathers)

    def on_log(self, args, state, control, logs=None, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        row = self.log_row(logs, lr_scheduler)
        if row is None or not state.is_world_process_zero:   # one log and one checkpoint
            return
        step = self.start + state.global_step
        row = {"step": step, **row}
        if args.world_size > 1:
            row["rank_param_diff"] = self.rank_diff
        append_jsonl(self.out_dir / LOG_NAME, row)
        if self.bar is not None:
            self.bar.update(1)
            if self.postfix is not None:
                self.bar.set_postfix(**self.postfix(row))
        for callback in self.callbacks:
            callback(row)
        if step % self.every == 0 or step == self.steps:
            save_checkpoint(self.out_dir, step, model, optimizer, lr_scheduler, extra={"engine": "trl"})
