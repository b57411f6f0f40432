"""Paired claims: the paired bootstrap against scipy's, pairing by case id, verdict directions, pooled rows."""
import numpy as np
import pytest
from scipy import stats

from zoomdx_lib.eval.claims import (CLAIMS, claims_over_runs, mean_paired_difference, paired_difference, paper_claims,
                                   verdict)
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


def test_one_run_pooled_over_runs_is_the_single_paired_difference():
    better, worse, _, _ = correlated_pair()
    single = paired_difference(better, worse, greedy_metrics, ["acc"], n_boot=400, seed=3)["acc"]
    out = mean_paired_difference([(better, worse)], greedy_metrics, "acc", n_boot=400, seed=3)
    assert (out["delta"], out["low"], out["high"]) == pytest.approx(single) and out["per_run"] == [single[0]]


def test_runs_are_averaged_with_equal_weight_and_resampled_within_each_run():
    """Two chain seeds with case ids that collide (each run names its cases the same way): one run gains 12
    of 40 cases, the other none. The mean is the average of the two, and the stratified interval agrees with
    a direct numpy bootstrap of (mean over runs of the per-run mean difference)."""
    rng = np.random.default_rng(5)
    runs, diffs = [], []
    for gain in (12, 0):
        right = rng.random(40) < 0.5
        better_right = right.copy()
        better_right[np.flatnonzero(~right)[:gain]] = True
        runs.append(([greedy_record(f"x{i}", better_right[i]) for i in range(40)],
                     [greedy_record(f"x{i}", right[i]) for i in range(40)]))
        diffs.append(better_right.astype(float) - right.astype(float))
    out = mean_paired_difference(runs, greedy_metrics, "acc", n_boot=2000, seed=0)
    assert out["per_run"] == pytest.approx([12 / 40, 0.0]) and out["delta"] == pytest.approx(6 / 40)
    draw = np.random.default_rng(9)
    ref = [np.mean([d[draw.integers(0, 40, 40)].mean() for d in diffs]) for _ in range(2000)]
    lo, hi = np.quantile(ref, [0.025, 0.975])
    assert out["low"] == pytest.approx(lo, abs=0.02) and out["high"] == pytest.approx(hi, abs=0.02)
    with pytest.raises(ValueError, match="x39"):      # pairing stays within a run, and is checked there
        mean_paired_difference([runs[0], (runs[1][0], runs[1][1][:-1])], greedy_metrics, "acc", n_boot=10)


def test_claims_over_runs_counts_runs_agreement_and_skips_a_run_without_the_methods():
    def run(gain, with_rl=True):
        results = {}
        for d in ("test_liver", "test_breast"):
            better, worse, _, _ = correlated_pair(extra=gain, seed=len(d))
            for r in better + worse:
                r["id"] = d + r["id"]
            results[("zoom_sft", d, "greedy", 7)] = better
            results[("single_turn_sft", d, "greedy", 7)] = worse
            if with_rl:
                cases = [(f"{d}{i}", i % 2) for i in range(20)]
                results[("grpo_uncertainty_credit", d, "sample", 7)] = [sampled_record(i, c, 8 if c else 3)
                                                                       for i, c in cases]
                results[("zoom_sft", d, "sample", 7)] = [sampled_record(i, c, 5) for i, c in cases]
        return results, 7
    rows = claims_over_runs({"s0": run(6), "s1": run(0), "s2": run(4, with_rl=False)},
                            ["test_liver", "test_breast"], n_boot=200)
    zoom = {r["dataset"]: r for r in rows if r["claim"] == "zoom beats no zoom (Acc)"}
    pooled = zoom["liver+breast"]
    assert pooled["runs"] == 3 and pooled["n"] == 240 and pooled["agree"] == 2
    assert pooled["per_run"] == "+0.150, +0.000, +0.100" and pooled["delta"] == pytest.approx(0.25 / 3)
    align = {r["dataset"]: r for r in rows if r["claim"] == "uncertainty RL beats SFT on Align"}
    assert align["liver+breast"]["runs"] == 2 and align["liver+breast"]["delta"] == pytest.approx(0.5)
    assert all(r["verdict"] == "not measured" and r["runs"] == 0 for r in rows if r["worse"] == "grpo_accuracy_only")


