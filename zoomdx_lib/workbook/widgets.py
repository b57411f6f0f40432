"""ipywidgets browsers for the notebooks: samples of a data directory, and evaluation rollouts.

The pure parts (filtering, per-rollout reward tables, dialogue text) are plain functions tested
without a display; the browsers only wire them to controls and draw into ``widgets.Output``.
"""
from __future__ import annotations

import base64
import contextlib
import html
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import ipywidgets as widgets

from PIL import Image

from ..data.images import load_image
from ..data.store import load_split
from ..eval.generate import load_cached
from ..geometry import crop_image
from ..rl.rewards import mode_and_kappa, reward_components
from . import viz

ALL = "all"


def filter_samples(samples: Sequence, split=None, attribute=None, c=None) -> list:
    """Samples matching every given field (None or "all" = no filter)."""
    keep = lambda v, want: want in (None, ALL) or v == want  # noqa: E731
    return [s for s in samples if keep(s.split, split) and keep(s.attribute, attribute) and keep(s.c, c)]


def record_summary(record: dict) -> dict:
    """Consensus of a record's rollouts: {mode, kappa (0-1), correct (mode == label)}."""
    mode, kappa = mode_and_kappa([r["answer"] for r in record["rollouts"]])
    return dict(mode=mode, kappa=kappa, correct=mode is not None and mode == record["label"])


def filter_records(records: Sequence[dict], c=None, correct=None, kappa_range=(0.0, 1.0)) -> list[dict]:
    """Records with the given c, consensus correctness (bool) and kappa in the closed `kappa_range`."""
    lo, hi = kappa_range
    out = []
    for r in records:
        s = record_summary(r)
        if (c is None or r["c"] == c) and (correct is None or s["correct"] == bool(correct)) \
                and lo - 1e-9 <= s["kappa"] <= hi + 1e-9:
            out.append(r)
    return out


def rollout_table(record: dict) -> list[dict]:
    """One row per rollout: parsed box/answer, errors and every reward term of Eq. 3 for this group."""
    ros = record["rollouts"]
    comp = reward_components([dict(box=r["box"], answer=r["answer"], fmt=r["fmt"]) for r in ros],
                             record["c"], record["label"], record["box"])
    return [dict(i=i + 1, answer=r["answer"], box=r["box"], tool_error=r.get("tool_error"),
                 answer_error=r.get("answer_error"), loc=float(comp["loc"][i]), acc=float(comp["acc"][i]),
                 fmt=float(comp["fmt"][i]), group=float(comp["group"][i]),
                 individual=float(comp["individual"][i]), total=float(comp["total"][i]),
                 turn1=r.get("turn1"), turn2=r.get("turn2")) for i, r in enumerate(ros)]


def messages_text(messages: Sequence[dict]) -> str:
    """Readable text of chat messages: one 'role: text' block per message, images shown as [image path]."""
    blocks = []
    for m in messages:
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        parts = [f"[image {p.get('image')}]" if p.get("type") == "image" else p.get("text", "") for p in content]
        blocks.append(f"{m['role']}: " + " ".join(parts))
    return "\n\n".join(blocks)


def cached_rollouts(generations_dir, mode: str = "sample", seed: int = 0) -> dict:
    """{(dataset, method): records} of every cached generation of one mode and seed."""
    return {(d, m): recs for (m, d, md, s), recs in load_cached(generations_dir).items() if md == mode and s == seed}


def split_image_loader(data_dir) -> Callable:
    """``loader(dataset, case_id) -> PIL image`` over the splits of a data folder (each split indexed once)."""
    data_dir, paths = Path(data_dir), {}

    def loader(dataset: str, case_id: str):
        if dataset not in paths:
            paths[dataset] = {s.id: data_dir / s.image_path for s in load_split(data_dir, dataset)}
        return load_image(paths[dataset][case_id])
    return loader


def _pre(text: str) -> str:
    return f"<pre style='white-space:pre-wrap;font-size:11px'>{html.escape(text or '')}</pre>"


