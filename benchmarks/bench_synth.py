"""Synthetic B-mode generation rate per organ and image size, against the 50 images/s target.

    python benchmarks/bench_synth.py [--n 200] [--size 256 ...]

Single process, whatever BLAS/FFT threads the machine gives; the ratio is measured in this run
(rate / 50 images/s), so compare ratios only within one machine.
"""
import argparse
import time

from zoomdx_lib.data.synth import ORGAN_PRESETS, generate_case

TARGET = 50.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per organ and size")
    ap.add_argument("--size", "--sizes", dest="sizes", type=int, nargs="+", default=[224, 256, 448],
                    help="output image sizes in pixels")
    args = ap.parse_args()
    print(f"{'organ':8s} {'size':>5s} {'images/s':>9s} {'ms/image':>9s}  ratio to {TARGET:.0f}/s")
    for size in args.sizes:
        for organ in ORGAN_PRESETS:
            generate_case(0, organ, size)  # build the per-size geometry cache outside the timing
            t0 = time.perf_counter()
            for i in range(args.n):
                generate_case(1000 + i, organ, size)
            dt = time.perf_counter() - t0
            rate = args.n / dt
            print(f"{organ:8s} {size:5d} {rate:9.1f} {1000 * dt / args.n:9.2f}  {rate / TARGET:.2f}x")


if __name__ == "__main__":
    main()
