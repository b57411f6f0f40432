"""GRPO on Zoom-then-Diagnose rollouts through TRL's `GRPOTrainer` (``GRPOConfig.engine="trl"``).

The same task as :mod:`zoomdx_lib.train.grpo` (the explicit step), expressed with TRL's pieces: the crop
tool as a TRL environment (:mod:`zoomdx_lib.train.grpo_trl_env`), tool turns rendered as the paper's crop
turn (:mod:`zoomdx_lib.train.grpo_trl_render`) and the rewards as TRL reward functions
(:mod:`zoomdx_lib.train.grpo_trl_rewards`). Here :class:`ZoomGRPOTrainer` replaces TRL's advantages by the
workbook's (:func:`zoomdx_lib.rl.advantages.compute_advantages`) and its shuffling sampler by the loop's
prompt draws (P prompts a step, each G times in a row), so both engines train on the same prompts step by
step; :func:`train_grpo_trl` runs it with the workbook's checkpoints and log. The loss is TRL's
``loss_type="grpo"`` on the model's own tokens of both turns (the crop turn masked by TRL's tool mask);
dropout is off as in the explicit step; AdamW (no weight decay), constant learning rate, gradient norm
clipped at 1.

Where TRL's rollout differs from the explicit one and from the paper, why TRL's own normalisation cannot
stand in for the estimators, and when the group term is right over several processes: ``docs/engines.md``,
"GRPO through TRL: the full record".
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from ..config import PAPER, GRPOConfig, PaperHyperParams, RolloutConfig
from ..geometry import processor_pixel_bounds
from ..io import progress as progress_bar
from ..model import chat
from ..model.load import lora_config
from .checkpoints import latest_checkpoint
from .common import CheckpointAndLog, FixedDraws, dropout_off, step_draws, trainable_adamw
from .grpo_trl_env import environment_factory, prompt_dataset
from .grpo_trl_render import tool_rendering
from .grpo_trl_rewards import ZoomRewards, step_row
from .loop import cut_log, processes, read_log, resume_latest

__all__ = ["ZoomGRPOTrainer", "build_trainer", "crop_tokens_bound", "train_grpo_trl"]


class ZoomGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the workbook's advantages, the loop's prompt draws and a log row per step.

    Three overrides, nothing else: ``_get_train_sampler`` (the draws), ``_generate`` (hands each
    rollout's policy mask to its environment and times generation), ``_generate_and_score_completions``
    (replaces TRL's advantages by the estimator's and prepares the step's log row).
    """

    def __init__(self, *args, zoom_rewards: ZoomRewards, draws: Sequence[Sequence[int]] | None = None, **kwargs):
        self.zoom_rewards, self._draws = zoom_rewards, draws
        self.zoom_row: dict | None = None
        self.last_advantages: np.ndarray | None = None
        self._time_generation = 0.0
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None):
        if self._draws is None:
            return super()._get_train_sampler(dataset)
        return FixedDraws.grouped(self._draws, self.num_generations,
                                  self.num_iterations * self.args.steps_per_generation)

    def _generate(self, prompts: list):
        t0 = time.perf_counter()
        out = super()._generate(prompts)
        self._time_generation = time.perf_counter() - t0
        completion_ids, tool_mask = out[1], out[2]
        for k, (env, ids) in enumerate(zip(self.environments, completion_ids)):
            env.policy_mask = list(tool_mask[k]) if tool_mask is not None else [1] * len(ids)
        return out

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        batch = self.zoom_rewards.last
        if batch is None or sum(len(g) for g in batch.trajs) != len(inputs):
            raise RuntimeError("the zoom rewards did not score this batch")
        records = self.zoom_rewards.group_records(batch)
        if self.accelerator.num_processes > 1:   # every process's groups, in process order
            from accelerate.utils import gather_object
            records = gather_object(records)
        adv = self.zoom_rewards.advantages(records)
        n, k = len(batch.trajs), self.accelerator.process_index
        local = adv[k * n:(k + 1) * n]
        output["advantages"] = torch.tensor(local.reshape(-1), dtype=output["advantages"].dtype,
                                            device=output["advantages"].device)
        self.zoom_row = step_row(batch, local, self._time_generation)
        self.last_advantages = local
        return output


def crop_tokens_bound(processor) -> int:
    """Upper bound on the tokens of one crop turn (its text and at most max_pixels / 28^2 image tokens)."""
    _, hi = processor_pixel_bounds(processor)
    return len(chat.tokenize(processor, chat.crop_turn_text(processor))) + math.ceil(hi / (28 * 28))


