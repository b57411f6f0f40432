"""GRPO sample-efficiency options: PPO epochs and clipping, loss normalisation, dynamic sampling, health warning."""
import numpy as np
import pytest
import torch

from zoomdx_lib.config import GRPOConfig, RolloutConfig
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.rl.rollout import ScriptedPolicy, rollout
from zoomdx_lib.schema import Sample
from zoomdx_lib.train.common import trainable_adamw
from zoomdx_lib.train.grpo import GRPOHealthWarning, _loss_denominator, grpo_step, health_monitor, sequence_logprobs

T1 = '<think>Scan.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>'
GOOD = '<think>Dark.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'
BAD = '<think>Bright.</think>\n<answer>{"echo": "Hyperechoic"}</answer>'


def _sample(sid="s"):
    return Sample(id=sid, image_path="x", box=(60, 96, 144, 160), attribute="echo", label="Hypoechoic", c=1,
                  organ="liver", question="Analyze the echo feature of the ultrasound image.", image_size=(256, 256))


def _peft(tiny_path):
    from peft import get_peft_model
    model, processor = load_model_and_processor(tiny_path)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config(rank=8, alpha=16)), processor


def _reward_good(trajs, sample):
    r = np.array([1.0 if t.label == "Hypoechoic" else 0.0 for t in trajs])
    return dict(individual=r, group_term=0.0, answers=[t.label for t in trajs], total=r, loc=r, acc=r, fmt=r,
                group=np.zeros_like(r))


def test_loss_denominators():
    old = [torch.zeros(3), torch.zeros(5), torch.zeros(0)]
    roll = RolloutConfig(max_new_tokens=(10, 20))
    assert _loss_denominator(old, GRPOConfig(loss_norm="sequence"), roll) == 2.0
    assert _loss_denominator(old, GRPOConfig(loss_norm="token"), roll) == 8.0
    assert _loss_denominator(old, GRPOConfig(loss_norm="constant"), roll) == 60.0
    with pytest.raises(ValueError, match="loss_norm"):
        GRPOConfig(loss_norm="mean")
    with pytest.raises(ValueError, match="ppo_epochs"):
        GRPOConfig(ppo_epochs=0)


def _one_step(tiny_path, speckle_image, **cfg_kw):
    """(gain in the rewarded completion's summed log-probability, the step's row) after one GRPO step."""
    model, processor = _peft(tiny_path)
    items = [(_sample(), speckle_image)]
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD if i % 2 == 0 else BAD)
    [group] = rollout(items, policy, processor, group_size=8)
    with torch.no_grad():
        before = float(sequence_logprobs(model, processor, [group[0]], 0.7)[0].sum())
    cfg = GRPOConfig(estimator="group", **cfg_kw)
    torch.manual_seed(0)
    row = grpo_step(model, processor, items, cfg, trainable_adamw(model, cfg.lr), policy=policy, reward_fn=_reward_good)
    with torch.no_grad():
        after = float(sequence_logprobs(model, processor, [group[0]], 0.7)[0].sum())
    return after - before, row


@pytest.mark.parametrize("loss_norm", ["sequence", "token", "constant"])
def test_every_loss_norm_raises_the_rewarded_completion(tiny_path, speckle_image, loss_norm):
    gain, row = _one_step(tiny_path, speckle_image, lr=1e-3, loss_norm=loss_norm)
    assert gain > 0
    assert row["ratio_max_dev"] < 1e-4 and row["clip_frac"] == 0.0   # one pass: the ratio is 1 exactly
    assert np.isfinite(row["entropy"]) and row["entropy"] > 0
    assert 0.0 < row["box_area"] < 1.0


