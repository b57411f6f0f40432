"""Positive controls: the constant-answer control's share rises under GRPO; result rows and pairing."""
import json

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


def test_sampled_values_average_every_rollout():
    recs = [dict(id="0", c=1, label="A", attribute="echo",
                 rollouts=[dict(answer="A", iou=0.9), dict(answer="B", iou=0.1), dict(answer="A", iou=0.2)])]
    greedy, _ = rl_controls.control_values("iou", recs)
    sampled, _ = rl_controls.control_values("iou", recs, sampled=True)
    assert greedy.tolist() == [0.9] and sampled.tolist() == pytest.approx([0.4])
    acc, _ = rl_controls.control_values("accuracy", recs, sampled=True)
    assert acc.tolist() == pytest.approx([2 / 3])
    head = rl_controls.group_headroom(recs)
    assert head["iou_best"] == 0.9 and head["acc_any"] == 1.0 and head["n_cases"] == 1


def test_paired_change_is_paired_over_cases():
    before = [_rec(i, ["Hypoechoic"] * 4) for i in range(20)]
    after = [_rec(i, ["Anechoic"] * 2 + ["Hypoechoic"] * 2) for i in range(20)]
    out = rl_controls.paired_change("constant", before, after, n_boot=200)
    assert out["start"] == 0.0 and out["end"] == 0.5 and out["delta"] == 0.5
    assert out["delta_ci"] == [0.5, 0.5] and out["n_cases"] == 20   # every case moved by the same amount
    with pytest.raises(ValueError, match="unknown control"):
        rl_controls.run_control("format", 1, "unused")


def test_constant_reward_drives_the_update_towards_the_constant_answer(tiny_path, speckle_image):
    """One GRPO step with the constant control's reward on rollouts that answer the constant label or another:
    the constant answer's trajectory gains log-probability relative to the other's."""
    import torch
    from peft import get_peft_model

    from zoomdx_lib.config import GRPOConfig
    from zoomdx_lib.model.load import load_model_and_processor, lora_config
    from zoomdx_lib.rl.controls import control_score_group
    from zoomdx_lib.rl.rollout import ScriptedPolicy, rollout
    from zoomdx_lib.schema import Sample
    from zoomdx_lib.train.common import trainable_adamw
    from zoomdx_lib.train.grpo import grpo_step, sequence_logprobs

    t1 = '<think>Scan.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>'
    const = f'<think>Look.</think>\n<answer>{{"echo": "{constant_answer("echo")}"}}</answer>'
    other = '<think>Look.</think>\n<answer>{"echo": "Hyperechoic"}</answer>'
    sample = Sample(id="s", image_path="x", box=(60, 96, 144, 160), attribute="echo", label="Hyperechoic", c=1,
                    organ="liver", question="Analyze the echo feature of the ultrasound image.", image_size=(256, 256))
    model, processor = load_model_and_processor(tiny_path)
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(rank=8, alpha=16))
    policy = ScriptedPolicy(processor, [t1], lambda i: const if i % 2 == 0 else other)
    items = [(sample, speckle_image)]
    [group] = rollout(items, policy, processor, group_size=8)
    with torch.no_grad():
        before = [float(lp.sum()) for lp in sequence_logprobs(model, processor, group[:2], 0.7)]
    row = grpo_step(model, processor, items, GRPOConfig(lr=1e-3, estimator="group"), trainable_adamw(model, 1e-3),
                    policy=policy, reward_fn=control_score_group("constant"))
    with torch.no_grad():
        after = [float(lp.sum()) for lp in sequence_logprobs(model, processor, group[:2], 0.7)]
    assert row["reward_total"] == 0.5            # half the rollouts gave the constant answer (the label is another)
    # what the sampled share follows: the constant answer's log-likelihood relative to the other one
    assert after[0] - after[1] > before[0] - before[1] + 0.1


@pytest.mark.slow
def test_control_command_prints_its_row_and_resumes(tmp_path, capsys):
    """The command end to end at a miniature size: an SFT start trained into --out, GRPO with the constant
    reward, both adapters evaluated on the same fresh cases, one JSON row printed; a rerun retrains nothing
    and prints the same row. (Whether the share rises is measured at the cpu profile's size: docs/rl.md.)"""
    args = ["--control", "constant", "--steps", "3", "--out", str(tmp_path), "--n-eval", "2", "--no-progress",
            "--set", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]]
    rl_controls.main(args)
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"control", "steps", "start", "end", "delta", "delta_ci"} <= set(row)
    assert row["control"] == "constant" and row["steps"] == 3 and row["n_cases"] == 4
    assert 0 <= row["start"] <= 1 and 0 <= row["end"] <= 1 and row["delta_ci"][0] <= row["delta"] <= row["delta_ci"][1]
    arm = tmp_path / rl_controls.arm_name("constant", 3, dict(SMALL))
    log = [json.loads(line) for line in (arm / "checkpoints" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(0 <= r["reward_total"] <= 1 for r in log)
    assert json.loads((tmp_path / "controls.json").read_text())[0]["name"] == arm.name
    rl_controls.main(args)
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: again[k] for k in ("start", "end", "delta")} == {k: row[k] for k in ("start", "end", "delta")}


@pytest.mark.slow
def test_iou_control_also_reads_the_sampled_rollouts(tmp_path, capsys):
    """The iou control pairs greedy mIoU and the mean IoU of the sampled rollouts, and reports what GRPO could
    see in the start's and the trained policy's groups (best of G, spread)."""
    rl_controls.main(["--control", "iou", "--steps", "2", "--out", str(tmp_path), "--n-eval", "2", "--no-progress",
                      "--set", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()], "grpo__policy_turns=\"turn1\""])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["sampled"]["n_cases"] == row["n_cases"] and 0 <= row["sampled"]["start"] <= 1
    for head in (row["headroom_start"], row["headroom_end"]):
        assert head["rollouts"] == 8 and head["iou_mean"] <= head["iou_best"] + 1e-12
    assert abs(row["headroom_start"]["iou_mean"] - row["sampled"]["start"]) < 1e-9


