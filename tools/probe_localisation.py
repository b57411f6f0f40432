"""Can the tiny Qwen2.5-VL learn a skill in isolation? A short from-scratch probe, printed as it trains.

    python tools/probe_localisation.py --task square [--mrope interleave|blocks] [--steps 300]
    python tools/probe_localisation.py --task box   --data runs/cpu/data   # lesion box from the full image
    python tools/probe_localisation.py --task label --data runs/cpu/data   # answer from the true-box crop

Each example is one user turn (an image and a question) and one short assistant target: the tool
call (square, box) or the answer tag (label). Every `--eval-every` steps it decodes greedily on held-out
images and prints mIoU next to that of always answering the mean training box, or the accuracy.
`square` needs no data: a bright square of random size and place on dark noise, 224 x 224.
"""
import argparse
import json
import math
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoomdx_lib.model import chat
from zoomdx_lib.protocol import extract_answer
from zoomdx_lib.config import get_profile
from zoomdx_lib.geometry import iou
from zoomdx_lib.model.build import build_tiny_checkpoint
from zoomdx_lib.model.load import load_model_and_processor
from zoomdx_lib.rl.rollout import HFPolicy
from zoomdx_lib.train.sft import encode_conversation, sft_loss

SQUARE_QUESTION = "Where is the bright square?"


def square_case(seed: int):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 90, (224, 224), dtype=np.uint8)
    w, h = rng.integers(30, 90, 2)
    x, y = rng.integers(0, 224 - w), rng.integers(0, 224 - h)
    arr[y:y + h, x:x + w] = 230
    box = [int(x), int(y), int(x + w), int(y + h)]
    return dict(image=Image.fromarray(arr).convert("RGB"), q=SQUARE_QUESTION, box=box,
                target='<tool_call>{"bbox_2d": [%d, %d, %d, %d]}</tool_call>' % tuple(box))


def dialogue_cases(data_dir: Path, split: str, task: str, limit=None):
    out = []
    for line in (data_dir / f"dialogues_{split}.jsonl").read_text().splitlines()[:limit]:
        m = json.loads(line)["messages"]
        call = re.search(r"<tool_call>.*</tool_call>", m[1]["content"][0]["text"]).group(0)
        ans = re.search(r"<answer>.*</answer>", m[3]["content"][0]["text"]).group(0)
        attr, label = next(iter(json.loads(ans[len("<answer>"):-len("</answer>")]).items()))
        image = m[0]["content"][0]["image"] if task == "box" else m[2]["content"][0]["image"]
        out.append(dict(image=Image.open(data_dir / image).convert("RGB"), q=m[0]["content"][1]["text"],
                        box=[int(v) for v in re.findall(r"-?\d+", call)[-4:]], attr=attr, label=label,
                        target=call if task == "box" else ans))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("square", "box", "label"), default="square")
    ap.add_argument("--data", default=None, help="a run's data folder (box and label tasks)")
    ap.add_argument("--mrope", choices=("interleave", "blocks"), default="interleave")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-eval", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    prof = get_profile("cpu")
    path = Path(tempfile.mkdtemp())
    build_tiny_checkpoint(path, prof.model.min_pixels, prof.model.max_pixels, args.seed, **prof.model.tiny)
    if args.mrope == "blocks":  # Qwen2.5-VL's contiguous [t, h, w] layout, scaled to the tiny head
        cfg = json.loads((path / "config.json").read_text())
        half = sum(cfg["text_config"]["rope_parameters"]["mrope_section"])
        t = half // 4
        cfg["text_config"]["rope_parameters"]["mrope_section"] = [t, (half - t) // 2, half - t - (half - t) // 2]
        (path / "config.json").write_text(json.dumps(cfg))
    model, proc = load_model_and_processor(path)
    print("mrope_section", model.config.text_config.rope_parameters["mrope_section"], flush=True)
    if args.task == "square":
        train = [square_case(args.seed * 100_000 + i) for i in range(1200)]
        test = [square_case(10 ** 9 + args.seed * 100_000 + i) for i in range(args.n_eval)]
    else:
        data = Path(args.data)
        train = dialogue_cases(data, "train", args.task)
        half = args.n_eval // 2
        test = dialogue_cases(data, "test_liver", args.task, half) + dialogue_cases(data, "test_breast", args.task, half)
    examples = [encode_conversation(proc, proc.apply_chat_template(
        [chat.user_image_message(c["q"]), chat.assistant_message(c["target"])], tokenize=False), [c["image"]])
        for c in train]
    mean_box = [float(np.mean([c["box"][k] for c in train])) for k in range(4)]
    policy = HFPolicy(model, proc)

    def evaluate() -> str:
        model.eval()
        rows, imgs = [], []
        for c in test:
            enc = chat.encode_images(proc, [c["image"]])
            rows.append(chat.tokenize(proc, chat.expand_image_tokens(chat.render_prompt(proc, c["q"]), enc.grid_thw, proc)))
            imgs.append(list(zip(enc.pixel_values, enc.grid_thw)))
        outs = []
        for s in range(0, len(rows), 40):
            outs += policy(chat.model_inputs(rows[s:s + 40], imgs[s:s + 40], proc), 1, 30, False, 1.0)
        texts = [proc.tokenizer.decode(o) for o in outs]
        model.train()
        if args.task == "label":
            acc = np.mean([extract_answer(t, c["attr"]).label == c["label"] for c, t in zip(test, texts)])
            return f"accuracy {acc:.3f}"
        ious = []
        for c, t in zip(test, texts):
            nums = re.findall(r"-?\d+", t.split("[", 1)[-1])
            ious.append(iou([int(v) for v in nums[:4]], c["box"]) if len(nums) >= 4 else 0.0)
        base = np.mean([iou(mean_box, c["box"]) for c in test])
        return f"mIoU {np.mean(ious):.3f} (mean training box: {base:.3f})"

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    gen, losses, t0 = torch.Generator().manual_seed(args.seed), [], time.time()
    model.train()
    for step in range(args.steps):
        idx = torch.randint(len(examples), (args.batch,), generator=gen).tolist()
        loss = sft_loss(model, [examples[i] for i in idx], proc)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1}: loss {np.mean(losses[-20:]):.3f}, {time.time() - t0:.0f} s | {evaluate()}", flush=True)


if __name__ == "__main__":
    main()
