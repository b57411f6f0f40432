"""eval/tables.py: cells, Table 1 / Table 2 / ablation from hand-made records whose metrics are known,
the paper side by side and the three file formats."""
import json
import math

import pandas as pd
import pytest

from zoomdx_lib.eval import tables as TB


def greedy(case_id, correct, iou, c=1, tool_error=None):
    return {"id": case_id, "c": c, "label": "A",
            "rollouts": [{"answer": "A" if correct else "B", "iou": iou, "tool_error": tool_error, "fmt": 1.0}]}


def sampled(case_id, c, answers):
    return {"id": case_id, "c": c, "label": "A",
            "rollouts": [{"answer": a, "iou": 0.5, "tool_error": None, "fmt": 1.0} for a in answers]}


AGREE = ["A"] * 8                                   # kappa 1, correct, entropy 0
SPLIT = ["A", "A", "A", "B", "B", "C", "C", "D"]     # mode A, kappa 3/8, correct, entropy below
SPLIT_BITS = -(3 / 8 * math.log2(3 / 8) + 2 * (2 / 8) * math.log2(2 / 8) + 1 / 8 * math.log2(1 / 8))


def results():
    """Method "zoom": greedy Acc 3/4 on c=1 (the c=0 case is not scored), mIoU on c=1 0.5;
    method "same": four identical right answers at IoU 0.25 (every bootstrap resample is the same);
    method "single": no box (mIoU undefined). Sampled: two c=1 cases all agree, two c=0 split 3/8."""
    zoom = [greedy("z0", True, 0.2), greedy("z1", True, 0.4), greedy("z2", False, 0.6), greedy("z3", True, 0.8),
            greedy("z4", False, 0.0, c=0)]
    same = [greedy(f"s{i}", True, 0.25) for i in range(4)]
    single = [greedy(f"n{i}", i % 2 == 0, 0.0, tool_error="single_turn") for i in range(4)]
    calib = [sampled("k0", 1, AGREE), sampled("k1", 1, AGREE), sampled("k2", 0, SPLIT), sampled("k3", 0, SPLIT)]
    return {("zoom", "test_liver", "greedy", 0): zoom, ("same", "test_liver", "greedy", 0): same,
            ("single", "test_liver", "greedy", 0): single, ("zoom", "test_liver", "sample", 0): calib,
            ("same", "test_breast", "greedy", 0): same}


def _point(cell: str) -> float:
    return float(cell.split(" [")[0])


def _interval(cell: str) -> tuple[float, float, float]:
    point, rest = cell.split(" [")
    low, high = rest.rstrip("]").split(", ")
    return float(point), float(low), float(high)


@pytest.mark.parametrize("point,low,high,key,cell", [
    (0.693, 0.61, 0.771, "acc", "69.3 [61.0, 77.1]"),
    (0.5, 0.25, 0.75, "miou_c1", "50.0 [25.0, 75.0]"),
    (0.1349, 0.081, 0.19, "ece10", "0.13 [0.08, 0.19]"),
    (-0.05, -0.2, 0.1, "gap", "-0.05 [-0.20, 0.10]"),
    (0.42, float("nan"), float("nan"), "sacc", "42.0"),
    (0.42, float("nan"), float("nan"), "gap", "0.42"),
    (float("nan"), 0.1, 0.2, "acc", "–"),
    (None, 0.1, 0.2, "ece10", "–"),
])
def test_cells_read_percent_or_fraction_with_the_interval(point, low, high, key, cell):
    assert TB.fmt_cell(point, low, high, key) == cell


def test_table1_holds_acc_on_c1_and_miou_as_percentages():
    t = TB.build_tables(results(), ["zoom", "same", "single"], ["test_liver", "test_breast"], n_boot=200)
    t1 = t["table1"]
    assert list(t1.index) == ["zoom", "same", "single"]
    assert list(t1.columns) == ["liver Acc", "liver mIoU", "breast Acc", "breast mIoU"]
    acc, lo, hi = _interval(t1.loc["zoom", "liver Acc"])
    assert acc == 75.0 and 0.0 <= lo <= acc <= hi <= 100.0 and lo < hi       # 3 of the 4 c=1 cases
    assert _point(t1.loc["zoom", "liver mIoU"]) == 50.0                       # mean of 0.2 .. 0.8, c=1 only
    assert t1.loc["same", "liver Acc"] == "100.0 [100.0, 100.0]"              # identical cases: no spread
    assert t1.loc["same", "liver mIoU"] == "25.0 [25.0, 25.0]"
    assert t1.loc["same", "breast Acc"] == "100.0 [100.0, 100.0]"
    assert _point(t1.loc["single", "liver Acc"]) == 50.0
    assert t1.loc["single", "liver mIoU"] == "–"                              # no box: mIoU undefined
    assert t1.loc["zoom", "breast Acc"] == "–" and t1.loc["single", "breast mIoU"] == "–"   # not run


