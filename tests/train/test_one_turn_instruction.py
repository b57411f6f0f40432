"""The single-turn arm can ask with protocol.ONE_TURN_INSTRUCTION, in SFT and in evaluation alike
(SFTConfig.one_turn_instruction; a base pretrained on both formats answers in one turn only when asked)."""
import json

import pytest

from zoomdx_lib import protocol as P
from zoomdx_lib.eval.generate import Method, generation_fingerprint
from zoomdx_lib.rl.rollout import single_turn_rollout
from zoomdx_lib.train.sft import dialogue_records


def _write_single_split(tmp_path):
    recs = [{"id": f"s{i}", "messages": P.single_turn_messages(f"Question {i}?", P.turn("ok", P.format_answer("echo", "Anechoic")),
                                                               f"images/s{i}.png")} for i in range(3)]
    (tmp_path / "dialogues_single_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def _user_text(rec):
    return next(p["text"] for p in rec["messages"][0]["content"] if p.get("type") == "text")


def test_records_carry_the_instruction_only_when_asked(tmp_path):
    recs = _write_single_split(tmp_path)
    plain = dialogue_records(tmp_path, "train", "single")
    asked = dialogue_records(tmp_path, "train", "single", instruct=True)
    assert [_user_text(r) for r in plain] == [_user_text(r) for r in recs]
    assert [_user_text(r) for r in asked] == [P.one_turn_question(_user_text(r)) for r in recs]
    assert [r["messages"][1:] for r in asked] == [r["messages"][1:] for r in recs]   # answers untouched
    assert P.image_paths(asked[0]["messages"]) == P.image_paths(recs[0]["messages"])
    with pytest.raises(ValueError, match="mode 'single' only"):
        dialogue_records(tmp_path, "train", "zoom", instruct=True)


def test_evaluation_asks_as_trained_and_caches_apart(tiny, speckle_image):
    from types import SimpleNamespace
    model, processor = tiny
    sample = SimpleNamespace(id="a", question="What is the echogenicity?", attribute="echo")
    seen = []

    def policy(inputs, n, max_new, do_sample, temperature):
        seen.append(processor.tokenizer.decode(inputs["input_ids"][0]))
        return [processor.tokenizer.encode('<answer>{"echo": "Anechoic"}</answer>')]
    for instruct in (False, True):
        out = single_turn_rollout([(sample, speckle_image)], policy, processor, instruct=instruct)
        assert out[0][0].label == "Anechoic"
    assert P.ONE_TURN_INSTRUCTION not in seen[0] and P.ONE_TURN_INSTRUCTION in seen[1]
    plain, asked = Method("s", "single", "base"), Method("s", "single", "base", instruct=True)
    assert generation_fingerprint(plain, "greedy", 0) != generation_fingerprint(asked, "greedy", 0)
    assert generation_fingerprint(plain, "greedy", 0) == generation_fingerprint(Method("s", "single", "base"), "greedy", 0)


def test_the_model_registry_keeps_how_a_method_is_asked(tmp_path):
    from zoomdx_lib.config import get_profile
    from zoomdx_lib.workbook.rundir import Run
    run = Run("02_sft_zoom_then_diagnose", get_profile("smoke"), tmp_path)
    methods = [Method("zoom_sft", "zoom", str(tmp_path / "b"), None),
               Method("single_turn_sft", "single", str(tmp_path / "b"), str(tmp_path / "a"), instruct=True)]
    run.write_metrics({"models": run.registry(methods)})
    back = run.models("02_sft_zoom_then_diagnose")
    assert back["single_turn_sft"].instruct is True and back["zoom_sft"].instruct is False
    assert "instruct" not in run.registry(methods[:1])["zoom_sft"]     # older registries read the same
