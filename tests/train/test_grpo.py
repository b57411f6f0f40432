"""GRPO: a step raises the log-probability of the rewarded completion; real rewards; resume."""
import numpy as np
import pytest
import torch

from zoomdx_lib.train.checkpoints import latest_checkpoint
from zoomdx_lib.config import PAPER
from zoomdx_lib.config import GRPOConfig, RolloutConfig
from zoomdx_lib.rl.rewards import score_group
from zoomdx_lib.train.grpo import grpo_step, sequence_logprobs, train_grpo
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.rl.rollout import ScriptedPolicy, rollout
from zoomdx_lib.schema import Sample

T1 = '<think>Scan.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>'
GOOD = '<think>Dark.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'
BAD = '<think>Bright.</think>\n<answer>{"echo": "Hyperechoic"}</answer>'


def _sample(c=1):
    return Sample(id="s", image_path="x", box=(60, 96, 144, 160), attribute="echo", label="Hypoechoic", c=c,
                  organ="liver", question="Analyze the echo feature of the ultrasound image.", image_size=(256, 256))


def _peft(tiny_path):
    from peft import get_peft_model
    model, processor = load_model_and_processor(tiny_path)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config(rank=8, alpha=16)), processor


def test_score_group_uses_the_real_rollouts(tiny, speckle_image):
    _, processor = tiny
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i < 6 else BAD)
    [group] = rollout([(_sample(), speckle_image)], policy, processor, group_size=8)
    s = score_group(group, _sample())
    assert s["answers"] == ["Hypoechoic"] * 6 + ["Hyperechoic"] * 2
    assert s["group_term"] == 1.0  # c=1, kappa 0.75 >= delta, mode correct
    assert np.allclose(s["fmt"], 1.0) and s["loc"].min() > 0.9
    assert np.allclose(s["total"][:6], PAPER.lambda_loc * s["loc"][:6] + 0.3 + 0.1 + 0.5)
    acc_only = score_group(group, _sample(c=0), variant="accuracy_only")
    assert acc_only["group_term"] == 0.0 and acc_only["individual"][0] > acc_only["individual"][7]


@pytest.mark.slow
def test_one_step_raises_logprob_of_rewarded_completion(tiny_path, speckle_image):
    model, processor = _peft(tiny_path)
    items = [(_sample(), speckle_image)]
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i % 2 == 0 else BAD)

    def scripted_reward(trajs, sample):  # reward only the GOOD completion
        r = np.array([1.0 if t.label == "Hypoechoic" else 0.0 for t in trajs])
        return dict(individual=r, group_term=0.0, answers=[t.label for t in trajs], total=r, loc=r, acc=r, fmt=r,
                    group=np.zeros_like(r))

    [group] = rollout(items, policy, processor, group_size=8)
    good, bad = group[0], group[1]
    with torch.no_grad():
        before = [float(lp.sum()) for lp in sequence_logprobs(model, processor, [good, bad], 0.7)]
    cfg = GRPOConfig(lr=5e-3, estimator="group")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    row = grpo_step(model, processor, items, cfg, opt, policy=policy, reward_fn=scripted_reward)
    with torch.no_grad():
        after = [float(lp.sum()) for lp in sequence_logprobs(model, processor, [good, bad], 0.7)]
    # the rewarded completion gains log-probability, and gains it relative to the unrewarded one
    assert after[0] > before[0], (before, after)
    assert after[0] - after[1] > before[0] - before[1] + 0.5, (before, after)
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert row["no_signal_share"] == 0.0 and row["time_generation_s"] > 0


@pytest.mark.slow
def test_paper_group_estimator_gets_no_signal_from_a_constant_group(tiny_path, speckle_image):
    model, processor = _peft(tiny_path)
    policy = ScriptedPolicy(processor, [T1], [GOOD])  # all 8 identical: every reward equal
    cfg = GRPOConfig(lr=5e-3, estimator="group")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    row = grpo_step(model, processor, [(_sample(), speckle_image)], cfg, opt, policy=policy)
    assert row["no_signal_share"] == 1.0 and row["reward_group"] == 1.0


@pytest.mark.slow
def test_grpo_resume_continues_from_saved_step(tiny_path, speckle_image, tmp_path):
    items = [(_sample(), speckle_image), (_sample(c=0), speckle_image)]
    cfg = GRPOConfig(steps=3, prompts_per_step=1, checkpoint_every=2)
    short = RolloutConfig(max_new_tokens=(8, 8))

    class Stop(Exception):
        pass

    def stop(row):
        if row["step"] == 3:
            raise Stop

    model, processor = _peft(tiny_path)
    with pytest.raises(Stop):
        train_grpo(model, processor, items, cfg, tmp_path, rollout_cfg=short, progress=False, callbacks=[stop])
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002"
    model2, _ = _peft(tiny_path)
    seen = []
    rows = train_grpo(model2, processor, items, cfg, tmp_path, rollout_cfg=short, progress=False,
                      callbacks=[lambda r: seen.append(r["step"])])
    assert seen == [3] and [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_ratio_is_exactly_one_before_the_update_despite_lora_dropout(tiny_path, speckle_image):
    model, processor = _peft(tiny_path)          # LoRA dropout 0.05
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i % 2 == 0 else BAD)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    row = grpo_step(model, processor, [(_sample(), speckle_image)], GRPOConfig(micro_batch=3), opt, policy=policy)
    assert row["ratio_max_dev"] == 0.0 and row["no_signal_share"] == 0.0


@pytest.mark.slow
def test_update_does_not_depend_on_the_micro_batch(tiny_path, speckle_image):
    """Backward per micro-batch gives the gradient of the whole batch: same step at micro-batch 1 and 16."""
    items = [(_sample(), speckle_image), (_sample(c=0), speckle_image)]
    after = []
    for micro in (1, 16):
        model, processor = _peft(tiny_path)
        policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i % 3 else BAD)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        grpo_step(model, processor, items, GRPOConfig(micro_batch=micro), opt, policy=policy)
        after.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, p in after[0].items():
        assert torch.allclose(p, after[1][name], atol=1e-6), name


@pytest.mark.slow
def test_step_with_gradient_checkpointing_updates_lora_with_ratio_one(tiny_path, speckle_image):
    """The paper profile trains with gradient checkpointing: the loss pass runs in train mode (dropout at p = 0)."""
    from peft import get_peft_model
    model, processor = load_model_and_processor(tiny_path, gradient_checkpointing=True)
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(rank=8, alpha=16))
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i % 2 == 0 else BAD)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    row = grpo_step(model, processor, [(_sample(), speckle_image)], GRPOConfig(micro_batch=4), opt, policy=policy)
    assert row["ratio_max_dev"] == 0.0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert all(m.p == 0.05 for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" in n)