def test_table2_holds_sacc_align_ece_and_gap_from_the_rollouts():
    t = TB.build_tables(results(), ["zoom", "same"], ["test_liver"], n_boot=200)
    t2 = t["table2"]
    assert list(t2.columns) == ["liver SAcc", "liver Align", "liver ECE", "liver Gap"]
    row = t2.loc["zoom"]
    assert _point(row["liver SAcc"]) == 100.0       # kappa >= 0.75 only on the two c=1 cases, both right
    assert _point(row["liver Align"]) == 100.0      # confident exactly where the raters agree
    # ECE (10 bins): the c=1 cases sit at confidence 1 and are right; the c=0 ones at 3/8 and right too
    assert _point(row["liver ECE"]) == round(0.5 * (1 - 3 / 8), 2)
    assert _point(row["liver Gap"]) == round(SPLIT_BITS, 2)                   # bits, c=1 entropy 0
    assert row["liver Align"].startswith("100.0 [") and _interval(row["liver Gap"])[2] <= 2.0 + 1e-9
    assert (t2.loc["same"] == "–").all()                                     # no sampled records


def test_long_table_has_the_unrounded_numbers_every_table_is_made_from():
    long = TB.build_tables(results(), ["zoom"], ["test_liver"], n_boot=100)["long"]
    assert list(long.columns) == ["method", "dataset", "metric", "point", "low", "high"]
    got = {r.metric: r.point for r in long.itertuples()}
    assert got["acc"] == 0.75 and got["miou_c1"] == pytest.approx(0.5)
    assert got["miou_all"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.8 + 0.0) / 5)
    assert got["sacc"] == 1.0 and got["align"] == 1.0
    assert got["ece10"] == pytest.approx(0.3125) and got["gap"] == pytest.approx(SPLIT_BITS)
    assert (long.low <= long.point + 1e-12).all() and (long.point <= long.high + 1e-12).all()


def test_bootstrap_is_seeded_and_the_ablation_takes_its_own_rows_and_dataset():
    a = TB.build_tables(results(), ["zoom", "same"], ["test_liver"], seed=3, n_boot=150)
    b = TB.build_tables(results(), ["zoom", "same"], ["test_liver"], seed=3, n_boot=150)
    pd.testing.assert_frame_equal(a["table1"], b["table1"])
    abl = TB.build_tables(results(), ["zoom", "same"], ["test_liver", "test_breast"], n_boot=50,
                          ablation_dataset="test_breast", ablation_methods=["same"])["ablation"]
    assert list(abl.index) == ["same"]
    assert list(abl.columns) == [f"breast {m}" for m in ("Acc", "mIoU", "SAcc", "Align", "ECE", "Gap")]
    assert abl.loc["same", "breast mIoU"] == "25.0 [25.0, 25.0]" and abl.loc["same", "breast Gap"] == "–"


def test_paper_side_by_side_puts_the_published_number_beside_ours(tmp_path):
    long = TB.build_tables(results(), ["zoom"], ["test_liver"], n_boot=50)["long"]
    side = TB.paper_side_by_side(long, "zoom")
    paper = json.loads(TB.PAPER_TABLES.read_text())
    ours_col = "this run (zoom, tiny model, synthetic data)"
    assert list(side.columns) == ["dataset", "metric", "paper (Qwen2.5-VL-7B, real data)", ours_col]
    assert len(side) == 3 * 6
    liver = side[side.dataset == "liver"].set_index("metric")
    assert liver.loc["Acc", "paper (Qwen2.5-VL-7B, real data)"] == paper["table1_acc_miou"]["Ours"]["liver"][0]
    assert liver.loc["ECE", "paper (Qwen2.5-VL-7B, real data)"] == paper["table2_uncertainty"]["Ours"]["liver"][2]
    assert liver.loc["Acc", ours_col] == 75.0 and liver.loc["mIoU", ours_col] == 50.0        # percent
    assert liver.loc["ECE", ours_col] == 0.312 and liver.loc["Gap", ours_col] == round(SPLIT_BITS, 3)  # fractions, bits
    assert side[side.dataset == "breast"][ours_col].isna().all()              # no breast run: nan, not 0


def test_write_table_writes_csv_markdown_and_latex_with_the_caption(tmp_path):
    t1 = TB.build_tables(results(), ["same"], ["test_liver"], n_boot=20)["table1"]
    paths = TB.write_table(t1, tmp_path / "tables", "table1", TB.CAPTIONS["table1"])
    assert set(paths) == {"csv", "md", "tex"}
    back = pd.read_csv(paths["csv"], index_col=0)
    assert back.loc["same", "liver Acc"] == "100.0 [100.0, 100.0]"
    md = (tmp_path / "tables" / "table1.md").read_text().splitlines()
    assert md[0] == TB.CAPTIONS["table1"] and "| same " in md[4] and "25.0 [25.0, 25.0]" in md[4]
    tex = (tmp_path / "tables" / "table1.tex").read_text()
    assert tex.startswith(f"% {TB.CAPTIONS['table1']}\n") and "\\begin{tabular}" in tex and "100.0 [100.0, 100.0]" in tex
