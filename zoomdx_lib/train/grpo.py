"""GRPO on Zoom-then-Diagnose rollouts with the paper's rewards, as a compact explicit step.

Each step: P prompts -> G rollouts each at T=0.7 through the rollout engine (the crop tool
runs between the turns) -> rewards from those rollouts (Eq. 3, or the accuracy-only variant)
-> advantages (estimator "group" = the paper as written, "batch", or "credit") -> a clipped
policy-gradient loss on the model's own tokens of both turns (crop turn and prompt masked),
optional KL to the SFT policy (LoRA disabled) -> the LoRA weights are updated. Steps run
through the one training loop (:mod:`zoomdx_lib.train.loop`).

Why not only TRL's GRPOTrainer: its `rollout_func` cannot carry the mid-rollout crop into the loss
pass, its experimental tool loop needs a custom parser and silently drops over-long image tool
results, and a group-level reward needs whole groups per rank. This step keeps every term visible;
:mod:`zoomdx_lib.train.grpo_trl` (``GRPOConfig.engine="trl"``) runs the same update on the trainer.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..config import PAPER, GRPOConfig, PaperHyperParams, RolloutConfig
from ..model import chat
from ..rl.advantages import compute_advantages
from ..rl.rewards import VARIANTS, mode_and_kappa, score_group
from ..rl.rollout import HFPolicy, Trajectory, rollout
from .common import dropout_off, trainable_adamw
from .loop import LoopConfig, run_loop

__all__ = ["GRPOConfig", "RolloutConfig", "VARIANTS", "grpo_step", "train_grpo", "sequence_logprobs",
           "log_end_values", "LOG_KEYS", "RESULT_KEYS"]


def _chunks(items: Sequence, size: int):
    return [items[s:s + size] for s in range(0, len(items), size)]


def sequence_logprobs(model, processor, trajs: Sequence[Trajectory], temperature: float, micro_batch: int = 16):
    """Per-token log-probabilities (at the sampling temperature) of each trajectory's own tokens.

    Returns a list of 1-D tensors, one per trajectory, over the positions its policy mask marks.
    Logits are computed only at those positions (``logits_to_keep`` with a boolean mask): no
    full-vocabulary tensor over the whole sequence is ever built. With grad enabled the tensors
    carry the graph of their micro-batch.
    """
    device = next(model.parameters()).device
    out = []
    for chunk in _chunks(trajs, micro_batch):
        seqs = [t.sequence() for t in chunk]
        inputs = chat.model_inputs([ids for ids, _ in seqs], [t.image_inputs for t in chunk], processor, side="right")
        T = inputs["input_ids"].shape[1]
        # position t predicts token t + 1: keep t where token t + 1 is the policy's own
        keep = torch.zeros((len(chunk), T), dtype=torch.bool)
        for i, (_, mask) in enumerate(seqs):
            keep[i, :len(mask) - 1] = torch.tensor(mask[1:], dtype=torch.bool)
        targets = inputs["input_ids"][:, 1:][keep[:, :-1]]
        inputs = {k: v.to(device) for k, v in inputs.items()}
        logits = model(**inputs, logits_to_keep=keep.to(device)).logits.float() / temperature
        logp = logits.gather(1, targets.to(device)[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
        out += list(torch.split(logp, keep.sum(1).tolist()))
    return out


def grpo_step(model, processor, items, cfg: GRPOConfig, optimizer, variant: str = "uncertainty",
              rollout_cfg: RolloutConfig = RolloutConfig(), hp: PaperHyperParams = PAPER, policy=None,
              reward_fn: Optional[Callable] = None) -> dict:
    """One GRPO update on `items` [(sample, image)]. Returns the step's log row (rewards, kappa, timing).

    `policy` defaults to sampling from `model`; `reward_fn(trajs, sample)` defaults to
    `score_group(..., variant)` and must return a dict with individual, group_term, answers.
    LoRA dropout is off for the rollouts, the old and reference log-probabilities (eval mode, no
    graph) and the loss pass alike (train mode with every dropout at p = 0, so gradient
    checkpointing still works), so the PPO ratio is exactly 1 before the update (logged as
    ``ratio_max_dev``) and measures the update alone. The loss is backpropagated
    one micro-batch of ``cfg.micro_batch`` trajectories at a time: memory grows with the
    micro-batch, not with P x G.
    """
    G = hp.group_size
    reward_fn = reward_fn or (lambda trajs, sample: score_group(trajs, sample, variant, hp))
    t0 = time.perf_counter()
    model.eval()
    trajs = rollout(items, policy or HFPolicy(model, processor), processor, group_size=G, do_sample=True,
                    temperature=hp.temperature, max_new_tokens=rollout_cfg.max_new_tokens,
                    crop_pixels=rollout_cfg.crop_pixels)
    t_gen = time.perf_counter() - t0
    scores = [reward_fn(group, sample) for group, (sample, _) in zip(trajs, items)]
    individual = np.stack([s["individual"] for s in scores])
    adv = compute_advantages(individual, [s["group_term"] for s in scores], [s["answers"] for s in scores],
                             [sample.c for sample, _ in items], [sample.label for sample, _ in items],
                             cfg.estimator, hp)
    t1 = time.perf_counter()
    flat = [t for group in trajs for t in group]
    flat_adv = adv.reshape(-1).tolist()
    with torch.no_grad():
        old = sequence_logprobs(model, processor, flat, hp.temperature, cfg.micro_batch)
        ref = None
        if cfg.beta > 0:
            with model.disable_adapter():
                ref = sequence_logprobs(model, processor, flat, hp.temperature, cfg.micro_batch)
    scored = [k for k, lp in enumerate(old) if lp.numel() > 0]
    optimizer.zero_grad(set_to_none=True)
    losses, kls, ratio_dev = [], [], 0.0
    with dropout_off(model):
        model.train()
        for chunk in _chunks(list(range(len(flat))), cfg.micro_batch):
            losses.append(_micro_batch_loss(model, processor, [flat[k] for k in chunk], [old[k] for k in chunk],
                                            None if ref is None else [ref[k] for k in chunk],
                                            [flat_adv[k] for k in chunk], len(scored), cfg, hp, kls))
            ratio_dev = max(ratio_dev, losses[-1][1])
    model.eval()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    t_upd = time.perf_counter() - t1
    row = _log_row(trajs, items, scores, adv, sum(part for part, _ in losses), kls, float(grad_norm), t_gen, t_upd)
    row["ratio_max_dev"] = ratio_dev
    return row


def _micro_batch_loss(model, processor, trajs, old, ref, advantages, n_scored: int, cfg: GRPOConfig,
                      hp: PaperHyperParams, kls: list) -> tuple[float, float]:
    """Backpropagate one micro-batch's share of the clipped surrogate (+ KL) loss, a mean over all
    `n_scored` trajectories of the step; returns (its loss, the largest |ratio - 1| in it)."""
    new = sequence_logprobs(model, processor, trajs, hp.temperature, len(trajs))
    terms, ratio_dev = [], 0.0
    for k, lp in enumerate(new):
        if lp.numel() == 0:
            continue
        ratio = torch.exp(lp - old[k])
        ratio_dev = max(ratio_dev, float((ratio.detach() - 1).abs().max()))
        a = advantages[k]
        surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - hp.clip_epsilon, 1 + hp.clip_epsilon) * a)
        per_token = -surrogate
        if ref is not None:  # k3 estimator of KL(pi || pi_ref), as in GRPO
            d = ref[k] - lp
            kl = torch.exp(d) - d - 1
            per_token = per_token + cfg.beta * kl
            kls.append(float(kl.mean()))
        terms.append(per_token.mean())
    if not terms:
        return 0.0, ratio_dev
    part = torch.stack(terms).sum() / n_scored
    part.backward()
    return float(part.detach()), ratio_dev


def _log_row(trajs, items, scores, adv, loss, kls, grad_norm, t_gen, t_upd) -> dict:
    kappas = {0: [], 1: []}
    for s, (sample, _) in zip(scores, items):
        kappas[sample.c].append(mode_and_kappa(s["answers"])[1])
    flat = [t for g in trajs for t in g]
    return dict(
        reward_total=float(np.mean([s["total"].mean() for s in scores])),
        reward_loc=float(np.mean([s["loc"].mean() for s in scores])),
        reward_acc=float(np.mean([s["acc"].mean() for s in scores])),
        reward_fmt=float(np.mean([s["fmt"].mean() for s in scores])),
        reward_group=float(np.mean([s["group"].mean() for s in scores])),
        no_signal_share=float(np.mean([np.allclose(a, 0) for a in adv])),
        kappa_c1=kappas[1], kappa_c0=kappas[0],
        tool_call_valid=float(np.mean([t.tool.ok for t in flat])),
        answer_valid=float(np.mean([t.label is not None for t in flat])),
        mean_iou=float(np.mean([s["loc"].mean() for s in scores])),
        kl=float(np.mean(kls)) if kls else 0.0, loss=loss, grad_norm=grad_norm,
        generated_tokens=int(sum(len(t.turn1_ids) + len(t.turn2_ids) for t in flat)),
        time_generation_s=t_gen, time_update_s=t_upd)


def train_grpo(model, processor, train_items: Sequence[tuple], cfg: GRPOConfig, out_dir, variant: str = "uncertainty",
               rollout_cfg: RolloutConfig = RolloutConfig(), hp: PaperHyperParams = PAPER, seed: int = 0,
               resume: bool = True, progress: bool = True, callbacks: Sequence[Callable] = ()) -> list[dict]:
    """Run `cfg.steps` GRPO steps on a trainable peft `model` through the training loop.

    Checkpoints (adapter, optimizer, RNG, sampler) every `cfg.checkpoint_every` steps into `out_dir`;
    with resume=True continues from the latest one. The per-step log is `out_dir/log.jsonl`; `seed`
    seeds the prompt sampler and, at a fresh start, the torch RNG (rollout sampling, LoRA dropout).
    Returns the log rows.
    """
    opt = trainable_adamw(model, cfg.lr)
    loop = LoopConfig(steps=cfg.steps, draws_per_step=cfg.prompts_per_step, checkpoint_every=cfg.checkpoint_every,
                      sampler_seed=seed, torch_seed=seed, desc=f"GRPO {variant}/{cfg.estimator}")

    def step(idx: list[int]) -> dict:
        return grpo_step(model, processor, [train_items[i] for i in idx], cfg, opt, variant, rollout_cfg, hp)

    return run_loop(model, opt, step, len(train_items), loop, out_dir, resume=resume, show_progress=progress,
                    postfix=lambda r: dict(R=f"{r['reward_total']:.2f}", iou=f"{r['mean_iou']:.2f}"),
                    callbacks=callbacks)


LOG_KEYS = ("reward_total", "reward_loc", "reward_acc", "reward_fmt", "reward_group", "no_signal_share",
            "tool_call_valid", "answer_valid", "mean_iou", "kl", "time_generation_s", "time_update_s")
RESULT_KEYS = tuple(k for k in LOG_KEYS if not k.startswith("time_"))  # what metrics files keep: no wall-clock


def log_end_values(log: Sequence[dict], last: int = 5, keys: Sequence[str] = LOG_KEYS) -> dict:
    """Mean of each logged quantity over the last `last` GRPO steps (the curves' end values)."""
    rows = list(log)[-last:]
    return {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
