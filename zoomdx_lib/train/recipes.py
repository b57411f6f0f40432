"""The notebooks' recipes: one profile's SFT (notebook 02) and one GRPO variant (notebook 03), end to end.

A recipe loads the checkpoint a profile names (or builds the tiny one), reads the run folder's data,
trains through the engine the profile picks (the explicit loop or TRL's trainer: :mod:`zoomdx_lib.train.sft`,
:mod:`zoomdx_lib.train.sft_trainer`, :mod:`zoomdx_lib.train.grpo`, :mod:`zoomdx_lib.train.grpo_trl`) and
saves the result under `run_dir/models/`. The engines import no recipe; :mod:`zoomdx_lib.train.launch` and
the notebooks call these.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from peft import PeftModel, get_peft_model

from ..config import Profile
from ..data.store import load_items
from ..model.build import build_tiny_checkpoint
from ..model.load import load_model_and_processor, lora_config
from ..rl.rewards import VARIANTS
from .common import trainable_adamw
from .grpo import train_grpo
from .grpo_trl import train_grpo_trl
from .loop import processes
from .sft import cosine_schedule, dialogue_records, encode_records, train, warmup_records
from .sft_trainer import DialogueDataset, train_with_trl

__all__ = ["SFT_ENGINES", "run_grpo", "run_name", "run_sft"]

SFT_ENGINES = ("trl", "explicit")   # TRL's SFTTrainer, or our loop (the reference; same batches)


def run_sft(profile: Profile, run_dir, mode: str = "zoom", resume: bool = True, progress: bool = True,
            callbacks: Sequence[Callable] = ()) -> dict:
    """The notebook-02 recipe for one profile: returns {base, adapter, history_warmup, history_full,
    history_lora, seconds, n_examples, instruct} (instruct: the single-turn arm was trained with
    ``sft.one_turn_instruction``; evaluate it with ``Method(..., instruct=True)``).

    Tiny model (``profile.model.path`` None): build it into `run_dir/models/tiny_init`, optionally
    warm its vision up for ``sft.warmup_steps`` on short look-and-answer examples
    (:func:`zoomdx_lib.train.sft.warmup_records`), train every weight for ``sft.full_steps`` (saved as
    `models/sft_{mode}_full`), then LoRA per the paper for ``sft.lora_steps`` (adapter
    `models/sft_{mode}_lora`). A real checkpoint skips the first stage. Data come from
    `run_dir/data` (notebook 01). Each stage resumes from its checkpoints.
    """
    run_dir, t0 = Path(run_dir), time.perf_counter()
    models, cfg, hp, data_dir = run_dir / "models", profile.sft, profile.hp, run_dir / "data"
    procs = processes(profile.device)   # one process, or `accelerate launch`
    if procs.num_processes > 1 and cfg.engine != "trl":
        raise ValueError(f"SFT over {procs.num_processes} processes needs sft.engine='trl' (the explicit loop "
                         f"runs in one process); got {cfg.engine!r}")
    if cfg.engine not in SFT_ENGINES:
        raise ValueError(f"unknown SFT engine {cfg.engine!r}; use one of {SFT_ENGINES}")
    base = _sft_start(profile, models, procs)
    model, processor = load_model_and_processor(base, device=profile.device, **profile.model.pixel_bounds,
                                                gradient_checkpointing=profile.model.gradient_checkpointing)
    instruct = mode == "single" and cfg.one_turn_instruction
    examples = _sft_data(dialogue_records(data_dir, "train", mode, instruct=instruct), data_dir, processor, cfg.engine, progress,
                         f"encode train ({mode})")
    full_steps = cfg.single_turn_steps if mode == "single" and cfg.single_turn_steps is not None else cfg.full_steps
    stage = functools.partial(_sft_stage, profile, processor, run_dir / "checkpoints", mode, resume=resume,
                              progress=progress, callbacks=callbacks)
    hist_full, hist_warmup = [], []
    if full_steps > 0 and cfg.warmup_steps > 0:
        warmup = _sft_data(warmup_records(data_dir, "train", mode), data_dir, processor, cfg.engine, progress,
                           f"encode warm-up ({mode})")
        torch.manual_seed(profile.seed)
        hist_warmup = stage("warmup", model, warmup, cfg.warmup_steps, cfg.lr_full, profile.seed + 2)
    if full_steps > 0:
        torch.manual_seed(profile.seed)
        hist_full = stage("full", model, examples, full_steps, cfg.lr_full, profile.seed)
        base = models / f"sft_{mode}_full"
        _save_on_main(procs, base, model, processor)
    torch.manual_seed(profile.seed)
    peft_model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
    hist_lora = stage("lora", peft_model, examples, cfg.lora_steps, cfg.lr_lora, profile.seed + 1)
    adapter = models / f"sft_{mode}_lora"
    _save_on_main(procs, adapter, peft_model)
    return dict(base=str(base), adapter=str(adapter), history_warmup=hist_warmup, history_full=hist_full,
                history_lora=hist_lora, seconds=time.perf_counter() - t0, n_examples=len(examples), instruct=instruct)


def _sft_start(profile: Profile, models: Path, procs):
    """The checkpoint SFT starts from: the profile's, or the tiny model built once into `models/tiny_init`."""
    if profile.model.path is not None:
        return profile.model.path
    base = models / "tiny_init"
    if procs.is_main_process and not (base / "config.json").exists():
        build_tiny_checkpoint(base, profile.model.min_pixels, profile.model.max_pixels, profile.seed,
                              **profile.model.tiny)
    procs.wait_for_everyone()
    return base


