"""GRPO on Zoom-then-Diagnose rollouts with the paper's rewards, as a compact explicit step.

Long because every term of the update (rollouts and refill, advantages, loss normalisation, clipped
passes, KL, the logged health of the policy) stays in one file, to be read together.

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
import warnings
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
           "log_end_values", "LOG_KEYS", "RESULT_KEYS", "turn_weights"]


def _chunks(items: Sequence, size: int):
    return [items[s:s + size] for s in range(0, len(items), size)]


def sequence_logprobs(model, processor, trajs: Sequence[Trajectory], temperature: float, micro_batch: int = 16,
                      entropies: Optional[list] = None):
    """Per-token log-probabilities (at the sampling temperature) of each trajectory's own tokens.

    Returns a list of 1-D tensors, one per trajectory, over the positions its policy mask marks.
    Logits are computed only at those positions (``logits_to_keep`` with a boolean mask): no
    full-vocabulary tensor over the whole sequence is ever built. With grad enabled the tensors
    carry the graph of their micro-batch. When `entropies` is a list, the mean entropy (nats) of the
    tempered next-token distribution over each micro-batch's policy positions is appended to it.
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
        norm = torch.logsumexp(logits, -1)
        logp = logits.gather(1, targets.to(device)[:, None]).squeeze(1) - norm
        if entropies is not None and logits.shape[0]:
            with torch.no_grad():
                entropies.append(float((norm - (logits.softmax(-1) * logits).sum(-1)).mean()))
        out += list(torch.split(logp, keep.sum(1).tolist()))
    return out


def grpo_step(model, processor, items, cfg: GRPOConfig, optimizer, variant: str = "uncertainty",
              rollout_cfg: RolloutConfig = RolloutConfig(), hp: PaperHyperParams = PAPER, policy=None,
              reward_fn: Optional[Callable] = None, refill: Optional[Callable[[int], list]] = None) -> dict:
    """One GRPO update on `items` [(sample, image)]. Returns the step's log row (rewards, kappa, timing).

    `policy` defaults to sampling from `model`; `reward_fn(trajs, sample)` defaults to
    `score_group(..., variant)` and must return a dict with individual, group_term, answers.
    With ``cfg.refill_rounds`` > 0 and a `refill(n)` that returns n new (sample, image) prompts, groups
    whose advantages are all zero are dropped and replaced by fresh prompts (dynamic sampling), for at
    most that many extra rollout rounds; the row counts them (``refill_prompts``). The clipped loss
    is averaged per ``cfg.loss_norm`` and applied ``cfg.ppo_epochs`` times to the same rollouts (the
    first pass has ratio 1; later passes are clipped; ``clip_frac`` is the share of token ratios
    outside the clip range over the passes).
    LoRA dropout is off for the rollouts, the old and reference log-probabilities (eval mode, no
    graph) and the loss pass alike (train mode with every dropout at p = 0, so gradient
    checkpointing still works), so the PPO ratio is exactly 1 before the first update (logged as
    ``ratio_max_dev``). The loss is backpropagated one micro-batch of ``cfg.micro_batch``
    trajectories at a time: memory grows with the micro-batch, not with P x G.
    """
    t0 = time.perf_counter()
    trajs, items, scores, adv, refilled = _scored_rollouts(model, processor, items, cfg, variant, rollout_cfg, hp,
                                                           policy, reward_fn, refill)
    t1 = time.perf_counter()
    t_gen = t1 - t0
    flat = [t for group in trajs for t in group]
    flat_adv = adv.reshape(-1).tolist()
    with torch.no_grad():
        old = sequence_logprobs(model, processor, flat, hp.temperature, cfg.micro_batch)
        ref = None
        if cfg.beta > 0:
            with model.disable_adapter():
                ref = sequence_logprobs(model, processor, flat, hp.temperature, cfg.micro_batch)
    denominator = _loss_denominator(old, cfg, rollout_cfg)
    stats = dict(kls=[], entropies=[], clipped=0, tokens=0, ratio_dev=0.0)
    active = any(a != 0 for a in flat_adv) or cfg.beta > 0
    for epoch in range(cfg.ppo_epochs if active else 1):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        with dropout_off(model):
            model.train()
            for chunk in _chunks(list(range(len(flat))), cfg.micro_batch):
                loss += _micro_batch_loss(model, processor, [flat[k] for k in chunk], [old[k] for k in chunk],
                                          None if ref is None else [ref[k] for k in chunk],
                                          [flat_adv[k] for k in chunk], denominator, cfg, hp, stats, epoch)
        model.eval()
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        if epoch == 0:   # the log reports the first pass: the update from ratio 1
            first_loss, grad_norm, first_ratio_dev = loss, float(norm), stats["ratio_dev"]
        optimizer.step()
    t_upd = time.perf_counter() - t1
    row = _log_row(trajs, items, scores, adv, first_loss, stats["kls"], grad_norm, t_gen, t_upd)
    row.update(ratio_max_dev=first_ratio_dev, clip_frac=stats["clipped"] / max(stats["tokens"], 1),
               entropy=float(np.mean(stats["entropies"])) if stats["entropies"] else float("nan"),
               box_area=_mean_box_area(flat, items), refill_prompts=refilled, ppo_epochs=cfg.ppo_epochs)
    return row


