"""Evaluation metrics against hand-computed cases, sklearn and torchmetrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from torchmetrics.classification import BinaryCalibrationError
from torchmetrics.text import BLEUScore
from torchmetrics.text.rouge import ROUGEScore

from zoomdx_lib.eval.metrics import (
    accuracy,
    alignment,
    answer_entropy,
    bin_index,
    bootstrap,
    bootstrap_ci,
    consensus,
    ece,
    entropy_gap,
    mean_and_spread,
    mean_iou,
    reliability_bins,
    risk_coverage,
    selective_accuracy,
)
from zoomdx_lib.eval.text_metrics import bleu1, rouge_l
from zoomdx_lib.rl.rewards import mode_and_kappa


def _tm_ece(conf, correct, n_bins):
    m = BinaryCalibrationError(n_bins=n_bins, norm="l1")
    return float(m(torch.tensor(conf, dtype=torch.float64), torch.tensor(correct, dtype=torch.long)))


# ------------------------------------------------------------------ Acc and mIoU

def test_accuracy_matches_sklearn_and_invalid_is_wrong():
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["hypo", "iso", "hyper"], 50))
    preds = [p if rng.random() > 0.2 else None for p in rng.choice(["hypo", "iso", "hyper"], 50)]
    as_str = ["<invalid>" if p is None else p for p in preds]
    assert accuracy(preds, labels) == pytest.approx(accuracy_score(labels, as_str))
    mask = rng.random(50) > 0.5
    expected = accuracy_score(np.array(labels)[mask], np.array(as_str)[mask])
    assert accuracy(preds, labels, mask=mask) == pytest.approx(expected)
    assert accuracy([None, None], ["A", "A"]) == 0.0
    assert math.isnan(accuracy(["A"], ["A"], mask=[False]))
    with pytest.raises(ValueError):
        accuracy(["A"], ["A", "B"])


def test_mean_iou():
    pred = [(0, 0, 10, 10), (0, 0, 10, 10), None]
    true = [(0, 0, 10, 10), (5, 0, 15, 10), (0, 0, 10, 10)]
    assert mean_iou(pred, true) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert mean_iou(pred, true, mask=[True, False, False]) == 1.0
    assert math.isnan(mean_iou([], []))


# ------------------------------------------------------------------ SAcc, Align, consensus

def test_consensus_uses_rewards_rules():
    cases = [["A"] * 6 + ["B"] * 2, ["B", "A", "A", "B"], [None] * 4, ["A", None, None, None]]
    modes, kappas = consensus(cases)
    assert modes == ["A", "B", None, "A"]
    np.testing.assert_allclose(kappas, [0.75, 0.5, 0.0, 0.25])
    assert [mode_and_kappa(c) for c in cases] == list(zip(modes, kappas.tolist()))


def test_selective_accuracy_hand_computed():
    modes = ["A", "B", "A", "A", None]
    kappas = [1.0, 0.875, 0.75, 0.625, 0.0]
    labels = ["A", "A", "A", "A", "A"]
    assert selective_accuracy(modes, kappas, labels) == (pytest.approx(2 / 3), 3)
    assert selective_accuracy(modes, kappas, labels, delta=0.9) == (1.0, 1)
    sacc, n = selective_accuracy(modes, kappas, labels, delta=1.01)
    assert math.isnan(sacc) and n == 0


def test_alignment_hand_computed():
    kappas = [1.0, 0.75, 0.625, 0.5, 0.875]
    cs = [1, 0, 0, 1, 1]
    # decisions 1,1,0,0,1 vs c 1,0,0,1,1 -> agree on cases 0, 2, 4
    assert alignment(kappas, cs) == pytest.approx(3 / 5)
    assert alignment(kappas, cs, delta=0.8) == pytest.approx(4 / 5)
    assert math.isnan(alignment([], []))


# ------------------------------------------------------------------ ECE

def test_bin_index_edges():
    assert bin_index([0.0, 0.05, 0.1, 0.5, 0.95, 1.0], 10).tolist() == [0, 0, 1, 5, 9, 9]
    assert bin_index([0.0, 0.5, 1.0], 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        bin_index([0.5], 0)


def test_ece_hand_computed():
    conf = [0.1, 0.15, 0.45, 0.5, 0.9, 1.0, 1.0]
    corr = [0, 1, 0, 1, 1, 1, 0]
    # M=2: bin [0, .5): conf .1,.15,.45 mean 0.2333, acc 1/3 ; bin [.5, 1]: .5,.9,1,1 mean .85, acc .75
    expected = 3 / 7 * abs(1 / 3 - 0.7 / 3) + 4 / 7 * abs(0.75 - 0.85)
    assert ece(conf, corr, n_bins=2) == pytest.approx(expected)
    assert ece([1.0, 1.0], [1, 1]) == 0.0
    assert ece([0.0, 0.0], [0, 0]) == 0.0
    assert math.isnan(ece([], []))
    with pytest.raises(ValueError):
        ece([1.2], [1])
    with pytest.raises(ValueError):
        ece([0.5], [2])


def test_reliability_bins_structure():
    bins = reliability_bins([0.05, 0.95, 1.0], [1, 0, 1], n_bins=10)
    assert len(bins) == 10
    assert (bins[0].lower, bins[-1].upper) == (0.0, 1.0)
    assert bins[0].count == 1 and bins[0].accuracy == 1.0
    assert bins[-1].count == 2 and bins[-1].mean_confidence == pytest.approx(0.975)
    assert bins[-1].accuracy == 0.5
    assert bins[4].count == 0 and math.isnan(bins[4].accuracy)
    assert sum(b.count for b in bins) == 3


def test_torchmetrics_bins_one_separately():
    """torchmetrics 1.9 gives confidence 1.0 its own bin; we put it in the last bin."""
    # our last bin [0.9, 1]: mean conf .975, acc .5 -> .475 ; torchmetrics: .5*|1-.95| + .5*|0-1| = .525
    assert ece([0.95, 1.0], [1, 0], n_bins=10) == pytest.approx(0.475)
    assert _tm_ece([0.95, 1.0], [1, 0], 10) == pytest.approx(0.525)
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert (torch.bucketize(torch.tensor([1.0], dtype=torch.float64), edges, right=True) - 1).item() == 10


def test_ece_agrees_with_torchmetrics_on_kappas_with_many_ones():
    # G=8 kappas are multiples of 1/8, so [0.9, 1) is empty with M=10 and the binnings coincide.
    rng = np.random.default_rng(1)
    kappas = rng.integers(1, 9, 400) / 8
    kappas[:150] = 1.0
    correct = (rng.random(400) < kappas * 0.8).astype(int)
    assert (kappas == 1.0).sum() >= 150
    assert ece(kappas, correct, 10) == pytest.approx(_tm_ece(kappas, correct, 10), abs=1e-9)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_agrees_with_torchmetrics_random(n_bins):
    rng = np.random.default_rng(n_bins)
    conf = rng.random(500)
    correct = (rng.random(500) < conf).astype(int)
    # many exact 1.0s plus 0.0s, with the [1 - 1/M, 1) bin emptied so the binnings coincide
    conf[conf >= 1 - 1 / n_bins] = 1.0
    conf[:20] = 0.0
    assert (conf == 1.0).sum() > 20
    assert ece(conf, correct, n_bins) == pytest.approx(_tm_ece(conf, correct, n_bins), abs=1e-9)
    # without any 1.0 they coincide as well
    conf2 = rng.random(500) * 0.999
    corr2 = (rng.random(500) < conf2).astype(int)
    assert ece(conf2, corr2, n_bins) == pytest.approx(_tm_ece(conf2, corr2, n_bins), abs=1e-9)


def test_ece_coincides_when_last_bin_overconfident():
    # other samples in [0.9, 1) are over-confident (acc <= conf): the triangle inequality is tight
    conf = [0.92, 0.95, 1.0, 1.0, 0.3]
    corr = [0, 1, 1, 0, 0]
    assert ece(conf, corr) == pytest.approx(_tm_ece(conf, corr, 10))
    # and torchmetrics is never smaller than ours
    rng = np.random.default_rng(3)
    for _ in range(20):
        c = np.where(rng.random(60) < 0.3, 1.0, rng.random(60))
        y = (rng.random(60) < 0.7).astype(int)
        assert _tm_ece(c, y, 10) >= ece(c, y, 10) - 1e-12


# ------------------------------------------------------------------ entropy

def test_answer_entropy_bits_and_invalid_category():
    assert answer_entropy(["A"] * 8) == 0.0
    assert answer_entropy(["A"] * 4 + ["B"] * 4) == pytest.approx(1.0)
    assert answer_entropy(["A", "B", "C", "D"]) == pytest.approx(2.0)
    assert answer_entropy(["A", "B", "C", "D"], base=math.e) == pytest.approx(math.log(4))
    assert answer_entropy(["A", None, None, None]) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert answer_entropy([None, None]) == 0.0          # all invalid: one category
    assert answer_entropy(["invalid", None]) == 1.0     # a label spelled "invalid" is not the None category
    assert math.isnan(answer_entropy([]))


def test_entropy_gap():
    cases = [["A", "B"] * 4, ["A", "B", "C", "D"] * 2, ["A"] * 8, ["A"] * 7 + ["B"]]
    cs = [0, 0, 1, 1]
    h_b = -(7 / 8 * math.log2(7 / 8) + 1 / 8 * math.log2(1 / 8))
    assert entropy_gap(cases, cs) == pytest.approx((1 + 2) / 2 - h_b / 2)
    assert math.isnan(entropy_gap(cases[:2], [0, 0]))


# ------------------------------------------------------------------ risk-coverage

def test_risk_coverage_hand_computed():
    t, cov, acc = risk_coverage([0.5, 1.0, 0.75, 1.0, 0.5], [0, 1, 0, 1, 1])
    assert t.tolist() == [1.0, 0.75, 0.5]
    np.testing.assert_allclose(cov, [0.4, 0.6, 1.0])
    np.testing.assert_allclose(acc, [1.0, 2 / 3, 0.6])


# ------------------------------------------------------------------ bootstrap and seeds

def test_bootstrap_ci_contains_point_and_is_deterministic():
    rng = np.random.default_rng(0)
    correct = (rng.random(120) < 0.7).astype(float)
    p, lo, hi = bootstrap_ci(lambda x: float(np.mean(x)), correct, n_boot=500, seed=3)
    assert p == pytest.approx(correct.mean())
    assert lo <= p <= hi and hi - lo < 0.3
    assert bootstrap_ci(lambda x: float(np.mean(x)), correct, n_boot=500, seed=3) == (p, lo, hi)
    assert bootstrap_ci(lambda x: float(np.mean(x)), correct, n_boot=500, seed=4) != (p, lo, hi)


def test_bootstrap_ci_paired_arrays_and_nan():
    modes = ["A", "B", "A", "A"] * 10
    labels = ["A", "A", "A", "B"] * 10
    kappas = np.array([1.0, 0.5, 0.875, 0.25] * 10)

    def sacc(m, k, y):
        return selective_accuracy(m, k, y)[0]

    p, lo, hi = bootstrap_ci(sacc, modes, kappas, labels, n_boot=300)
    assert p == 1.0 and lo == 1.0 and hi == 1.0      # paired resampling keeps cases intact
    # a metric that is nan on every replicate gives a nan interval, not an error
    p, lo, hi = bootstrap_ci(lambda k: math.nan, kappas, n_boot=10)
    assert math.isnan(p) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        bootstrap_ci(sacc, modes, kappas[:3], labels)


def test_bootstrap_of_several_metrics_equals_one_bootstrap_per_metric():
    rng = np.random.default_rng(1)
    correct = (rng.random(60) < 0.6).astype(float)
    kappas = rng.choice(np.arange(9) / 8, 60)

    def both(idx):
        c, k = (correct, kappas) if idx is None else (correct[idx], kappas[idx])
        return {"acc": float(c.mean()), "ece": ece(k, c)}

    joint = bootstrap(both, 60, n_boot=300, seed=5)
    assert joint["acc"] == bootstrap_ci(lambda c: float(c.mean()), correct, n_boot=300, seed=5)
    assert joint["ece"] == bootstrap_ci(ece, kappas, correct, n_boot=300, seed=5)
    assert all(math.isnan(v) for v in bootstrap(both, 0, n_boot=10)["acc"][1:])


def test_mean_and_spread():
    m, s = mean_and_spread([0.6, 0.7, 0.8])
    assert m == pytest.approx(0.7) and s == pytest.approx(0.1)
    m, s = mean_and_spread([0.5, float("nan")])
    assert m == 0.5 and math.isnan(s)


# ------------------------------------------------------------------ text scores

def test_bleu1_hand_and_torchmetrics():
    assert bleu1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert bleu1("The Cat", "the cat") == 1.0
    # short candidate: precision 1, BP exp(1 - 4/2)
    assert bleu1("hypoechoic lesion", "a hypoechoic irregular lesion") == pytest.approx(math.exp(-1))
    assert bleu1("", "a b") == 0.0
    tm = BLEUScore(n_gram=1)
    for cand, ref in [("the the the", "the cat is on the mat"),
                      ("an oval hypoechoic mass with smooth margin", "oval hypoechoic mass margin circumscribed")]:
        assert bleu1(cand, ref) == pytest.approx(float(tm([cand], [[ref]])), abs=1e-6)


def test_rouge_l_hand_and_torchmetrics():
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("x y", "a b") == 0.0
    # beta = 1.2: P = .5, R = 1 -> (1 + 1.44) * .5 / (1 + 1.44 * .5)
    assert rouge_l("a b c d", "a c", beta=1.2) == pytest.approx(2.44 * 0.5 / 1.72)
    tm = ROUGEScore(rouge_keys="rougeL")
    cand, ref = "the lesion is oval and hypoechoic", "oval hypoechoic lesion with smooth margin"
    assert rouge_l(cand, ref) == pytest.approx(float(tm(cand, ref)["rougeL_fmeasure"]), abs=1e-6)
