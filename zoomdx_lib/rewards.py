"""Rewards of Section 2.3 (Eq. 1-3) and the GRPO advantage estimators built on them.

Every reward is a small pure function returning a float in [0, 1] (the total reward of Eq. 3
lies in [0, lambda_loc + lambda_acc + lambda_fmt + lambda_align] = [0, 1] with the paper's
weights). Answers are canonical label strings, or ``None`` for an invalid/unparseable answer.

Conventions for the group statistics (Eq. 1), used everywhere in the workbook:

* **Invalid answers** (``None``) count in the denominator G of kappa but can never be the
  consensus (mode). If every answer is invalid the mode is ``None`` and kappa is 0.0.
  An empty group also gives ``(None, 0.0)``.
* **Ties** between equally frequent valid answers are broken deterministically in favour of
  the label whose *first occurrence* comes earliest in the list order.
* A group is *confident* when ``kappa >= delta`` (the paper's ``1[kappa >= delta]``), see
  :func:`is_confident`.

Advantages (the paper normalises rewards within each group of G rollouts): the group
alignment term R_group is one number per group, so ``(R_i - mean) / std`` removes it exactly;
as written it cannot change the update. :func:`compute_advantages` offers the paper's
estimator ("group"), a batch-normalised one where R_group survives ("batch"), and a
per-rollout leave-one-out credit for R_group ("credit").
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from .config import PAPER, PaperHyperParams
from .geometry import iou

Answer = Optional[str]

ESTIMATORS = ("group", "batch", "credit")

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


# ---------------------------------------------------------------------------------------------
# individual rewards
# ---------------------------------------------------------------------------------------------

def r_loc(pred_box, true_box) -> float:
    """Localisation reward: IoU in [0, 1] of the predicted and the true lesion box.

    Both boxes are (x1, y1, x2, y2) in the *same* pixel frame (the caller converts with
    `geometry`); a missing prediction (``None``) scores 0.

    >>> r_loc((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    >>> r_loc((0, 0, 10, 10), (0, 0, 10, 10))
    1.0
    >>> r_loc(None, (0, 0, 10, 10))
    0.0
    """
    if pred_box is None or true_box is None:
        return 0.0
    return float(iou(pred_box, true_box))


def has_think(text: Optional[str]) -> bool:
    """True when `text` holds a ``<think>...</think>`` block with non-whitespace content.

    >>> has_think("<think>hypoechoic lesion, upper left</think><tool_call>{}</tool_call>")
    True
    >>> has_think("<think>  </think><answer>x</answer>")
    False
    >>> has_think("no tags at all")
    False
    """
    if not text:
        return False
    return any(m.strip() for m in _THINK_RE.findall(text))


def r_fmt(tool_call_ok: bool, has_think_1: bool, answer_valid: bool, has_think_2: bool) -> float:
    """Format reward in {0, 1}: 1.0 only when both turns have the required structure.

    Turn 1 needs a non-empty think block and a parseable tool call; turn 2 a non-empty think
    block and a valid ``<answer>``. Any missing piece gives 0.0.

    >>> r_fmt(True, True, True, True)
    1.0
    >>> r_fmt(True, True, False, True)
    0.0
    """
    return 1.0 if (tool_call_ok and has_think_1 and answer_valid and has_think_2) else 0.0


def r_acc(pred: Answer, y: Answer) -> float:
    """Accuracy reward in {0, 1}: 1[pred == y]; an invalid answer (``None``) scores 0.

    >>> r_acc("hypoechoic", "hypoechoic")
    1.0
    >>> r_acc("isoechoic", "hypoechoic"), r_acc(None, "hypoechoic")
    (0.0, 0.0)
    """
    if pred is None or y is None:
        return 0.0
    return 1.0 if pred == y else 0.0


# ---------------------------------------------------------------------------------------------
# group statistics (Eq. 1 and 2)
# ---------------------------------------------------------------------------------------------

def mode_and_kappa(answers: Sequence[Answer]) -> tuple[Answer, float]:
    """Consensus answer and confidence kappa (Eq. 1) of one group of G answers.

    kappa = (number of answers equal to the mode) / G, a 0-1 fraction. ``None`` (invalid)
    answers count in G but are never the mode; if all are invalid (or the group is empty)
    the result is ``(None, 0.0)``. Ties between equally frequent labels go to the label whose
    first occurrence is earliest in `answers`.

    >>> mode_and_kappa(["A", "A", "A", "A", "A", "A", "B", "B"])
    ('A', 0.75)
    >>> mode_and_kappa(["B", "A", "A", "B", None, None, None, None])  # tie: B seen first
    ('B', 0.25)
    >>> mode_and_kappa([None, None])
    (None, 0.0)
    """
    G = len(answers)
    counts: dict[str, int] = {}          # insertion order = order of first occurrence
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if G == 0 or not counts:
        return None, 0.0
    best = max(counts.values())
    mode = next(a for a, n in counts.items() if n == best)   # earliest first occurrence wins
    return mode, best / G


def is_confident(kappa: float, delta: float = PAPER.delta) -> bool:
    """The paper's confidence decision 1[kappa >= delta] (kappa and delta are 0-1 fractions).

    >>> is_confident(0.75, 0.75), is_confident(5 / 7, 0.75)
    (True, False)
    """
    return bool(kappa >= delta)


def xi(answers: Sequence[Answer], y: Answer) -> float:
    """Group correctness xi(T) = 1[mode == y] in {0, 1}; 0 when the mode is ``None``.

    >>> xi(["A", "A", "B"], "A"), xi(["A", "A", "B"], "B"), xi([None, None], "A")
    (1.0, 0.0, 0.0)
    """
    mode, _ = mode_and_kappa(answers)
    return r_acc(mode, y)


def _check_c(c) -> int:
    ci = int(c)
    if ci not in (0, 1) or ci != c:
        raise ValueError(f"confidence label c must be 0 or 1, got {c!r}")
    return ci


def r_group(answers: Sequence[Answer], c: int, y: Answer, delta: float = PAPER.delta) -> float:
    """Group alignment reward (Eq. 2) in {0, 1}.

    c = 1 (sonographers agree): 1[kappa >= delta] * xi -- consistent *and* right.
    c = 0 (sonographers disagree): 1[kappa < delta] -- the group should hesitate.

    >>> six_two = ["A"] * 6 + ["B"] * 2               # kappa = 0.75
    >>> r_group(six_two, 1, "A"), r_group(six_two, 1, "B"), r_group(six_two, 0, "A")
    (1.0, 0.0, 0.0)
    >>> r_group(["A"] * 5 + ["B"] * 3, 0, "A")          # kappa = 0.625 < 0.75
    1.0
    """
    c = _check_c(c)
    mode, kappa = mode_and_kappa(answers)
    if c == 1:
        return 1.0 if (is_confident(kappa, delta) and r_acc(mode, y) == 1.0) else 0.0
    return 0.0 if is_confident(kappa, delta) else 1.0


# ---------------------------------------------------------------------------------------------
# total reward of one group (Eq. 3)
# ---------------------------------------------------------------------------------------------

def _field(rollout: Any, key: str):
    if isinstance(rollout, Mapping):
        if key not in rollout:
            raise KeyError(f"rollout is missing key {key!r}; has {sorted(rollout)}")
        return rollout[key]
    if not hasattr(rollout, key):
        raise AttributeError(f"rollout {type(rollout).__name__} has no attribute {key!r}")
    return getattr(rollout, key)


def reward_components(rollouts: Sequence[Any], c: int, y: Answer, true_box,
                      hp: PaperHyperParams = PAPER) -> dict[str, np.ndarray]:
    """Per-rollout reward terms of Eq. 3 for the G rollouts of one prompt.

    Each rollout is a dict (or an object with attributes) with ``box`` (predicted box in the
    same pixel frame as `true_box`, or None), ``answer`` (label or None) and ``fmt`` (0/1).
    Returns float64 arrays of length G:

    * ``loc``   r_loc (IoU, 0-1); ``acc`` raw r_acc (0/1, *not* gated by c); ``fmt`` r_fmt;
    * ``group`` R_group(T, c, y) (Eq. 2), the same value repeated for every rollout;
    * ``individual`` lambda_loc*loc + 1[c=1]*lambda_acc*acc + lambda_fmt*fmt;
    * ``total`` individual + lambda_align*group (Eq. 3).

    >>> rs = [dict(box=(0, 0, 10, 10), answer="A", fmt=1.0)] * 6 + [dict(box=None, answer="B", fmt=0.0)] * 2
    >>> comp = reward_components(rs, 1, "A", (0, 0, 10, 10))
    >>> comp["total"].round(3).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    >>> reward_components(rs, 0, "A", (0, 0, 10, 10))["total"].round(3).tolist()  # kappa 0.75: no hesitation
    [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]
    """
    c = _check_c(c)
    boxes = [_field(r, "box") for r in rollouts]
    answers = [_field(r, "answer") for r in rollouts]
    loc = np.array([r_loc(b, true_box) for b in boxes], dtype=np.float64)
    acc = np.array([r_acc(a, y) for a in answers], dtype=np.float64)
    fmt = np.array([float(_field(r, "fmt")) for r in rollouts], dtype=np.float64)
    group = np.full(len(rollouts), r_group(answers, c, y, hp.delta), dtype=np.float64)
    individual = hp.lambda_loc * loc + (hp.lambda_acc * acc if c == 1 else 0.0) + hp.lambda_fmt * fmt
    total = individual + hp.lambda_align * group
    return dict(loc=loc, acc=acc, fmt=fmt, group=group, individual=individual, total=total)


def total_rewards(rollouts: Sequence[Any], c: int, y: Answer, true_box,
                  hp: PaperHyperParams = PAPER) -> np.ndarray:
    """Eq. 3 for the G rollouts of one prompt: ``reward_components(...)["total"]``, shape [G].

    >>> rs = [dict(box=(0, 0, 10, 10), answer="A", fmt=1.0), dict(box=(5, 0, 15, 10), answer="B", fmt=1.0)]
    >>> total_rewards(rs, 0, "A", (0, 0, 10, 10)).round(4).tolist()  # kappa 0.5 < 0.75, c=0: R_group 1
    [0.7, 0.6333]
    """
    return reward_components(rollouts, c, y, true_box, hp)["total"]


def accuracy_only_rewards(rollouts: Sequence[Any], c: int, y: Answer, true_box,
                          hp: PaperHyperParams = PAPER) -> np.ndarray:
    """The ablation's accuracy-only RL reward, shape [G]: lambda_loc*r_loc + lambda_acc*r_acc + lambda_fmt*r_fmt.

    No group term and no c gating: r_acc is rewarded on every sample (`c` is accepted for a
    uniform signature and ignored).

    >>> rs = [dict(box=(0, 0, 10, 10), answer="A", fmt=1.0), dict(box=None, answer=None, fmt=0.0)]
    >>> accuracy_only_rewards(rs, 0, "A", (0, 0, 10, 10)).round(3).tolist()
    [0.5, 0.0]
    """
    comp = reward_components(rollouts, 1, y, true_box, hp)
    return hp.lambda_loc * comp["loc"] + hp.lambda_acc * comp["acc"] + hp.lambda_fmt * comp["fmt"]


# ---------------------------------------------------------------------------------------------
# advantage estimators
# ---------------------------------------------------------------------------------------------

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


def credit_group_term(answers: Sequence[Answer], c: int, y: Answer,
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
