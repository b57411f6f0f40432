"""Rollout throughput: the batched engine (all B x G rows per generate call) vs one rollout at a time.

    python benchmarks/bench_rollout.py [--model runs/cpu/models/sft_zoom_full --adapter runs/cpu/models/sft_zoom_lora]
                                        [--prompts 8] [--G 8] [--profile cpu]

Without --model a freshly built tiny model (the profile's size) is used; it rarely stops early, so both
engines generate the full token budget and the comparison is like for like. Prints trajectories/s of
both and their ratio, measured in this one run.
"""
import time

import torch

from bench_setup import parser, setup
from zoomdx_lib.model.load import load_policy
from zoomdx_lib.rl.rollout import HFPolicy, rollout


def main():
    ap = parser(__doc__, prompts=8)
    ap.add_argument("--G", type=int, default=8)
    args = ap.parse_args()
    prof, path, items = setup(args, "test_liver", args.prompts)
    model, processor = load_policy(path, args.adapter)
    kw = dict(do_sample=True, temperature=prof.hp.temperature, crop_pixels=prof.rollout.crop_pixels,
              max_new_tokens=prof.rollout.max_new_tokens)
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
