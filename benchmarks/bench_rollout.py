"""Rollout throughput: the batched engine (all B x G rows per generate call) vs one rollout at a time.

    python benchmarks/bench_rollout.py [--model runs/cpu/models/sft_zoom_full --adapter runs/cpu/models/sft_zoom_lora]
                                        [--prompts 8] [--G 8] [--profile cpu]

Without --model a freshly built tiny model (the profile's size) is used; it rarely stops early, so both
engines generate the full token budget and the comparison is like for like. Prints trajectories/s of
both and their ratio, measured in this one run.
"""
import argparse
import tempfile
import time

import torch

from zoomdx_lib.config import get_profile
from zoomdx_lib.evaluate import Method, load_items, load_policy
from zoomdx_lib.models import build_tiny_checkpoint
from zoomdx_lib.rollout import HFPolicy, rollout


def synthetic_items(n, size):
    from zoomdx_lib.synth import generate_samples
    out = []
    for s, img in generate_samples("liver", n, seed=123, size=size):
        s.question = "Analyze the echo feature of the ultrasound image."
        out.append((s, img))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--data", default=None, help="a run's data folder; default: freshly generated cases")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--G", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    prof = get_profile(args.profile)
    path = args.model
    if path is None:
        path = tempfile.mkdtemp()
        build_tiny_checkpoint(path, prof.min_pixels, prof.max_pixels, 0, **prof.tiny)
    model, processor = load_policy(Method("bench", "zoom", path, args.adapter))
    items = load_items(args.data, "test_liver")[:args.prompts] if args.data else synthetic_items(args.prompts, prof.image_size)
    kw = dict(do_sample=True, temperature=prof.hp.temperature, crop_pixels=prof.crop_pixels,
              max_new_tokens=(prof.max_new_tokens_turn1, prof.max_new_tokens_turn2))
    policy = HFPolicy(model, processor)
    rollout(items[:1], policy, processor, group_size=2, **kw)  # warm-up
    torch.manual_seed(0)
    t0 = time.perf_counter()
    batched = rollout(items, policy, processor, group_size=args.G, rows_per_call=args.prompts * args.G, **kw)
    t_batched = time.perf_counter() - t0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    sequential = [rollout([item], policy, processor, group_size=1, rows_per_call=1, **kw)
                  for item in items for _ in range(args.G)]
    t_seq = time.perf_counter() - t0
    n = args.prompts * args.G
    tok_b = sum(len(t.turn1_ids) + len(t.turn2_ids) for g in batched for t in g)
    tok_s = sum(len(t.turn1_ids) + len(t.turn2_ids) for r in sequential for g in r for t in g)
    print(f"{n} trajectories ({args.prompts} prompts x G={args.G})")
    print(f"batched:    {n / t_batched:7.2f} trajectories/s  ({tok_b / t_batched:7.1f} generated tokens/s)")
    print(f"sequential: {n / t_seq:7.2f} trajectories/s  ({tok_s / t_seq:7.1f} generated tokens/s)")
    print(f"ratio batched/sequential: {t_seq / t_batched:.2f}x trajectories/s, "
          f"{(tok_b / t_batched) / (tok_s / t_seq):.2f}x tokens/s")


if __name__ == "__main__":
    main()
