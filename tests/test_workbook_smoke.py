"""The whole notebook chain through papermill at the smoke profile, then the numbers read back.

This is the CI run of every notebook: it executes 01 -> 05 with the runner exactly as
`make workbook PROFILE=smoke` does, reads the metrics each notebook wrote, and recomputes the
tables from the cached generations to check they were made from them.
"""
import json
import math

import pandas as pd
import pytest
import torch

from zoomdx_lib.eval import generate as E, scores as S
from zoomdx_lib.config import get_profile
from zoomdx_lib.workbook.rundir import read_metrics
from zoomdx_lib.workbook.runner import run_chain  # smoke_run: tests/conftest.py

NOTEBOOKS = ["00_pretrain_base", "01_data_construction", "02_sft_zoom_then_diagnose", "03_grpo_uncertainty_alignment",
             "04_calibration_analysis", "05_rollout_browser", "06_rl_study"]


@pytest.mark.slow
def test_every_notebook_ran_and_wrote_metrics(smoke_run):
    run, manifest = smoke_run
    assert [k for k in manifest["notebooks"]] == NOTEBOOKS
    for name in NOTEBOOKS:
        assert manifest["notebooks"][name]["status"] == "done"
        assert read_metrics(run, name)["profile"] == "smoke", name
    # 05 browses every cached sampled generation: one summary row per (dataset, method), its case count
    # and how many c=0 cases the c filter shows
    sampled = {(d, m): recs for (m, d, mode, seed), recs in E.load_cached(run / "generations").items()
               if mode == "sample" and seed == 0}
    m05 = read_metrics(run, "05_rollout_browser")
    assert sampled and m05["pairs"] == len(sampled)
    assert [(r["dataset"], r["method"], r["cases"], r["shown_after_filter"]) for r in m05["summary"]] == [
        (d, m, len(recs), sum(r["c"] == 0 for r in recs)) for (d, m), recs in sorted(sampled.items())]
    m00 = read_metrics(run, "00_pretrain_base")
    assert set(m00["grounding"]) == {"liver", "breast", "thyroid"}
    for organ, r in m00["grounding"].items():   # the shipped base finds lesions better than a constant box
        assert r["n"] == 16 and r["tool_call_valid"] > 0.9, (organ, r)
    assert m00["grounding"]["liver"]["miou"] > m00["grounding"]["liver"]["mean_box_miou"]
    assert m00["grounding"]["breast"]["miou"] > m00["grounding"]["breast"]["mean_box_miou"]
    assert not (run / "models" / "tiny_init").exists() and not (run / "models" / "sft_zoom_full").exists()
    m01 = read_metrics(run, "01_data_construction")
    assert m01["splits"]["train"]["n"] == 96 and m01["splits"]["test_thyroid"]["n"] == 12
    assert [(r["organ"], r["attribute"]) for r in m01["readability"]] == [
        (o, a) for o in ("liver", "breast") for a in ("echo", "shape", "margin")]
    for r in m01["readability"]:   # reference-classifier accuracies with their intervals, 24 test cases each
        assert r["n_test"] == 24 and all(v[1] <= v[0] <= v[2] for v in (r["crop"], r["full"], r["crop_minus_full"]))
    assert m01["speckle_grain"]["synthetic breast"]["n"] > 0
    native = m01["readability_native"]       # the margin at native scale from 512 px originals
    assert [(r["organ"], r["attribute"], r["size"], r["detail_scale"]) for r in native] == [
        ("liver", "margin", 512, 1.0), ("breast", "margin", 512, 1.0)]
    assert all(r["n_test"] == 24 and r["crop"][1] <= r["crop"][0] <= r["crop"][2] for r in native)
    # 256 px originals barely exceed the 224 px full view; at 512 px the crop samples the lesion finer
    assert m01["zoom_gain"]["256 px"]["median"] == 1.14 and m01["zoom_gain"]["512 px"]["median"] > 1.5
    assert m01["speckle_grain"]["synthetic breast, 512 px native detail"]["n"] > 0
    m06 = read_metrics(run, "06_rl_study")   # the miniature study: one seed, every RL claim row measured
    assert m06["seeds"] == [0] and 0 < m06["claims_total"] <= 28 and 0 <= m06["claims_decided"] <= m06["claims_total"]
    study = json.loads((run / "rl_study" / "summary.json").read_text())
    assert {r["method"] for r in study["crop_use"]} == {"zoom_sft", "grpo_accuracy_only", "grpo_uncertainty_credit",
                                                        "grpo_uncertainty_group"}
    assert all(r["n"] == 2 for r in study["crop_use"]) and all(r["runs"] == 1 for r in study["claims"])
    m03 = read_metrics(run, "03_grpo_uncertainty_alignment")
    assert {"grpo_accuracy_only", "grpo_uncertainty_credit", "grpo_uncertainty_group"} <= set(m03["models"])
    assert m03["engine"] == "explicit"
    m01 = read_metrics(run, "01_data_construction")   # synthetic against real: every statistic of each source
    realism = pd.DataFrame(m01["realism"])
    assert "synthetic breast" in set(realism.source) and (realism.n > 0).all()
    assert m01["realism_skipped"] is None or "not found" in m01["realism_skipped"]
    phases = json.loads((run / "phases.json").read_text())
    for name in m03["models"]:  # generation and update times are in phases.json, not in the metrics
        assert phases["03_grpo_uncertainty_alignment"][f"{name}_generation"] > 0
        assert phases["03_grpo_uncertainty_alignment"][f"{name}_update"] > 0
    assert "sft_zoom_train" in phases["02_sft_zoom_then_diagnose"]
    for fig in ("fig1_kappa_distributions.png", "reliability_diagrams.png", "risk_coverage.png", "grpo_curves.png",
                "fig_data_examples.png", "fig_data_readability.png", "fig_data_readability_native.png",
                "fig_data_realism.png", "crop_use.png", "sft_loss.png", "pretrain_curves.png", "pretrain_boxes.png"):
        assert (run / "figures" / fig).stat().st_size > 0, fig


