"""Torch threads on a small machine: 1 vs 2 threads, with the machine idle and with one other busy process,
and two one-thread workers side by side against one two-thread process (what ``rl_study --jobs 2`` does).

    python benchmarks/bench_threads.py [--profile cpu] [--repeats 3]

The workload is what the cpu chain spends its time on, at the profile's sizes with the shipped base:
LoRA SFT steps (batch 8) and one batch of sampled two-turn rollouts (8 cases x 1, the zoom tool between
the turns). Each (threads, condition) runs in a fresh subprocess; "busy" starts a second process doing
float32 matmuls with 2 threads (another job on the same cores) for the duration. Prints seconds per
workload and the ratio 2 threads / 1 thread under each condition (< 1: two threads are faster). "pair" runs
two one-thread workloads at once on the idle machine; each takes its own time per workload, and the two
together finish two workloads in that time, so the ratio printed is (pair time / 2) / (2-thread idle time)
(< 1: two workers get more done per hour than one process with both threads).
"""
import argparse
import json
import os
import subprocess
import sys
import time

WORKLOAD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from peft import get_peft_model
from zoomdx_lib.config import get_profile
from zoomdx_lib.eval.grounding import fresh_cases
from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.rl.rollout import HFPolicy, rollout
from zoomdx_lib.train.pretrain import encode_case
from zoomdx_lib.train.sft import sft_loss
prof = get_profile(sys.argv[2])
model, processor = load_model_and_processor(prof.model.path, **prof.model.pixel_bounds)
items = fresh_cases("breast", 8, 424242, prof.data.image_size)
examples = [encode_case(s, im, processor, prof.rollout.crop_pixels).example for s, im in items]
peft = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
out = {}
for r in range(int(sys.argv[3]) + 1):          # the first repeat warms up and is not timed
    t0 = time.perf_counter()
    peft.train()
    for _ in range(3):
        loss = sft_loss(peft, examples, processor)
        opt.zero_grad(); loss.backward(); opt.step()
    t1 = time.perf_counter()
    peft.eval()
    torch.manual_seed(r)
    with torch.no_grad():
        rollout(items, HFPolicy(peft, processor), processor, 1, True, max_new_tokens=prof.rollout.max_new_tokens,
                crop_pixels=prof.rollout.crop_pixels, temperature=prof.hp.temperature)
    t2 = time.perf_counter()
    if r:
        out.setdefault("sft", []).append(t1 - t0)
        out.setdefault("rollout", []).append(t2 - t1)
print(json.dumps({k: sum(v) / len(v) for k, v in out.items()}))
"""

BUSY = r"""
import torch, time
torch.set_num_threads(2)
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a.T / 768)
"""


def start(threads: int, profile: str, repeats: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-c", WORKLOAD, str(threads), profile, str(repeats)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"workload failed ({proc.returncode}):\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run(threads: int, profile: str, repeats: int) -> dict:
    return result(start(threads, profile, repeats))


def total(r: dict) -> float:
    return r["sft"] + r["rollout"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; workload: 3 LoRA SFT steps of batch 8 + 8 sampled two-turn rollouts "
          f"({args.profile} profile, shipped base), mean of {args.repeats} repeats after one warm-up")
    results = {}
    for condition in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if condition == "busy" else None
        try:
            if busy:
                time.sleep(2)
            for threads in (1, 2):
                results[condition, threads] = r = run(threads, args.profile, args.repeats)
                print(f"{condition:5s} {threads} thread(s): SFT {r['sft']:.2f} s, rollouts {r['rollout']:.2f} s, "
                      f"total {r['sft'] + r['rollout']:.2f} s")
        finally:
            if busy:
                busy.kill()
    pair = [result(p) for p in [start(1, args.profile, args.repeats) for _ in range(2)]]
    for i, r in enumerate(pair):
        print(f"pair  worker {i}, 1 thread: SFT {r['sft']:.2f} s, rollouts {r['rollout']:.2f} s, total {total(r):.2f} s")
    for condition in ("idle", "busy"):
        one, two = results[condition, 1], results[condition, 2]
        ratio = {k: two[k] / one[k] for k in one}
        print(f"{condition}: 2 threads / 1 thread = SFT {ratio['sft']:.2f}, rollouts {ratio['rollout']:.2f}, "
              f"total {total(two) / total(one):.2f}")
    per_workload = sum(total(r) for r in pair) / len(pair) / 2
    print(f"pair: two one-thread workers, time per workload / one two-thread process = "
          f"{per_workload / total(results['idle', 2]):.2f}")


if __name__ == "__main__":
    main()
