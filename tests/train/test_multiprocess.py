"""Two processes on CPU (gloo) through `accelerate launch`: SFT over the same global batch matches one process,
the processes stay in sync after every step, checkpoints are written once, and a killed run resumes.

Each test starts real subprocesses (torch's launcher, two Python processes); they run at the smoke sizes.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from zoomdx_lib.config import get_profile
from zoomdx_lib.data.store import build_synthetic_splits

HERE = Path(__file__).parent
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _run(cmd, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    build_synthetic_splits(get_profile("smoke"), root / "data", progress=False)
    return root / "data"


def _adapter(path):
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_two_processes_match_one_over_the_same_global_batch(tiny_path, data_dir, tmp_path):
    """Plain SGD without dropout: the weights are linear in the gradients, so they must agree to rounding."""
    driver = [str(HERE / "multiprocess_sft_driver.py"), str(tiny_path), str(data_dir)]
    _run([sys.executable, *driver, str(tmp_path / "one"), "3", "4"], tmp_path)
    _run([*ACCELERATE, *driver, str(tmp_path / "two"), "3", "4"], tmp_path)
    one, two = _adapter(tmp_path / "one" / "adapter"), _adapter(tmp_path / "two" / "adapter")
    assert one.keys() == two.keys()
    moved = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    assert moved > 1e-3                                            # B starts at 0: the steps did move it
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-6
    rows_one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [1, 2, 3]              # one log row per step: written once
    assert all(r["rank_param_diff"] == 0.0 for r in rows_two)      # the two processes hold the same weights
    for a, b in zip(rows_one, rows_two):                           # the global-batch loss, not a per-process one
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


def test_launched_sft_checkpoints_once_and_resumes_after_a_kill(tiny_path, data_dir, tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    shutil.copytree(data_dir, run / "data")
    cmd = [*ACCELERATE, "-m", "zoomdx_lib.train.launch", "--stage", "sft", "--profile", "smoke", "--run-dir", str(run),
           "--set", f"model__path={tiny_path}", "--set", "sft__engine=trl", "--set", "sft__lora_steps=3",
           "--set", "sft__batch_size=4", "--set", "sft__checkpoint_every=2", "--set", "hp__lora_dropout=0.0"]
    summary = json.loads(_run(cmd, tmp_path).strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["steps"] == 3
    ckpts = run / "checkpoints" / "sft_zoom_lora"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000003"]
    assert not list(ckpts.glob(".tmp-*"))
    assert [json.loads(x)["step"] for x in (ckpts / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    full = _adapter(run / "models" / "sft_zoom_lora")

    # a kill after step 2's checkpoint: the last checkpoint and the adapter never got written
    shutil.rmtree(ckpts / "checkpoint-000003")
    (ckpts / "latest.json").write_text(json.dumps({"step": 2, "path": "checkpoint-000002"}))
    shutil.rmtree(run / "models" / "sft_zoom_lora")
    _run(cmd, tmp_path)
    resumed = _adapter(run / "models" / "sft_zoom_lora")
    assert max(float((full[k] - resumed[k]).abs().max()) for k in full) < 1e-6
    rows = [json.loads(x) for x in (ckpts / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["rank_param_diff"] == 0.0 for r in rows)


def test_two_process_grpo_matches_one_over_the_same_prompts(tiny_path, tmp_path):
    """Scripted completions (TRL's tool loop, crop, rewards, advantages and loss run for real) and plain SGD:
    each process scores whole groups, advantages are gathered, so two processes must give one process's update."""
    driver = [str(HERE / "multiprocess_grpo_driver.py"), str(tiny_path)]
    _run([sys.executable, *driver, str(tmp_path / "one"), "2"], tmp_path)
    _run([*ACCELERATE, *driver, str(tmp_path / "two"), "2"], tmp_path)
    one, two = _adapter(tmp_path / "one" / "adapter"), _adapter(tmp_path / "two" / "adapter")
    moved = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    assert moved > 1e-4 and max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-6
    sync1, sync2 = (json.loads((tmp_path / d / "sync.json").read_text()) for d in ("one", "two"))
    assert sync2["rank_param_diff"] == [0.0, 0.0]
    # the first process holds the first of the step's two groups: its advantages are one process's first group
    np.testing.assert_allclose(sync2["advantages"], sync1["advantages"][:1], atol=1e-9)


def test_launched_grpo_through_trl_samples_on_two_processes(tiny_path, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data_dir, run / "data")
    common = [*ACCELERATE, "-m", "zoomdx_lib.train.launch", "--profile", "smoke", "--run-dir", str(run),
              "--set", f"model__path={tiny_path}", "--set", "sft__engine=trl", "--set", "sft__lora_steps=2",
              "--set", "sft__batch_size=4"]
    _run([*common, "--stage", "sft"], tmp_path)
    out = _run([*common, "--stage", "grpo", "--set", "grpo__engine=trl", "--set", "grpo__steps=2",
                "--set", "grpo__prompts_per_step=2", "--set", "grpo__checkpoint_every=1"], tmp_path)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["steps"] == 2
    ckpts = run / "checkpoints" / summary["name"]
    rows = [json.loads(x) for x in (ckpts / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rank_param_diff"] == 0.0 for r in rows)
    assert json.loads((ckpts / "latest.json").read_text())["step"] == 2
    assert (Path(summary["adapter"]) / "adapter_model.safetensors").exists()


def test_explicit_engine_refuses_several_processes(tiny_path, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data_dir, run / "data")
    cmd = [*ACCELERATE, "-m", "zoomdx_lib.train.launch", "--stage", "sft", "--profile", "smoke", "--run-dir", str(run),
           "--set", f"model__path={tiny_path}", "--set", "sft__engine=explicit"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "needs sft.engine='trl'" in out.stdout + out.stderr
