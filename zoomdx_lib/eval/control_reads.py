"""What a positive control reads from generation records: the per-case value, its paired change between two
policies on the same cases, and what GRPO could see in a policy's sampled groups (:mod:`zoomdx_lib.workbook.rl_controls`
runs the controls)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..rl.controls import constant_answer
from .metrics import bootstrap_ci

__all__ = ["control_values", "paired_change", "group_headroom", "curve_summary"]


def control_values(control: str, records: Sequence[dict], sampled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(per-case value, mask of the cases the control reads) from generation records: the share of
    rollouts giving the constant answer (every case), or the greedy IoU / hit (c = 1 cases); with `sampled`,
    the mean IoU / hit over each case's sampled rollouts (what GRPO's reward averages)."""
    if control == "constant":
        vals = [np.mean([ro["answer"] == constant_answer(r["attribute"]) for ro in r["rollouts"]]) for r in records]
        return np.asarray(vals, float), np.ones(len(records), bool)
    rolls = [r["rollouts"] if sampled else r["rollouts"][:1] for r in records]
    if control == "iou":
        vals = [np.mean([ro["iou"] for ro in rs]) for rs in rolls]
    else:
        vals = [np.mean([ro["answer"] is not None and ro["answer"] == r["label"] for ro in rs])
                for rs, r in zip(rolls, records)]
    return np.asarray(vals, float), np.array([r["c"] == 1 for r in records])


def paired_change(control: str, before: Sequence[dict], after: Sequence[dict], n_boot: int = 2000,
                  sampled: bool = False) -> dict:
    """start, end, delta = end - start and its paired 95 % bootstrap interval over the read cases
    (`sampled`: see :func:`control_values`)."""
    b, mask = control_values(control, before, sampled)
    a, _ = control_values(control, after, sampled)
    b, a = b[mask], a[mask]
    delta, lo, hi = bootstrap_ci(lambda x, y: float(np.mean(y - x)), b, a, n_boot=n_boot)
    return dict(start=float(b.mean()), end=float(a.mean()), delta=delta, delta_ci=[lo, hi], n_cases=int(mask.sum()))


def group_headroom(records: Sequence[dict]) -> dict:
    """What GRPO can see in a policy's sampled groups, on c = 1 cases of sample-mode generation records
    (G rollouts each): the mean IoU of a rollout and of the best of G, the within-group spread of IoU (GRPO
    ranks rollouts by it), the share of right answers, the share of cases with at least one right answer,
    and the share of groups whose answers are all alike (no accuracy signal).

    >>> r = lambda iou, a: dict(iou=iou, answer=a)
    >>> recs = [dict(c=1, label="A", rollouts=[r(0.2, "A"), r(0.6, "B")]), dict(c=0, label="A", rollouts=[r(0, "A")])]
    >>> h = group_headroom(recs)
    >>> round(h["iou_mean"], 2), round(h["iou_best"], 2), round(h["iou_spread"], 2), h["acc_any"], h["answers_alike"]
    (0.4, 0.6, 0.2, 1.0, 0.0)
    """
    rows = [r for r in records if r["c"] == 1]
    iou = [np.array([ro["iou"] for ro in r["rollouts"]], float) for r in rows]
    right = [np.array([ro["answer"] == r["label"] for ro in r["rollouts"]], float) for r in rows]
    return dict(n_cases=len(rows), rollouts=int(np.mean([len(r["rollouts"]) for r in rows])) if rows else 0,
                iou_mean=float(np.mean([x.mean() for x in iou])), iou_best=float(np.mean([x.max() for x in iou])),
                iou_spread=float(np.mean([x.std() for x in iou])),
                acc_mean=float(np.mean([x.mean() for x in right])), acc_any=float(np.mean([x.max() for x in right])),
                answers_alike=float(np.mean([len({ro["answer"] for ro in r["rollouts"]}) == 1 for r in rows])))


def curve_summary(log: Sequence[dict], parts: int = 4, key: str = "reward_total") -> list[float]:
    """Mean of `key` (the total reward; ``"loss"`` for an SFT log) over `parts` equal stretches of a training curve."""
    r = np.array([row[key] for row in log], float)
    return [float(x.mean()) for x in np.array_split(r, parts) if x.size]
