"""Rewards of Eq. 1-3 and the GRPO advantage estimators, against hand-computed numbers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoomdx_lib.config import PAPER, PaperHyperParams
from zoomdx_lib.protocol import has_think
from zoomdx_lib.rl.advantages import batch_advantages, compute_advantages, credit_group_term, group_advantages
from zoomdx_lib.rl.rewards import (
    accuracy_only_rewards,
    mode_and_kappa,
    r_acc,
    r_fmt,
    r_group,
    r_loc,
    reward_components,
    total_rewards,
    xi,
)

TRUE = (10, 10, 30, 30)
labels = st.sampled_from(["A", "B", "C", None])


# ------------------------------------------------------------------ individual rewards

def test_r_loc_is_iou_and_zero_without_box():
    assert r_loc((10, 10, 30, 30), TRUE) == 1.0
    assert r_loc((20, 10, 40, 30), TRUE) == pytest.approx(200 / 600)
    assert r_loc((100, 100, 120, 120), TRUE) == 0.0
    assert r_loc(None, TRUE) == 0.0


def test_has_think_and_r_fmt():
    assert has_think("<think>\nlesion in the upper left\n</think>\n<tool_call>{}</tool_call>")
    assert not has_think("<think></think><answer>{}</answer>")
    assert not has_think("<think>unterminated")
    assert not has_think(None)
    assert has_think("<think> </think><think>second</think>")
    assert r_fmt(True, True, True, True) == 1.0
    for i in range(4):
        flags = [True] * 4
        flags[i] = False
        assert r_fmt(*flags) == 0.0


def test_r_acc():
    assert r_acc("A", "A") == 1.0
    assert r_acc("B", "A") == 0.0
    assert r_acc(None, "A") == 0.0


# ------------------------------------------------------------------ Eq. 1 and 2

def test_mode_and_kappa_basic_and_invalid_in_denominator():
    assert mode_and_kappa(["A"] * 8) == ("A", 1.0)
    assert mode_and_kappa(["A", "A", None, None]) == ("A", 0.5)
    assert mode_and_kappa([None, None, None, "B"]) == ("B", 0.25)   # invalid never the mode
    assert mode_and_kappa([None] * 8) == (None, 0.0)
    assert mode_and_kappa([]) == (None, 0.0)


def test_mode_tie_goes_to_earliest_first_occurrence():
    assert mode_and_kappa(["B", "A", "A", "B"]) == ("B", 0.5)
    assert mode_and_kappa(["A", "B", "B", "A"]) == ("A", 0.5)
    assert mode_and_kappa([None, "C", "A", "C", "A"]) == ("C", 0.4)


@settings(max_examples=200, deadline=None)
@given(st.lists(labels, min_size=1, max_size=12))
def test_mode_and_kappa_properties(answers):
    mode, kappa = mode_and_kappa(answers)
    valid = [a for a in answers if a is not None]
    if not valid:
        assert (mode, kappa) == (None, 0.0)
        return
    counts = {a: valid.count(a) for a in valid}
    assert counts[mode] == max(counts.values())
    assert kappa == counts[mode] / len(answers)
    # earliest first occurrence among the tied labels
    tied = [a for a in counts if counts[a] == counts[mode]]
    assert answers.index(mode) == min(answers.index(a) for a in tied)


def test_xi():
    assert xi(["A", "A", "B"], "A") == 1.0
    assert xi(["A", "B"], "B") == 0.0          # tie -> A
    assert xi([None, None], "A") == 0.0


def test_r_group_cases():
    six_two = ["A"] * 6 + ["B"] * 2             # kappa exactly delta
    five_three = ["A"] * 5 + ["B"] * 3          # kappa 0.625
    assert r_group(six_two, 1, "A") == 1.0
    assert r_group(six_two, 1, "B") == 0.0      # confident but wrong
    assert r_group(five_three, 1, "A") == 0.0   # right but hesitant
    assert r_group(six_two, 0, "A") == 0.0
    assert r_group(five_three, 0, "A") == 1.0
    assert r_group(five_three, 0, "Z") == 1.0   # c=0 ignores correctness
    assert r_group([None] * 8, 0, "A") == 1.0
    assert r_group([None] * 8, 1, "A") == 0.0
    assert r_group(five_three, 1, "A", delta=0.6) == 1.0
    with pytest.raises(ValueError):
        r_group(six_two, 2, "A")


# ------------------------------------------------------------------ Eq. 3

def _rollouts(spec):
    return [dict(box=b, answer=a, fmt=f) for b, a, f in spec]


def test_reward_components_hand_computed_c1():
    half = (20, 10, 40, 30)                    # IoU 1/3 with TRUE
    rs = _rollouts([(TRUE, "A", 1.0)] * 5 + [(half, "A", 1.0), (None, "B", 0.0), (TRUE, None, 0.0)])
    comp = reward_components(rs, 1, "A", TRUE)
    assert set(comp) >= {"loc", "acc", "fmt", "group", "total"}
    assert comp["group"].tolist() == [1.0] * 8          # kappa 6/8 >= 0.75 and mode A == y
    np.testing.assert_allclose(comp["loc"], [1] * 5 + [1 / 3, 0, 1])
    np.testing.assert_allclose(comp["acc"], [1] * 6 + [0, 0])
    expected = [0.1 + 0.3 + 0.1 + 0.5] * 5 + [0.1 / 3 + 0.3 + 0.1 + 0.5, 0.5, 0.1 + 0.5]
    np.testing.assert_allclose(comp["total"], expected)
    np.testing.assert_allclose(total_rewards(rs, 1, "A", TRUE), expected)
    np.testing.assert_allclose(comp["individual"], np.array(expected) - 0.5)


def test_reward_components_c0_gates_accuracy():
    rs = _rollouts([(TRUE, "A", 1.0)] * 4 + [(TRUE, "B", 1.0)] * 4)   # kappa 0.5: hesitant
    comp = reward_components(rs, 0, "A", TRUE)
    assert comp["acc"].tolist() == [1.0] * 4 + [0.0] * 4   # raw accuracy still reported
    np.testing.assert_allclose(comp["total"], [0.1 + 0.1 + 0.5] * 8)   # no acc term when c=0


def test_rollouts_as_objects_and_custom_weights():
    rs = [SimpleNamespace(box=TRUE, answer="A", fmt=1), SimpleNamespace(box=None, answer="A", fmt=0)]
    hp = PaperHyperParams(lambda_loc=1.0, lambda_acc=0.0, lambda_fmt=0.0, lambda_align=0.0)
    np.testing.assert_allclose(total_rewards(rs, 1, "A", TRUE, hp), [1.0, 0.0])
    with pytest.raises(KeyError):
        total_rewards([dict(box=None, answer="A")], 1, "A", TRUE)


def test_accuracy_only_rewards_no_gating_no_group():
    rs = _rollouts([(TRUE, "A", 1.0)] * 6 + [(None, "B", 0.0)] * 2)
    for c in (0, 1):
        np.testing.assert_allclose(accuracy_only_rewards(rs, c, "A", TRUE), [0.5] * 6 + [0.0] * 2)


def test_total_reward_range():
    rs = _rollouts([(TRUE, "A", 1.0)] * 8)
    assert total_rewards(rs, 1, "A", TRUE).max() == pytest.approx(1.0)
    assert total_rewards(_rollouts([(None, None, 0.0)] * 8), 1, "A", TRUE).tolist() == [0.0] * 8


# ------------------------------------------------------------------ advantages

@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(2, 10), st.integers(0, 2**31 - 1))
def test_group_term_cancels_in_group_advantages(n, G, seed):
    rng = np.random.default_rng(seed)
    ind = rng.random((n, G))
    g = rng.random(n) * 3 - 1                   # any per-group values, not only {0, 1}
    without = group_advantages(ind)
    with_g = group_advantages(ind + PAPER.lambda_align * g[:, None])
    np.testing.assert_allclose(with_g, without, atol=1e-7)
    np.testing.assert_allclose(compute_advantages(ind, g, estimator="group"), without, atol=1e-7)
    np.testing.assert_allclose(compute_advantages(ind, np.zeros(n), estimator="group"), without, atol=1e-7)


def test_group_advantages_hand_computed():
    A = group_advantages(np.array([[1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]]))
    # mean 0.25, population std sqrt(3)/4
    s = math.sqrt(3) / 4
    np.testing.assert_allclose(A[0], [0.75 / (s + 1e-6)] + [-0.25 / (s + 1e-6)] * 3)
    assert A[1].tolist() == [0.0] * 4
    np.testing.assert_allclose(A.mean(axis=1), 0, atol=1e-12)


def test_batch_estimator_rewards_the_group_term():
    ind = np.tile(np.array([0.2, 0.5, 0.1, 0.4]), (2, 1))          # identical individual rewards
    A = compute_advantages(ind, [1.0, 0.0], estimator="batch")
    assert A[0].mean() > A[1].mean()
    np.testing.assert_allclose(A[0] - A[1], 0.5 / (np.concatenate([ind[0] + 0.5, ind[1]]).std() + 1e-6))
    # group normalisation cannot tell the two groups apart
    G = compute_advantages(ind, [1.0, 0.0], estimator="group")
    np.testing.assert_allclose(G[0], G[1])
    assert batch_advantages(np.ones((2, 3))).tolist() == [[0.0] * 3] * 2


def test_credit_c1_hand_made():
    answers = ["A"] * 6 + ["B"] * 2
    # kappa 0.75 -> R_group 1; without an A: 5/7 < 0.75 -> 0; without a B: 6/7 -> 1
    assert credit_group_term(answers, 1, "A", 0.75).tolist() == [1.0] * 6 + [0.0] * 2
    # wrong consensus: R_group is 0 with all eight and after any single removal
    assert credit_group_term(answers, 1, "B", 0.75).tolist() == [0.0] * 8


def test_credit_c0_hand_made():
    # over-agreement on an ambiguous case: each A keeps kappa >= delta
    assert credit_group_term(["A"] * 6 + ["B"] * 2, 0, "A", 0.75).tolist() == [-1.0] * 6 + [0.0] * 2
    # hesitant group: the dissenters' removal would make the group agree (5/7 >= 0.7)
    assert credit_group_term(["A"] * 5 + ["B", "C", "D"], 0, "A", 0.7).tolist() == [0.0] * 5 + [1.0] * 3


def test_credit_uses_same_tie_and_invalid_rules():
    # [A, B, B, A]: full mode A (tie, A first), kappa .5 -> R 1. Without either A the mode is B
    # (credit 1); without either B it is A with 2/3 (credit 0).
    assert credit_group_term(["A", "B", "B", "A"], 1, "A", 0.5).tolist() == [1.0, 0.0, 0.0, 1.0]
    # [B, A, A, B]: the tie goes to B -> R 0; removing a B makes A the mode -> credit -1.
    assert credit_group_term(["B", "A", "A", "B"], 1, "A", 0.5).tolist() == [-1.0, 0.0, 0.0, -1.0]
    # invalid answers stay in the denominator: removing a None raises kappa
    ans = ["A", "A", "A", None]
    assert credit_group_term(ans, 1, "A", 1.0).tolist() == [0.0, 0.0, 0.0, -1.0]


def test_compute_advantages_credit_hand_computed():
    ind = np.zeros((2, 8))
    answers = [["A"] * 6 + ["B"] * 2, ["A"] * 6 + ["B"] * 2]
    A = compute_advantages(ind, None, answers, [1, 0], ["A", "A"], estimator="credit")
    # c=1: R = 0.5*[1]*6 + [0]*2: mean 0.375, std sqrt(0.046875) = 0.216506
    s = math.sqrt(0.046875)
    np.testing.assert_allclose(A[0], [0.125 / (s + 1e-6)] * 6 + [-0.375 / (s + 1e-6)] * 2)
    # c=0: R = 0.5*[-1]*6 + [0]*2: the B's (the dissenters) get the higher advantage
    np.testing.assert_allclose(A[1], [-0.125 / (s + 1e-6)] * 6 + [0.375 / (s + 1e-6)] * 2)
    assert A[0, 0] == pytest.approx(1 / math.sqrt(3), rel=1e-4)


def test_compute_advantages_credit_adds_to_individual():
    ind = np.array([[0.5, 0.0, 0.5, 0.0]])
    answers = [["A", "A", "A", "B"]]
    # delta .75: kappa .75 -> R 1; without an A 2/3 -> 0 (credit 1); without the B: 1 -> credit 0
    A = compute_advantages(ind, None, answers, [1], ["A"], estimator="credit")
    R = np.array([1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(A[0], (R - R.mean()) / (R.std() + 1e-6))


def test_compute_advantages_errors():
    ind = np.zeros((1, 4))
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages(ind, [0.0], estimator="ppo")
    with pytest.raises(ValueError):
        compute_advantages(ind, [0.0, 1.0], estimator="group")
    with pytest.raises(ValueError):
        compute_advantages(ind, None, None, None, None, estimator="credit")
    with pytest.raises(ValueError):
        compute_advantages(ind, None, [["A"] * 3], [1], ["A"], estimator="credit")
