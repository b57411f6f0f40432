"""One SFT training step of the tiny model on a two-image, two-turn dialogue, at several batch sizes.

    python benchmarks/bench_train_step.py [--profile cpu] [--batch 8 16] [--lora]

Prints the median step time (forward + backward + AdamW), the parameter counts and the FLOP floor of
the step (its counted forward + backward FLOPs over this machine's measured matmul rate, see
benchmarks/flops.py); with --lora the paper's LoRA (r=32, LM + merger) is trained instead of every weight.
"""
import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from flops import count_flops, floor_line, matmul_rate
from zoomdx_lib.model import chat
from zoomdx_lib.config import get_profile
from zoomdx_lib.model.build import build_tiny_checkpoint
from zoomdx_lib.model.load import load_model_and_processor, lora_config, parameter_report
from zoomdx_lib.train.sft import encode_conversation, sft_loss

TURN1 = ('<think>Scanning the ultrasound image... I need to focus on the lesion region before judging its '
         'echogenicity.</think>\n<tool_call>{"bbox_2d": [52, 84, 126, 140]}</tool_call>')
TURN2 = ('<think>Zoomed in, the lesion is darker than the surrounding tissue, so the echogenicity is definitely '
         'hypoechoic.</think>\n<answer>{"echo": "Hypoechoic"}</answer>')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    prof = get_profile(args.profile)
    path = tempfile.mkdtemp()
    build_tiny_checkpoint(path, prof.model.min_pixels, prof.model.max_pixels, 0, **prof.model.tiny)
    model, processor = load_model_and_processor(path)
    if args.lora:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
    print("parameters:", parameter_report(model))
    img = Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype("uint8")).convert("RGB")
    text = chat.dialogue_text(processor, "Analyze the echo feature of the ultrasound image.", TURN1, TURN2)
    ex = encode_conversation(processor, text, [img, img.crop((60, 96, 144, 160))])
    print(f"sequence: {len(ex.ids)} tokens ({sum(t == processor.image_token_id for t in ex.ids)} image tokens), "
          f"{torch.get_num_threads()} threads")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    rate = matmul_rate()
    print(f"machine: {rate / 1e9:.1f} GFLOP/s fp32 matmul with {torch.get_num_threads()} threads")
    for bs in args.batch:
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            loss = sft_loss(model, [ex] * bs, processor)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times[1:])
        flops, _ = count_flops(lambda: sft_loss(model, [ex] * bs, processor).backward())
        opt.zero_grad()
        print(f"batch {bs:3d}: {med:.3f} s/step, {bs / med:.1f} dialogues/s")
        print("  " + floor_line(f"SFT step, batch {bs}", flops, med, rate))


if __name__ == "__main__":
    main()
