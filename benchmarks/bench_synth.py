"""Synthetic B-mode generation rate per organ and image size, against the 50 images/s target.

    python benchmarks/bench_synth.py [--n 100] [--sizes 224 256 448]
"""
import argparse
import time

from zoomdx_lib.synth import generate_case

TARGET = 50.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 448])
    args = ap.parse_args()
    for size in args.sizes:
        for organ in ("liver", "breast", "thyroid"):
            generate_case(0, organ, size)  # warm the per-size geometry cache
            t0 = time.perf_counter()
            for i in range(args.n):
                generate_case(1000 + i, organ, size)
            rate = args.n / (time.perf_counter() - t0)
            print(f"{organ:8s} {size:4d} px: {rate:7.1f} images/s  ({rate / TARGET:.2f}x the {TARGET:.0f}/s target)")


if __name__ == "__main__":
    main()
