"""Rewards of Section 2.3 (Eq. 1-3): pure functions of boxes, answers and the group of G answers.

Every reward is a small pure function returning a float in [0, 1] (the total reward of Eq. 3
lies in [0, lambda_loc + lambda_acc + lambda_fmt + lambda_align] = [0, 1] with the paper's
weights). Labels are canonical label strings, or ``None`` for an invalid/unparseable answer.

Conventions for the group statistics (Eq. 1), used everywhere in the workbook:

* **Invalid answers** (``None``) count in the denominator G of kappa but can never be the
  consensus (mode). If every answer is invalid the mode is ``None`` and kappa is 0.0.
  An empty group also gives ``(None, 0.0)``.
* **Ties** between equally frequent valid answers are broken deterministically in favour of
  the label whose *first occurrence* comes earliest in the list order.
* A group is *confident* when ``kappa >= delta`` (the paper's ``1[kappa >= delta]``), see
  :func:`is_confident`.

The advantage estimators that turn these rewards into a GRPO update are in
:mod:`zoomdx_lib.rl.advantages`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from ..config import PAPER, PaperHyperParams
from ..geometry import iou
from ..protocol import has_think

Label = Optional[str]   # a canonical label, or None for an invalid answer

VARIANTS = ("uncertainty", "accuracy_only")


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


def r_acc(pred: Label, y: Label) -> float:
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

def mode_and_kappa(answers: Sequence[Label]) -> tuple[Label, float]:
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


def xi(answers: Sequence[Label], y: Label) -> float:
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


def r_group(answers: Sequence[Label], c: int, y: Label, delta: float = PAPER.delta) -> float:
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


def reward_components(rollouts: Sequence[Any], c: int, y: Label, true_box,
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


def total_rewards(rollouts: Sequence[Any], c: int, y: Label, true_box,
                  hp: PaperHyperParams = PAPER) -> np.ndarray:
    """Eq. 3 for the G rollouts of one prompt: ``reward_components(...)["total"]``, shape [G].

    >>> rs = [dict(box=(0, 0, 10, 10), answer="A", fmt=1.0), dict(box=(5, 0, 15, 10), answer="B", fmt=1.0)]
    >>> total_rewards(rs, 0, "A", (0, 0, 10, 10)).round(4).tolist()  # kappa 0.5 < 0.75, c=0: R_group 1
    [0.7, 0.6333]
    """
    return reward_components(rollouts, c, y, true_box, hp)["total"]


def accuracy_only_rewards(rollouts: Sequence[Any], c: int, y: Label, true_box,
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


def trajectory_format(t) -> float:
    """r_fmt of a rollout (a :class:`~zoomdx_lib.rl.rollout.Trajectory`): think + valid tool call in
    turn 1, think + valid answer in turn 2."""
    return r_fmt(t.tool.ok, has_think(t.turn1_text), t.answer is not None and t.answer.valid, has_think(t.turn2_text))


def score_group(trajs: Sequence[Any], sample, variant: str = "uncertainty", hp: PaperHyperParams = PAPER) -> dict:
    """Rewards of one prompt's G trajectories against its `sample` (true box, label, c).

    variant "uncertainty" is Eq. 3, "accuracy_only" the ablation (no group term, no c gating).
    Returns the :func:`reward_components` arrays (loc, acc, fmt, group, individual, total), plus
    ``group_term`` (the scalar R_group, 0 for accuracy-only) and ``answers`` (labels, None when invalid).
    """
    rolls = [dict(box=t.box, answer=t.label, fmt=trajectory_format(t)) for t in trajs]
    comp = reward_components(rolls, sample.c, sample.label, sample.box, hp)
    if variant == "accuracy_only":
        comp["individual"] = accuracy_only_rewards(rolls, sample.c, sample.label, sample.box, hp)
        comp["group_term"] = 0.0
        comp["total"] = comp["individual"]
    elif variant == "uncertainty":
        comp["group_term"] = float(comp["group"][0])
    else:
        raise ValueError(f"unknown GRPO variant {variant!r}; choose one of {VARIANTS}")
    comp["answers"] = [r["answer"] for r in rolls]
    return comp
