"""Pooled claim intervals with per-case tables against recomputing each metric on resampled records.

    python benchmarks/bench_claims.py [--seeds 5] [--cases 240] [--n-boot 200]

One RL-study-sized claim (liver + breast: 2 x 120 cases per seed, 8 rollouts per case) per metric, both
ways in this run on the same draws; prints seconds, the ratio and whether the intervals agree exactly.
The RL study pools 28 such rows at 1 000 draws after every seed.
"""
import argparse
import time

import numpy as np

from zoomdx_lib.eval.claims import mean_paired_difference
from zoomdx_lib.eval.scores import calibration_metric, calibration_metrics


def sampled_records(rng, n, labels=("A", "B", "C")):
    return [dict(id=f"case-{i}", c=int(i % 5 < 3), label=labels[i % 3],
                 rollouts=[dict(answer=str(rng.choice(labels)), iou=0.5, fmt=1.0, tool_error=None) for _ in range(8)])
            for i in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cases", type=int, default=240, help="cases per seed (liver + breast)")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pairs = [(sampled_records(rng, args.cases), sampled_records(rng, args.cases)) for _ in range(args.seeds)]
    print(f"{'metric':7s} {'tables s':>9s} {'records s':>10s} {'ratio':>6s}  same interval")
    for key in ("align", "ece10", "gap"):
        t0 = time.perf_counter()
        fast = mean_paired_difference(pairs, calibration_metric(), key, n_boot=args.n_boot)
        t1 = time.perf_counter()
        slow = mean_paired_difference(pairs, lambda recs: calibration_metrics(recs), key, n_boot=args.n_boot)
        t2 = time.perf_counter()
        print(f"{key:7s} {t1 - t0:9.2f} {t2 - t1:10.2f} {(t2 - t1) / (t1 - t0):6.1f}  {fast == slow}")


if __name__ == "__main__":
    main()