def _scored_rollouts(model, processor, items, cfg, variant, rollout_cfg, hp, policy, reward_fn, refill):
    """Roll out and score `items`; with dynamic sampling, replace groups with no signal by fresh prompts.
    Returns (trajectory groups, their items, scores, advantages [n, G], number of prompts drawn to refill)."""
    G = hp.group_size
    reward_fn = reward_fn or (lambda trajs, sample: score_group(trajs, sample, variant, hp))
    groups, kept, scores, refilled, todo = [], [], [], 0, list(items)
    for round_ in range(1 + (cfg.refill_rounds if refill is not None else 0)):
        model.eval()
        trajs = rollout(todo, policy or HFPolicy(model, processor), processor, group_size=G, do_sample=True,
                        temperature=hp.temperature, max_new_tokens=rollout_cfg.max_new_tokens,
                        crop_pixels=rollout_cfg.crop_pixels)
        groups += trajs
        kept += todo
        scores += [reward_fn(group, sample) for group, (sample, _) in zip(trajs, todo)]
        adv = _advantages(scores, kept, cfg, hp)
        if refill is None or cfg.refill_rounds == 0:
            break
        signal = [k for k, a in enumerate(adv) if not np.allclose(a, 0)]
        missing = len(items) - len(signal)
        if missing == 0 or round_ == cfg.refill_rounds:
            if round_ > 0:   # keep the first len(items) groups with signal (or every group when short)
                pick = signal[:len(items)] if len(signal) >= len(items) else list(range(len(kept)))
                groups, kept, scores = [groups[k] for k in pick], [kept[k] for k in pick], [scores[k] for k in pick]
                adv = _advantages(scores, kept, cfg, hp)
            break
        todo = refill(missing)
        refilled += len(todo)
    return groups, kept, scores, adv, refilled


def _advantages(scores, items, cfg: GRPOConfig, hp: PaperHyperParams) -> np.ndarray:
    individual = np.stack([s["individual"] for s in scores])
    return compute_advantages(individual, [s["group_term"] for s in scores], [s["answers"] for s in scores],
                              [sample.c for sample, _ in items], [sample.label for sample, _ in items],
                              cfg.estimator, hp)


def _loss_denominator(old, cfg: GRPOConfig, rollout_cfg: RolloutConfig) -> float:
    """What the summed per-token loss of a step is divided by: trajectories ("sequence": each one's
    token mean counts once), all policy tokens ("token", DAPO), or trajectories x the token budget of
    both turns ("constant", Dr. GRPO: no length bias)."""
    scored = [lp for lp in old if lp.numel() > 0]
    if cfg.loss_norm == "sequence":
        return float(max(len(scored), 1))
    if cfg.loss_norm == "token":
        return float(max(sum(lp.numel() for lp in scored), 1))
    return float(max(len(scored), 1) * sum(rollout_cfg.max_new_tokens))


