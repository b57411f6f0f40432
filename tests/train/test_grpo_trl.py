"""GRPO through TRL's GRPOTrainer: the crop turn, rewards and advantages are the explicit loop's.

The scripted tests replace only the trainer's token sampler (`_generate_single_turn`) by chosen texts;
TRL's tool loop, response parsing, tool-turn rendering, image processing, reward calls and (in the
training test) loss and optimizer all run for real, and are compared with the explicit rollout
(:func:`zoomdx_lib.rl.rollout.rollout`), :func:`score_group` and :func:`compute_advantages`.
"""
import dataclasses
import functools
import json
import re

import numpy as np
import pytest
import torch
from peft import get_peft_model

from zoomdx_lib.config import PAPER, GRPOConfig, RolloutConfig, get_profile
from zoomdx_lib.geometry import model_input_size, processor_pixel_bounds
from zoomdx_lib.model import chat
from zoomdx_lib.model.build import (
    QWEN25_VL_CHAT_TEMPLATE,
    TINY_CHAT_TEMPLATE,
    build_tiny_checkpoint,
)
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.protocol import zoom_messages
from zoomdx_lib.rl.advantages import compute_advantages, credit_group_term
from zoomdx_lib.rl.rewards import score_group
from zoomdx_lib.rl.rollout import rollout
from zoomdx_lib.rl.zoom import zoom
from zoomdx_lib.schema import Sample
from zoomdx_lib.train import grpo_trl, grpo_trl_env, grpo_trl_render, grpo_trl_rewards
from zoomdx_lib.train.grpo import (
    LOG_KEYS,
    _log_row,
    grpo_step,
    log_end_values,
)
from zoomdx_lib.train.recipes import run_grpo

torch.set_num_threads(1)

EOS = "<|im_end|>"
GOOD = '<think>Dark.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'
BAD = '<think>Bright.</think>\n<answer>{"echo": "Hyperechoic"}</answer>'
SMOKE = get_profile("smoke")
ROLLOUT = RolloutConfig(max_new_tokens=(64, 64))


def _turn1(g: int, tail: str) -> str:
    return f"<think>Scan {g}.</think>\n{tail}"


def _call(x: int, y: int, w: int = 70, h: int = 60) -> str:
    return f'<tool_call>{{"bbox_2d": [{x}, {y}, {x + w}, {y + h}]}}</tool_call>'


# Two prompts (c=1, c=0) x G=8. Rows 0-5 zoom at different boxes and answer correctly, row 6 zooms and
# answers wrongly; row 7 calls outside the image in the first prompt (TRL replies and goes on to a turn 2,
# the explicit rollout stops; both score it as "no answer") and writes no call at all in the second.
TURN1 = ([_turn1(g, _call(40 + 6 * g, 70 + 4 * g, 60 + 3 * g)) for g in range(6)] + [_turn1(6, _call(50, 80))]
         + [_turn1(7, _call(300, 300))])
TURN1_B = TURN1[:7] + [_turn1(7, GOOD)]


def _sample(sid: str, c: int) -> Sample:
    return Sample(id=sid, image_path="x.png", box=(60, 96, 144, 160), attribute="echo", label="Hypoechoic", c=c,
                  organ="liver", question="Analyze the echo feature of the ultrasound image.", image_size=(256, 256))


