"""Paired claims: the paired bootstrap against scipy's, pairing by case id, verdict directions, pooled rows."""
import numpy as np
import pytest
from scipy import stats

from zoomdx_lib.eval.claims import CLAIMS, paired_difference, paper_claims, verdict
from zoomdx_lib.eval.scores import bootstrap_greedy, calibration_metrics, greedy_metrics


def greedy_record(case_id, correct, c=1):
    return {"id": case_id, "c": c, "label": "A", "rollouts": [
        {"answer": "A" if correct else "B", "iou": 0.5, "tool_error": None, "fmt": 1.0}]}


def sampled_record(case_id, c, n_agree):
    """8 rollouts: `n_agree` say the label, the rest spread over other answers."""
    others = ["B", "C", "D"]
    answers = ["A"] * n_agree + [others[i % 3] for i in range(8 - n_agree)]
    return {"id": case_id, "c": c, "label": "A",
            "rollouts": [{"answer": a, "iou": 0.5, "tool_error": None, "fmt": 1.0} for a in answers]}


def correlated_pair(n=40, extra=6, seed=0):
    """`worse` right on a random half; `better` right on the same cases plus `extra` more."""
    rng = np.random.default_rng(seed)
    right = rng.random(n) < 0.5
    gain = np.flatnonzero(~right)[:extra]
    better_right = right.copy()
    better_right[gain] = True
    return ([greedy_record(f"x{i}", better_right[i]) for i in range(n)],
            [greedy_record(f"x{i}", right[i]) for i in range(n)], better_right, right)


def test_paired_interval_matches_scipy_paired_percentile_bootstrap():
    better, worse, b, w = correlated_pair()
    point, low, high = paired_difference(better, worse, greedy_metrics, ["acc"], n_boot=4000, seed=1)["acc"]
    ref = stats.bootstrap((b.astype(float), w.astype(float)), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
                          paired=True, vectorized=True, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(2)).confidence_interval
    assert point == pytest.approx(b.mean() - w.mean())
    assert low == pytest.approx(ref.low, abs=0.03) and high == pytest.approx(ref.high, abs=0.03)


def test_pairing_separates_what_two_overlapping_intervals_cannot():
    better, worse, _, _ = correlated_pair()
    _, low, high = paired_difference(better, worse, greedy_metrics, ["acc"], n_boot=1000)["acc"]
    (_, b_lo, b_hi), (_, w_lo, w_hi) = bootstrap_greedy(better)["acc"], bootstrap_greedy(worse)["acc"]
    assert b_lo < w_hi                 # the per-method intervals overlap ...
    assert low > 0 and verdict(low, high) == "supported"   # ... the paired difference does not cover 0


def test_records_are_matched_by_id_and_a_missing_case_is_named():
    better, worse, _, _ = correlated_pair()
    shuffled = worse[::-1]
    assert paired_difference(better, shuffled, greedy_metrics, ["acc"], n_boot=300) == \
        paired_difference(better, worse, greedy_metrics, ["acc"], n_boot=300)
    with pytest.raises(ValueError, match="x39"):
        paired_difference(better, worse[:-1], greedy_metrics, ["acc"], n_boot=10)


def test_identical_methods_are_not_separable_and_directions_hold():
    better, _, _, _ = correlated_pair()
    point, low, high = paired_difference(better, better, greedy_metrics, ["acc"], n_boot=200)["acc"]
    assert (point, low, high) == (0.0, 0.0, 0.0) and verdict(low, high) == "not separable from noise"
    assert verdict(-0.2, -0.05, higher_is_better=False) == "supported"      # ECE: lower is better
    assert verdict(0.05, 0.2, higher_is_better=False) == "contradicted"
    assert verdict(float("nan"), 0.1) == "not measured"


def test_paper_claims_pool_organs_skip_thyroid_for_zoom_and_judge_calibration():
    results = {}
    for d, organ in (("test_liver", "l"), ("test_breast", "b"), ("test_thyroid", "t")):
        better, worse, _, _ = correlated_pair(seed=len(organ) + ord(organ))
        for r in better + worse:
            r["id"] = organ + r["id"]
        results[("zoom_sft", d, "greedy", 0)] = better
        results[("single_turn_sft", d, "greedy", 0)] = worse
        # uncertainty RL: all 8 agree on c=1, 3 of 8 on c=0 (Align 1); SFT: 5 of 8 everywhere (Align 0.5)
        cases = [(f"{organ}{i}", i % 2) for i in range(30)]
        results[("grpo_uncertainty_credit", d, "sample", 0)] = [sampled_record(i, c, 8 if c else 3) for i, c in cases]
        results[("zoom_sft", d, "sample", 0)] = [sampled_record(i, c, 5) for i, c in cases]
    rows = paper_claims(results, ["test_liver", "test_breast", "test_thyroid"], n_boot=300)
    zoom = [r for r in rows if r["claim"] == "zoom beats no zoom (Acc)"]
    assert [r["dataset"] for r in zoom] == ["test_liver", "test_breast", "liver+breast"]
    pooled = zoom[-1]
    assert pooled["n"] == 80 and pooled["delta"] == pytest.approx(12 / 80) and pooled["verdict"] == "supported"
    align = {r["dataset"]: r for r in rows if r["claim"] == "uncertainty RL beats SFT on Align"}
    expected = (calibration_metrics(results[("grpo_uncertainty_credit", "test_liver", "sample", 0)])["align"]
                - calibration_metrics(results[("zoom_sft", "test_liver", "sample", 0)])["align"])
    assert align["test_liver"]["delta"] == pytest.approx(expected) and expected == pytest.approx(0.5)
    assert align["test_thyroid"]["cross_domain"] and align["liver+breast"]["n"] == 60
    assert all(r["verdict"] == "supported" for r in align.values())
    missing = [r for r in rows if r["worse"] == "grpo_accuracy_only" or r["worse"] == "grpo_uncertainty_group"]
    assert missing and all(r["verdict"] == "not measured" for r in missing)
    assert {c.text for c in CLAIMS} == {r["claim"] for r in rows}