def _micro_batch_loss(model, processor, trajs, old, ref, advantages, denominator: float, cfg: GRPOConfig,
                      hp: PaperHyperParams, stats: dict, epoch: int) -> float:
    """Backpropagate one micro-batch's share of the clipped surrogate (+ KL) loss of the step (its
    per-token terms summed as ``cfg.loss_norm`` says, over `denominator`); returns its loss. Updates
    `stats` (KL, entropy on the first pass, clipped and total token counts, largest |ratio - 1|)."""
    new = sequence_logprobs(model, processor, trajs, hp.temperature, len(trajs),
                            entropies=stats["entropies"] if epoch == 0 else None)
    terms = []
    for k, lp in enumerate(new):
        if lp.numel() == 0:
            continue
        ratio = torch.exp(lp - old[k])
        dev = (ratio.detach() - 1).abs()
        stats["ratio_dev"] = max(stats["ratio_dev"], float(dev.max()))
        stats["clipped"] += int((dev > hp.clip_epsilon).sum())
        stats["tokens"] += int(dev.numel())
        a = advantages[k]
        surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - hp.clip_epsilon, 1 + hp.clip_epsilon) * a)
        if cfg.policy_turns != "both":   # the advantage reaches one turn's tokens only
            weight = turn_weights(trajs[k], cfg.policy_turns).to(lp.device)
            surrogate = surrogate * weight
            if cfg.loss_norm == "sequence":   # the mean over the turn's own tokens, the KL's over all
                surrogate = surrogate * (weight.numel() / max(float(weight.sum()), 1.0))
        per_token = -surrogate
        if ref is not None:  # k3 estimator of KL(pi || pi_ref), as in GRPO
            d = ref[k] - lp
            kl = torch.exp(d) - d - 1
            per_token = per_token + cfg.beta * kl
            if epoch == 0:
                stats["kls"].append(float(kl.detach().mean()))
        terms.append(per_token.mean() if cfg.loss_norm == "sequence" else per_token.sum())
    if not terms:
        return 0.0
    part = torch.stack(terms).sum() / denominator
    part.backward()
    return float(part.detach())


def turn_weights(traj: Trajectory, turns: str) -> torch.Tensor:
    """1 on the policy tokens of the chosen turn ("turn1", "turn2"; "both": every one), 0 elsewhere, in the
    order of :meth:`Trajectory.sequence`'s policy mask (turn 1's tokens, then turn 2's).

    >>> from zoomdx_lib.protocol import parse_tool_call
    >>> call = parse_tool_call("no call", (64, 64), (64, 64))
    >>> t = Trajectory("s", 0, "", call, turn1_ids=[5, 6, 7], turn2_ids=[8, 9])
    >>> turn_weights(t, "turn1").tolist(), turn_weights(t, "turn2").tolist()
    ([1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0])
    """
    return torch.cat([torch.full((len(traj.turn1_ids),), float(turns != "turn2")),
                      torch.full((len(traj.turn2_ids),), float(turns != "turn1"))])


def _mean_box_area(trajs, items) -> float:
    """Mean area of the valid predicted boxes as a fraction of their image (NaN when none is valid)."""
    sizes = {sample.id: img.size for sample, img in items}
    areas = []
    for t in trajs:
        if t.box is not None and t.sample_id in sizes:
            w, h = sizes[t.sample_id]
            x1, y1, x2, y2 = t.box
            areas.append(max(0.0, x2 - x1) * max(0.0, y2 - y1) / float(w * h))
    return float(np.mean(areas)) if areas else float("nan")


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


class GRPOHealthWarning(UserWarning):
    """The policy is losing the dialogue format during GRPO (tool calls or valid answers collapse)."""


def health_monitor(keys: Sequence[str] = ("tool_call_valid", "answer_valid"), window: int = 3) -> Callable[[dict], None]:
    """A training-loop callback that warns (:class:`GRPOHealthWarning`, once per key) when the mean of
    a logged rate over the last `window` steps falls below half of its mean over the first `window`."""
    history: dict[str, list] = {k: [] for k in keys}
    warned: set = set()

    def check(row: dict) -> None:
        for k in keys:
            if k not in row:
                continue
            history[k].append(float(row[k]))
            h = history[k]
            if len(h) < 2 * window or k in warned:
                continue
            start, now = float(np.mean(h[:window])), float(np.mean(h[-window:]))
            if now < 0.5 * start:
                warned.add(k)
                warnings.warn(f"GRPO step {row.get('step')}: {k} fell to {now:.2f} from {start:.2f} at the start "
                              f"(below half): the update is breaking the dialogue format; lower the learning "
                              f"rate or add a KL term (grpo.beta)", GRPOHealthWarning, stacklevel=2)
    return check


