"""The RL study's arithmetic: power of a claim, flatness of a curve, the pooled summary from known records."""
import math
import re

import pandas as pd
import pytest

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
    methods = pd.read_csv(tmp_path / "methods.csv").set_index(["method", "dataset"])
    assert len(methods) == 4 * 3 and methods.loc[("zoom_sft", "test_liver"), "acc"] == 1.0
    assert methods.loc[("grpo_uncertainty_credit", "test_liver"), "align"] == 1.0   # all 8 agree on c = 1 cases
    assert methods.loc[("zoom_sft", "test_liver"), "align"] == 0.0                  # 4 : 4 never reaches kappa 0.75
    assert methods.loc[("grpo_uncertainty_credit", "test_liver"), ["kappa", "consensus_acc"]].tolist() == [1.0, 1.0]
    assert methods.loc[("zoom_sft", "test_liver"), "kappa"] == 0.5
    report = (tmp_path / "report.md").read_text()
    assert "# RL study: 1 seed\n" in report and "claims decided: 20 of 20" in report
    # the liver + breast Align row as claims.csv has it; one seed gives no interval over seeds
    assert re.search(r"\| uncertainty RL beats SFT on Align +\| \+1\.000 \[\+1\.000, \+1\.000\] +\| 1 / 1 +\| supported +\|"
                     r" 0\.000 \(0\.05\) +\| – +\|", report)
    assert "| zoom SFT " in report and "Does the answer use the crop?" in report
    loaded = rl_study.load_study(tmp_path)
    assert len(loaded["claims"]) == len(claims) and len(loaded["methods"]) == 12 and set(loaded["curves"]) == {f"seed0/{a}" for a in rl_study.ARMS}


def _one_seed():
    results = {("zoom_sft", "test_liver", "sample", 7): _records(3, 2, ["A"] * 8, 1, "test_liver")}
    for r in results[("zoom_sft", "test_liver", "sample", 7)]:
        r["rollouts"][0].update(turn1="<think>..</think><tool_call>{}</tool_call>", turn2="<answer>{}</answer>")
    return dict(results=results, eval_seed=7, curves={"grpo_accuracy_only": [{"step": 1, "reward_total": 0.5}]},
                crop_use=[dict(method="zoom_sft", source="own", n=3)], seconds=12.5)


def test_a_kept_seed_reads_back_without_its_texts(tmp_path):
    seed = _one_seed()
    path = rl_study.write_seed_result(rl_study.seed_result_path(tmp_path, 0), seed, dict(base="abc", seed=0))
    back = rl_study.read_seed_result(path, dict(base="abc", seed=0))
    recs = back["results"][("zoom_sft", "test_liver", "sample", 7)]
    want = seed["results"][("zoom_sft", "test_liver", "sample", 7)]
    assert [r["id"] for r in recs] == [r["id"] for r in want] and "turn1" not in recs[0]["rollouts"][0]
    assert [ro["answer"] for r in recs for ro in r["rollouts"]] == [ro["answer"] for r in want for ro in r["rollouts"]]
    assert back["seconds"] == 12.5 and back["curves"] == seed["curves"] and back["eval_seed"] == 7
    assert back["identity"] == dict(base="abc", seed=0)


def test_a_published_study_continues_where_it_was_copied(tmp_path, monkeypatch):
    """publish_study copies the summary files and the kept seeds; run_seed in the copy reads the seed back."""
    overrides = dict(rl_study.STUDY_RECIPE)
    identity = rl_study.seed_identity(rl_study.get_profile("smoke", seed=0, **overrides), "smoke", overrides, 10, 5)
    study = tmp_path / "study"
    rl_study.write_seed_result(rl_study.seed_result_path(study, 0), _one_seed(), identity)
    (study / "summary.json").write_text("{}")
    (study / "seed0").mkdir()   # per-seed working files (checkpoints, caches) are not copied
    written = rl_study.publish_study(study, tmp_path / "kept")
    assert sorted(str(p.relative_to(tmp_path / "kept")) for p in written) == ["seeds/seed0.json.gz", "summary.json"]
    monkeypatch.setattr(rl_study, "sft_start", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    got = rl_study.run_seed(0, tmp_path / "kept", overrides, 10, 5, progress=False, profile_name="smoke")
    assert got["seconds"] == 12.5


def test_run_seed_reuses_a_kept_seed_and_refuses_one_from_another_recipe(tmp_path, monkeypatch):
    overrides = dict(rl_study.STUDY_RECIPE)
    profile = rl_study.get_profile("smoke", seed=3, **overrides)
    identity = rl_study.seed_identity(profile, "smoke", overrides, 10, 5)
    rl_study.write_seed_result(rl_study.seed_result_path(tmp_path, 3), _one_seed(), identity)
    monkeypatch.setattr(rl_study, "sft_start", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    got = rl_study.run_seed(3, tmp_path, overrides, 10, 5, progress=False, profile_name="smoke")
    assert got["seconds"] == 12.5
    with pytest.raises(ValueError, match=r"seed3\.json\.gz.*n_eval"):
        rl_study.run_seed(3, tmp_path, overrides, 20, 5, progress=False, profile_name="smoke")


def test_run_study_with_workers_pools_kept_seeds_without_training(tmp_path, monkeypatch):
    """With --jobs 2 and every seed kept, no worker starts and the kept seeds are pooled once."""
    overrides = dict(rl_study.STUDY_RECIPE)
    agree, split = ["A"] * 8, ["A"] * 4 + ["B"] * 4
    for seed in (0, 1):
        results = {}
        for m in rl_study.ARMS.keys() | {"zoom_sft"}:
            for d in ("test_liver", "test_breast", "test_thyroid"):
                recs = _records(10, 10, agree if m == "grpo_uncertainty_credit" else split, 1, d)
                results[(m, d, "sample", 1000 + seed)] = recs
                results[(m, d, "greedy", 1000 + seed)] = [dict(r, rollouts=r["rollouts"][:1]) for r in recs]
        identity = rl_study.seed_identity(rl_study.get_profile("smoke", seed=seed, **overrides), "smoke", overrides, 10, 5)
        kept = dict(results=results, eval_seed=1000 + seed, curves={a: [{"step": 1, "reward_total": 0.5}] for a in rl_study.ARMS},
                    crop_use=[dict(method="zoom_sft", source="own", n=2)], seconds=1.0)
        rl_study.write_seed_result(rl_study.seed_result_path(tmp_path, seed), kept, identity)
    monkeypatch.setattr(rl_study, "map_seeds", lambda fn, seeds, *a, **k: {} if not seeds else pytest.fail(f"ran {seeds}"))
    pooled = []
    monkeypatch.setattr(rl_study, "summarise", lambda done, out, **k: pooled.append(sorted(done)) or dict(seeds=sorted(done)))
    summary = rl_study.run_study(tmp_path, [0, 1], n_eval=10, n_crop=5, progress=False, profile_name="smoke", jobs=2)
    assert summary["seeds"] == [0, 1] and pooled == [[0, 1]]