@pytest.mark.slow
def test_tables_are_recomputed_from_cached_generations(smoke_run):
    run, _ = smoke_run
    cached = E.load_cached(run / "generations")
    m04 = read_metrics(run, "04_calibration_analysis")
    numbers = pd.DataFrame(m04["numbers"])
    assert len(numbers) > 0
    for method in m04["methods"]:
        for dataset in m04["datasets"]:
            g = S.greedy_metrics(cached[(method, dataset, "greedy", 0)])
            s = S.calibration_metrics(cached[(method, dataset, "sample", 0)])
            for metric, value in [("acc", g["acc"]), ("miou_c1", g["miou_c1"]), ("align", s["align"]),
                                  ("ece10", s["ece10"]), ("gap", s["gap"]), ("sacc", s["sacc"])]:
                row = numbers[(numbers.method == method) & (numbers.dataset == dataset) & (numbers.metric == metric)]
                assert len(row) == 1, (method, dataset, metric)
                got = row.point.iloc[0]
                assert (math.isnan(value) and (got is None or math.isnan(got))) or abs(got - value) < 1e-12
            assert all(len(r["rollouts"]) == 8 for r in cached[(method, dataset, "sample", 0)])
    table1 = (run / "tables" / "table1.md").read_text()
    assert "zoom_sft" in table1 and "oracle_crop" in table1
    # does the answer use the crop: every two-turn method answered from all four crops, as cached
    crop = pd.DataFrame(m04["crop_use"])
    zoom_methods = [m for m in m04["methods"] if m not in ("single_turn_sft", "oracle_crop")]
    assert set(crop.method) == set(zoom_methods) and set(crop.source) == {"own", "true", "blank", "elsewhere"}
    assert (crop[crop.source == "own"].changed == 0).all() and crop.n.min() > 0
    [cache] = list((run / "generations").glob("crop_use_*.json"))
    assert json.loads(cache.read_text()) == m04["crop_use"]


@pytest.mark.slow
def test_rerun_skips_finished_notebooks(smoke_run):
    run, _ = smoke_run
    lines = []
    run_chain("smoke", run, seed=0, log=lines.append)
    assert sum("skipped" in ln for ln in lines) == len(NOTEBOOKS)


@pytest.mark.slow
def test_from_scratch_stages_with_vision_warmup(smoke_run, tmp_path):
    """`model__path=None`: the tiny model from random weights, a vision warm-up, a from-scratch stage, then LoRA."""
    import shutil

    from zoomdx_lib.model.load import load_model_and_processor
    from zoomdx_lib.train.recipes import run_sft
    from zoomdx_lib.train.sft import load_dialogue_examples, load_warmup_examples
    run, _ = smoke_run
    shutil.copytree(run / "data", tmp_path / "data")
    prof = get_profile("smoke", model__path=None, sft__warmup_steps=3, sft__full_steps=4, sft__lora_steps=2)
    out = run_sft(prof, tmp_path, mode="zoom", progress=False)
    assert [len(out[k]) for k in ("history_warmup", "history_full", "history_lora")] == [3, 4, 2]
    assert out["base"].endswith("sft_zoom_full")
    _, processor = load_model_and_processor(tmp_path / "models" / "tiny_init")
    for mode in ("zoom", "single"):
        warm = load_warmup_examples(run / "data", "train", processor, mode, limit=5)
        full = load_dialogue_examples(run / "data", "train", processor, mode, limit=5)
        for w, d in zip(warm, full):
            assert w.sample_id == d.sample_id and len(w.images) == 1
            # the warm-up image is the dialogue's crop (zoom) or its full image (single)
            same = d.images[-1] if mode == "zoom" else d.images[0]
            assert torch.equal(w.images[0][0], same[0])
            target = processor.tokenizer.decode([t for t, m in zip(w.ids, w.mask) if m])
            assert target.startswith("<answer>") and target.endswith("</answer><|im_end|>"), target
            assert target.replace("<|im_end|>", "") in processor.tokenizer.decode(d.ids)
            assert len(w.ids) < len(d.ids)