def balanced_prompts(labels: Sequence[tuple[str, str]], idx: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Label-balanced replacements for one step's drawn prompt indices `idx`: the attribute of the first drawn
    prompt, then its labels in turn from a random offset, each a random case of that (attribute, label) from
    `labels` [(attribute, label) per training item]; a pure function of `idx` and `rng`.

    >>> labels = [("echo", "A"), ("echo", "B"), ("echo", "A"), ("shape", "C"), ("echo", "C")]
    >>> picked = balanced_prompts(labels, [2, 3, 1], np.random.default_rng(0))
    >>> sorted(labels[i][1] for i in picked), {labels[i][0] for i in picked}
    (['A', 'B', 'C'], {'echo'})
    """
    attribute = labels[idx[0]][0]
    pools: dict = {}
    for k, (a, label) in enumerate(labels):
        if a == attribute:
            pools.setdefault(label, []).append(k)
    order = sorted(pools)
    offset = int(rng.integers(len(order)))
    return [int(rng.choice(pools[order[(offset + j) % len(order)]])) for j in range(len(idx))]


def train_grpo(model, processor, train_items: Sequence[tuple], cfg: GRPOConfig, out_dir, variant: str = "uncertainty",
               rollout_cfg: RolloutConfig = RolloutConfig(), hp: PaperHyperParams = PAPER, seed: int = 0,
               resume: bool = True, progress: bool = True, callbacks: Sequence[Callable] = (),
               reward_fn: Optional[Callable] = None) -> list[dict]:
    """Run `cfg.steps` GRPO steps on a trainable peft `model` through the training loop.

    Checkpoints (adapter, optimizer, RNG, sampler) every `cfg.checkpoint_every` steps into `out_dir`;
    with resume=True continues from the latest one. The per-step log is `out_dir/log.jsonl`; `seed`
    seeds the prompt sampler and, at a fresh start, the torch RNG (rollout sampling, LoRA dropout).
    Replacement prompts of dynamic sampling (``cfg.refill_rounds``) are drawn from a generator seeded by
    the step's own draws, so a resumed run refills exactly as the uninterrupted one; so are the label-balanced
prompts of ``cfg.balance_labels`` (:func:`balanced_prompts`). `reward_fn` replaces
    the variant's rewards (see :func:`grpo_step`; the positive controls use it). A
    :func:`health_monitor` warns when the format collapses. Returns the log rows.
    """
    opt = trainable_adamw(model, cfg.lr)
    labels = [(sample.attribute, sample.label) for sample, _ in train_items]
    loop = LoopConfig(steps=cfg.steps, draws_per_step=cfg.prompts_per_step, checkpoint_every=cfg.checkpoint_every,
                      sampler_seed=seed, torch_seed=seed, desc=f"GRPO {variant}/{cfg.estimator}")

    def step(idx: list[int]) -> dict:
        rng = np.random.default_rng([seed, *idx])
        if cfg.balance_labels:
            idx = balanced_prompts(labels, idx, rng)

        def refill(n: int) -> list:
            return [train_items[i] for i in rng.integers(len(train_items), size=n)]
        return grpo_step(model, processor, [train_items[i] for i in idx], cfg, opt, variant, rollout_cfg, hp,
                         reward_fn=reward_fn, refill=refill if cfg.refill_rounds > 0 else None)

    return run_loop(model, opt, step, len(train_items), loop, out_dir, resume=resume, show_progress=progress,
                    postfix=lambda r: dict(R=f"{r['reward_total']:.2f}", iou=f"{r['mean_iou']:.2f}"),
                    callbacks=[health_monitor(), *callbacks])


LOG_KEYS = ("reward_total", "reward_loc", "reward_acc", "reward_fmt", "reward_group", "no_signal_share",
            "tool_call_valid", "answer_valid", "mean_iou", "kl", "time_generation_s", "time_update_s")
RESULT_KEYS = tuple(k for k in LOG_KEYS if not k.startswith("time_"))  # what metrics files keep: no wall-clock


def log_end_values(log: Sequence[dict], last: int = 5, keys: Sequence[str] = LOG_KEYS) -> dict:
    """Mean of each logged quantity over the last `last` GRPO steps (the curves' end values)."""
    rows = list(log)[-last:]
    return {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
