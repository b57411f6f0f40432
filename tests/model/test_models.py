"""The offline tiny Qwen2.5-VL: save/load, a two-turn two-image forward/backward, generate, LoRA scope."""
import pytest
import torch

from zoomdx_lib.model import chat
from zoomdx_lib.model.load import (LORA_TARGET_REGEX, CheckpointFolderError, UnsafeCheckpointError, check_safetensors_only,
                                   default_attention, load_model_and_processor, lora_config,
                                   missing_checkpoint_files, parameter_report)
from zoomdx_lib.train.sft import encode_conversation, sft_loss

TURN1 = '<think>Scanning the image.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>'
TURN2 = '<think>Darker than the surrounding tissue.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'


def _example(processor, image):
    text = chat.dialogue_text(processor, "Analyze the echo feature of the ultrasound image.", TURN1, TURN2)
    crop = image.crop((60, 90, 140, 150)).resize((112, 112))
    return encode_conversation(processor, text, [image, crop])


def test_save_and_reload_identical(tiny_path, tiny):
    model, _ = tiny
    again, processor = load_model_and_processor(tiny_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    assert processor.tokenizer.convert_tokens_to_ids("<tool_call>") != processor.tokenizer.unk_token_id
    for tag in ("<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>"):
        assert processor.tokenizer.tokenize(tag) == [tag]


def test_two_turn_two_image_forward_backward(tiny, speckle_image):
    model, processor = tiny
    ex = _example(processor, speckle_image)
    assert len(ex.images) == 2 and sum(ex.mask) > 0
    n_img = sum(1 for t in ex.ids if t == processor.image_token_id)
    merge = processor.image_processor.merge_size ** 2
    assert n_img == sum(int(g.prod()) // merge for _, g in ex.images)
    model.zero_grad()
    loss = sft_loss(model, [ex, ex], processor)
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["model.visual.patch_embed.proj.weight"].abs().sum() > 0  # the images reach the loss
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "merger" in n)
    model.zero_grad()


def test_mrope_positions_need_mm_token_type_ids(tiny, speckle_image):
    model, processor = tiny
    ex = _example(processor, speckle_image)
    inputs = chat.model_inputs([ex.ids], [ex.images], processor)
    with torch.no_grad():
        with_types = model(**inputs).logits
        inputs.pop("mm_token_type_ids")
        without = model(**inputs).logits
    # chat.model_inputs always adds the ids; this documents why (3-D mRoPE positions)
    assert not torch.allclose(with_types, without)


def test_generate_on_two_image_dialogue(tiny, speckle_image):
    model, processor = tiny
    text = chat.render_prompt(processor, "Describe the shape of the lesion.")
    enc = processor(text=[text], images=[speckle_image.convert("RGB")], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_lora_freezes_vision_tower_and_trains_merger(tiny_path):
    from peft import get_peft_model
    model, _ = load_model_and_processor(tiny_path)
    peft_model = get_peft_model(model, lora_config(rank=8, alpha=16))
    report = parameter_report(peft_model)
    assert report["trainable_vision_blocks"] == 0
    for name, p in peft_model.named_parameters():
        if ".visual." in name and ".merger." not in name:
            assert not p.requires_grad, name
        if "lora_" in name:
            assert p.requires_grad and "language_model.layers" in name, name
    merger_trainable = [n for n, p in peft_model.named_parameters() if "merger" in n and p.requires_grad]
    assert merger_trainable, "the vision->language merger must be trained"
    lm_lora = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert len(lm_lora) == 7 * model.config.text_config.num_hidden_layers  # q,k,v,o,gate,up,down per layer
    assert LORA_TARGET_REGEX.startswith(".*language_model")


def test_pickle_only_checkpoint_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    try:
        check_safetensors_only(tmp_path)
    except UnsafeCheckpointError as err:
        assert "safetensors" in str(err) and "pytorch_model.bin" in str(err)
    else:
        raise AssertionError("a pickle-only checkpoint must be refused")


def test_tiny_mrope_resolves_width_and_height(tiny):
    """The rotary angle between two image tokens one column (or one row) apart, through the model's own
    rotary module: with interleaved sections both axes get high frequencies, unlike [t, h, w] blocks."""
    model, _ = tiny
    rotary = model.model.language_model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)

    def angles(pos):  # (3, 1, 1) positions t, h, w -> the angle of every rotary frequency
        cos, sin = rotary(x, torch.tensor(pos, dtype=torch.long).view(3, 1, 1))
        return torch.atan2(sin, cos)[0, 0]

    origin = angles([5, 5, 5])
    for axis in (1, 2):  # one step along height, then along width
        pos = [5, 5, 5]
        pos[axis] += 1
        step = (angles(pos) - origin).abs()
        assert step.max() > 0.25, (axis, step.max())     # a fast frequency (blocks: < 0.01 for width)
        assert (step > 1e-6).float().mean() < 0.5         # and only its own third of them moves
    sections = model.config.text_config.rope_parameters["mrope_section"]
    assert sum(sections) == model.config.text_config.hidden_size // model.config.text_config.num_attention_heads // 2


def test_checkpoint_must_be_a_complete_local_folder(tiny_path, tmp_path):
    import json
    import shutil
    assert missing_checkpoint_files(tiny_path) == []
    with pytest.raises(CheckpointFolderError, match="not a directory.*huggingface-cli download"):
        load_model_and_processor("Qwen/Qwen2.5-VL-7B-Instruct")          # a hub id: never fetched
    partial = tmp_path / "partial"
    shutil.copytree(tiny_path, partial)
    (partial / "model.safetensors").rename(partial / "model-00001-of-00002.safetensors")
    (partial / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (partial / "tokenizer.json").unlink()
    missing = missing_checkpoint_files(partial)
    assert missing == ["model-00002-of-00002.safetensors (named in model.safetensors.index.json)",
                       "tokenizer.json (or vocab.json + merges.txt)"]
    with pytest.raises(CheckpointFolderError, match="model-00002-of-00002.safetensors"):
        load_model_and_processor(partial)


def test_loading_defaults_per_device(tiny_path):
    model, _ = load_model_and_processor(tiny_path)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert default_attention("cpu") is None and default_attention("cuda:0") in ("sdpa", "flash_attention_2")
    ckpt, _ = load_model_and_processor(tiny_path, gradient_checkpointing=True)
    assert ckpt.is_gradient_checkpointing and ckpt.config.use_cache is False
