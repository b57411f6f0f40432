"""Rollout engine with a scripted policy (chosen texts) and with the real tiny model."""
import torch
from PIL import Image

from zoomdx_lib.geometry import box_to_original, iou
from zoomdx_lib.rl.rollout import HFPolicy, ScriptedPolicy, rollout, single_turn_rollout
from zoomdx_lib.schema import Sample

GOOD1 = '<think>Scanning the image.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>'
GOOD2 = '<think>Darker than the tissue around it.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'


def _sample(i=0, question="Analyze the echo feature of the ultrasound image."):
    return Sample(id=f"s{i}", image_path="x.png", box=(60, 96, 144, 160), attribute="echo", label="Hypoechoic", c=1,
                  organ="liver", question=question, image_size=(256, 256))


def test_good_trajectory_runs_the_crop_between_turns(tiny, speckle_image):
    _, processor = tiny
    policy = ScriptedPolicy(processor, [GOOD1], [GOOD2])
    [[t]] = rollout([(_sample(), speckle_image)], policy, processor, group_size=1)
    assert t.tool.ok and not t.ended_early
    model_size = (224, 224)  # smoke profile: a 256 px image becomes 224 px of model input
    assert t.box == box_to_original((52, 84, 126, 140), (256, 256), model_size)
    assert iou(t.box, _sample().box) > 0.9
    # the crop is the PIL crop of that box, and it reached turn 2 as a second image
    assert t.crop is not None and t.crop.size[0] % 28 == 0
    turn2_inputs = policy.calls[1]["inputs"]
    assert turn2_inputs["image_grid_thw"].shape[0] == 2
    assert t.label == "Hypoechoic" and t.answer.valid
    ids, mask = t.sequence()
    text = processor.tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert "<tool_call>" in text and "<answer>" in text and "Zoomed" not in text  # crop turn is not policy


def test_broken_tool_call_ends_flagged_and_is_scored(tiny, speckle_image):
    _, processor = tiny
    policy = ScriptedPolicy(processor, ['<think>x</think>\n<tool_call>{"bbox_2d": [1, 2, 3]}</tool_call>'], [GOOD2])
    [[t]] = rollout([(_sample(), speckle_image)], policy, processor, group_size=1)
    assert t.ended_early and t.tool.error == "wrong_length"
    assert t.crop is None and t.turn2_text is None and t.label is None
    assert len(policy.calls) == 1  # no turn 2 was generated for it
    assert t.answer.error == "no_turn2"


def test_missing_answer_is_invalid_not_an_exception(tiny, speckle_image):
    _, processor = tiny
    policy = ScriptedPolicy(processor, [GOOD1], ["<think>I cannot tell.</think>"])
    [[t]] = rollout([(_sample(), speckle_image)], policy, processor, group_size=1)
    assert t.tool.ok and t.label is None and t.answer.error == "no_answer"


def test_groups_are_batched_and_mixed_outcomes_kept_apart(tiny, speckle_image):
    _, processor = tiny
    turn1 = lambda i: GOOD1 if i % 2 == 0 else "no call"  # noqa: E731
    policy = ScriptedPolicy(processor, turn1, [GOOD2])
    trajs = rollout([(_sample(0), speckle_image), (_sample(1), speckle_image)], policy, processor, group_size=4)
    assert [len(g) for g in trajs] == [4, 4]
    assert policy.calls[0]["rows"] == 8  # one batched call for all B x G rows of turn 1
    assert policy.calls[1]["rows"] == 4  # only the rows with a valid tool call go on
    assert [t.ended_early for t in trajs[0]] == [False, True, False, True]


def test_batched_greedy_equals_one_row_at_a_time(tiny, speckle_image):
    model, processor = tiny
    other = Image.fromarray((255 - __import__("numpy").asarray(speckle_image)))
    items = [(_sample(0), speckle_image), (_sample(1, "Describe the shape of the lesion."), other)]
    policy = HFPolicy(model, processor)
    batched = rollout(items, policy, processor, group_size=2, max_new_tokens=(12, 8))
    for k, item in enumerate(items):
        [[alone]] = rollout([item], policy, processor, group_size=1, max_new_tokens=(12, 8))
        for t in batched[k]:  # left padding and 3-D positions must not change greedy outputs
            assert t.turn1_ids == alone.turn1_ids
            assert t.turn2_ids == alone.turn2_ids


def test_single_turn_rollout_answers_without_zoom(tiny, speckle_image):
    _, processor = tiny
    policy = ScriptedPolicy(processor, [GOOD2], [])
    [[t]] = single_turn_rollout([(_sample(), speckle_image)], policy, processor)
    assert t.label == "Hypoechoic" and t.box is None
    assert policy.calls[0]["inputs"]["image_grid_thw"].shape[0] == 1


def test_sampling_is_seeded(tiny, speckle_image):
    model, processor = tiny
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        trajs = rollout([(_sample(), speckle_image)], HFPolicy(model, processor), processor, group_size=3,
                        do_sample=True, temperature=0.7, max_new_tokens=(8, 8))
        runs.append([t.turn1_ids for t in trajs[0]])
    assert runs[0] == runs[1]