class Script:
    """Chosen texts for both engines: turn 1 by row, turn 2 by the row's own turn 1 ("Scan k.")."""

    def __init__(self, processor, turn1):
        self.processor, self.turn1, self.trl_calls = processor, list(turn1), []

    def _turn2(self, row_ids) -> str:
        k = int(re.findall(r"Scan (\d+)\.", self.processor.tokenizer.decode(row_ids))[-1])
        return GOOD if k != 6 else BAD

    def _texts(self, turn, rows):
        if turn == 1:
            return [self.turn1[i % len(self.turn1)] + EOS for i in range(len(rows))]
        return [self._turn2(r) + EOS for r in rows]

    def __call__(self, inputs, turn, max_new_tokens, do_sample, temperature):   # the explicit rollout's policy
        rows = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
        return [chat.tokenize(self.processor, t)[:max_new_tokens] for t in self._texts(turn, rows)]

    def trl(self, trainer, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Stands in for GRPOTrainer._generate_single_turn (the token sampler), everything else is TRL's."""
        turn = 1 + len(self.trl_calls) % 2     # every generation batch here has a turn 2
        self.trl_calls.append({"n": len(prompt_ids), "mm": multimodal_fields, "images": images})
        return [chat.tokenize(self.processor, t) for t in self._texts(turn, prompt_ids)], None


@pytest.fixture(scope="module")
def paper_shaped_path(tmp_path_factory):
    """Qwen2.5-VL's chat template and special tokens on the smallest tiny sizes (the paper profile's model)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("paper_shaped"), SMOKE.model.min_pixels,
                                 SMOKE.model.max_pixels, seed=0, shape="paper", **SMOKE.model.tiny)


def _load(path):
    model, processor = load_model_and_processor(path)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config(rank=8, alpha=16)), processor


def _run_trl(model, processor, items, turn1, estimator="credit", variant="uncertainty", tmp_path=None):
    """TRL's generate-and-score pass on the items' G rows each (what one training step starts with)."""
    script = Script(processor, turn1)
    cfg = GRPOConfig(steps=1, prompts_per_step=len(items), estimator=estimator)
    with grpo_trl_render.tool_rendering(processor):
        trainer = grpo_trl.build_trainer(model, processor, items, cfg, tmp_path, variant, ROLLOUT, PAPER)
        trainer._generate_single_turn = functools.partial(script.trl, trainer)
        rows = [trainer.train_dataset[i] for i in range(len(items)) for _ in range(PAPER.group_size)]
        out = trainer._generate_and_score_completions(rows)
    return trainer, out, script


def _run_explicit(processor, items, turn1):
    return rollout(items, Script(processor, turn1), processor, group_size=PAPER.group_size,
                   max_new_tokens=ROLLOUT.max_new_tokens, crop_pixels=ROLLOUT.crop_pixels)


def _unpad(ids, mask):
    return ids[mask.bool()].tolist()


@pytest.mark.parametrize("shape", ["tiny", "paper"])
def test_turn2_gets_the_explicit_crop_turn(shape, tiny_path, paper_shaped_path, speckle_image, tmp_path):
    """Same tokens, same policy mask, and the crop TRL hands to turn 2 (tool message, generation and loss pixel
    values) is pixel-identical to zoomdx_lib.rl.zoom.zoom's crop of the same box."""
    model, processor = _load(tiny_path if shape == "tiny" else paper_shaped_path)
    items = [(_sample("a", 1), speckle_image)]
    trainer, out, script = _run_trl(model, processor, items, TURN1, tmp_path=tmp_path)
    [trajs] = _run_explicit(processor, items, TURN1)
    image = speckle_image.convert("RGB")
    lo, hi = processor_pixel_bounds(processor)
    msize = model_input_size(image.width, image.height, lo, hi)
    expected_images = []
    for g, (t, env) in enumerate(zip(trajs, trainer.environments)):
        ids = _unpad(out["prompt_ids"][g], out["prompt_mask"][g]) + _unpad(out["completion_ids"][g],
                                                                          out["completion_mask"][g])
        want_ids, want_mask = t.sequence()
        if g < 7:                       # a valid call: the same conversation, token for token
            assert ids == want_ids, g
            n_prompt = len(t.prompt_ids)
            assert out["tool_mask"][g][:len(ids) - n_prompt].tolist() == want_mask[n_prompt:], g
            _, crop = zoom(TURN1[g], image, msize, ROLLOUT.crop_pixels, min_pixels=lo, max_pixels=hi)
            assert env.crop.size == crop.size and np.array_equal(np.asarray(env.crop), np.asarray(crop)), g
            assert np.array_equal(np.asarray(t.crop), np.asarray(crop)), g
            expected_images.append([image, crop])
        else:                           # outside the image: no crop for either engine (TRL still replies)
            assert env.crop is None and t.ended_early and t.tool.error == "outside_image"
            assert ids[:len(want_ids)] == want_ids          # same prompt and turn 1
            expected_images.append([image])
    # the pixel values TRL feeds turn 2's generation and the loss pass are those of [full image, crop]
    enc = chat.encode_images(processor, [im for row in expected_images for im in row])
    want = torch.cat(enc.pixel_values)
    turn2 = script.trl_calls[1]["mm"]
    assert script.trl_calls[1]["n"] == 8 and torch.equal(turn2["pixel_values"].cpu(), want)
    assert torch.equal(turn2["image_grid_thw"].cpu(), torch.stack(enc.grid_thw))
    assert torch.equal(out["pixel_values"].cpu(), want) and out["num_images"] == [2] * 7 + [1]
    # the images of turn 2 are the original and the tool message's crop
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for got, want in
               zip(script.trl_calls[1]["images"], expected_images) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("variant,estimator", [("uncertainty", "group"), ("uncertainty", "batch"),
                                               ("uncertainty", "credit"), ("accuracy_only", "group")])
def test_rewards_and_advantages_are_the_explicit_loops(variant, estimator, tiny_path, speckle_image, tmp_path):
    model, processor = _load(tiny_path)
    items = [(_sample("a", 1), speckle_image), (_sample("b", 0), speckle_image)]
    turn1 = TURN1 + TURN1_B
    trainer, out, _ = _run_trl(model, processor, items, turn1, estimator, variant, tmp_path)
    groups = _run_explicit(processor, items, turn1)
    scores = [score_group(group, s, variant, PAPER) for group, (s, _) in zip(groups, items)]
    want = compute_advantages(np.stack([s["individual"] for s in scores]), [s["group_term"] for s in scores],
                              [s["answers"] for s in scores], [s.c for s, _ in items], [s.label for s, _ in items],
                              estimator, PAPER)
    assert [s["answers"] for s in scores] == [["Hypoechoic"] * 6 + ["Hyperechoic", None]] * 2
    # the advantages TRL trains with are the estimator's, to float32 precision
    assert np.allclose(out["advantages"].cpu().numpy(), want.reshape(-1), atol=1e-6)
    assert np.abs(want).max() > 0.5
    # each TRL reward function is the explicit component, and their weighted sum the estimator's reward
    logged = {k: np.array(v, dtype=float) for k, v in trainer._logs["rewards"].items()}
    assert np.allclose(logged["reward_loc"], np.concatenate([s["loc"] for s in scores]))
    assert np.allclose(logged["reward_fmt"], np.concatenate([s["fmt"] for s in scores]))
    acc = np.concatenate([s["acc"] for s in scores])
    if variant == "uncertainty":   # accuracy is rewarded on consensus cases only
        assert np.isnan(logged["reward_acc"][8:]).all() and np.allclose(logged["reward_acc"][:8], acc[:8])
    else:
        assert np.allclose(logged["reward_acc"], acc)
    group = (np.concatenate([credit_group_term(s["answers"], smp.c, smp.label) for s, (smp, _) in zip(scores, items)])
             if estimator == "credit" else np.repeat([s["group_term"] for s in scores], 8))
    assert np.allclose(logged["reward_group"], group)
    weights = [PAPER.lambda_loc, PAPER.lambda_acc, PAPER.lambda_fmt, PAPER.lambda_align]
    total = sum(w * np.nan_to_num(logged[k]) for w, k in zip(weights, ["reward_loc", "reward_acc", "reward_fmt",
                                                                       "reward_group"]))
    reward = np.concatenate([s["individual"] for s in scores]) + PAPER.lambda_align * group
    assert np.allclose(total, reward)
    if estimator != "credit":
        assert np.allclose(total, np.concatenate([s["total"] for s in scores]))
    # the log row is the explicit step's (TRL generated one more turn 2: the call outside the image)
    row = trainer.zoom_row
    want_row = _log_row(groups, items, scores, want, 0.0, [], 0.0, row["time_generation_s"], 0.0)
    assert set(row) == set(want_row) and row["tool_call_valid"] == pytest.approx(14 / 16)
    assert all(row[k] == pytest.approx(v) for k, v in want_row.items() if k != "generated_tokens")


def test_trl_batch_scaling_would_cancel_the_group_term(tiny_path, speckle_image, tmp_path):
    """Why the trainer replaces TRL's advantages: TRL's "batch" keeps the per-group baseline (R_group cancels)."""
    model, processor = _load(tiny_path)
    items = [(_sample("a", 1), speckle_image), (_sample("b", 0), speckle_image)]
    trainer, out, _ = _run_trl(model, processor, items, TURN1 + TURN1_B, "batch", tmp_path=tmp_path)
    logged = {k: np.nan_to_num(np.array(v, dtype=float)) for k, v in trainer._logs["rewards"].items()}
    weights = dict(zip(["reward_loc", "reward_acc", "reward_fmt", "reward_group"], trainer.zoom_rewards.weights()))
    R = sum(w * logged[k] for k, w in weights.items()).reshape(2, 8)
    trl_batch = (R - R.mean(1, keepdims=True)) / (R.std(ddof=1) + 1e-4)   # GRPOTrainer, scale_rewards="batch"
    ours = out["advantages"].cpu().numpy().reshape(2, 8)
    assert ours[0].mean() > 0.5 > -0.5 > ours[1].mean()        # the group that met its R_group is ahead
    assert np.allclose(trl_batch.mean(1), 0, atol=1e-6) and not np.allclose(ours, trl_batch, atol=1e-2)


@pytest.mark.parametrize("estimator", ["batch", "credit"])
def test_one_trl_update_is_the_explicit_update(estimator, tiny_path, speckle_image, tmp_path):
    """Same completions, same starting LoRA: TRL's loss pass (its padding, mRoPE positions, micro-batches,
    masks, clipping) gives the explicit step's gradient. Plain SGD with lr 1 makes the update the gradient."""
    items = [(_sample("a", 1), speckle_image)]
    turn1 = TURN1[:7] + [_turn1(7, _call(30, 60))]     # every call valid: no TRL-only second turn
    cfg = GRPOConfig(steps=1, prompts_per_step=1, lr=1.0, micro_batch=4, estimator=estimator, engine="trl")
    deltas, norms = [], []
    for engine in ("explicit", "trl"):
        model, processor = _load(tiny_path)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        script = Script(processor, turn1)
        if engine == "explicit":
            norms.append(grpo_step(model, processor, items, cfg, opt, "uncertainty", ROLLOUT, PAPER,
                                   policy=script)["grad_norm"])
        else:
            with grpo_trl_render.tool_rendering(processor):
                trainer = grpo_trl.build_trainer(model, processor, items, cfg, tmp_path, "uncertainty", ROLLOUT,
                                                 PAPER, optimizer=opt)
                trainer._generate_single_turn = functools.partial(script.trl, trainer)
                trainer.train()
            norms.append(trainer.state.log_history[0]["grad_norm"])
            assert trainer.args.gradient_accumulation_steps == 2      # 8 completions, micro-batches of 4
        deltas.append({n: (p.detach() - before[n]) for n, p in model.named_parameters() if n in before})
    assert norms[0] > 1e-3 and norms[1] == pytest.approx(norms[0], rel=1e-4)
    moved = [n for n, d in deltas[0].items() if d.abs().max() > 0]
    assert moved and all(torch.allclose(deltas[1][n], deltas[0][n], rtol=1e-3, atol=1e-7) for n in deltas[0])


def test_two_trl_steps_train_the_lora_and_log_like_the_explicit_loop(tiny_path, speckle_image, tmp_path,
                                                                    monkeypatch):
    model, processor = _load(tiny_path)
    items = [(_sample("a", 1), speckle_image), (_sample("b", 0), speckle_image)]
    script = Script(processor, TURN1)
    monkeypatch.setattr(grpo_trl.ZoomGRPOTrainer, "_generate_single_turn",
                        lambda self, *a, **k: script.trl(self, *a, **k))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    template = processor.chat_template
    cfg = GRPOConfig(steps=2, prompts_per_step=1, lr=5e-3, micro_batch=4, checkpoint_every=1, engine="trl")
    rows = grpo_trl.train_grpo_trl(model, processor, items, cfg, tmp_path, rollout_cfg=ROLLOUT, progress=False)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(set(LOG_KEYS) <= set(r) for r in rows) and np.isfinite(list(log_end_values(rows).values())).all()
    assert all(r["grad_norm"] > 0 and r["no_signal_share"] == 0.0 for r in rows), rows   # loss is ~0 at ratio 1
    changed = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    assert processor.chat_template == template and processor.tokenizer.response_template is None
    assert all(m.p == 0.05 for n, m in model.named_modules() if n.endswith("lora_dropout.default"))


def test_a_killed_trl_run_resumes_from_its_checkpoint_as_if_never_stopped(tiny_path, speckle_image, tmp_path,
                                                                         monkeypatch):
    items = [(_sample("a", 1), speckle_image), (_sample("b", 0), speckle_image)]
    cfg = GRPOConfig(steps=3, prompts_per_step=1, lr=5e-3, micro_batch=4, checkpoint_every=2, engine="trl")

    class Stop(Exception):
        pass

    def stop(row):
        if row["step"] == 3:
            raise Stop

    def train(out, callbacks=()):
        model, processor = _load(tiny_path)
        script = Script(processor, TURN1)
        monkeypatch.setattr(grpo_trl.ZoomGRPOTrainer, "_generate_single_turn",
                            lambda self, *a, **k: script.trl(self, *a, **k))
        return model, grpo_trl.train_grpo_trl(model, processor, items, cfg, out, rollout_cfg=ROLLOUT, progress=False,
                                              callbacks=callbacks)

    with pytest.raises(Stop):
        train(tmp_path / "killed", [stop])
    assert json.loads((tmp_path / "killed" / "latest.json").read_text())["step"] == 2
    seen = []
    resumed, rows = train(tmp_path / "killed", [lambda r: seen.append(r["step"])])
    straight, rows_straight = train(tmp_path / "straight")
    assert seen == [3] and [r["step"] for r in rows] == [1, 2, 3]
    assert [r["reward_total"] for r in rows] == [r["reward_total"] for r in rows_straight]   # the same prompts
    lora = {n: p for n, p in straight.named_parameters() if "lora_" in n}
    assert all(torch.allclose(p, lora[n], atol=1e-6) for n, p in resumed.named_parameters() if "lora_" in n)


def test_run_grpo_with_the_trl_engine_samples_and_writes_the_run_outputs(tiny_path, speckle_image, tmp_path,
                                                                       monkeypatch):
    """Real sampling (HF generate on CPU) through run_grpo: each turn within its token cap, no image tokens
    written by the model, the adapter and log rows where notebook 03 reads them."""
    model, _ = _load(tiny_path)
    model.save_pretrained(tmp_path / "sft_adapter", safe_serialization=True)
    items = [(_sample("a", 1), speckle_image)]
    monkeypatch.setattr("zoomdx_lib.train.recipes.load_items", lambda data_dir, split: items)
    hp = dataclasses.replace(PAPER, group_size=2)
    profile = get_profile("smoke", hp=hp, grpo__engine="trl", grpo__steps=1, rollout__max_new_tokens=(6, 6))
    seen = []
    original = grpo_trl_rewards.ZoomRewards.score

    def spy(self, completion_ids, environments):
        seen.extend(zip(completion_ids, [e.policy_mask for e in environments]))
        return original(self, completion_ids, environments)

    monkeypatch.setattr(grpo_trl_rewards.ZoomRewards, "score", spy)
    r = run_grpo(profile, tmp_path / "run", "uncertainty", "credit", str(tiny_path), str(tmp_path / "sft_adapter"),
                 progress=False)
    assert r["name"] == "grpo_uncertainty_credit" and (tmp_path / "run/models/grpo_uncertainty_credit"
                                                       / "adapter_model.safetensors").exists()
    assert len(r["log"]) == 1 and set(LOG_KEYS) <= set(r["log"][0]) and r["time_generation_s"] > 0
    _, processor = load_model_and_processor(tiny_path)
    image_ids = {processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>")}
    for ids, mask in seen:
        runs = "".join(map(str, mask)).split("0")
        assert all(len(run) <= 6 for run in runs)                      # one token cap per turn
        assert not image_ids & {t for t, m in zip(ids, mask) if m}     # the model never writes image tokens


def test_tool_templates_render_plain_conversations_as_before(tiny_path, paper_shaped_path):
    msgs = zoom_messages("Analyze the echo feature.", _turn1(0, _call(40, 70)), GOOD)
    for path, template in ((tiny_path, TINY_CHAT_TEMPLATE), (paper_shaped_path, QWEN25_VL_CHAT_TEMPLATE)):
        _, processor = load_model_and_processor(path)
        assert processor.chat_template == template
        plain = chat.dialogue_text(processor, "Analyze the echo feature.", _turn1(0, _call(40, 70)), GOOD)
        with grpo_trl_render.tool_rendering(processor):
            assert chat.render(processor, msgs) == plain
            assert chat.render(processor, msgs[:1], add_generation_prompt=True) == chat.render_prompt(
                processor, "Analyze the echo feature.")
        assert processor.chat_template == template
    with pytest.raises(ValueError, match="chat template"):
        grpo_trl_render.tool_chat_template("{{ messages }}")


def test_paper_profile_trains_through_trl_and_a_bad_engine_is_named():
    assert get_profile("paper").grpo.engine == "trl"
    assert get_profile("cpu").grpo.engine == "explicit" and get_profile("smoke").grpo.engine == "explicit"
    with pytest.raises(ValueError, match=r"unknown GRPO engine 'vllm'; choose one of \('explicit', 'trl'\)"):
        get_profile("cpu", grpo__engine="vllm")
    with pytest.raises(ValueError, match="unknown GRPO engine"):
        GRPOConfig(engine="TRL")


def test_split_groups_are_refused(tiny_path, speckle_image):
    """The group term needs a prompt's G completions in one reward call."""
    _, processor = load_model_and_processor(tiny_path)
    rewards = grpo_trl_rewards.ZoomRewards(processor.tokenizer, hp=PAPER)
    envs = []
    for k in range(8):
        env = grpo_trl_env.ZoomEnvironment(processor_pixel_bounds(processor), 112 * 112)
        env.reset(image=speckle_image, sample=_sample("a" if k < 4 else "b", 1))
        env.policy_mask = [1]
        envs.append(env)
    with pytest.raises(ValueError, match="not the G rollouts of one prompt"):
        rewards.score([[1]] * 8, envs)
