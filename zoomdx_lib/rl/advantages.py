"""GRPO advantage estimators: how the rewards of a group of G rollouts become per-rollout advantages.

The paper normalises rewards within each group of G rollouts. Its group alignment term R_group is
one number per group, so ``(R_i - mean) / std`` removes it exactly: as written it cannot change the
update (``tests/test_rewards.py::test_group_term_cancels_in_group_advantages``). Three estimators:

* ``"group"``  the paper as written (R_group cancels);
* ``"batch"``  baseline and scale over the whole batch, so a group with a higher R_group gets
  higher advantages than the other groups;
* ``"credit"`` per-rollout leave-one-out credit R_group(T) - R_group(T without tau_i), added to the
  individual reward before group normalisation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import PAPER, PaperHyperParams
from .rewards import Label, r_group

ESTIMATORS = ("group", "batch", "credit")


def _as_2d(R) -> tuple[np.ndarray, bool]:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 1:
        return R[None, :], True
    if R.ndim != 2:
        raise ValueError(f"rewards must have shape [n_groups, G] (or [G]), got {R.shape}")
    return R, False


def group_advantages(R, eps: float = 1e-6) -> np.ndarray:
    """GRPO advantages normalised within each group: (R - mean_G) / (std_G + eps).

    `R` has shape [n_groups, G] (a 1-D [G] array is one group). std is the *population*
    standard deviation (ddof=0; TRL uses ddof=1, which only rescales by sqrt(G/(G-1))).
    A group whose rewards are all equal gets exactly 0. Adding any per-group constant to R
    (such as lambda_align * R_group) leaves the result unchanged.

    >>> group_advantages([[1.0, 0.0, 1.0, 0.0]]).round(4).tolist()
    [[1.0, -1.0, 1.0, -1.0]]
    >>> group_advantages([[0.1, 0.1, 0.1]]).tolist()
    [[0.0, 0.0, 0.0]]
    """
    R2, squeeze = _as_2d(R)
    mean = R2.mean(axis=1, keepdims=True)
    std = R2.std(axis=1, keepdims=True)
    A = (R2 - mean) / (std + eps)
    A[np.ptp(R2, axis=1) == 0] = 0.0
    return A[0] if squeeze else A


def batch_advantages(R, eps: float = 1e-6) -> np.ndarray:
    """Advantages with one baseline and scale over the whole batch: (R - mean_all) / (std_all + eps).

    Population std over all n_groups*G rewards; all-equal rewards give exactly 0. Unlike
    :func:`group_advantages`, a group with a higher R_group gets higher advantages than the
    other groups, so the alignment term reaches the update.

    >>> batch_advantages([[1.0, 1.0], [0.0, 0.0]]).round(4).tolist()
    [[1.0, 1.0], [-1.0, -1.0]]
    """
    R2, squeeze = _as_2d(R)
    if np.ptp(R2) == 0:
        A = np.zeros_like(R2)
    else:
        A = (R2 - R2.mean()) / (R2.std() + eps)
    return A[0] if squeeze else A


def credit_group_term(answers: Sequence[Label], c: int, y: Label,
                      delta: float = PAPER.delta) -> np.ndarray:
    """Leave-one-out credit of each rollout for R_group, shape [G], values in {-1, 0, 1}.

    credit_i = R_group(T, c, y) - R_group(T without tau_i, c, y), with mode and kappa
    recomputed on the G-1 remaining answers (same tie and invalid rules, denominator G-1).

    >>> credit_group_term(["A"] * 6 + ["B"] * 2, 1, "A").tolist()  # the A's hold the consensus
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    >>> credit_group_term(["A"] * 6 + ["B"] * 2, 0, "A").tolist()  # c=0: the A's make it over-agree
    [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.0, 0.0]
    >>> credit_group_term(["A"] * 5 + ["B", "C", "D"], 0, "A", delta=0.7).tolist()  # dissenters keep kappa low
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]

    With G=8 and delta=0.75 a c=0 group that hesitates (kappa <= 5/8) never agrees after one
    removal (5/7 < 0.75), so there the credit for c=0 is only ever 0 or -1.
    """
    answers = list(answers)
    full = r_group(answers, c, y, delta)
    loo = [r_group(answers[:i] + answers[i + 1:], c, y, delta) for i in range(len(answers))]
    return full - np.asarray(loo, dtype=np.float64)


def compute_advantages(individual, group_term=None, answers_per_group=None, cs=None, ys=None,
                       estimator: str = "group", hp: PaperHyperParams = PAPER,
                       eps: float = 1e-6) -> np.ndarray:
    """Advantages [n_groups, G] for one GRPO step.

    individual: [n, G] individual rewards (``reward_components(...)["individual"]``).
    group_term: [n] R_group per group (needed by "group" and "batch").
    answers_per_group, cs, ys: the G answers, the 0/1 confidence label and the true label of
    each group (needed by "credit").

    * "group":  R = individual + lambda_align*group_term, then :func:`group_advantages`
      (the paper as written; R_group cancels).
    * "batch":  the same R, then :func:`batch_advantages`.
    * "credit": R = individual + lambda_align*credit_group_term(...) per rollout, then
      :func:`group_advantages`.

    Raises ValueError for an unknown estimator or mismatched shapes.

    >>> ind = np.zeros((1, 8))
    >>> compute_advantages(ind, [1.0], [["A"] * 6 + ["B"] * 2], [1], ["A"], "credit").round(3).tolist()
    [[0.577, 0.577, 0.577, 0.577, 0.577, 0.577, -1.732, -1.732]]
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {ESTIMATORS}")
    ind = np.asarray(individual, dtype=np.float64)
    if ind.ndim != 2:
        raise ValueError(f"individual rewards must have shape [n_groups, G], got {ind.shape}")
    n = ind.shape[0]
    if estimator in ("group", "batch"):
        if group_term is None:
            raise ValueError(f"estimator {estimator!r} needs group_term of shape [{n}]")
        g = np.asarray(group_term, dtype=np.float64).reshape(-1)
        if g.shape[0] != n:
            raise ValueError(f"group_term has {g.shape[0]} entries for {n} groups")
        R = ind + hp.lambda_align * g[:, None]
        return group_advantages(R, eps) if estimator == "group" else batch_advantages(R, eps)
    if answers_per_group is None or cs is None or ys is None:
        raise ValueError("estimator 'credit' needs answers_per_group, cs and ys")
    if not (len(answers_per_group) == len(cs) == len(ys) == n):
        raise ValueError(f"credit inputs have lengths {len(answers_per_group)}, {len(cs)}, {len(ys)} "
                         f"for {n} groups")
    credit = np.zeros_like(ind)
    for k, (ans, c, y) in enumerate(zip(answers_per_group, cs, ys)):
        if len(ans) != ind.shape[1]:
            raise ValueError(f"group {k} has {len(ans)} answers but {ind.shape[1]} rewards")
        credit[k] = credit_group_term(ans, c, y, hp.delta)
    return group_advantages(ind + hp.lambda_align * credit, eps)