def test_claims_command_reads_chain_folders_and_writes_the_table(tmp_path, capsys):
    from zoomdx_lib.eval.claims import main
    from zoomdx_lib.eval.generate import cache_path
    from zoomdx_lib.io import write_jsonl
    for seed, gain in ((0, 6), (1, 2)):
        for d in ("test_liver", "test_breast"):
            better, worse, _, _ = correlated_pair(extra=gain, seed=seed)
            for r in better + worse:
                r["id"] = d + r["id"]
            write_jsonl(cache_path(tmp_path / f"chain{seed}" / "generations", "zoom_sft", d, "greedy", seed), better)
            write_jsonl(cache_path(tmp_path / f"chain{seed}" / "generations", "single_turn_sft", d, "greedy", seed),
                        worse)
    main([str(tmp_path / "chain0"), str(tmp_path / "chain1"), "--out", str(tmp_path / "t" / "claims"), "--n-boot", "50"])
    text = (tmp_path / "t" / "claims.md").read_text()
    assert "over 2 runs" in text and "liver+breast" in text and "+0.150, +0.050" in text
    assert capsys.readouterr().out.startswith("The paper's claims over 2 runs")
    with pytest.raises(ValueError, match="one evaluation seed"):
        main([str(tmp_path / "nothing")])


def _random_sampled_records(rng, n, labels=("A", "B", "C")):
    """Sampled records with mixed consensus, invalid answers and both c values."""
    recs = []
    for i in range(n):
        answers = [None if rng.random() < 0.1 else str(rng.choice(labels)) for _ in range(8)]
        recs.append(dict(id=f"case-{i}", c=int(rng.random() < 0.6), label=str(rng.choice(labels)),
                         rollouts=[dict(answer=a, iou=float(rng.random()), fmt=float(rng.random() < 0.9),
                                        tool_error=None if rng.random() < 0.9 else "no_call") for a in answers]))
    return recs


def test_case_tables_give_the_metrics_of_resampled_records_exactly():
    """The bootstrap's per-case tables (CaseMetric) equal the metric recomputed on the resampled records."""
    from zoomdx_lib.eval.scores import GREEDY, calibration_metric, resampled
    rng = np.random.default_rng(3)
    recs = _random_sampled_records(rng, 60)
    for metric, slow in ((GREEDY, greedy_metrics), (calibration_metric(0.75), lambda r: calibration_metrics(r, 0.75))):
        fast = resampled(metric, recs)
        for _ in range(20):
            idx = rng.integers(0, len(recs), size=len(recs))
            got, want = fast(idx), slow([recs[i] for i in idx])
            assert got.keys() == want.keys()
            for k in want:
                assert (np.isnan(got[k]) and np.isnan(want[k])) or got[k] == want[k], k


def test_pooled_interval_is_the_same_with_and_without_case_tables():
    from zoomdx_lib.eval.scores import calibration_metric
    rng = np.random.default_rng(4)
    pairs = [(_random_sampled_records(rng, 40), _random_sampled_records(rng, 40)) for _ in range(3)]
    for b, w in pairs:   # the same cases under both methods
        for rb, rw in zip(b, w):
            rw.update(c=rb["c"], label=rb["label"])
    metric = calibration_metric(0.75)
    for key in ("align", "ece10", "gap"):
        fast = mean_paired_difference(pairs, metric, key, n_boot=150, seed=2)
        slow = mean_paired_difference(pairs, lambda r: calibration_metrics(r, 0.75), key, n_boot=150, seed=2)
        assert fast == slow, key