def _sft_data(records: list[dict], data_dir: Path, processor, engine: str, progress: bool, desc: str):
    """What `engine` trains on: TRL's lazily read :class:`DialogueDataset`, or the explicit loop's encoded examples."""
    if engine == "trl":
        return DialogueDataset(records, data_dir)
    return encode_records(records, data_dir, processor, progress, desc)


def _sft_stage(profile: Profile, processor, checkpoints: Path, mode: str, name: str, net, data, steps: int,
               lr: float, seed: int, resume: bool, progress: bool, callbacks: Sequence[Callable]) -> list[dict]:
    """One SFT stage (`name`) of `net` through the profile's engine, checkpoints in
    `checkpoints/sft_{mode}_{name}`; returns its log rows."""
    cfg, out_dir = profile.sft, checkpoints / f"sft_{mode}_{name}"
    if cfg.engine == "explicit":
        return train(net, processor, data, steps, cfg.batch_size, lr, out_dir, cfg.checkpoint_every, resume, seed,
                     warmup=cfg.lr_warmup_steps, progress=progress, callbacks=callbacks, device=profile.device)
    opt = trainable_adamw(net, lr)
    return train_with_trl(net, processor, data, steps, cfg.batch_size, opt,
                          cosine_schedule(opt, steps, cfg.lr_warmup_steps), out_dir, cfg.checkpoint_every,
                          resume, seed, profile.device, progress, callbacks)


def _save_on_main(procs, path: Path, model, processor=None) -> None:
    """Save `model` (weights or adapter, safetensors) and `processor` to `path` on the main process only; every
    process waits until they are written."""
    if procs.is_main_process:
        model.save_pretrained(path, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(path)
    procs.wait_for_everyone()


def run_name(variant: str, estimator: str) -> str:
    """The model name of a GRPO run: ``grpo_{variant}_{estimator}``, or ``grpo_accuracy_only``."""
    return f"grpo_{variant}_{estimator}" if variant == "uncertainty" else f"grpo_{variant}"


def run_grpo(profile: Profile, run_dir, variant: str, estimator: str, sft_base: str, sft_adapter: str,
             name: Optional[str] = None, steps: Optional[int] = None, resume: bool = True,
             progress: bool = True) -> dict:
    """The notebook-03 recipe: from the SFT adapter, train one RL variant on the train split.

    Uses ``profile.grpo`` with `estimator` (and `steps` when given), the profile's rollout settings,
    hyper-parameters and seed; ``profile.grpo.engine`` "trl" trains through TRL's GRPOTrainer
    (:mod:`zoomdx_lib.train.grpo_trl`) instead of the explicit step. Saves the adapter as
    `run_dir/models/{name}` (default :func:`run_name`) and returns {name, base, adapter, log, seconds,
    time_generation_s, time_update_s}.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown GRPO variant {variant!r}; choose one of {VARIANTS}")
    run_dir, t0 = Path(run_dir), time.perf_counter()
    name = name or run_name(variant, estimator)
    procs = processes(profile.device)   # one process, or `accelerate launch`
    if procs.num_processes > 1 and profile.grpo.engine != "trl":
        raise ValueError(f"GRPO over {procs.num_processes} processes needs grpo.engine='trl' (the explicit step "
                         f"runs in one process); got {profile.grpo.engine!r}")
    model, processor = load_model_and_processor(sft_base, device=profile.device, **profile.model.pixel_bounds,
                                                gradient_checkpointing=profile.model.gradient_checkpointing)
    model = PeftModel.from_pretrained(model, sft_adapter, is_trainable=True)
    cfg = dataclasses.replace(profile.grpo, estimator=estimator, steps=profile.grpo.steps if steps is None else steps)
    items = load_items(run_dir / "data", "train")
    if cfg.engine == "trl":   # TRL's GRPOTrainer: same prompts, rewards, advantages and outputs
        log = train_grpo_trl(model, processor, items, cfg, run_dir / "checkpoints" / name, variant, profile.rollout,
                             profile.hp, profile.seed, resume, progress, device=profile.device)
    else:
        log = train_grpo(model, processor, items, cfg, run_dir / "checkpoints" / name, variant, profile.rollout,
                         profile.hp, profile.seed, resume, progress)
    adapter = run_dir / "models" / name
    _save_on_main(procs, adapter, model)
    return dict(name=name, base=str(sft_base), adapter=str(adapter), log=log, seconds=time.perf_counter() - t0,
                time_generation_s=sum(r["time_generation_s"] for r in log),
                time_update_s=sum(r["time_update_s"] for r in log))
