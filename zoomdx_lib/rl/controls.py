"""Positive controls: rewards that each ask for one quantity the paper's claims read.

If GRPO cannot raise the share of one constant answer (no image needed), the IoU of the tool call's box,
or the accuracy of the answer when it is rewarded for exactly that, no claim about the paper's subtler
rewards can show. :mod:`zoomdx_lib.workbook.rl_controls` runs these.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Optional, Sequence

import numpy as np

from ..protocol import ANSWER_RE, TOOL_CALL_RE, format_answer, format_tool_call
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


def scaled_tool_call(text: str, scale: float) -> str:
    """`text` with its first tool call's box scaled by `scale` about its centre (each side times `scale`).

    >>> scaled_tool_call('<think>x</think>\\n<tool_call>{"bbox_2d": [10, 20, 110, 100]}</tool_call>', 0.5)
    '<think>x</think>\\n<tool_call>{"bbox_2d": [35, 40, 85, 80]}</tool_call>'
    """
    m = TOOL_CALL_RE.search(text)
    if m is None:
        raise ValueError(f"no tool call to scale in {text[:80]!r}")
    x1, y1, x2, y2 = json.loads(m.group(1))["bbox_2d"]
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
    return text[:m.start()] + format_tool_call((cx - hw, cy - hh, cx + hw, cy + hh)) + text[m.end():]


def constant_answer_text(text: str) -> str:
    """`text` with its answer replaced by :func:`constant_answer` of the answer's attribute.

    >>> constant_answer_text('<think>Dark.</think>\\n<answer>{"echo": "Hypoechoic"}</answer>')
    '<think>Dark.</think>\\n<answer>{"echo": "Anechoic"}</answer>'
    """
    m = ANSWER_RE.search(text)
    if m is None:
        raise ValueError(f"no answer to replace in {text[:80]!r}")
    [attribute] = json.loads(m.group(1))
    return text[:m.start()] + format_answer(attribute, constant_answer(attribute)) + text[m.end():]


DEGRADATIONS = ("box", "answer")


def parse_degrade(spec: Optional[str]) -> Optional[tuple[str, float]]:
    """``"box=0.5"`` -> ("box", 0.5): the degradation of a recovery control's start (None stays None).

    >>> parse_degrade("answer=0.6"), parse_degrade(None)
    (('answer', 0.6), None)
    """
    if spec is None:
        return None
    kind, _, amount = spec.partition("=")
    if kind not in DEGRADATIONS or not amount:
        raise ValueError(f"--degrade takes KIND=AMOUNT with KIND one of {DEGRADATIONS} (box=0.5: boxes of half the "
                         f"sides; answer=0.6: the constant answer in 60 % of the dialogues), got {spec!r}")
    return kind, float(amount)


def degraded_records(records: Sequence[dict], kind: str, amount: float, seed: int = 0) -> list[dict]:
    """Zoom SFT records ({"id", "messages"}) with a deliberate, state-independent error, for the degraded start
    of a recovery control: "box" scales every turn-1 box's sides by `amount` about its centre; "answer" gives
    the constant answer in a share `amount` of the records (drawn with `seed`). The crop turn is left as it
    was. A policy trained on them is wrong in a way the control's reward alone can correct, and whose right
    behaviour the model has already shown."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {DEGRADATIONS}")
    pick = np.random.default_rng(seed).random(len(records)) < amount
    out = []
    for record, change in zip(records, pick):
        record = copy.deepcopy(record)
        turns = [m for m in record["messages"] if m["role"] == "assistant"]
        part = next(c for c in turns[0 if kind == "box" else -1]["content"] if c["type"] == "text")
        if kind == "box":
            part["text"] = scaled_tool_call(part["text"], amount)
        elif change:
            part["text"] = constant_answer_text(part["text"])
        out.append(record)
    return out
