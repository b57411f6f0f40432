"""Seeds side by side in spawned worker processes: results keyed by seed, a failing seed named."""
import pytest

from zoomdx_lib.workbook import seed_pool


def test_map_seeds_returns_each_seeds_result_from_its_worker():
    # threads_per_job stands in for a seed's work: any importable function of (seed, **kwargs) will do
    got = seed_pool.map_seeds(seed_pool.threads_per_job, [1, 2, 4], jobs=2, progress=False, cores=4)
    assert got == {1: 4, 2: 2, 4: 1} and list(got) == [1, 2, 4]


def test_a_failing_seed_is_named():
    with pytest.raises(RuntimeError, match=r"seed 0 failed in its worker process: ValueError"):
        seed_pool.map_seeds(seed_pool.threads_per_job, [3, 0], jobs=2, progress=False)


def test_no_seeds_starts_no_worker():
    assert seed_pool.map_seeds(seed_pool.threads_per_job, [], jobs=2) == {}
    with pytest.raises(ValueError, match="jobs=0"):
        seed_pool.threads_per_job(0)