@pytest.mark.slow
def test_supervised_reference_pairs_itself_and_the_base_with_the_start(tmp_path, capsys):
    """--supervised at a miniature size: the SFT start trained on for 2 steps on the true dialogues, evaluated
    on the start's fresh cases, with the base (no adapter) paired against the start too; a rerun trains nothing."""
    args = ["--control", "iou", "--supervised", "--steps", "2", "--lr", "1e-3", "--out", str(tmp_path), "--n-eval", "2",
            "--no-progress", "--set", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]]
    rl_controls.main(args)
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["reference"] == "supervised" and row["steps"] == 2 and row["dialogues"] == 2 * SMALL["sft__batch_size"]
    assert row["start_dialogues"] == SMALL["sft__lora_steps"] * SMALL["sft__batch_size"]
    assert row["n_cases"] == row["start_vs_base"]["n_cases"] and row["start_vs_base"]["end"] == row["start"]
    [arm] = tmp_path.glob("supervised_2_0.001_*")
    assert (arm / "adapter" / "adapter_config.json").exists() and len(row["loss_curve"]) == 2
    rows = json.loads((tmp_path / "controls.json").read_text())
    assert [r["name"] for r in rows if r.get("reference") == "supervised"] == [f"{arm.name}/iou"]
    rl_controls.main(args)
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["end"] == row["end"]
    with pytest.raises(ValueError, match="supervised reference"):
        rl_controls.run_supervised("constant", 1, tmp_path)


def test_degraded_records_change_the_tool_call_or_the_answer_only():
    from zoomdx_lib.protocol import extract_answer, parse_tool_call
    from zoomdx_lib.rl.controls import degraded_records
    call = '<think>Look.</think>\n<tool_call>{"bbox_2d": [40, 40, 120, 100]}</tool_call>'
    record = {"id": "r", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": call}]},
        {"role": "user", "content": [{"type": "image", "image": "crop.png"}, {"type": "text", "text": "(Zoomed view)"}]},
        {"role": "assistant", "content": [{"type": "text", "text": '<answer>{"echo": "Hyperechoic"}</answer>'}]}]}
    [out] = degraded_records([record], "box", 0.5)
    new = out["messages"][1]["content"][0]["text"]
    assert new.startswith("<think>Look.</think>\n") and record["messages"][1]["content"][0]["text"] == call
    assert parse_tool_call(new, (256, 256), (256, 256)).box_model == (60.0, 55.0, 100.0, 85.0)
    assert out["messages"][2:] == record["messages"][2:]
    many = degraded_records([dict(record, id=str(i)) for i in range(200)], "answer", 0.6, seed=3)
    answers = [extract_answer(r["messages"][3]["content"][0]["text"], "echo").label for r in many]
    assert 0.5 < answers.count(constant_answer("echo")) / 200 < 0.7 and set(answers) == {"Anechoic", "Hyperechoic"}
    assert all(r["messages"][:3] == record["messages"][:3] for r in many)
    assert degraded_records([record] * 5, "answer", 0.6, seed=3) == degraded_records([record] * 5, "answer", 0.6, seed=3)
    with pytest.raises(ValueError, match="unknown degradation"):
        degraded_records([record], "shape", 1.0)
    with pytest.raises(ValueError, match="KIND=AMOUNT"):
        rl_controls.parse_degrade("box")


@pytest.mark.slow
def test_recovery_control_starts_from_the_degraded_policy(tmp_path, capsys, monkeypatch):
    """--degrade box=0.5: the start is the SFT start trained on half-size boxes, and both ends pair against it."""
    monkeypatch.setattr(rl_controls, "DEGRADE_STEPS", 3)
    rl_controls.main(["--control", "iou", "--steps", "2", "--out", str(tmp_path), "--n-eval", "2", "--no-progress",
                      "--degrade", "box=0.5", "--set", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["start_from"] == "sft_start_box0.5" and row["train_seed"] == 0
    assert (tmp_path / "sft_start_box0.5" / "adapter" / "adapter_config.json").exists()
    assert list(tmp_path.glob("iou_2_*_from_box0.5/result.json"))
