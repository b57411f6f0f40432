"""SFT through TRL's SFTTrainer: the collator builds our exact tensors, the batches are the loop's, the first
step's loss is the explicit loop's, checkpoints are safetensors only, and a killed run resumes exactly."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from zoomdx_lib.model import chat
from zoomdx_lib.model.build import TINY_TRAINING_CHAT_TEMPLATE, build_tiny_checkpoint
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.protocol import zoom_messages
from zoomdx_lib.train.common import loop_draws
from zoomdx_lib.train.loop import LoopConfig, run_loop
from zoomdx_lib.train.sft import cosine_schedule, encode_records, train
from zoomdx_lib.train.sft_trainer import DialogueDataset, train_with_trl


def _write_records(root, n=6):
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img = Image.fromarray((rng.random((256, 256)) * 255).astype("uint8"))
        img.save(root / "images" / f"full{i}.png")
        img.crop((20 + i, 30, 120, 140)).resize((112, 112)).save(root / "images" / f"crop{i}.png")
        t1 = f'<think>Scanning.</think>\n<tool_call>{{"bbox_2d": [{20 + i}, 30, 120, 140]}}</tool_call>'
        t2 = '<think>Darker.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'
        records.append({"id": f"s{i}", "messages": zoom_messages("Analyze the echo feature.", t1, t2,
                                                                 f"images/full{i}.png", f"images/crop{i}.png")})
    return records


@pytest.fixture
def records(tmp_path):
    return _write_records(tmp_path / "data"), tmp_path / "data"


def test_collator_builds_the_explicit_tensors_and_mask(tiny, records):
    model, processor = tiny
    recs, root = records
    rows = [DialogueDataset(recs, root)[i] for i in range(3)]
    batch = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True,
                                                  chat_template=TINY_TRAINING_CHAT_TEMPLATE)(rows)
    ours = encode_records(recs[:3], root, processor)
    inputs = chat.model_inputs([e.ids for e in ours], [e.images for e in ours], processor, side="right")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], inputs[key]), key
    for i, e in enumerate(ours):
        assert (batch["labels"][i, :len(e.ids)] != -100).int().tolist() == e.mask
    assert processor.apply_chat_template(recs[0]["messages"], tokenize=False,
                                         chat_template=TINY_TRAINING_CHAT_TEMPLATE) == chat.render(processor, recs[0]["messages"])


def test_qwen_template_mask_adds_only_the_newline_after_each_turn(tmp_path, records):
    """The paper-shaped model carries Qwen2.5-VL's own template; TRL swaps in its training copy."""
    from trl.chat_template_utils import get_training_chat_template
    path = build_tiny_checkpoint(tmp_path / "paper", shape="paper", text_hidden=64, text_layers=2, text_heads=2,
                                 text_kv_heads=1, text_intermediate=128, vision_hidden=64, vision_depth=2,
                                 vision_heads=2, vision_intermediate=128)
    _, processor = load_model_and_processor(path)
    recs, root = records
    row = DialogueDataset(recs, root)[0]
    batch = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True,
                                                  chat_template=get_training_chat_template(processor))([row])
    ours = encode_records(recs[:1], root, processor)[0]
    assert batch["input_ids"][0].tolist() == ours.ids
    trl_mask = (batch["labels"][0] != -100).int().tolist()
    extra = [i for i, (a, b) in enumerate(zip(trl_mask, ours.mask)) if a != b]
    newline = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(extra) == 2 and all(trl_mask[i] == 1 and ours.ids[i] in newline and ours.ids[i - 1] == end for i in extra)


class _Saveable(torch.nn.Linear):
    def save_pretrained(self, path, **kwargs):
        pass


def test_draws_are_the_training_loops_draws(tmp_path):
    seen = []
    run_loop(_Saveable(1, 1), None, lambda idx: seen.extend(idx) or {}, 37,
             LoopConfig(steps=5, draws_per_step=3, checkpoint_every=100, sampler_seed=11), tmp_path,
             show_progress=False)
    assert loop_draws(37, 3, 5, 11) == seen


def test_first_step_loss_equals_the_explicit_loop(tiny_path, records, tmp_path):
    recs, root = records
    losses = {}
    for engine in ("explicit", "trl"):
        model, processor = load_model_and_processor(tiny_path)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if engine == "explicit":
            rows = train(model, processor, encode_records(recs, root, processor), 2, 3, 1e-3, tmp_path / engine,
                         seed=5, warmup=1, progress=False)
        else:
            rows = train_with_trl(model, processor, DialogueDataset(recs, root), 2, 3, opt,
                                  cosine_schedule(opt, 2, 1), tmp_path / engine, seed=5, progress=False)
        losses[engine] = [r["loss"] for r in rows]
    assert losses["trl"][0] == pytest.approx(losses["explicit"][0], rel=1e-5)   # same weights, same batch
    assert losses["trl"][1] == pytest.approx(losses["explicit"][1], rel=1e-3)   # after one identical update


def _lora_run(tiny_path, recs, root, out, steps=4, callbacks=()):
    from peft import get_peft_model
    model, processor = load_model_and_processor(tiny_path)
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(rank=8, alpha=16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    rows = train_with_trl(model, processor, DialogueDataset(recs, root), steps, 2, opt, cosine_schedule(opt, steps, 1),
                          out, checkpoint_every=2, seed=1, progress=False, callbacks=callbacks)
    return model, rows


def test_lora_training_checkpoints_safetensors_only_and_resumes_exactly(tiny_path, records, tmp_path):
    recs, root = records
    model, rows = _lora_run(tiny_path, recs, root, tmp_path / "straight")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ckpts = sorted((tmp_path / "straight").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-000002", "checkpoint-000004"]
    for c in ckpts:
        assert {p.suffix for p in c.iterdir()} <= {".safetensors", ".json", ".md"}, sorted(p.name for p in c.iterdir())
    assert not list((tmp_path / "straight").rglob("*.pt")) and not list((tmp_path / "straight").rglob("*.pth"))
    adapter = load_file(str(ckpts[-1] / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())   # B starts at 0

    def die_at_3(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _lora_run(tiny_path, recs, root, tmp_path / "killed", callbacks=[die_at_3])
    assert json.loads((tmp_path / "killed" / "latest.json").read_text())["step"] == 2
    _, again = _lora_run(tiny_path, recs, root, tmp_path / "killed")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    resumed = load_file(str(tmp_path / "killed" / "checkpoint-000004" / "adapter_model.safetensors"))
    assert all(torch.allclose(adapter[k], resumed[k], atol=1e-7) for k in adapter)
