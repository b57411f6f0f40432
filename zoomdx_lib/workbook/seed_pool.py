"""Independent seeds in worker processes, each with its share of the cores.

A tiny model leaves much of a second torch thread idle (rollouts gain nothing from it), so two seeds side
by side in one-thread workers get more done per hour than one seed after another with both threads. In the
RL study on 2 cores: two seeds in 3 588 and 3 684 s side by side, one seed alone in 2 415 s on the same
machine, so 0.76x the time per seed (docs/rl.md). :func:`map_seeds` is how ``rl_study --jobs N`` runs seeds
side by side.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

from ..io import progress as progress_bar


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of `jobs` workers sharing `cores` (all of this machine's by default).

    >>> threads_per_job(2, cores=2), threads_per_job(1, cores=2), threads_per_job(4, cores=2)
    (1, 2, 1)
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: expected at least one worker")
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def _in_worker(fn: Callable, threads: int, seed: int, kwargs: dict):
    import torch   # the worker's own torch: its thread count does not reach the parent or the other workers

    torch.set_num_threads(threads)
    return fn(seed, **kwargs)


def map_seeds(fn: Callable, seeds: Sequence[int], jobs: int, progress: bool = True, desc: str = "seeds",
              **kwargs) -> dict:
    """``{seed: fn(seed, **kwargs)}`` computed by `jobs` spawned worker processes of
    :func:`threads_per_job` threads each. `fn` must be importable (a module-level function) and its
    results picklable; keep them small (a worker should write its outputs to disk and return little).
    A seed that fails raises RuntimeError naming it, once the seeds already running have finished."""
    seeds = list(seeds)
    if not seeds:
        return {}
    threads = threads_per_job(jobs)
    done = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_in_worker, fn, threads, s, kwargs): s for s in seeds}
        for future in progress_bar(as_completed(futures), progress, total=len(futures),
                                   desc=f"{desc} ({min(jobs, len(seeds))} workers × {threads} threads)"):
            seed = futures[future]
            try:
                done[seed] = future.result()
            except Exception as err:
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"seed {seed} failed in its worker process: {err!r}") from err
    return {s: done[s] for s in seeds}