class _Sink:
    """Outputs of one redraw, published at once by assigning `Output.outputs`.

    Assigning the trait avoids the Output widget's capture protocol (`with out:`), under which a
    headless papermill/nbclient run was seen to stall with the kernel idle.
    """

    def __init__(self):
        self.items = []

    def text(self, s: str) -> None:
        self.items.append({"output_type": "stream", "name": "stdout", "text": str(s) + "\n"})

    def html(self, s: str) -> None:
        self.items.append({"output_type": "display_data", "metadata": {},
                           "data": {"text/html": s, "text/plain": html.unescape(s)[:200]}})

    def png(self, fig) -> None:
        self.items.append({"output_type": "display_data", "metadata": {},
                           "data": {"image/png": base64.b64encode(viz.png_bytes(fig)).decode(), "text/plain": "<figure>"}})


@contextlib.contextmanager
def _publish(out):
    sink = _Sink()
    try:
        yield sink
    finally:
        out.outputs = tuple(sink.items)


def _table_html(rows: list[dict], keys: Sequence[str]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r[k])}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table style='font-size:11px'><tr>{head}</tr>{body}</table>"


def _options(values) -> list:
    return [ALL] + sorted({v for v in values}, key=str)


def sample_browser(samples: Sequence, data_dir, crop_pixels: int) -> widgets.VBox:
    """Browse samples: filter by split/attribute/c, then image with box, the crop, labels, raters,
    difficulty and the Zoom-then-Diagnose dialogue (from dialogues_{split}.jsonl when present)."""
    data_dir = Path(data_dir)
    dialogues: dict[str, dict] = {}

    def dialogue(s) -> Optional[str]:
        if s.split not in dialogues:
            path = data_dir / f"dialogues_{s.split}.jsonl"
            dialogues[s.split] = {d["id"]: d for d in map(json.loads, path.read_text().splitlines()) if d} \
                if path.exists() else {}
        d = dialogues[s.split].get(s.id)
        return messages_text(d["messages"]) if d else None

    split = widgets.Dropdown(options=_options(s.split for s in samples), description="split")
    attr = widgets.Dropdown(options=_options(s.attribute for s in samples), description="attribute")
    conf = widgets.Dropdown(options=[ALL, 1, 0], description="c")
    index = widgets.IntSlider(min=0, max=max(0, len(samples) - 1), description="sample")
    info, out = widgets.Label(), widgets.Output()
    state = {"sel": list(samples), "busy": False}

    def draw(*_):
        if state["busy"]:
            return
        with _publish(out) as sink:
            if not state["sel"]:
                sink.text("no sample matches the filters")
                return
            s = state["sel"][min(index.value, len(state["sel"]) - 1)]
            path = Path(s.image_path) if Path(s.image_path).is_absolute() else data_dir / s.image_path
            if path.exists():
                with Image.open(path) as f:
                    img = f.copy()
                fig, axes = viz._figure(1, 2, (8, 3.8))
                viz.draw_boxes(axes[0, 0], img, [(s.box, viz.TRUE_COLOR, "lesion")])
                viz.draw_boxes(axes[0, 1], crop_image(img, s.box, crop_pixels), [])
                axes[0, 1].set_title("crop at the true box", fontsize=8)
                sink.png(fig)
            else:
                sink.text(f"image not found: {path}")
            raters = " / ".join(s.rater_labels) if s.rater_labels else "n/a"
            diff = "n/a" if s.difficulty is None else f"{s.difficulty:.2f}"
            sink.html((f"<b>{html.escape(s.id)}</b> [{s.split}] {s.organ} | {s.attribute}: <b>{s.label}</b> "
                         f"| c={s.c} | raters: {html.escape(raters)} | difficulty {diff} | box {list(s.box)}"))
            text = dialogue(s)
            sink.html((_pre(text if text is not None else f"question: {s.question}")))

    def refilter(*_):
        state["busy"] = True
        state["sel"] = filter_samples(samples, split.value, attr.value, conf.value)
        index.max = max(0, len(state["sel"]) - 1)
        info.value = f"{len(state['sel'])} of {len(samples)} samples"
        state["busy"] = False
        draw()

    for w in (split, attr, conf):
        w.observe(refilter, names="value")
    index.observe(draw, names="value")
    refilter()
    return widgets.VBox([widgets.HBox([split, attr, conf]), widgets.HBox([index, info]), out])


