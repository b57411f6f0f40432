"""The results page, written from run folders' own files (never pasted by hand).

    python -m zoomdx_lib.eval.report RUN_DIR [RUN_DIR ...] --out docs/results.md

Long because the page has one short renderer per notebook's metrics (each under 30 lines), beside the
formatting they share; splitting them would scatter one page over several modules.

Per run folder (``python -m zoomdx_lib.workbook.runner --out RUN_DIR``): the commit, profile and seed
(``manifest.json``), the command (from the parameters papermill recorded in ``executed/``), Table 1, Table 2
and the ablation (notebook 04's ``numbers``), the paper's claims with verdicts, notebooks 00-03's checks,
time per notebook and phase (``phases.json``) and the figures; with several runs, their claims side by side.
Units: Acc, mIoU, SAcc, Align in percent (claim differences in percentage points); ECE a fraction (0-1);
the Entropy Gap in bits; times in seconds of wall clock.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from .tables import CAPTIONS, PERCENT, fmt_cell

NB = {"base": "00_pretrain_base", "data": "01_data_construction", "sft": "02_sft_zoom_then_diagnose",
      "grpo": "03_grpo_uncertainty_alignment", "eval": "04_calibration_analysis"}
TABLE1 = (("acc", "Acc"), ("miou_c1", "mIoU"))
TABLE2 = (("sacc", "SAcc"), ("align", "Align"), ("ece10", "ECE"), ("gap", "Gap"))
ABLATION_METHODS = ("zoom_sft", "grpo_accuracy_only", "grpo_uncertainty_group", "grpo_uncertainty_credit")
HIDDEN_PARAMS = ("profile", "run_dir", "seed", "overrides")


def notebook_parameters(run_dir) -> dict:
    """The parameters papermill injected into the first executed notebook of `run_dir`
    (``executed/*.ipynb``): profile, run_dir, seed and any ``--param`` / ``--set`` values; {} if none ran."""
    for nb in sorted((Path(run_dir) / "executed").glob("*.ipynb")):
        params = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("parameters")
        if params is not None:
            return params
    return {}


def load_run(run_dir) -> dict:
    """Everything the page reads from one run folder: ``dir`` (as given), ``manifest``, ``phases``
    (seconds per notebook and phase), ``metrics`` ({notebook: its metrics JSON}), ``params`` and
    ``figures`` (file names under ``figures/``) and ``paper_vs_ours`` (notebook 04's table of the paper's
    published numbers beside this run's, Markdown, or None). FileNotFoundError when there is no ``manifest.json``."""
    run_dir, paper, phases = Path(run_dir), Path(run_dir) / "tables" / "paper_vs_ours.md", Path(run_dir) / "phases.json"
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir}: no manifest.json; is this a run folder? "
                                f"(python -m zoomdx_lib.workbook.runner --out {run_dir})")
    metrics = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "metrics").glob("*.json"))}
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    return dict(dir=str(run_dir), manifest=json.loads((run_dir / "manifest.json").read_text()),
                phases=json.loads(phases.read_text()) if phases.exists() else {},
                metrics=metrics, params=notebook_parameters(run_dir), figures=figures,
                paper_vs_ours=paper.read_text().strip() if paper.exists() else None)


def _kv(key: str, value) -> str:
    """One ``key=value`` command-line argument (a string as is, anything else as JSON), quoted for a POSIX
    shell where it needs it."""
    return shlex.quote(f"{key}={value if isinstance(value, str) else json.dumps(value)}")


def runner_command(run: dict) -> str:
    """The runner command that made `run` (from :func:`load_run`): profile, seed and folder from the
    manifest, ``--set`` for each profile override, ``--param`` for each other notebook parameter."""
    m, params = run["manifest"], run["params"]
    parts = ["python -m zoomdx_lib.workbook.runner", f"--profile {m.get('profile')}"]
    if m.get("seed", 0):
        parts.append(f"--seed {m['seed']}")
    parts.append(f"--out {run['dir']}")
    parts += [f"--set {_kv(k, v)}" for k, v in sorted((params.get("overrides") or {}).items())]
    parts += [f"--param {_kv(k, v)}" for k, v in sorted(params.items()) if k not in HIDDEN_PARAMS]
    return " ".join(parts)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x) -> str:
    return f"{x:.3f}" if _finite(x) else "–"


def fmt_diff(delta: float, low: float, high: float, metric: str) -> str:
    """A paired difference as '+3.6 [-7.7, +16.0]': percentage points for percent metrics (`delta`,
    `low`, `high` given as 0-1 fractions), two decimals otherwise (ECE fraction, Gap bits); '–' if not finite.

    >>> fmt_diff(0.036, -0.077, 0.16, "acc"), fmt_diff(-0.012, -0.12, 0.11, "gap")
    ('+3.6 [-7.7, +16.0]', '-0.01 [-0.12, +0.11]')
    """
    if not _finite(delta):
        return "–"
    scale, places = (100, 1) if metric in PERCENT else (1, 2)
    ci = f" [{scale * low:+.{places}f}, {scale * high:+.{places}f}]" if _finite(low) and _finite(high) else ""
    return f"{scale * delta:+.{places}f}{ci}"


def _ci(point: float, low: float, high: float) -> str:
    """'0.35 [0.21, 0.48]': a 0-1 fraction with its interval, two decimals."""
    return f"{point:.2f} [{low:.2f}, {high:.2f}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A Markdown table as lines: `header` then one line per row (cells converted with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _split(dataset: str) -> str:
    return dataset.removeprefix("test_")


def metric_table(m04: dict, keys: Sequence[tuple[str, str]], methods: Optional[Sequence[str]] = None,
                 datasets: Optional[Sequence[str]] = None) -> list[str]:
    """Methods by (dataset, metric) from notebook 04's ``numbers`` (one record per method, dataset and
    metric: point, low, high as 0-1 fractions, bits for the Gap). Cells as :func:`tables.fmt_cell`
    writes them: percent for Acc/mIoU/SAcc/Align, '–' where a method has no value."""
    cells = {(r["method"], r["dataset"], r["metric"]): fmt_cell(r["point"], r["low"], r["high"], r["metric"])
             for r in m04.get("numbers", [])}
    methods = list(methods or m04.get("methods", []))
    datasets = list(datasets or m04.get("datasets", []))
    header = ["method"] + [f"{_split(d)} {label}" for d in datasets for _, label in keys]
    rows = [[m] + [cells.get((m, d, k), "–") for d in datasets for k, _ in keys] for m in methods]
    return md_table(header, rows)


def tables_section(m04: dict) -> list[str]:
    """Table 1, Table 2 and the ablation (on test_liver, else the first split) as Markdown."""
    datasets, ablation = m04.get("datasets", []), [m for m in ABLATION_METHODS if m in m04.get("methods", [])]
    if not datasets:
        return []
    out = [f"**{CAPTIONS['table1']}**", ""] + metric_table(m04, TABLE1)
    out += ["", f"**{CAPTIONS['table2']}**", ""] + metric_table(m04, TABLE2)
    where = "test_liver" if "test_liver" in datasets else datasets[0]
    return out + (["", f"**{CAPTIONS['ablation']}, {_split(where)}**", ""]
                  + metric_table(m04, TABLE1 + TABLE2, ablation, [where]) if ablation else [])


def validity_section(m02: dict, m03: dict) -> list[str]:
    """Valid tool calls and parseable answers of every greedy evaluation of notebooks 02 and 03 (their
    ``greedy`` rows: method, dataset, n, tool_call_valid and answer_valid as 0-1), in percent of cases; a
    single-turn method (kind ``single`` in notebook 02's model registry) makes no tool call by design."""
    seen, rows = set(), []
    single = {name for name, m in m02.get("models", {}).items() if m.get("kind") == "single"}
    for r in m02.get("greedy", []) + m03.get("greedy", []):
        if (r["method"], r["dataset"]) not in seen:
            seen.add((r["method"], r["dataset"]))
            calls = "no tool call (single turn)" if r["method"] in single else f"{100 * r['tool_call_valid']:.1f}"
            rows.append((r["method"], _split(r["dataset"]), r["n"], calls, f"{100 * r['answer_valid']:.1f}"))
    return [] if not rows else (["Malformed outputs score zero and are counted here (greedy decoding, % of cases):", ""]
            + md_table(["method", "split", "n", "valid tool calls %", "parseable answers %"], rows))


def claims_section(m04: dict) -> list[str]:
    """The paper's claims of notebook 04 (``claims`` rows: claim, dataset, metric, n, delta, low, high,
    verdict), one line each, and how many rows got each verdict."""
    claims = m04.get("claims", [])
    if not claims:
        return []
    counts = ", ".join(f"{n} {v}" for v, n in Counter(c["verdict"] for c in claims).items())  # first-seen order
    out = [f"{len(claims)} paired comparisons (better − worse on the same cases; percentage points for Acc and "
           f"Align, fractions for ECE, bits for the Gap; 95 % bootstrap interval): {counts}.", ""]
    rows = [(c["claim"], _split(c["dataset"]), c["n"], fmt_diff(c["delta"], c["low"], c["high"], c["metric"]),
             c["verdict"]) for c in claims]
    return out + md_table(["claim", "split", "n", "better − worse [95 % CI]", "verdict"], rows)


def crop_use_section(m04: dict) -> list[str]:
    """Does turn 2 use the crop (notebook 04's ``crop_use`` rows: method, source, n, acc_c1, acc_all,
    changed)? One row per method: accuracy (all cases, %) with its own crop, the true crop, a blank crop and a
    crop elsewhere, and the share of answers a blank or elsewhere crop changed."""
    rows = m04.get("crop_use", [])
    if not rows:
        return []
    by = {(r["method"], r["source"]): r for r in rows}
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        cell = lambda source, key="acc_all": (f"{100 * by[(method, source)][key]:.1f}"   # noqa: E731
                                              if (method, source) in by else "–")
        table.append((method, by.get((method, "own"), {}).get("n", "–"), cell("own"), cell("true"), cell("blank"),
                      cell("elsewhere"), cell("blank", "changed"), cell("elsewhere", "changed")))
    return (["Turn 1 is kept; turn 2 answers from its own crop or from another (accuracy over all cases, %; "
             "changed = answers that differ from the own-crop answer, %). If a blank crop changed few answers, "
             "turn 2 would be reading the full view, not the crop.", ""]
            + md_table(["method", "n", "own crop", "true crop", "blank", "elsewhere", "changed by blank",
                        "changed by elsewhere"], table))


def grounding_section(m00: dict) -> list[str]:
    """The base's grounding check of notebook 00 (per organ: greedy box mIoU and oracle-crop accuracy,
    0-1, with 95 % intervals, beside the constant answers)."""
    rows = [(organ, g["n"], _ci(g["miou"], *g["miou_ci"]), f"{g['mean_box_miou']:.2f}",
             _ci(g["acc"], *g["acc_ci"]), f"{g['majority_acc']:.2f}", f"{g['tool_call_valid']:.2f}")
            for organ, g in m00.get("grounding", {}).items()]
    if not rows:
        return []
    return ([f"Base `{m00.get('base')}` on fresh cases (box from its own turn 1, answer from the crop of the true "
             "box; fractions 0-1):", ""]
            + md_table(["organ", "n", "mIoU [95 % CI]", "mean box", "accuracy [95 % CI]", "majority", "valid calls"],
                       rows))


def readability_section(m01: dict) -> list[str]:
    """Notebook 01's check of whether the crop holds evidence the full view lacks: a reference classifier's
    accuracy (0-1, 95 % interval) from each view of the true box, both original sizes (pixels)."""
    rows = []
    for r in m01.get("readability", []) + m01.get("readability_native", []):
        native = f"{r['size']} px" + (", native detail" if r.get("detail_scale") else "")
        rows.append((r["organ"], r["attribute"], native, f"{r['crop'][0]:.2f}", f"{r['full'][0]:.2f}",
                     fmt_diff(*r["crop_minus_full"], "fraction"), f"{r['majority']:.2f}"))
    return md_table(["organ", "attribute", "original", "from the crop", "from the full view",
                     "crop − full [95 % CI]", "majority"], rows) if rows else []


def training_section(m02: dict, m03: dict) -> list[str]:
    """The end of training: zoom SFT's last loss (notebook 02) and each GRPO variant's log values
    averaged over its last steps (notebook 03's ``end_values``, in the log's own units)."""
    out = [f"Zoom SFT's final training loss: {_num(m02.get('final_loss_zoom'))} (cross-entropy, nats per token)."
           ] if m02 else []
    ends = m03.get("end_values", {})
    if ends:
        keys = sorted({k for v in ends.values() for k in v})
        out += ["", f"GRPO (engine `{m03.get('engine')}`, estimator `{m03.get('estimator')}`), mean over the last "
                "logged steps:", ""]
        out += md_table(["variant"] + keys, [[name] + [_num(v.get(k)) for k in keys] for name, v in ends.items()])
    return out


def timing_section(run: dict) -> list[str]:
    """Seconds per notebook (manifest) with its named phases (phases.json), and the chain's total."""
    notebooks, phases = run["manifest"].get("notebooks", {}), run["phases"]
    rows = [(nb, e.get("status"), f"{e['seconds']:.1f}" if _finite(e.get("seconds")) else "–",
             " · ".join(f"{p} {s:.1f}" for p, s in phases.get(nb, {}).items()) or "–")
            for nb, e in notebooks.items()]
    total = run["manifest"].get("total_seconds")
    head = [f"Total {total:.1f} s of wall clock over {len(rows)} notebooks." if _finite(total) else
            "The chain has not finished.", ""]
    return head + md_table(["notebook", "status", "seconds", "phases (seconds)"], rows)


def provenance(run: dict) -> list[str]:
    """Which commit, profile and seed produced the run, when, with which packages, and its command."""
    m = run["manifest"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return [f"- profile **{m.get('profile')}**, seed {m.get('seed')}",
            f"- git commit `{m.get('git_commit') or 'unknown'}`",
            f"- started {m.get('started', '?')}, finished {m.get('finished', 'not finished')} (UTC)",
            f"- packages: {versions}", "", "```bash", runner_command(run), "```"] + ([
        "", "> Profile **smoke** (a few training steps, a dozen cases per test split) checks the plumbing, not "
        "the numbers: read nothing about the method from this section."] if m.get("profile") == "smoke" else [])


def run_section(run: dict) -> list[str]:
    """The whole section of one run folder, as Markdown lines."""
    m = {key: run["metrics"].get(nb, {}) for key, nb in NB.items()}
    figures = ", ".join(f"`{f}`" for f in run["figures"]) or "none"
    sections = [("Tables", tables_section(m["eval"])), ("The paper's claims", claims_section(m["eval"])),
                ("The paper's numbers beside ours (measured on other data and models)",
                 [run["paper_vs_ours"]] if run["paper_vs_ours"] else []),
                ("Does the answer use the crop? (notebook 04)", crop_use_section(m["eval"])),
                ("The base sees (notebook 00)", grounding_section(m["base"])),
                ("Does the crop add evidence? (notebook 01)", readability_section(m["data"])),
                ("Training (notebooks 02, 03)", training_section(m["sft"], m["grpo"])),
                ("Valid outputs (notebooks 02, 03)", validity_section(m["sft"], m["grpo"])),
                ("Time", timing_section(run)), ("Figures", [f"In `{run['dir']}/figures/`: {figures}."])]
    out = [f"## Run `{run['dir']}`", ""] + provenance(run)
    for title, body in sections:
        if body:
            out += ["", f"### {title}", ""] + body
    return out


def claims_across_runs(runs: Sequence[dict]) -> list[str]:
    """The claims of several runs side by side: each run's paired difference and verdict per claim and split."""
    keyed = [{(c["claim"], c["dataset"]): c for c in r["metrics"].get(NB["eval"], {}).get("claims", [])} for r in runs]
    order = list(dict.fromkeys(k for claims in keyed for k in claims))
    rows = [[claim, _split(d)] + [f"{fmt_diff(c['delta'], c['low'], c['high'], c['metric'])} ({c['verdict']})"
                                  if (c := claims.get((claim, d))) else "–" for claims in keyed]
            for claim, d in order]
    dirs = " ".join(r["dir"] for r in runs)
    return (["## The claims across runs", "", "Each run's own paired difference (better − worse) and verdict. "
             f"For one interval over the runs: `python -m zoomdx_lib.eval.claims {dirs}`.", ""]
            + md_table(["claim", "split"] + [f"`{r['dir']}`" for r in runs], rows))


def render(runs: Sequence[dict], out: str) -> str:
    """The results page for `runs` (from :func:`load_run`) as Markdown text; `out` is the page's path as
    given on the command line, for the command that regenerates it."""
    summary = ", ".join(f"profile {r['manifest'].get('profile')} at commit "
                        f"`{(r['manifest'].get('git_commit') or 'unknown')[:12]}`" for r in runs)
    lines = ["# Results", "",
             f"Generated from the run folders' own files ({summary}); do not edit by hand. Regenerate with:", "",
             "```bash", f"python -m zoomdx_lib.eval.report {' '.join(r['dir'] for r in runs)} --out {out}", "```", "",
             "These are measurements of the workbook's own models on its own test splits, not the paper's numbers "
             "(those are listed beside ours, labelled as measured on other data and models). "
             "Cells read value [95 % bootstrap interval over cases].", ""]
    for run in runs:
        lines += run_section(run) + [""]
    if len(runs) > 1:
        lines += claims_across_runs(runs) + [""]
    return "\n".join(lines)


def write_report(run_dirs: Sequence, out) -> Path:
    """Read each run folder, write the results page to `out` (parent folders created); returns its path."""
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, str(out)))
    return out


def main(argv=None) -> int:
    """The command line: writes the page and returns 0, or 1 naming a folder that is not a run folder."""
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.eval.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (python -m zoomdx_lib.workbook.runner --out DIR)")
    ap.add_argument("--out", default="docs/results.md", help="the page to write (default docs/results.md)")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.runs, args.out)
    except FileNotFoundError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"results page written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
