"""SFT through TRL's `SFTTrainer`: chat messages + images in, loss on the assistant turns only.

The dataset holds each dialogue's messages and image paths; images are opened when a row is read
and encoded by TRL's vision collator batch by batch (nothing is encoded up front). The collator's
tensors are exactly those of :func:`zoomdx_lib.train.sft.encode_conversation` + ``chat.model_inputs``
(token ids, ``mm_token_type_ids``, pixel values, grids: ``tests/test_sft_trainer.py``), and its
assistant mask comes from ``{% generation %}`` markers: the tiny model's template carries them
(:data:`zoomdx_lib.model.build.TINY_TRAINING_CHAT_TEMPLATE`), Qwen2.5-VL's own template is swapped
for TRL's training copy (which also trains the newline after each ``<|im_end|>``: one token per turn
more than the explicit loop).

Three pieces stay ours, each because the trainer cannot do it as the workbook needs:

- checkpoints: ``Trainer._save_checkpoint`` writes ``optimizer.pt``/``rng_state.pth`` with
  ``torch.save`` (pickles) and without an atomic rename; a callback writes the workbook's
  safetensors-only, atomic checkpoints (:mod:`zoomdx_lib.train.checkpoints`) and ``log.jsonl``
  instead (``save_strategy="no"``);
- resume: ``trainer.train(resume_from_checkpoint=...)`` reads only its own pickled files, so the
  weights, optimizer, scheduler and RNG come back from our checkpoint and the trainer runs the
  remaining steps;
- the sampler: the trainer's shuffling sampler is replaced by the draws of
  :func:`zoomdx_lib.train.loop.run_loop` (with replacement, from one seeded generator), so both
  engines see the same batches and a resumed run continues the same sequence.

Several processes (``accelerate launch --multi_gpu --num_processes N -m zoomdx_lib.train.launch``; on
CPU the processes talk over gloo): `batch_size` stays the GLOBAL batch, each process takes
``batch_size / N`` of every step's draws (accelerate hands batch k of the sampler to process k mod N,
so one step's N per-process batches are exactly the single-process batch), gradients are averaged over
the global token count, and only the main process writes the log and checkpoints. After every step
the processes compare a fingerprint of their trainable weights (per-tensor sums in float64); the
largest difference goes into each log row as ``rank_param_diff`` (0.0 when they are in sync).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import datasets
import torch
from PIL import Image
from transformers import PrinterCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from ..io import progress as progress_bar
from ..model.build import TINY_CHAT_TEMPLATE, TINY_TRAINING_CHAT_TEMPLATE
from ..protocol import image_paths
from .common import CheckpointAndLog, FixedDraws, loop_draws
from .loop import cut_log, processes, read_log, resume_latest


class DialogueDataset(torch.utils.data.Dataset):
    """{"messages", "images"} rows for TRL from dialogue records whose image parts name files under `root`."""

    def __init__(self, records: Sequence[dict], root):
        self.records, self.root = list(records), Path(root)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.records):
            raise IndexError(i)
        msgs = self.records[i]["messages"]
        images = [Image.open(self.root / p).convert("RGB") for p in image_paths(msgs)]
        stripped = [{**m, "content": [({"type": "image"} if part.get("type") == "image" else part)
                                      for part in m["content"]]} if isinstance(m["content"], list) else m
                    for m in msgs]
        return {"messages": stripped, "images": images}

    def as_trainer_dataset(self):
        """A `datasets.Dataset` of row numbers whose transform reads the rows: SFTTrainer takes only that type,
        and the transform keeps the reading lazy."""
        def rows(batch):
            got = [self[i] for i in batch["row"]]
            return {"messages": [g["messages"] for g in got], "images": [g["images"] for g in got]}
        return datasets.Dataset.from_dict({"row": list(range(len(self)))}).with_transform(rows)


class _LoopSFTTrainer(SFTTrainer):
    """SFTTrainer whose training sampler yields fixed draws (see the module docstring)."""

    def __init__(self, *args, draws: list[int], **kwargs):
        self._draws = draws
        super().__init__(*args, **kwargs)
        # Qwen2.5-VL declares `accepts_loss_kwargs = False`, so the Trainer would not count the assistant tokens
        # of the global batch and each process would average over its own tokens (a different gradient whenever
        # processes hold different token counts). SFTTrainer computes the loss itself and never passes the count
        # to the model, so declaring it only turns the global count on.
        self.model_accepts_loss_kwargs = True

    def _get_train_sampler(self, train_dataset=None):
        return FixedDraws(self._draws)


class _SFTLog(CheckpointAndLog):
    """The SFT row of a step: its loss, learning rate and seconds."""

    def log_row(self, logs: dict, lr_scheduler) -> dict:
        return {"loss": float(logs["loss"]), "lr": lr_scheduler.get_last_lr()[0],
                "time_s": time.perf_counter() - self.t0}


def training_chat_template(processor) -> Optional[str]:
    """The template with ``{% generation %}`` markers for the tiny model; None leaves the choice to TRL."""
    return TINY_TRAINING_CHAT_TEMPLATE if processor.chat_template == TINY_CHAT_TEMPLATE else None


def train_with_trl(model, processor, dataset: DialogueDataset, steps: int, batch_size: int, optimizer, scheduler,
                   out_dir, checkpoint_every: int = 100, resume: bool = True, seed: int = 0, device: str = "cpu",
                   progress: bool = True, callbacks: Sequence[Callable] = ()) -> list[dict]:
    """Train `model` on `dataset` for `steps` steps with TRL's SFTTrainer; same contract as ``sft.train``.

    `optimizer` and `scheduler` are built by the caller over the trainable parameters (the trainer
    uses them as given). Checkpoints and ``log.jsonl`` go to `out_dir`; with `resume` the run
    continues from the latest checkpoint there. Returns every row of the log. Under ``accelerate
    launch`` with N processes, `batch_size` is the global batch and must be divisible by N.
    """
    out_dir = Path(out_dir)
    on_gpu = str(device).startswith("cuda")
    procs = processes(device)
    if batch_size % procs.num_processes:
        raise ValueError(f"SFT batch size {batch_size} (the global batch) is not divisible by the "
                         f"{procs.num_processes} processes")
    out_dir.mkdir(parents=True, exist_ok=True)
    start, rng_state = 0, None
    meta = resume_latest(out_dir, model, optimizer, scheduler) if resume else None
    if meta is not None:
        start, rng_state = meta["step"], torch.get_rng_state()
    if procs.is_main_process:
        cut_log(out_dir, start)
    procs.wait_for_everyone()
    if start >= steps:
        return read_log(out_dir)
    draws = loop_draws(len(dataset), batch_size, steps, seed)[start * batch_size:]
    args = TRLSFTConfig(
        output_dir=str(out_dir / "trainer"), max_steps=steps - start,
        per_device_train_batch_size=batch_size // procs.num_processes,
        gradient_accumulation_steps=1, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
        seed=seed, assistant_only_loss=True, max_length=None, bf16=on_gpu, use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu, disable_tqdm=True, remove_unused_columns=False)
    template = training_chat_template(processor)
    original = processor.chat_template
    progress = progress and procs.is_main_process
    bar = progress_bar(range(start, steps), progress, desc="SFT", initial=start, total=steps)
    logger = _SFTLog(out_dir, start, steps, checkpoint_every, rng_state, callbacks, bar if progress else None,
                     postfix=lambda r: dict(loss=f"{r['loss']:.3f}"))
    try:
        if template is not None:   # the same text, with markers that tell the collator which tokens to train
            processor.chat_template = template
        trainer = _LoopSFTTrainer(model=model, args=args, train_dataset=dataset.as_trainer_dataset(),
                                  processing_class=processor,
                                  optimizers=(optimizer, scheduler), callbacks=[logger], draws=draws)
        trainer.remove_callback(PrinterCallback)   # rows go to log.jsonl and the progress bar instead
        model.train()
        trainer.train()
    finally:
        processor.chat_template = original
        model.eval()
        if progress:
            bar.close()
    procs.wait_for_everyone()
    return read_log(out_dir)
