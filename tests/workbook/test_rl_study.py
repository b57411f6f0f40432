"""The RL study's arithmetic: power of a claim, flatness of a curve, the pooled summary from known records."""
import math

import pandas as pd

from zoomdx_lib.workbook import rl_study


def test_power_row_decides_by_sign_or_by_width():
    sep = rl_study.power_row(dict(metric="align", delta=0.2, low=0.1, high=0.3, n=100))
    assert sep["n_to_decide"] == 100 and math.isclose(sep["half_width"], 0.1)
    null = rl_study.power_row(dict(metric="gap", delta=0.0, low=-0.05, high=0.05, n=300))   # powered null
    assert null["n_to_decide"] == 300
    wide = rl_study.power_row(dict(metric="ece10", delta=0.01, low=-0.05, high=0.07, n=200))
    assert wide["n_to_decide"] == math.ceil(200 * (0.06 / 0.03) ** 2)   # the width rule needs 4x the cases
    assert math.isclose(wide["min_detectable"], 0.06 * (1.96 + 0.84) / 1.96)


def test_flatness_compares_the_last_two_quarters():
    log = [{"reward_total": v} for v in [0.1] * 4 + [0.3] * 4 + [0.5] * 4 + [0.52] * 4]
    f = rl_study.flatness(log)
    assert math.isclose(f["q3"], 0.5) and math.isclose(f["q4"], 0.52) and math.isclose(f["gain_q4_vs_q3"], 0.02)


def _records(n, correct, kappa_answers, c, dataset):
    return [dict(id=f"{dataset}-{i}", c=c, label="A", box=[0, 0, 1, 1], attribute="echo",
                 rollouts=[dict(answer=a, iou=0.5, tool_error=None, fmt=1.0) for a in
                           (kappa_answers if i < correct else ["B"] * len(kappa_answers))]) for i in range(n)]


def test_summarise_pools_claims_and_marks_them_decided(tmp_path):
    """An uncertainty arm that agrees on every consensus case against an SFT start that never does: Align is
    separated; every row has a power estimate; the summary files are written."""
    agree, split = ["A"] * 8, ["A"] * 4 + ["B"] * 4
    methods = {"zoom_sft": split, "grpo_accuracy_only": split, "grpo_uncertainty_credit": agree,
               "grpo_uncertainty_group": split}
    results = {}
    for m, answers in methods.items():
        for d in ("test_liver", "test_breast", "test_thyroid"):
            recs = _records(30, 30, answers, 1, d)
            results[(m, d, "sample", 7)] = recs
            results[(m, d, "greedy", 7)] = [dict(r, rollouts=r["rollouts"][:1]) for r in recs]
    seeds = {0: dict(results=results, eval_seed=7, curves={a: [{"step": 1, "reward_total": 0.5}] for a in rl_study.ARMS},
                     crop_use=[dict(method="zoom_sft", source="own", n=2, acc_c1=1.0, acc_all=1.0, changed=0.0)],
                     seconds=1.0)}
    summary = rl_study.summarise(seeds, tmp_path, n_boot=200)
    claims = pd.read_csv(tmp_path / "claims.csv")
    align = claims[(claims["claim"] == "uncertainty RL beats SFT on Align") & (claims["dataset"] == "test_liver")].iloc[0]
    assert align["delta"] == 1.0 and align["verdict"] == "supported" and bool(align["decided"])
    # 3 organs + liver+breast per claim; the two Gap claims are not measured without c = 0 cases
    assert summary["claims_total"] == len(claims) == (len(rl_study.RL_CLAIMS) - 2) * 4
    assert claims["half_width"].notna().all() and (tmp_path / "crop_use.csv").exists()
    loaded = rl_study.load_study(tmp_path)
    assert len(loaded["claims"]) == len(claims) and set(loaded["curves"]) == {f"seed0/{a}" for a in rl_study.ARMS}