def test_ppo_epochs_move_further_and_then_clip(tiny_path, speckle_image):
    """Within the clip range, four passes over the same rollouts move the policy further than one; at a
    large learning rate the later passes leave the clip range, and the row says how often."""
    one, _ = _one_step(tiny_path, speckle_image, lr=2e-4, ppo_epochs=1)
    four, row = _one_step(tiny_path, speckle_image, lr=2e-4, ppo_epochs=4)
    assert 0 < one < four and row["ppo_epochs"] == 4 and row["ratio_max_dev"] < 1e-4
    _, big = _one_step(tiny_path, speckle_image, lr=5e-3, ppo_epochs=3)
    assert big["clip_frac"] > 0.0


def test_dynamic_sampling_refills_groups_without_signal(tiny_path, speckle_image):
    """A prompt whose 8 rollouts all get the same reward is replaced by a refill prompt that has signal."""
    model, processor = _peft(tiny_path)
    flat = {"dead": lambda i: GOOD, "live": lambda i: GOOD if i % 2 == 0 else BAD}
    calls = []

    class ByPrompt(ScriptedPolicy):   # turn 2 of a row depends on which prompt it belongs to
        def __call__(self, inputs, turn, max_new_tokens, do_sample, temperature):
            calls.append(turn)
            return super().__call__(inputs, turn, max_new_tokens, do_sample, temperature)

    state = {"kind": "dead"}
    policy = ByPrompt(processor, [T1], lambda i: flat[state["kind"]](i))

    def refill(n):
        state["kind"] = "live"
        return [(_sample(f"r{k}"), speckle_image) for k in range(n)]

    cfg = GRPOConfig(lr=1e-3, estimator="group", refill_rounds=2)
    row = grpo_step(model, processor, [(_sample("d"), speckle_image)], cfg, trainable_adamw(model, cfg.lr),
                    policy=policy, reward_fn=_reward_good, refill=refill)
    assert row["refill_prompts"] == 1 and row["no_signal_share"] == 0.0
    assert calls.count(1) == 2          # one rollout round for the dead prompt, one for its replacement
    off = grpo_step(model, processor, [(_sample("d"), speckle_image)], GRPOConfig(estimator="group"),
                    trainable_adamw(model, 1e-3), policy=ByPrompt(processor, [T1], flat["dead"]),
                    reward_fn=_reward_good)
    assert off["refill_prompts"] == 0 and off["no_signal_share"] == 1.0


def test_health_monitor_warns_once_when_the_format_collapses():
    check = health_monitor(window=2)
    for step, v in enumerate([1.0, 0.9, 0.8, 0.7], 1):
        check({"step": step, "tool_call_valid": v, "answer_valid": 1.0})
    with pytest.warns(GRPOHealthWarning, match="tool_call_valid"):
        check({"step": 5, "tool_call_valid": 0.3, "answer_valid": 1.0})
        check({"step": 6, "tool_call_valid": 0.3, "answer_valid": 1.0})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check({"step": 7, "tool_call_valid": 0.1, "answer_valid": 1.0})   # warned once already


def test_balanced_prompts_cover_the_labels_of_one_attribute_and_resume_the_same():
    from zoomdx_lib.train.grpo import balanced_prompts
    rng = np.random.default_rng(0)
    vocab = {"echo": ["Anechoic", "Hypoechoic", "Isoechoic", "Hyperechoic"], "margin": ["Circumscribed", "Not circumscribed"]}
    labels = [(a, vocab[a][int(rng.integers(len(vocab[a])))]) for a in rng.choice(list(vocab), 300)]
    counts = {}
    for step in range(200):
        idx = [int(i) for i in rng.integers(len(labels), size=4)]
        picked = balanced_prompts(labels, idx, np.random.default_rng([0, *idx]))
        assert picked == balanced_prompts(labels, idx, np.random.default_rng([0, *idx]))   # pure: resumes alike
        attrs = {labels[i][0] for i in picked}
        assert attrs == {labels[idx[0]][0]} and len(picked) == 4
        names = [labels[i][1] for i in picked]
        n_labels = len(vocab[labels[idx[0]][0]])
        assert len(set(names)) == min(4, n_labels)              # 4 echo labels once each; 2 margin labels twice each
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    echo = [counts[k] for k in vocab["echo"]]
    assert max(echo) == min(echo)                               # an echo step holds each label exactly once


