"""Positive controls: the constant-answer control's share rises under GRPO; result rows and pairing."""
import json

import numpy as np
import pytest

from zoomdx_lib.rl.controls import constant_answer
from zoomdx_lib.workbook import rl_controls

# A miniature cpu profile: few training cases, a short LoRA SFT start, GRPO with a large step.
SMALL = {"data__n_train_per_organ": 12, "data__n_test_per_organ": 2, "sft__lora_steps": 6, "sft__batch_size": 4,
         "grpo__prompts_per_step": 2, "grpo__lr": 2e-3, "grpo__ppo_epochs": 2, "grpo__checkpoint_every": 4,
         "rollout__max_new_tokens": [48, 40]}


def _rec(i, answers, c=1, label="Anechoic", iou=0.5, attribute="echo"):
    return dict(id=str(i), c=c, label=label, attribute=attribute,
                rollouts=[dict(answer=a, iou=iou, tool_error=None) for a in answers])


def test_control_values_read_the_right_quantity():
    recs = [_rec(0, ["Anechoic", "Hypoechoic"]), _rec(1, ["Hypoechoic", "Hypoechoic"], c=0, iou=0.2)]
    share, mask = rl_controls.control_values("constant", recs)
    assert share.tolist() == [0.5, 0.0] and mask.all()
    iou, mask = rl_controls.control_values("iou", recs)
    assert iou.tolist() == [0.5, 0.2] and mask.tolist() == [True, False]
    acc, _ = rl_controls.control_values("accuracy", recs)
    assert acc.tolist() == [1.0, 0.0]
    assert constant_answer("echo") == "Anechoic"


def test_paired_change_is_paired_over_cases():
    before = [_rec(i, ["Hypoechoic"] * 4) for i in range(20)]
    after = [_rec(i, ["Anechoic"] * 2 + ["Hypoechoic"] * 2) for i in range(20)]
    out = rl_controls.paired_change("constant", before, after, n_boot=200)
    assert out["start"] == 0.0 and out["end"] == 0.5 and out["delta"] == 0.5
    assert out["delta_ci"] == [0.5, 0.5] and out["n_cases"] == 20   # every case moved by the same amount
    with pytest.raises(ValueError, match="unknown control"):
        rl_controls.run_control("format", 1, "unused")


@pytest.mark.slow
def test_constant_control_share_rises(tmp_path, capsys):
    """From the shipped base's short zoom SFT start, 12 GRPO steps rewarding one constant answer raise the
    share of sampled rollouts that give it, on fresh cases; the command prints the result row; a rerun
    resumes (nothing retrained) and gives the same row."""
    args = ["--control", "constant", "--steps", "12", "--out", str(tmp_path), "--n-eval", "6", "--no-progress",
            "--set", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]]
    rl_controls.main(args)
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"control", "steps", "start", "end", "delta", "delta_ci"} <= set(row)
    assert row["control"] == "constant" and row["steps"] == 12 and row["n_cases"] == 12
    assert row["end"] > row["start"] + 0.15 and row["delta_ci"][0] > 0, row
    arm = tmp_path / rl_controls.arm_name("constant", 12, {k: v for k, v in SMALL.items()})
    log = [json.loads(line) for line in (arm / "checkpoints" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 12 and np.mean([r["reward_total"] for r in log[-4:]]) > np.mean([r["reward_total"] for r in log[:4]])
    rl_controls.main(args)
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: again[k] for k in ("start", "end", "delta")} == {k: row[k] for k in ("start", "end", "delta")}