def _per_process_batch(P: int, G: int, micro_batch: int, device) -> tuple[int, int]:
    """(completions per process and step, completions per backward pass: `micro_batch` rounded down to a
    divisor of the first). Raises ValueError when the P prompts of a step do not split over the processes."""
    n_proc = processes(device).num_processes
    if P % n_proc:
        raise ValueError(f"prompts_per_step={P} does not split over {n_proc} processes: the group term needs all "
                         f"G={G} rollouts of a prompt on one process")
    per_proc = P * G // n_proc
    return per_proc, max(d for d in range(1, min(per_proc, max(1, micro_batch)) + 1) if per_proc % d == 0)


def _generation_kwargs(tokenizer, per_turn: int, use_vllm: bool) -> dict:
    """TRL's ``generation_kwargs``: the per-turn token cap; with HF ``generate`` no image or turn-start token."""
    if use_vllm:
        return {"max_tokens": per_turn}
    suppress = sorted({tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                       "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|im_start|>")}
                      - {tokenizer.unk_token_id, None})
    return {"max_new_tokens": per_turn, "suppress_tokens": suppress}


def build_trainer(model, processor, items: Sequence[tuple], cfg: GRPOConfig, out_dir, variant: str = "uncertainty",
                  rollout_cfg: RolloutConfig | None = None, hp: PaperHyperParams = PAPER, seed: int = 0,
                  steps: int | None = None, draws: Sequence[Sequence[int]] | None = None, optimizer=None,
                  scheduler=None, device: str = "cpu", use_vllm: bool | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> ZoomGRPOTrainer:
    """A :class:`ZoomGRPOTrainer` for `cfg` (P prompts x G rollouts a step, `cfg.steps` or `steps` steps).

    Call it inside :func:`tool_rendering`. A model that is not a peft model gets the paper's LoRA
    (``hp.lora_*``); a peft model's trainable adapter is trained as is. One optimizer step per GRPO
    step: the P*G completions are generated at once and backpropagated ``cfg.micro_batch`` (rounded
    down to a divisor of P*G) at a time. `draws` (default: the loop's draws for `seed`) are each step's
    prompt indices into `items`; `optimizer` defaults to AdamW(lr=cfg.lr, no weight decay) over the
    trainable parameters, `scheduler` to a constant learning rate. Generation is HF ``generate``;
    vLLM (colocated) only when `use_vllm` (default ``cfg.use_vllm``) and CUDA is available.
    """
    from peft import PeftModel, get_peft_model
    rollout_cfg = rollout_cfg or RolloutConfig()
    if not isinstance(model, PeftModel):
        model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
    G, P = hp.group_size, cfg.prompts_per_step
    steps = cfg.steps if steps is None else steps
    per_proc, micro = _per_process_batch(P, G, cfg.micro_batch, device)
    on_gpu = str(device).startswith("cuda")
    use_vllm = (cfg.use_vllm if use_vllm is None else use_vllm) and on_gpu and torch.cuda.is_available()
    per_turn = max(rollout_cfg.max_new_tokens)
    gen_kwargs = _generation_kwargs(processor.tokenizer, per_turn, use_vllm)
    gc = bool(getattr(model, "is_activation_checkpointing", False))
    rewards = ZoomRewards(processor.tokenizer, variant, cfg.estimator, hp)
    args = TRLGRPOConfig(
        output_dir=str(Path(out_dir) / "trainer"), max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_proc // micro, num_generations=G, num_iterations=1, learning_rate=cfg.lr,
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=cfg.beta,
        epsilon=hp.clip_epsilon, loss_type="grpo", scale_rewards="group", temperature=hp.temperature, top_p=1.0,
        top_k=0, max_completion_length=2 * per_turn + crop_tokens_bound(processor), max_tool_calling_iterations=1,
        generation_kwargs=gen_kwargs, disable_dropout=True, reward_weights=rewards.weights(), shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to=[], seed=seed, bf16=on_gpu, use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu, disable_tqdm=True, remove_unused_columns=False, log_completions=False,
        activation_checkpointing=gc, activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        use_vllm=use_vllm, vllm_mode="colocate")
    if optimizer is None:
        optimizer = trainable_adamw(model, cfg.lr)
    if scheduler is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    draws = step_draws(len(items), P, steps, seed) if draws is None else draws
    if len(draws) != steps or any(len(d) != P for d in draws):
        raise ValueError(f"draws must hold {steps} steps of {P} prompt indices")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using 'environment_factory'", category=UserWarning)
        trainer = ZoomGRPOTrainer(model=model, reward_funcs=rewards.functions(), args=args,
                                  train_dataset=prompt_dataset(items), processing_class=processor,
                                  environment_factory=environment_factory(processor, rollout_cfg.crop_pixels),
                                  optimizers=(optimizer, scheduler), callbacks=list(callbacks),
                                  zoom_rewards=rewards, draws=draws)
    trainer.remove_callback(PrinterCallback)
    return trainer


def _postfix(row: dict) -> dict:
    return dict(R=f"{row['reward_total']:.2f}", iou=f"{row['mean_iou']:.2f}")


class _GRPOLog(CheckpointAndLog):
    """The explicit step's log row of each step: the trainer's scored batch, TRL's loss, grad norm and KL."""

    trainer: ZoomGRPOTrainer | None = None

    def log_row(self, logs: dict, lr_scheduler) -> dict | None:
        if self.trainer.zoom_row is None:
            return None
        row = dict(self.trainer.zoom_row)
        self.trainer.zoom_row = None
        row.update(loss=float(logs["loss"]), grad_norm=float(logs.get("grad_norm") or 0.0),
                   kl=float(logs.get("kl") or 0.0),
                   time_update_s=max(0.0, time.perf_counter() - self.t0 - row["time_generation_s"]))
        return row


def train_grpo_trl(model, processor, train_items: Sequence[tuple], cfg: GRPOConfig, out_dir,
                   variant: str = "uncertainty", rollout_cfg: RolloutConfig | None = None,
                   hp: PaperHyperParams = PAPER, seed: int = 0, resume: bool = True, progress: bool = True,
                   callbacks: Sequence[Callable] = (), device: str = "cpu") -> list[dict]:
    """:func:`zoomdx_lib.train.grpo.train_grpo` through TRL: same contract, log keys and checkpoints.

    `model` is a peft model with a trainable adapter (the SFT LoRA). Checkpoints (adapter, optimizer,
    scheduler, RNG) every ``cfg.checkpoint_every`` steps into `out_dir`, with `resume` the run continues
    from the latest one; the same prompts as the explicit loop for the same `seed`. Returns the log rows.
    The trainer is built before a checkpoint is loaded, so with beta > 0 TRL's reference copy of the
    adapter is the starting (SFT) adapter on a resumed run too; the copy is removed after training.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = trainable_adamw(model, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ckpt = latest_checkpoint(out_dir) if resume else None
    start = json.loads((ckpt / "trainer_state.json").read_text())["step"] if ckpt is not None else 0
    procs = processes(device)
    if procs.is_main_process:
        cut_log(out_dir, start)
    procs.wait_for_everyone()
    rows = read_log(out_dir)
    progress = progress and procs.is_main_process
    if start >= cfg.steps:
        resume_latest(out_dir, model, opt, sched)   # the finished run's adapter, for the caller to save
        return rows
    draws = step_draws(len(train_items), cfg.prompts_per_step, cfg.steps, seed, start)
    bar = progress_bar(range(start, cfg.steps), progress, desc=f"GRPO {variant}/{cfg.estimator} (TRL)",
                       initial=start, total=cfg.steps)
    try:
        with tool_rendering(processor), dropout_off(model):   # and back after TRL's disable_dropout zeroed them
            logger = _GRPOLog(out_dir, start, cfg.steps, cfg.checkpoint_every, None, callbacks,
                              bar if progress else None, postfix=_postfix)
            trainer = build_trainer(model, processor, train_items, cfg, out_dir, variant, rollout_cfg, hp, seed,
                                    steps=cfg.steps - start, draws=draws, optimizer=opt, scheduler=sched,
                                    device=device, callbacks=[logger])
            logger.trainer = trainer
            if start:   # weights, optimizer, scheduler and RNG of the checkpoint; the RNG again at the first step
                resume_latest(out_dir, model, opt, sched)
                logger.rng_state = torch.get_rng_state()
            model.train()
            trainer.train()
    finally:
        if "ref" in getattr(model, "peft_config", {}):   # TRL's KL reference copy (beta > 0)
            model.delete_adapter("ref")
        model.eval()
        if progress:
            bar.close()
    procs.wait_for_everyone()
    return read_log(out_dir)
