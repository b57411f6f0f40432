"""The results page (zoomdx_lib.eval.report) against the numbers in a run folder built by hand."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zoomdx_lib.eval import report

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NUMBERS = [  # (method, dataset, metric, point, low, high): 0-1 fractions, bits for the Gap
    ("zoom_sft", "test_liver", "acc", 0.5333, 0.357, 0.71), ("zoom_sft", "test_liver", "miou_c1", 0.453, 0.369, 0.533),
    ("zoom_sft", "test_breast", "acc", 0.536, 0.323, 0.727), ("zoom_sft", "test_liver", "gap", 0.17, -0.13, 0.43),
    ("zoom_sft", "test_liver", "ece10", 0.18, 0.10, 0.35),
    ("single_turn_sft", "test_liver", "acc", 0.25, 0.1, 0.4),
    ("grpo_uncertainty_credit", "test_liver", "align", 0.35, 0.2, 0.5),
]
CLAIMS = [
    dict(claim="zoom beats no zoom (Acc)", dataset="test_liver", metric="acc", n=40, delta=0.0361, low=-0.077,
         high=0.16, verdict="not separable from noise"),
    dict(claim="uncertainty RL beats SFT on Entropy Gap", dataset="liver+breast", metric="gap", n=80, delta=0.22,
         low=0.03, high=0.42, verdict="supported"),
    dict(claim="uncertainty RL lowers ECE vs SFT", dataset="test_breast", metric="ece10", n=40, delta=-0.06,
         low=-0.16, high=0.11, verdict="not separable from noise"),
]


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def make_run(root, profile="cpu", seed=0, claims=CLAIMS):
    """A finished run folder with the files the runner and notebooks 00-04 write."""
    nbs = {"00_pretrain_base": 16.2, "01_data_construction": 210.0, "02_sft_zoom_then_diagnose": 321.4,
           "04_calibration_analysis": 432.0}
    _write(root / "manifest.json", dict(
        profile=profile, seed=seed, git_commit=COMMIT, versions={"python": "3.12.3", "torch": "2.14.1"},
        started="2026-11-27T10:00:00+00:00", finished="2026-11-27T10:20:14+00:00",
        notebooks={k: dict(status="done", seconds=s) for k, s in nbs.items()}, total_seconds=sum(nbs.values())))
    _write(root / "phases.json", {"02_sft_zoom_then_diagnose": {"sft_zoom_train": 175.25, "greedy_eval": 22.0}})
    params = dict(profile=profile, run_dir=str(root.resolve()), seed=seed, overrides={"grpo__steps": 20},
                  real_splits=[{"name": "busbra", "importer": "bus_bra", "path": "bus_bra"}])
    _write(root / "executed" / "00_pretrain_base.ipynb", dict(cells=[], metadata={"papermill": {"parameters": params}}))
    _write(root / "metrics" / "00_pretrain_base.json", dict(base="zoomdx_lib/base", grounding={"liver": dict(
        n=64, miou=0.382, miou_ci=[0.318, 0.445], mean_box_miou=0.124, acc=0.5, acc_ci=[0.375, 0.625],
        majority_acc=0.422, tool_call_valid=1.0)}))
    _write(root / "metrics" / "01_data_construction.json", dict(readability=[dict(
        organ="liver", attribute="margin", size=256, detail_scale=None, crop=[0.53, 0.45, 0.6],
        full=[0.59, 0.5, 0.66], crop_minus_full=[-0.06, -0.11, -0.01], majority=0.5)]))
    greedy = [dict(method="zoom_sft", dataset="test_liver", n=40, tool_call_valid=1.0, answer_valid=0.975)]
    greedy += [dict(greedy[0], method="single_turn_sft", tool_call_valid=0.0)]
    models = {"zoom_sft": dict(kind="zoom"), "single_turn_sft": dict(kind="single")}
    _write(root / "metrics" / "02_sft_zoom_then_diagnose.json", dict(final_loss_zoom=0.2031, greedy=greedy,
                                                                     models=models))
    _write(root / "metrics" / "03_grpo_uncertainty_alignment.json", dict(
        engine="explicit", estimator="credit", end_values={"grpo_uncertainty_credit": {"reward_total": 0.4049}},
        greedy=greedy[:1] + [dict(greedy[0], method="grpo_accuracy_only", answer_valid=0.5)]))
    _write(root / "metrics" / "04_calibration_analysis.json", dict(
        methods=["single_turn_sft", "zoom_sft", "grpo_uncertainty_credit"], datasets=["test_liver", "test_breast"],
        numbers=[dict(zip(("method", "dataset", "metric", "point", "low", "high"), r)) for r in NUMBERS],
        claims=claims, crop_use=[dict(method="zoom_sft", source=src, n=80, acc_c1=acc, acc_all=acc, changed=ch)
                                 for src, acc, ch in (("own", 0.5375, 0.0), ("true", 0.625, 0.15),
                                                      ("blank", 0.35, 0.325), ("elsewhere", 0.4, 0.3))]))
    (root / "figures").mkdir()
    (root / "figures" / "claims_paired.png").write_bytes(b"\x89PNG")
    (root / "tables").mkdir()
    (root / "tables" / "paper_vs_ours.md").write_text("| dataset | metric |\n|---|---|\n| liver | Acc |\n")
    return root


def table_after(page: str, caption: str) -> list[dict]:
    """The rows of the first Markdown table after the line containing `caption`, as {column: cell}."""
    lines = page[page.index(caption):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


@pytest.fixture
def page(tmp_path):
    run = make_run(tmp_path / "runs" / "cpu")
    out = report.write_report([run], tmp_path / "docs" / "results.md")
    return out.read_text()


def test_page_names_commit_profile_and_command(page, tmp_path):
    assert f"git commit `{COMMIT}`" in page and "profile **cpu**, seed 0" in page
    assert f"profile cpu at commit `{COMMIT[:12]}`" in page
    run = tmp_path / "runs" / "cpu"
    assert f"python -m zoomdx_lib.workbook.runner --profile cpu --out {run} --set grpo__steps=20 --param " in page
    assert "\"importer\": \"bus_bra\"" in page                       # the real split parameter, as JSON
    assert f"python -m zoomdx_lib.eval.report {run} --out {tmp_path / 'docs' / 'results.md'}" in page


def test_tables_carry_the_files_numbers(page):
    t1 = {r["method"]: r for r in table_after(page, "Table 1:")}
    assert list(t1) == ["single_turn_sft", "zoom_sft", "grpo_uncertainty_credit"]   # notebook 04's order
    assert t1["zoom_sft"]["liver Acc"] == "53.3 [35.7, 71.0]"                     # percent, from 0.5333
    assert t1["zoom_sft"]["liver mIoU"] == "45.3 [36.9, 53.3]"
    assert t1["zoom_sft"]["breast Acc"] == "53.6 [32.3, 72.7]"
    assert t1["single_turn_sft"]["liver mIoU"] == "–"                             # not measured
    t2 = {r["method"]: r for r in table_after(page, "Table 2:")}
    assert t2["zoom_sft"]["liver Gap"] == "0.17 [-0.13, 0.43]" and t2["zoom_sft"]["liver ECE"] == "0.18 [0.10, 0.35]"
    assert t2["grpo_uncertainty_credit"]["liver Align"] == "35.0 [20.0, 50.0]"
    ablation = table_after(page, "Ablation (paper Sec. 3.3)")
    assert [r["method"] for r in ablation] == ["zoom_sft", "grpo_uncertainty_credit"]
    assert ablation[0]["liver Acc"] == "53.3 [35.7, 71.0]"


def test_claims_with_verdicts(page):
    rows = table_after(page, "### The paper's claims")
    assert len(rows) == len(CLAIMS)
    got = {(r["claim"], r["split"]): r for r in rows}
    assert got[("zoom beats no zoom (Acc)", "liver")]["better − worse [95 % CI]"] == "+3.6 [-7.7, +16.0]"  # points
    gap = got[("uncertainty RL beats SFT on Entropy Gap", "liver+breast")]
    assert gap["better − worse [95 % CI]"] == "+0.22 [+0.03, +0.42]" and gap["verdict"] == "supported"
    assert gap["n"] == "80"
    assert got[("uncertainty RL lowers ECE vs SFT", "breast")]["better − worse [95 % CI]"] == "-0.06 [-0.16, +0.11]"
    assert "3 paired comparisons" in page and "2 not separable from noise, 1 supported" in page


def test_other_notebooks_and_time(page):
    base = table_after(page, "The base sees")[0]
    assert base["organ"] == "liver" and base["mIoU [95 % CI]"] == "0.38 [0.32, 0.45]" and base["majority"] == "0.42"
    read = table_after(page, "Does the crop add evidence")[0]
    assert (read["from the crop"], read["crop − full [95 % CI]"]) == ("0.53", "-0.06 [-0.11, -0.01]")
    assert "final training loss: 0.203" in page
    assert table_after(page, "GRPO (engine `explicit`, estimator `credit`)")[0]["reward_total"] == "0.405"
    valid = {r["method"]: r for r in table_after(page, "Malformed outputs")}
    assert list(valid) == ["zoom_sft", "single_turn_sft", "grpo_accuracy_only"]   # zoom_sft once, from 02
    assert valid["single_turn_sft"]["valid tool calls %"] == "no tool call (single turn)"
    assert (valid["zoom_sft"]["valid tool calls %"], valid["zoom_sft"]["parseable answers %"]) == ("100.0", "97.5")
    assert valid["grpo_accuracy_only"]["parseable answers %"] == "50.0"
    assert "Total 979.6 s of wall clock over 4 notebooks." in page
    timing = {r["notebook"]: r for r in table_after(page, "### Time")}
    assert timing["02_sft_zoom_then_diagnose"]["seconds"] == "321.4"
    assert timing["02_sft_zoom_then_diagnose"]["phases (seconds)"] == "sft_zoom_train 175.2 · greedy_eval 22.0"
    assert "`claims_paired.png`" in page and "| liver | Acc |" in page          # figures; paper beside ours


def test_several_runs_side_by_side(tmp_path):
    other = [dict(c, delta=c["delta"] + 0.1, verdict="supported") for c in CLAIMS]
    runs = [make_run(tmp_path / "s0"), make_run(tmp_path / "s1", seed=1, claims=other)]
    page = report.render([report.load_run(r) for r in runs], "docs/results.md")
    assert page.count("## Run `") == 2 and "--seed 1" in page and "checks the plumbing" not in page
    rows = {(r["claim"], r["split"]): r for r in table_after(page, "## The claims across runs")}
    row = rows[("zoom beats no zoom (Acc)", "liver")]
    assert row[f"`{runs[0]}`"] == "+3.6 [-7.7, +16.0] (not separable from noise)"
    assert row[f"`{runs[1]}`"] == "+13.6 [-7.7, +16.0] (supported)"
    assert f"python -m zoomdx_lib.eval.claims {runs[0]} {runs[1]}" in page


def test_not_a_run_folder(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        report.load_run(tmp_path)
    assert report.main([str(tmp_path), "--out", str(tmp_path / "r.md")]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_the_smoke_page_is_labelled():
    """The committed page states the profile and commit of the run it was generated from."""
    page = (Path(report.__file__).parents[2] / "docs" / "results.md").read_text()
    assert re.search(r"profile \*\*\w+\*\*, seed \d+", page) and "python -m zoomdx_lib.eval.report" in page
    assert "Profile **smoke**" in page or "profile **smoke**" not in page           # a smoke page says so
    assert re.search(r"git commit `[0-9a-f]{40}`", page)


def test_crop_use_rows_carry_the_files_numbers(page):
    [row] = table_after(page, "Does the answer use the crop?")
    assert row == {"method": "zoom_sft", "n": "80", "own crop": "53.8", "true crop": "62.5", "blank": "35.0",
                   "elsewhere": "40.0", "changed by blank": "32.5", "changed by elsewhere": "30.0"}
