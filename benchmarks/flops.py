"""FLOP floors: a piece of work's counted FLOPs over this machine's measured matmul rate.

`count_flops(fn)` runs `fn` once under torch's FlopCounterMode (matmuls, convolutions and attention,
forward and backward); `matmul_rate()` times large fp32 matmuls with the current thread count. The
floor is what the work would take if every FLOP ran at the best dense-matmul rate, so
measured / floor says how far a step is from compute-bound.
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_rate(n: int = 1024, repeats: int = 10) -> float:
    """Best-of-`repeats` fp32 FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def count_flops(fn) -> tuple[int, object]:
    """(FLOPs counted while running fn(), fn's return value)."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


def floor_line(name: str, flops: int, measured_s: float, rate: float) -> str:
    floor = flops / rate
    return (f"{name}: {flops / 1e9:.2f} GFLOP, floor {floor:.3f} s at {rate / 1e9:.1f} GFLOP/s, "
            f"measured {measured_s:.3f} s = {measured_s / floor:.1f}x the floor")
