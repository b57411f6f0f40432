"""The papermill runner on a trivial two-notebook chain: parameters, metrics, manifest, skip, failure."""
import json

import nbformat
import pytest

from zoomdx_lib.workbook.rundir import read_metrics
from zoomdx_lib.workbook.runner import NotebookFailed, run_chain


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "cpu"\nrun_dir = "runs/x"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


WRITE = "from zoomdx_lib.workbook.rundir import write_metrics\nwrite_metrics(run_dir, '{name}', dict(profile=profile, seed=seed, value={value}))"


@pytest.mark.slow
def test_trivial_chain_runs_skips_and_reports_failures(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_first.ipynb", WRITE.format(name="01_first", value=1))
    _notebook(nbdir / "02_second.ipynb", WRITE.format(name="02_second", value=2))
    run = tmp_path / "run"
    lines = []
    manifest = run_chain("smoke", run, nbdir, seed=3, log=lines.append)
    assert read_metrics(run, "01_first") == {"profile": "smoke", "seed": 3, "value": 1}
    assert read_metrics(run, "02_second")["value"] == 2
    assert set(manifest["notebooks"]) == {"01_first", "02_second"}
    assert all(e["status"] == "done" and e["seconds"] > 0 for e in manifest["notebooks"].values())
    assert manifest["profile"] == "smoke" and "transformers" in manifest["versions"]
    assert (run / "executed" / "01_first.ipynb").exists()

    lines.clear()
    run_chain("smoke", run, nbdir, seed=3, log=lines.append)
    assert sum("skipped" in ln for ln in lines) == 2  # same parameters: nothing re-runs
    lines.clear()
    run_chain("smoke", run, nbdir, seed=4, log=lines.append)
    assert sum("skipped" in ln for ln in lines) == 0  # a changed parameter re-runs

    _notebook(nbdir / "03_broken.ipynb", "raise ValueError('bad input in record 7')")
    with pytest.raises(NotebookFailed, match=r"03_broken.ipynb failed in cell .*ValueError: bad input in record 7"):
        run_chain("smoke", run, nbdir, seed=4, log=lines.append)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["notebooks"]["03_broken"]["status"] == "failed"
