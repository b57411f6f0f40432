"""The grounding check: fresh cases, the model's own box, answers from the oracle crop, constant baselines."""
import json

import numpy as np
import pytest

from zoomdx_lib.eval.grounding import fresh_cases, grounding_report, main, paired_grounding_difference
from zoomdx_lib.geometry import model_box, model_input_size, processor_pixel_bounds
from zoomdx_lib.protocol import format_answer, format_tool_call, turn
from zoomdx_lib.rl.rollout import ScriptedPolicy


def test_a_policy_that_sees_scores_one_and_the_baselines_are_constants(tiny):
    model, processor = tiny
    items = fresh_cases("breast", 6, seed=4242, size=256)
    assert len({s.id for s, _ in items}) == 6 and all(s.question for s, _ in items)
    lo, hi = processor_pixel_bounds(processor)
    calls = [turn("look", format_tool_call(model_box(s.box, im.size, model_input_size(*im.size, lo, hi))))
             for s, im in items]
    answers = [turn("read", format_answer(s.attribute, s.label)) for s, _ in items]
    seeing = ScriptedPolicy(processor, calls, answers)
    rep = grounding_report(model, processor, items, 112 * 112, policy=seeing,
                           read_policy=ScriptedPolicy(processor, calls, answers), n_boot=50)
    assert rep["miou"] > 0.9 and rep["acc"] == 1.0 and rep["tool_call_valid"] == 1.0
    assert rep["miou_ci"][0] <= rep["miou"] <= rep["miou_ci"][1]
    boxes = np.array([s.box for s, _ in items])
    assert 0 < rep["mean_box_miou"] < rep["miou"] and boxes.std(0).max() > 0
    assert 0 < rep["majority_acc"] <= 1.0
    blind = grounding_report(model, processor, items, 112 * 112, policy=ScriptedPolicy(processor, ["no call"], ["x"]),
                             read_policy=ScriptedPolicy(processor, calls, ["<answer>{}</answer>"]), n_boot=50)
    assert blind["miou"] == 0.0 and blind["acc"] == 0.0 and blind["tool_call_valid"] == 0.0
    # crop context widens the oracle crop, never the scored box
    wide = grounding_report(model, processor, items, 112 * 112, policy=seeing,
                            read_policy=ScriptedPolicy(processor, calls, answers), n_boot=50, crop_context=0.25)
    assert wide["miou"] == rep["miou"] and wide["acc"] == 1.0


def test_command_prints_one_json_line(tiny_path, capsys):
    assert main(["--organ", "liver", "--n", "4", "--seed", "99", "--model", str(tiny_path), "--profile", "smoke"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"organ", "n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc"} <= set(line)
    assert line["organ"] == "liver" and line["n"] == 4


def test_command_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main(["--organ", "liver", "--n", "4", "--seed", "1", "--model", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_against_prints_the_paired_difference_of_two_checkpoints(tiny_path, capsys):
    assert main(["--organ", "breast", "--n", "4", "--seed", "98", "--model", str(tiny_path), "--profile", "smoke",
                 "--against", str(tiny_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["against_miou"] == line["miou"] and line["against_acc"] == line["acc"]
    assert line["miou_diff"] == [0.0, 0.0, 0.0] and line["acc_diff"] == [0.0, 0.0, 0.0]   # same model, same cases
    assert "cases" not in line


def test_paired_difference_names_a_case_missing_from_one_list():
    with pytest.raises(ValueError, match="case 3"):
        paired_grounding_difference([dict(id=i, iou=0.1, hit=True) for i in range(4)],
                                    [dict(id=i, iou=0.1, hit=True) for i in range(3)])


def test_single_turn_answers_are_scored_and_paired_with_the_true_crop_answers(tiny):
    model, processor = tiny
    items = fresh_cases("liver", 4, seed=4343, size=256)
    lo, hi = processor_pixel_bounds(processor)
    calls = [turn("look", format_tool_call(model_box(s.box, im.size, model_input_size(*im.size, lo, hi))))
             for s, im in items]
    answers = [turn("read", format_answer(s.attribute, s.label)) for s, _ in items]
    # one turn from the full view: right on the first two cases, a tool call (no answer) on the others
    one_turn = ScriptedPolicy(processor, answers[:2] + calls[2:], [])
    rep = grounding_report(model, processor, items, 112 * 112, policy=ScriptedPolicy(processor, calls, answers),
                           read_policy=ScriptedPolicy(processor, calls, answers), n_boot=50, per_case=True,
                           single_turn=True, single_policy=one_turn)
    assert rep["acc"] == 1.0 and rep["acc_single"] == 0.5
    assert rep["crop_minus_single"][0] == 0.5
    assert [c["single_hit"] for c in rep["cases"]] == [True, True, False, False]
    assert [c["single_answer"] for c in rep["cases"]][2:] == [None, None]
    seeing = ScriptedPolicy(processor, calls, answers)
    assert "acc_single" not in grounding_report(model, processor, items, 112 * 112, policy=seeing, read_policy=seeing,
                                                n_boot=20)