def case_label(record: dict) -> str:
    """The case dropdown's label of a record: 'id c=C kappa=K' (kappa of the consensus, 0-1)."""
    return f"{record['id']} c={record['c']} kappa={record_summary(record)['kappa']:.3f}"


def case_dropdown_width(records: Sequence[dict]) -> str:
    """CSS width of the case dropdown that shows the longest label of `records` whole: the
    description's width plus the label in `ch` (the width of "0"; 1.15 of it per character covers
    wider letters) and room for the arrow."""
    longest = max((len(case_label(r)) for r in records), default=0)
    return f"calc(var(--jp-widgets-inline-label-width, 80px) + {math.ceil(1.15 * longest) + 4}ch)"


def _show_case(sink, rec: dict, images_loader: Callable, dataset: str, method: str, crop_pixels: int) -> None:
    """One case into `sink`: the figure (or why there is no image), the reward table, each turn's text."""
    try:
        img, why = images_loader(dataset, rec["id"]), "the loader returned None"
    except Exception as e:  # noqa: BLE001 -- show the reason, keep browsing
        img, why = None, f"{type(e).__name__}: {e}"
    if img is not None:
        sink.png(viz.qualitative_case(rec, img, crop_pixels, title=f"{dataset} / {method}"))
    else:
        sink.text(f"no image for {rec['id']}: {why}")
    rows = rollout_table(rec)
    sink.html((_table_html(rows, ["i", "answer", "box", "tool_error", "answer_error",
                                  "loc", "acc", "fmt", "group", "individual", "total"])))
    for r in rows:
        sink.html((f"<b>rollout {r['i']}</b> answer: {html.escape(str(r['answer']))}"
                   + _pre(f"turn 1: {r['turn1']}\n\nturn 2: {r['turn2']}")))


def rollout_browser(records_by: dict, images_loader: Callable, crop_pixels: int) -> widgets.VBox:
    """Browse evaluation rollouts: pick dataset, method and case (filters: c, consensus correct, kappa
    range); shows the image with true and G predicted boxes, every crop, each turn's text, the parsed
    answer and every reward component of the group. The case dropdown is wide enough for the
    longest case label of any dataset and method."""
    datasets = sorted({d for d, _ in records_by}, key=str)
    ds = widgets.Dropdown(options=datasets, description="dataset")
    meth = widgets.Dropdown(options=[], description="method")
    conf = widgets.Dropdown(options=[ALL, 1, 0], description="c")
    corr = widgets.Dropdown(options=[ALL, "correct", "wrong"], description="consensus")
    kap = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.125, description="kappa")
    case = widgets.Dropdown(options=[], description="case", layout=widgets.Layout(
        width=case_dropdown_width([r for recs in records_by.values() for r in recs])))
    info, out = widgets.Label(), widgets.Output()
    state = {"sel": [], "busy": False}

    def draw(*_):
        if state["busy"]:
            return
        with _publish(out) as sink:
            if case.value is None or not state["sel"]:
                sink.text("no case matches the filters")
                return
            _show_case(sink, state["sel"][case.value], images_loader, ds.value, meth.value, crop_pixels)

    def refilter(*_):
        if state["busy"]:
            return
        state["busy"] = True
        recs = records_by.get((ds.value, meth.value), [])
        state["sel"] = sel = filter_records(recs, c=None if conf.value == ALL else conf.value,
                                            correct=None if corr.value == ALL else corr.value == "correct",
                                            kappa_range=kap.value)
        case.options = [(case_label(r), i) for i, r in enumerate(sel)]
        case.value = 0 if sel else None
        info.value = f"{len(sel)} of {len(recs)} cases"
        state["busy"] = False
        draw()

    def methods(*_):
        state["busy"] = True
        prev = meth.value
        meth.options = opts = sorted({m for d, m in records_by if d == ds.value}, key=str)
        meth.value = prev if prev in opts else (opts[0] if opts else None)  # built empty, it stays None
        state["busy"] = False
        refilter()

    ds.observe(methods, names="value")
    for w in (meth, conf, corr, kap):
        w.observe(refilter, names="value")
    case.observe(draw, names="value")
    methods()
    return widgets.VBox([widgets.HBox([ds, meth, conf, corr]), widgets.HBox([kap, info]), case, out])