def test_train_grpo_hands_the_step_the_balanced_prompts(monkeypatch, tmp_path):
    import zoomdx_lib.train.grpo as GR
    seen = []

    def fake_step(model, processor, items, cfg, opt, *args, **kwargs):
        seen.append([(s.attribute, s.label) for s, _ in items])
        return {"reward_total": 0.0, "mean_iou": 0.0, "tool_call_valid": 1.0, "answer_valid": 1.0}

    monkeypatch.setattr(GR, "grpo_step", fake_step)
    items = [(Sample(id=f"s{k}", image_path="x", box=(0, 0, 10, 10), attribute="echo",
                     label=["Anechoic", "Hypoechoic", "Isoechoic"][k % 3], c=1, organ="liver", question="q"), None)
             for k in range(30)]
    class Tiny(torch.nn.Linear):   # the loop checkpoints an adapter at the end
        def save_pretrained(self, path, **kwargs):
            torch.save(self.state_dict(), f"{path}.pt")

    model = Tiny(2, 2)
    GR.train_grpo(model, None, items, GRPOConfig(steps=4, prompts_per_step=3, balance_labels=True, checkpoint_every=100),
                  tmp_path, progress=False)
    assert len(seen) == 4 and all(sorted(l for _, l in step) == ["Anechoic", "Hypoechoic", "Isoechoic"] for step in seen)


def test_the_trl_engine_refuses_options_only_the_explicit_engine_has():
    GRPOConfig(engine="trl")   # defaults are fine
    for field, value in [("ppo_epochs", 2), ("loss_norm", "token"), ("refill_rounds", 1), ("balance_labels", True),
                         ("policy_turns", "turn1")]:
        with pytest.raises(ValueError, match=f"{field}.*only the explicit engine"):
            GRPOConfig(engine="trl", **{field: value})
        GRPOConfig(engine="explicit", **{field: value})


@pytest.mark.parametrize("turns", ["turn1", "turn2"])
def test_policy_turns_send_the_advantage_to_one_turn_only(tiny_path, speckle_image, turns):
    """At ratio 1 the clipped loss of one trajectory with advantage 1 ("sequence" norm) has the gradient of
    minus the mean log-probability of the chosen turn's tokens, and nothing from the other turn."""
    from zoomdx_lib.config import PAPER
    from zoomdx_lib.train.grpo import _micro_batch_loss, turn_weights

    model, processor = _peft(tiny_path)
    model.eval()
    policy = ScriptedPolicy(processor, [T1], lambda i: GOOD)
    [[traj]] = rollout([(_sample(), speckle_image)], policy, processor, group_size=1)
    weight = turn_weights(traj, turns)
    assert 0 < weight.sum() < weight.numel()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss_fn):
        for p in params:
            p.grad = None
        loss_fn()
        return torch.cat([p.grad.reshape(-1) for p in params])

    with torch.no_grad():
        old = sequence_logprobs(model, processor, [traj], PAPER.temperature)
    stats = dict(kls=[], entropies=[], clipped=0, tokens=0, ratio_dev=0.0)
    cfg = GRPOConfig(estimator="group", policy_turns=turns)
    got = grads(lambda: _micro_batch_loss(model, processor, [traj], old, None, [1.0], 1.0, cfg, PAPER, stats, 0))

    def reference():
        lp = sequence_logprobs(model, processor, [traj], PAPER.temperature)[0]
        (-(lp * weight).sum() / weight.sum()).backward()
    want = grads(reference)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4) and want.abs().sum() > 0
    with pytest.raises(ValueError, match="policy_turns"):
        GRPOConfig(policy_turns="box")
