"""Kill the runner for real (SIGKILL to it and its kernel) during SFT and again during GRPO, resume,
and compare the finished run with an uninterrupted one.

The resumed chain must (a) skip the notebooks that finished, (b) continue each training stage
from its last checkpoint, keeping the log rows written before the kill, and (c) end with a
complete `metrics.json` identical to the one of an uninterrupted smoke run with the same seed:
that is both the determinism check (two smoke runs, same seed, same metrics) and the proof that
a resume is exact (same weights, optimizer, sampler and RNG state as if never stopped).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from zoomdx_lib.train.checkpoints import latest_checkpoint
from zoomdx_lib.workbook.runner import REPO_ROOT

NOTEBOOKS = ["00_pretrain_base", "01_data_construction", "02_sft_zoom_then_diagnose", "03_grpo_uncertainty_alignment",
             "04_calibration_analysis", "05_rollout_browser", "06_rl_study"]


def start_runner(run: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zoomdx_lib.workbook.runner", "--profile", "smoke", "--out", str(run)],
                            cwd=REPO_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def kill_with_kernel(proc: subprocess.Popen) -> None:
    """SIGKILL the runner and every descendant (the Jupyter kernel runs in its own session)."""
    family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.wait(timeout=30)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"runner exited (rc={proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    kill_with_kernel(proc)
    pytest.fail(f"kill point not reached in {timeout} s")


def checkpoint_step(folder: Path):
    ckpt = latest_checkpoint(folder) if folder.exists() else None
    return json.loads((ckpt / "trainer_state.json").read_text())["step"] if ckpt else None


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.slow
def test_kill_during_sft_and_grpo_then_resume_matches_uninterrupted_run(smoke_run, tmp_path):
    reference, _ = smoke_run
    run = tmp_path / "killed"
    sft_dir = run / "checkpoints" / "sft_zoom_lora"
    grpo_dir = run / "checkpoints" / "grpo_accuracy_only"

    # 1. kill during SFT, right after its first checkpoint
    proc = start_runner(run, tmp_path / "run1.log")
    k1 = wait_for(lambda: checkpoint_step(sft_dir), proc, tmp_path / "run1.log")
    kill_with_kernel(proc)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["notebooks"]["01_data_construction"]["status"] == "done"
    assert manifest["notebooks"]["02_sft_zoom_then_diagnose"]["status"] == "running"  # it died mid-notebook
    assert not (run / "models" / "sft_zoom_lora").exists()
    kept_sft = log_lines(sft_dir / "log.jsonl")[:k1]
    assert len(kept_sft) == k1

    # 2. resume; kill again during the first GRPO variant, after its first checkpoint
    proc = start_runner(run, tmp_path / "run2.log")
    k2 = wait_for(lambda: checkpoint_step(grpo_dir), proc, tmp_path / "run2.log")
    kill_with_kernel(proc)
    log2 = (tmp_path / "run2.log").read_text()
    assert "00_pretrain_base: done before with the same parameters, skipped" in log2
    assert "01_data_construction: done before with the same parameters, skipped" in log2
    assert "02_sft_zoom_then_diagnose: done in" in log2
    # SFT continued from step k1: the rows before it are the ones written before the kill (their
    # wall-clock column too), and the whole loss curve equals the uninterrupted run's
    sft_rows = log_lines(sft_dir / "log.jsonl")
    assert sft_rows[:k1] == kept_sft
    ref_rows = log_lines(reference / "checkpoints" / "sft_zoom_lora" / "log.jsonl")
    assert [json.loads(r)["loss"] for r in sft_rows] == [json.loads(r)["loss"] for r in ref_rows]
    kept_grpo = log_lines(grpo_dir / "log.jsonl")[:k2]
    assert len(kept_grpo) == k2

    # 3. resume to the end
    proc = start_runner(run, tmp_path / "run3.log")
    assert proc.wait(timeout=1800) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    log3 = (tmp_path / "run3.log").read_text()
    for name in NOTEBOOKS[:3]:
        assert f"{name}: done before with the same parameters, skipped" in log3
    assert log_lines(grpo_dir / "log.jsonl")[:k2] == kept_grpo
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["notebooks"][n]["status"] == "done" for n in NOTEBOOKS)

    # 4. the final metrics: complete, and identical to the uninterrupted run with the same seed
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics) == NOTEBOOKS
    for name in NOTEBOOKS:
        assert metrics[name] == json.loads((run / "metrics" / f"{name}.json").read_text())
    assert metrics == json.loads((reference / "metrics.json").read_text())
    # a temp folder a kill left behind is never what a checkpoint pointer names
    for pointer in run.rglob("latest.json"):
        named = json.loads(pointer.read_text())["path"]
        assert named.startswith("checkpoint-") and (pointer.parent / named / "trainer_state.json").exists()
