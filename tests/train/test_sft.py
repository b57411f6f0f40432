"""SFT: the loss goes down, a saved adapter reloads to the same outputs, resume continues from the checkpoint."""
import numpy as np
import pytest
import torch
from PIL import Image

from zoomdx_lib.model import chat
from zoomdx_lib.train.checkpoints import latest_checkpoint
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.train.loop import read_log
from zoomdx_lib.train.sft import encode_conversation, sft_loss, train


def _examples(processor, n=4):
    out = []
    rng = np.random.default_rng(1)
    for i in range(n):
        img = Image.fromarray((rng.random((256, 256)) * 255).astype("uint8")).convert("RGB")
        t1 = f'<think>Scanning.</think>\n<tool_call>{{"bbox_2d": [{20 + i}, 30, 120, 140]}}</tool_call>'
        t2 = '<think>Darker.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'
        text = chat.dialogue_text(processor, "Analyze the echo feature of the ultrasound image.", t1, t2)
        out.append(encode_conversation(processor, text, [img, img.crop((20, 30, 120, 140)).resize((112, 112))]))
    return out


def _lora(tiny_path):
    from peft import get_peft_model
    model, processor = load_model_and_processor(tiny_path)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config(rank=8, alpha=16)), processor


@pytest.mark.slow
def test_full_sft_drives_loss_down(tiny_path, tmp_path):
    model, processor = load_model_and_processor(tiny_path)
    ex = _examples(processor)
    with torch.no_grad():
        before = float(sft_loss(model, ex, processor))
    hist = train(model, processor, ex, steps=25, batch_size=4, lr=3e-3, out_dir=tmp_path, warmup=2, progress=False)
    with torch.no_grad():
        after = float(sft_loss(model, ex, processor))
    assert after < 0.5 * before, (before, after)
    assert len(hist) == 25 and len(read_log(tmp_path)) == 25


@pytest.mark.slow
def test_adapter_reloads_to_same_outputs(tiny_path, tmp_path):
    from peft import PeftModel
    model, processor = _lora(tiny_path)
    ex = _examples(processor, 2)
    train(model, processor, ex, steps=5, batch_size=2, lr=1e-2, out_dir=tmp_path / "ckpt", warmup=1, progress=False)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base, _ = load_model_and_processor(tiny_path)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    inputs = chat.model_inputs([e.ids for e in ex], [e.images for e in ex], processor)
    with torch.no_grad():
        a = model(**inputs).logits
        b = reloaded(**inputs).logits
        plain = base.get_base_model()(**inputs).logits if hasattr(base, "get_base_model") else None
    assert torch.allclose(a, b, atol=1e-5)
    with reloaded.disable_adapter(), torch.no_grad():
        plain = reloaded(**inputs).logits
    assert not torch.allclose(a, plain, atol=1e-3)  # the adapter (and the trained merger) changed something


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_resume_continues_from_the_checkpoint_step(tiny_path, tmp_path, kind):
    make = (lambda: _lora(tiny_path)) if kind == "lora" else (lambda: load_model_and_processor(tiny_path))

    class Interrupt(Exception):
        pass

    def stop_at_7(row):
        if row["step"] == 7:
            raise Interrupt

    model, processor = make()
    ex = _examples(processor)
    with pytest.raises(Interrupt):
        train(model, processor, ex, steps=10, batch_size=2, lr=1e-3, out_dir=tmp_path, checkpoint_every=5,
              warmup=1, progress=False, callbacks=[stop_at_7])
    assert latest_checkpoint(tmp_path).name == "checkpoint-000005"
    model2, _ = make()
    seen = []
    hist = train(model2, processor, ex, steps=10, batch_size=2, lr=1e-3, out_dir=tmp_path, checkpoint_every=5,
                 warmup=1, progress=False, callbacks=[lambda r: seen.append(r["step"])])
    assert seen == [6, 7, 8, 9, 10]
    assert [r["step"] for r in hist] == list(range(1, 11))

    # the resumed run matches an uninterrupted one
    model3, _ = make()
    ref = train(model3, processor, ex, steps=10, batch_size=2, lr=1e-3, out_dir=tmp_path / "ref",
                checkpoint_every=5, warmup=1, progress=False)
    assert abs(ref[-1]["loss"] - hist[-1]["loss"]) < 1e-4
