"""Positive controls: rewards that each ask for one quantity the paper's claims read.

If GRPO cannot raise the share of one constant answer (no image needed), the IoU of the tool call's box,
or the accuracy of the answer when it is rewarded for exactly that, no claim about the paper's subtler
rewards can show. :mod:`zoomdx_lib.workbook.rl_controls` runs these.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..schema import ATTRIBUTE_LABELS
from .rewards import _field, r_acc, r_loc, reward_components, trajectory_format

CONTROLS = ("constant", "iou", "accuracy")


def constant_answer(attribute: str) -> str:
    """The answer the constant-answer control rewards: the first label of the attribute's vocabulary.

    >>> constant_answer("echo")
    'Anechoic'
    """
    return ATTRIBUTE_LABELS[attribute][0]


def control_rewards(control: str, rollouts: Sequence[Any], sample) -> np.ndarray:
    """Per-rollout reward [G] of a positive control, in 0-1, for the rollouts of one prompt.

    Each rollout has ``box`` (original-image pixels, or None), ``answer`` (label or None). "constant":
    1 when the answer is :func:`constant_answer` of the sample's attribute, whatever the image;
    "iou": the IoU of the box with the true box; "accuracy": 1 when the answer is the sample's label
    (every case, c = 0 included: the label is the generator's true class there).

    >>> from types import SimpleNamespace as S
    >>> case = S(attribute="echo", label="Hypoechoic", box=(0, 0, 10, 10), c=1)
    >>> rs = [dict(box=(0, 0, 10, 10), answer="Anechoic"), dict(box=(0, 0, 10, 5), answer="Hypoechoic")]
    >>> control_rewards("constant", rs, case).tolist(), control_rewards("iou", rs, case).tolist()
    ([1.0, 0.0], [1.0, 0.5])
    >>> control_rewards("accuracy", rs, case).tolist()
    [0.0, 1.0]
    """
    if control == "constant":
        want = constant_answer(sample.attribute)
        return np.array([float(_field(r, "answer") == want) for r in rollouts])
    if control == "iou":
        return np.array([r_loc(_field(r, "box"), sample.box) for r in rollouts])
    if control == "accuracy":
        return np.array([r_acc(_field(r, "answer"), sample.label) for r in rollouts])
    raise ValueError(f"unknown control {control!r}; choose one of {CONTROLS}")


def control_score_group(control: str):
    """A ``reward_fn(trajs, sample)`` for :func:`zoomdx_lib.train.grpo.grpo_step` that rewards only the
    control's quantity (no format, no group term); returns :func:`score_group`'s keys, with the
    control's reward as ``individual`` and ``total`` and the paper's terms kept for the log."""
    def reward_fn(trajs: Sequence[Any], sample) -> dict:
        rolls = [dict(box=t.box, answer=t.label, fmt=trajectory_format(t)) for t in trajs]
        comp = reward_components(rolls, sample.c, sample.label, sample.box)
        comp["individual"] = comp["total"] = control_rewards(control, rolls, sample)
        comp["group_term"] = 0.0
        comp["answers"] = [r["answer"] for r in rolls]
        return comp
    return reward_fn
