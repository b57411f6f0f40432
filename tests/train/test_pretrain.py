"""Pretraining stage: dense targets against a pixel reference, the case stream, export, resume, checksums,
and the shipped base itself (hash checked, better than the mean box on fresh cases)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoomdx_lib.config import _SMOKE_TINY, AUX_LOSSES, PretrainConfig
from zoomdx_lib.data.store import split_seed
from zoomdx_lib.geometry import model_box, model_input_size
from zoomdx_lib.config import SHIPPED_BASE
from zoomdx_lib.eval.grounding import fresh_cases, grounding_report
from zoomdx_lib.model.load import ChecksumError, load_model_and_processor, verify_checksums, write_checksums
from zoomdx_lib.train.pretrain import HEADS_FILE, dense_targets, encode_case, pretrain, stream_case, stream_seed


@pytest.mark.parametrize("box", [(0, 0, 224, 224), (10.5, 30, 61, 95.2), (100, 100, 101, 140), (200, 3, 224, 27)])
def test_dense_targets_match_a_pixel_raster(box):
    inside, pos = dense_targets(box, (8, 8))
    yy, xx = np.mgrid[0:224 * 4, 0:224 * 4] / 4.0 + 0.125       # 4x supersampled pixel centres
    raster = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
    ref = raster.reshape(8, 112, 8, 112).mean(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(inside.numpy(), ref, atol=0.01)
    assert pos[0].tolist() == [0.0, 0.0] and pos[-1].tolist() == [1.0, 1.0] and pos[1].tolist() == pytest.approx([0.0, 1 / 7])


def test_stream_is_deterministic_alternates_organs_and_uses_no_split_seed():
    cfg = PretrainConfig()
    a, b = stream_case(cfg, 12345), stream_case(cfg, 12345)
    assert a[0].box == b[0].box and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert a[0].question == b[0].question and a[0].question
    assert [stream_case(cfg, i)[0].organ for i in range(4)] == ["liver", "breast", "liver", "breast"]
    assert stream_case(cfg, 0)[0].box != stream_case(cfg, 2)[0].box
    split_seeds = {split_seed(s, sp, o) for s in range(10) for sp in ("train", "test", "test_cross")
                   for o in ("liver", "breast", "thyroid")}
    assert not {stream_seed(s, o) for s in range(10) for o in cfg.organs} & split_seeds
    with pytest.raises(ValueError, match="unknown auxiliary"):
        PretrainConfig(aux=("mask", "boxes"))


def test_curriculum_cases_are_never_isoechoic_and_otherwise_the_stream_itself():
    cfg = PretrainConfig()
    echo = lambda case: case[0].meta["true_attributes"]["echo"]
    plain = [stream_case(cfg, i) for i in range(24)]
    easy = [stream_case(cfg, i, easy=True) for i in range(24)]
    assert "Isoechoic" in [echo(c) for c in plain]                 # the stream has them ...
    assert "Isoechoic" not in [echo(c) for c in easy]              # ... the curriculum does not
    for p, e in zip(plain, easy):
        if echo(p) != "Isoechoic":
            assert e[0].box == p[0].box and np.array_equal(np.asarray(e[1]), np.asarray(p[1]))
        else:
            assert e[0].box != p[0].box and e[0].organ == p[0].organ
    again = stream_case(cfg, 5, easy=True)
    assert again[0].box == easy[5][0].box and again[0].question == easy[5][0].question


def test_curriculum_covers_exactly_its_first_steps_and_survives_a_resume(tmp_path, monkeypatch):
    import zoomdx_lib.train.pretrain as pretrain_module
    seen = []
    real = pretrain_module.stream_case
    monkeypatch.setattr(pretrain_module, "stream_case", lambda cfg, i, easy=False: seen.append(easy) or real(cfg, i, easy))
    cfg = PretrainConfig(steps=3, batch_size=1, checkpoint_every=1, curriculum_steps=2, tiny=_SMOKE_TINY, aux=())
    pretrain(dataclasses.replace(cfg, steps=2), tmp_path / "run", progress=False)
    assert seen == [True, True]
    seen.clear()
    pretrain(cfg, tmp_path / "run", progress=False)               # resumes at step 3: past the curriculum
    assert seen == [False]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(steps=4, batch_size=2, checkpoint_every=2, tiny=_SMOKE_TINY, aux=AUX_LOSSES)  # all losses run
    result = pretrain(cfg, out / "straight", progress=False, evaluate=lambda m, p: {"calls": 1}, eval_every=2)
    return cfg, out, result


def test_encoded_case_supervises_both_turns_and_the_full_view_tokens(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    _, processor = load_model_and_processor(out / "straight" / "model", min_pixels=cfg.min_pixels,
                                            max_pixels=cfg.max_pixels)
    sample, image = stream_case(cfg, 7)
    ex = encode_case(sample, image, processor, cfg.crop_pixels)
    text = processor.tokenizer.decode([t for t, m in zip(ex.example.ids, ex.example.mask) if m])
    assert "<tool_call>" in text and "<answer>" in text and sample.label in text
    grid = ex.example.images[0][1]
    assert len(ex.inside) == int(grid.prod()) // 4 and len(ex.example.images) == 2
    msize = model_input_size(image.width, image.height, cfg.min_pixels, cfg.max_pixels)
    x1, y1, x2, y2 = model_box(sample.box, image.size, msize)
    assert float(ex.inside.sum()) * 28 * 28 == pytest.approx((x2 - x1) * (y2 - y1), rel=1e-4)


def test_rationale_cases_are_written_like_the_sft_data(tiny_run):
    from zoomdx_lib.data.dialogue import build_dialogue
    cfg, out, _ = tiny_run
    _, processor = load_model_and_processor(out / "straight" / "model", min_pixels=cfg.min_pixels,
                                            max_pixels=cfg.max_pixels)
    sample, image = stream_case(cfg, 11)
    plain, rich = (encode_case(sample, image, processor, cfg.crop_pixels, rationale=r) for r in (False, True))
    text = processor.tokenizer.decode([t for t, m in zip(rich.example.ids, rich.example.mask) if m])
    msize = model_input_size(image.width, image.height, cfg.min_pixels, cfg.max_pixels)
    dialogue = build_dialogue(sample, msize)
    assert dialogue.search in text and dialogue.diagnosis in text and "Focus on the lesion." not in text
    assert torch.equal(plain.inside, rich.inside)            # same box, same dense targets
    assert sum(rich.example.mask) > sum(plain.example.mask)


def test_export_is_a_stock_model_and_checkpoints_keep_the_heads(tiny_run):
    cfg, out, result = tiny_run
    exported = load_file(str(out / "straight" / "model" / "model.safetensors"))
    assert not any("heads" in k for k in exported)
    ckpt = out / "straight" / json.loads((out / "straight" / "latest.json").read_text())["path"]
    assert set(load_file(str(ckpt / HEADS_FILE))) == {"mask.weight", "mask.bias", "pos.weight", "pos.bias"}
    model, _ = load_model_and_processor(out / "straight" / "model")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert [r["step"] for r in result["evals"]] == [2, 4]
    assert {"text", "mask", "pos", "attn"} <= set(result["history"][0])


def test_killed_run_resumes_to_the_same_weights_and_log(tiny_run):
    cfg, out, result = tiny_run

    def killed(model, processor):   # dies at step 3, after the checkpoint at step 2
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out / "resumed", progress=False, evaluate=killed, eval_every=3)
    assert json.loads((out / "resumed" / "latest.json").read_text())["step"] == 2
    again = pretrain(cfg, out / "resumed", progress=False)
    losses = lambda rows: [round(r["loss"], 6) for r in rows]  # noqa: E731
    assert [r["step"] for r in again["history"]] == [1, 2, 3, 4]
    assert losses(again["history"]) == losses(result["history"])
    a = load_file(str(out / "straight" / "model" / "model.safetensors"))
    b = load_file(str(out / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_second_stage_starts_from_the_checkpoint_weights_and_heads(tiny_run):
    cfg, out, _ = tiny_run
    first = out / "straight" / json.loads((out / "straight" / "latest.json").read_text())["path"]
    stage2 = PretrainConfig(steps=1, batch_size=2, lr=0.0, warmup=0, seed=1, init_from=str(first), tiny=_SMOKE_TINY)
    result = pretrain(stage2, out / "stage2", progress=False)
    before, after = load_file(str(first / "model.safetensors")), load_file(str(out / "stage2" / "model" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)   # lr 0: unchanged
    ckpt = out / "stage2" / json.loads((out / "stage2" / "latest.json").read_text())["path"]
    heads0, heads1 = load_file(str(first / HEADS_FILE)), load_file(str(ckpt / HEADS_FILE))
    assert all(torch.equal(heads0[k], heads1[k]) for k in heads0)
    assert result["history"][0]["step"] == 1



def test_model_card_of_a_second_stage_names_both_stages_and_adds_their_time(tiny_run, tmp_path):
    from zoomdx_lib.workbook.base import earlier_stage, model_card, stage_curves
    cfg, out, _ = tiny_run
    first = out / "straight" / json.loads((out / "straight" / "latest.json").read_text())["path"]
    stage2 = PretrainConfig(steps=1, batch_size=2, lr=5e-4, warmup=0, seed=5, rationales=0.5, init_from=str(first),
                            tiny=_SMOKE_TINY, aux=cfg.aux)
    pretrain(stage2, tmp_path / "stage2", progress=False, evaluate=lambda m, p: {"calls": 1}, eval_every=1)
    history, evals = stage_curves(tmp_path / "stage2", stage2)
    assert [(r["step"], r["stage"]) for r in history] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2)]
    assert [(r["step"], r["stage"]) for r in evals] == [(2, 1), (4, 1), (5, 2)]
    prior, seconds = earlier_stage(stage2)
    assert prior.steps == cfg.steps and prior.seed == cfg.seed and prior.rationales == 0.0 and seconds > 0
    row = dict(seed=1, n=4, miou=0.5, miou_ci=[0.4, 0.6], mean_box_miou=0.1, acc=0.5, acc_ci=[0.2, 0.8],
               majority_acc=0.25, tool_call_valid=1.0)
    card = model_card(stage2, {"liver": row}, tmp_path / "stage2", seconds=3600.0)
    assert f"in two stages: {cfg.steps} steps" in card and "then 1 steps" in card and "50% of cases" in card
    assert f"{(3600.0 + seconds) / 3600:.2f} h ({seconds / 60:.0f} + 60 min)" in card and "| liver" in card
    aux1 = ", ".join(cfg.aux)
    assert f"auxiliary {aux1}\n" in card                                # both stages had the same losses
    other = dataclasses.replace(stage2, aux=("mask",))
    assert f"auxiliary {aux1} in stage 1, mask in stage 2" in model_card(other, {"liver": row}, out, 1.0)
    assert earlier_stage(cfg) is None and "in two stages" not in model_card(cfg, {"liver": row}, out, None)
    assert "curriculum" not in card
    easy_first = dataclasses.replace(cfg, curriculum_steps=7)
    assert "no isoechoic lesion in the first 7 steps" in model_card(easy_first, {"liver": row}, out, None)

def test_a_stage_that_continues_a_shipped_base_carries_its_card(tiny_run, tmp_path, monkeypatch):
    import zoomdx_lib.workbook.base as base_cli
    from zoomdx_lib.workbook.base import continued_card, earlier_stage, model_card, ship, stage_curves
    cfg, out, _ = tiny_run
    shipped = tmp_path / "shipped"
    shutil.copytree(out / "straight" / "model", shipped)
    old = dict(config=dataclasses.asdict(cfg), held_out={"liver": {"miou": 0.4}},
               curves=[dict(step=2, miou=0.1, stage=1), dict(step=4, miou=0.2, stage=2)],
               history=[dict(step=s, loss=1.0, stage=1 + (s > 2)) for s in (1, 2, 3, 4)])
    (shipped / "card.json").write_text(json.dumps(old))
    (shipped / "MODEL_CARD.md").write_text("# title\n\nThe old recipe, in two stages.\n")
    stage3 = PretrainConfig(steps=1, batch_size=2, lr=1e-4, warmup=0, seed=9, single_turn=0.5, init_from=str(shipped),
                            tiny=_SMOKE_TINY, aux=cfg.aux)
    pretrain(stage3, tmp_path / "stage3", progress=False, evaluate=lambda m, p: {"miou": 0.3}, eval_every=1)
    assert earlier_stage(stage3) is None and continued_card(stage3)["config"]["steps"] == cfg.steps
    history, evals = stage_curves(tmp_path / "stage3", stage3)
    assert [(r["step"], r["stage"]) for r in evals] == [(2, 1), (4, 2), (5, 3)]
    assert [(r["step"], r["stage"]) for r in history][-1] == (5, 3)
    row = dict(seed=1, n=4, miou=0.5, miou_ci=[0.4, 0.6], mean_box_miou=0.1, acc=0.5, acc_ci=[0.2, 0.8],
               majority_acc=0.25, tool_call_valid=1.0)
    card = model_card(stage3, {"liver": row}, tmp_path / "stage3", 60.0)
    assert "for 1 more steps" in card and "one-turn dialogue" in card and "The old recipe, in two stages." in card
    assert "# title" not in card and "| liver" in card
    monkeypatch.setattr(base_cli, "card_numbers", lambda src, cfg, n: {"liver": row})
    ship(tmp_path / "stage3", stage3, dest=shipped, note="Chosen on the one-turn format.")   # as `make base` does
    new = json.loads((shipped / "card.json").read_text())
    assert new["continues"]["config"]["steps"] == cfg.steps and new["config"]["single_turn"] == 0.5
    assert [r["stage"] for r in new["curves"]] == [1, 2, 3] and len(new["history"]) == 5
    text = (shipped / "MODEL_CARD.md").read_text()
    assert "The old recipe" in text and (shipped / "checksums.json").exists()
    assert text.index("## Why this base was shipped\n\nChosen on the one-turn format.") < text.index("## The base it continues")


def test_checksums_catch_a_changed_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "b.json").write_text("{}")
    assert verify_checksums(tmp_path) is False          # no listing: nothing to check
    sums = write_checksums(tmp_path)
    assert set(sums) == {"a.bin", "b.json"} and verify_checksums(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"weightz")
    with pytest.raises(ChecksumError, match="a.bin"):
        verify_checksums(tmp_path)


def test_shipped_base_is_hash_checked_and_beats_the_mean_box_on_fresh_cases():
    assert verify_checksums(SHIPPED_BASE), "the shipped base lacks checksums.json"
    card = json.loads((SHIPPED_BASE / "card.json").read_text())
    cfg = card["config"]
    model, processor = load_model_and_processor(SHIPPED_BASE, min_pixels=cfg["min_pixels"],
                                                max_pixels=cfg["max_pixels"])
    for organ in ("liver", "breast"):
        items = fresh_cases(organ, 16, 424242, cfg["image_size"])
        r = grounding_report(model, processor, items, cfg["crop_pixels"], (48, 24), n_boot=200)
        assert r["tool_call_valid"] >= 0.9, r
        assert r["miou"] > r["mean_box_miou"], (organ, r)


def test_single_turn_cases_read_the_full_view_without_a_call(tiny_run):
    cfg, out, _ = tiny_run
    _, processor = load_model_and_processor(out / "straight" / "model", min_pixels=cfg.min_pixels,
                                            max_pixels=cfg.max_pixels)
    sample, image = stream_case(cfg, 5)
    zoom, one = (encode_case(sample, image, processor, cfg.crop_pixels, single_turn=s) for s in (False, True))
    text = processor.tokenizer.decode([t for t, m in zip(one.example.ids, one.example.mask) if m])
    assert "<tool_call>" not in text and "<answer>" in text and sample.label in text
    assert len(one.example.images) == 1 and torch.equal(one.inside, zoom.inside)   # the full view's targets
    from zoomdx_lib.protocol import ONE_TURN_INSTRUCTION
    # the prompt says which format is asked: the zoom prompt is otherwise the same text
    assert ONE_TURN_INSTRUCTION in processor.tokenizer.decode(one.example.ids)
    assert ONE_TURN_INSTRUCTION not in processor.tokenizer.decode(zoom.example.ids)
    from zoomdx_lib.data.dialogue import diagnostic_rationale
    rich = encode_case(sample, image, processor, cfg.crop_pixels, rationale=True, single_turn=True)
    rich_text = processor.tokenizer.decode([t for t, m in zip(rich.example.ids, rich.example.mask) if m])
    assert diagnostic_rationale(sample.attribute, sample.label, sample.c, sample.rater_labels,
                                f"pretrain-single:{sample.id}", view="full") in rich_text


def test_a_batch_of_one_turn_cases_has_no_attention_target_and_a_finite_loss(tiny_run):
    from zoomdx_lib.train.pretrain import PretrainModel, pretrain_losses
    cfg, out, _ = tiny_run
    model = PretrainModel.from_pretrained(out / "straight" / "checkpoint-000004")
    _, processor = load_model_and_processor(out / "straight" / "model", min_pixels=cfg.min_pixels,
                                            max_pixels=cfg.max_pixels, attn_implementation="eager")
    one = [encode_case(*stream_case(cfg, i), processor, cfg.crop_pixels, single_turn=True) for i in (1, 2)]
    two = [encode_case(*stream_case(cfg, 3), processor, cfg.crop_pixels)]
    _, parts = pretrain_losses(model, one, processor, cfg)
    assert "attn" not in parts and all(np.isfinite(v) for v in parts.values())
    _, mixed = pretrain_losses(model, one + two, processor, cfg)
    assert "attn" in mixed and all(np.isfinite(v) for v in mixed.values())


def test_stream_shares_are_what_the_config_asks_and_pure_in_the_index():
    from zoomdx_lib.train.pretrain import is_real, is_single_turn
    cfg = PretrainConfig(single_turn=0.3, real_data="bus_bra:x", real_share=0.1)
    single = [is_single_turn(cfg, i) for i in range(4000)]
    real = [is_real(cfg, i) for i in range(4000)]
    assert 0.27 < np.mean(single) < 0.33 and 0.08 < np.mean(real) < 0.12
    assert single == [is_single_turn(cfg, i) for i in range(4000)]
    assert not any(is_single_turn(PretrainConfig(), i) or is_real(PretrainConfig(), i) for i in range(500))


def test_real_cases_come_from_the_train_folds_only(tmp_path):
    from zoomdx_lib.data.examples import write_bus_bra
    from zoomdx_lib.train.pretrain import is_real, real_cases
    root = write_bus_bra(tmp_path / "bus", n=12, folds=3)
    with pytest.raises(ValueError, match="fold 3 is the test fold"):
        PretrainConfig(real_data=f"bus_bra:{root}", real_share=0.5, real_folds=(1, 2, 3))
    with pytest.raises(ValueError, match="needs real_data"):
        PretrainConfig(real_share=0.5)
    with pytest.raises(ValueError, match="must lie in"):
        PretrainConfig(single_turn=1.5)
    cfg = PretrainConfig(real_data=f"bus_bra:{root}", real_share=0.5, real_folds=(1, 2))
    folds = {s.meta["kfold"] for s, _ in real_cases(cfg)}
    assert folds == {1, 2}
    index = next(i for i in range(100) if is_real(cfg, i))
    sample, image = stream_case(cfg, index)
    assert sample.meta["source"] == "BUS-BRA" and sample.meta["kfold"] in (1, 2) and image.mode == "RGB"
    assert sample.question
    synthetic = next(i for i in range(100) if not is_real(cfg, i))
    assert stream_case(cfg, synthetic)[0].meta["source"] == "synthetic"


def test_the_card_says_when_the_stream_held_one_turn_or_real_cases():
    from zoomdx_lib.workbook.base import _stage_data
    assert "one-turn" not in _stage_data(PretrainConfig()) and "REAL" not in _stage_data(PretrainConfig())
    text = _stage_data(PretrainConfig(single_turn=0.25, real_data="bus_bra:bus_bra", real_share=0.1))
    assert "25% of cases written as the no-zoom baseline's one-turn dialogue" in text
    assert "10% of cases drawn from the REAL data set bus_bra:bus_bra (folds 1, 2 only)" in text


def test_crop_context_widens_the_crop_only(tiny_run):
    from zoomdx_lib.config import PretrainConfig
    cfg, out, _ = tiny_run
    _, processor = load_model_and_processor(out / "straight" / "model", min_pixels=cfg.min_pixels,
                                            max_pixels=cfg.max_pixels)
    sample, image = stream_case(cfg, 9)
    tight, wide = (encode_case(sample, image, processor, cfg.crop_pixels, crop_context=c) for c in (0.0, 0.25))
    assert tight.example.ids == wide.example.ids           # the same call and answer are written
    assert torch.equal(tight.inside, wide.inside)          # the dense targets stay on the true box
    assert not torch.equal(tight.example.images[1][0], wide.example.images[1][0])   # the crop itself differs
    with pytest.raises(ValueError, match="crop_context"):
        PretrainConfig(crop_context=-0.1)
