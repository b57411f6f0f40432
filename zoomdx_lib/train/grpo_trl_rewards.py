"""The rewards of the TRL GRPO engine (:mod:`zoomdx_lib.train.grpo_trl`): TRL reward functions over one
scoring of the batch with :func:`zoomdx_lib.rl.rewards.score_group`, and the explicit step's advantages and
log row of that scoring.

Each TRL completion becomes the explicit rollout's :class:`~zoomdx_lib.rl.rollout.Trajectory` (the turns are
the runs of its policy mask, the call and the answer are read by our parsers), so a rollout scores exactly
as in the explicit loop. ``reward_loc`` (IoU), ``reward_acc`` (accuracy on c = 1; ``None``, "not
applicable", on c = 0), ``reward_fmt`` and ``reward_group`` (R_group, or its leave-one-out credit for the
"credit" estimator) are weighted by lambda_loc, lambda_acc, lambda_fmt, lambda_align, so the weighted sum TRL
forms is the reward the estimator normalises. R_group needs all G answers of a prompt in one reward call: a
batch whose consecutive G-blocks are not one prompt each is refused (``docs/engines.md``, "When the group
term is right").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import PAPER, PaperHyperParams
from ..geometry import MIN_SIDE
from ..protocol import Answer, extract_answer, parse_tool_call
from ..rl.advantages import compute_advantages, credit_group_term
from ..rl.rewards import score_group
from ..rl.rollout import Trajectory
from .grpo import _log_row
from .grpo_trl_env import ZoomEnvironment

__all__ = ["ScoredBatch", "ZoomRewards", "step_row", "trajectory_from_completion"]


def trajectory_from_completion(ids: Sequence[int], env: ZoomEnvironment, tokenizer, index: int = 0) -> Trajectory:
    """The explicit rollout's :class:`Trajectory` of one TRL completion: turn 1 and turn 2 are the two runs
    of the policy mask, the tool call is parsed from the turn-1 text by our parser, and the answer is
    read only when that call was valid (as in the explicit rollout, where an invalid call ends it)."""
    if env.policy_mask is None:
        raise RuntimeError("the completion's policy mask is missing: score TRL completions with ZoomGRPOTrainer")
    ids, mask = list(ids), list(env.policy_mask)
    runs, k = [], 0
    while k < len(ids):
        if mask[k]:
            j = k
            while j < len(ids) and mask[j]:
                j += 1
            runs.append((k, j))
            k = j
        else:
            k += 1
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def decode(part):
        return tokenizer.decode([t for t in part if t != eos], skip_special_tokens=False)

    s1, e1 = runs[0] if runs else (0, 0)
    turn1 = ids[s1:e1]
    text1 = decode(turn1)
    call = parse_tool_call(text1, env.model_size, env.image.size, min_side=MIN_SIDE)
    t = Trajectory(sample_id=env.sample.id, index=index, turn1_text=text1, tool=call, crop=env.crop,
                   turn1_ids=turn1)
    if len(runs) > 1:
        s2, e2 = runs[1]
        t.crop_ids, t.turn2_ids = ids[e1:s2], ids[s2:e2]
        if call.ok:
            t.turn2_text = decode(t.turn2_ids)
    t.answer = (extract_answer(t.turn2_text, env.sample.attribute) if t.turn2_text is not None
                else Answer(label=None, valid=False, error="no_turn2", raw=None))
    return t


@dataclass
class ScoredBatch:
    """One reward call's completions as explicit trajectories, grouped [n_groups][G], with each group's
    sample and :func:`score_group` result."""

    trajs: list
    samples: list
    scores: list


class ZoomRewards:
    """TRL reward functions ``(prompts, completions, **kwargs) -> list[float]`` over one scoring of the batch.

    :meth:`functions` returns reward_loc, reward_acc, reward_fmt, reward_group and :meth:`weights` their
    lambdas; TRL's weighted sum is then the reward the estimator normalises: Eq. 3 ("group", "batch"),
    individual + lambda_align * leave-one-out credit ("credit"), or the accuracy-only ablation. The
    functions need the ``environments`` TRL passes (the crop tool's state and the policy mask) and the
    ``completion_ids``; the batch is scored once (the first function call) and kept in :attr:`last`.
    """

    def __init__(self, tokenizer, variant: str = "uncertainty", estimator: str = "credit",
                 hp: PaperHyperParams = PAPER):
        self.tokenizer, self.variant, self.estimator, self.hp = tokenizer, variant, estimator, hp
        self.last: ScoredBatch | None = None
        self._last_key = None

    def score(self, completion_ids, environments) -> ScoredBatch:
        if self._last_key is completion_ids and self.last is not None:
            return self.last
        G = self.hp.group_size
        if len(completion_ids) % G:
            raise ValueError(f"{len(completion_ids)} completions are not whole groups of G={G}")
        trajs, samples, scores = [], [], []
        for k in range(0, len(completion_ids), G):
            envs = environments[k:k + G]
            if len({id(e.sample) for e in envs}) != 1:
                raise ValueError(f"completions {k}..{k + G - 1} are not the G rollouts of one prompt: the group "
                                 "term needs whole groups in one reward call (see docs/engines.md)")
            group = [trajectory_from_completion(completion_ids[k + g], envs[g], self.tokenizer, g) for g in range(G)]
            trajs.append(group)
            samples.append(envs[0].sample)
            scores.append(score_group(group, envs[0].sample, self.variant, self.hp))
        self.last, self._last_key = ScoredBatch(trajs, samples, scores), completion_ids
        return self.last

    def _column(self, completion_ids, environments, column: Callable[[dict, object], list]) -> list:
        batch = self.score(completion_ids, environments)
        return [v for s, sample in zip(batch.scores, batch.samples) for v in column(s, sample)]

    def functions(self) -> list[Callable]:
        def reward_loc(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            return self._column(completion_ids, environments, lambda s, _: s["loc"].tolist())

        def reward_acc(prompts, completions, completion_ids, environments, **kwargs) -> list:
            gated = self.variant == "uncertainty"   # accuracy counts on consensus cases only
            return self._column(completion_ids, environments,
                                lambda s, sample: [None if gated and sample.c == 0 else v for v in s["acc"].tolist()])

        def reward_fmt(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            return self._column(completion_ids, environments, lambda s, _: s["fmt"].tolist())

        def reward_group(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            def column(s, sample):
                if self.estimator == "credit":
                    return credit_group_term(s["answers"], sample.c, sample.label, self.hp.delta).tolist()
                return [float(s["group_term"])] * len(s["answers"])
            return self._column(completion_ids, environments, column)

        return [reward_loc, reward_acc, reward_fmt, reward_group]

    def weights(self) -> list[float]:
        hp = self.hp
        return [hp.lambda_loc, hp.lambda_acc, hp.lambda_fmt, hp.lambda_align]

    @staticmethod
    def group_records(batch: ScoredBatch) -> list[tuple]:
        """What the advantages need of each group: (individual rewards, R_group, answers, c, label)."""
        return [(s["individual"], s["group_term"], s["answers"], smp.c, smp.label)
                for s, smp in zip(batch.scores, batch.samples)]

    def advantages(self, records: Sequence[tuple]) -> np.ndarray:
        """The estimator's advantages [n_groups, G] of :meth:`group_records` (the explicit step's formula)."""
        ind, group, answers, cs, ys = zip(*records)
        return compute_advantages(np.stack(ind), list(group), list(answers), list(cs), list(ys), self.estimator,
                                  self.hp)


def step_row(batch: ScoredBatch, advantages: np.ndarray, time_generation_s: float) -> dict:
    """The explicit step's log row (:func:`zoomdx_lib.train.grpo._log_row` itself) of a scored batch;
    ``loss``, ``grad_norm``, ``kl`` and ``time_update_s`` are filled in once the update is done."""
    items = [(sample, None) for sample in batch.samples]
    return _log_row(batch.trajs, items, batch.scores, advantages, 0.0, [], 0.0, time_generation_s, 0.0)
