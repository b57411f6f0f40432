"""Base ablation arms: pairing against the control by training seed, and a tiny end-to-end run that resumes."""
import json

import pytest

from zoomdx_lib.workbook import base_arms


def _cases(n, hit_every, iou, single=False):
    return [dict(id=f"c{i}", attribute="echo", label="Anechoic", iou=iou, hit=i % hit_every == 0,
                 single_hit=single, true_box=[0, 0, 10, 10], width=100, height=100,
                 tool_call_valid=True, answer_valid=True) for i in range(n)]


def test_tables_pair_each_arm_with_the_control_of_its_own_training_seed():
    results = {"shipped": {"liver": _cases(20, 2, 0.3)},
               "continue/s1": {"liver": _cases(20, 2, 0.3)},
               "continue/s2": {"liver": _cases(20, 1, 0.3)},
               "single_turn/s1": {"liver": _cases(20, 1, 0.5, single=True)},
               "single_turn/s2": {"liver": _cases(20, 1, 0.3, single=True)}}
    summary, diffs = base_arms.tables(results, n_boot=200)
    assert set(summary.model) == set(results)
    d = diffs.set_index("training")
    # training s1: acc 1.0 vs 0.5, mIoU 0.5 vs 0.3, one-turn 1.0 vs 0.0; training s2: acc equal
    assert d.loc["s1", "d_acc"] == pytest.approx(0.5)
    assert d.loc["s1", "d_miou"] == pytest.approx(0.2)
    assert d.loc["s1", "d_acc_single"] == pytest.approx(1.0)
    assert d.loc["s2", "d_acc"] == pytest.approx(0.0)
    low, high = d.loc["s1", "d_acc_ci"]
    assert 0.2 < low <= 0.5 <= high <= 0.8
    assert "continue" not in set(diffs.arm)


def test_tiny_run_trains_evaluates_and_resumes_without_retraining(tmp_path):
    out = tmp_path / "arms"
    kw = dict(arms=["continue", "single_turn"], trainings=[21], steps=1, n=2, real=False, progress=False)
    first = base_arms.run(out, **kw)
    assert set(first["train_seconds"]) == {"continue/s21", "single_turn/s21"}
    assert {(r["arm"], r["set"]) for r in first["differences"]} == {("single_turn", s) for s in base_arms.EVAL_SEEDS}
    cached = json.loads((out / "single_turn" / "s21" / "arm_eval.json").read_text())
    assert set(cached) == set(base_arms.EVAL_SEEDS) and all(len(v) == 2 for v in cached.values())
    assert all("single_hit" in c for v in cached.values() for c in v)
    done = (out / "continue" / "s21" / "done.json").stat().st_mtime_ns
    second = base_arms.run(out, **kw)
    assert (out / "continue" / "s21" / "done.json").stat().st_mtime_ns == done   # nothing retrained
    assert second["summary"] == first["summary"]
