"""viz figures and widgets browsers on tiny fake inputs (no display, Agg backend)."""
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from zoomdx_lib.workbook import viz, viz_calibration, widgets  # noqa: E402
from zoomdx_lib.eval.scores import calibration_arrays  # noqa: E402
from zoomdx_lib.schema import Sample  # noqa: E402

TRUE_BOX = [10.0, 10.0, 50.0, 50.0]
CROP = 28 * 28 * 4


def _image(seed, size=80, mode="L"):
    arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    return Image.fromarray(arr, "L") if mode == "L" else Image.fromarray(np.stack([arr] * 3, -1), "RGB")


def _ro(box, answer, fmt=1.0, i=0):
    iou = 0.0 if box is None else 1.0
    return dict(turn1=f"<think>look {i}</think><tool_call>{{}}</tool_call>",
                turn2=f"<think>the lesion margin looks {answer} on zoom {i}</think><answer>{answer}</answer>",
                box=box, tool_error=None if box else "no_tool_call", answer=answer,
                answer_error=None if answer else "no_answer", fmt=fmt, iou=iou)


@pytest.fixture
def records():
    a = [_ro(TRUE_BOX, "Hypoechoic", i=i) for i in range(6)]
    a += [_ro([30.0, 10.0, 70.0, 50.0], "Isoechoic", i=6), _ro(None, None, fmt=0.0, i=7)]
    a[6]["iou"] = 1 / 3
    b = [_ro(TRUE_BOX, "Oval" if i < 4 else "Round", i=i) for i in range(8)]
    cc = [_ro(TRUE_BOX, "Not circumscribed", i=i) for i in range(8)]
    return [dict(id="A", c=1, label="Hypoechoic", box=TRUE_BOX, attribute="echo", rollouts=a),
            dict(id="B", c=0, label="Oval", box=TRUE_BOX, attribute="shape", rollouts=b),
            dict(id="C", c=1, label="Circumscribed", box=TRUE_BOX, attribute="margin", rollouts=cc)]


@pytest.fixture
def samples():
    specs = [("echo", "Hypoechoic", 1, ("Hypoechoic", "Hypoechoic")),
             ("echo", "Isoechoic", 0, ("Isoechoic", "Hypoechoic")),
             ("shape", "Oval", 1, ("Oval", "Oval")),
             ("margin", "Circumscribed", 0, ("Circumscribed", "Not circumscribed"))]
    return [Sample(id=f"s{i}", image_path=f"images/s{i}.png", box=tuple(TRUE_BOX), attribute=a, label=lab, c=c,
                   organ="liver", question=f"What is the {a}?", rater_labels=r, difficulty=0.2 + 0.2 * i,
                   image_size=(80, 80), split="train" if i < 3 else "test_liver")
            for i, (a, lab, c, r) in enumerate(specs)]


def _log(n, seed):
    rng = np.random.default_rng(seed)
    return [dict(step=s + 1, reward_total=rng.random(), reward_loc=rng.random(), reward_acc=rng.random(),
                 reward_fmt=rng.random(), reward_group=rng.random(), kappa_c1=list(rng.random(2)),
                 kappa_c0=[] if s == 0 else [rng.random()], no_signal_share=rng.random(),
                 tool_call_valid=rng.random(), mean_iou=rng.random(), kl=rng.random() * 0.01,
                 time_generation_s=1.0, time_update_s=0.5) for s in range(n)]


def _check(fig, path):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert path.exists() and path.stat().st_size > 1000
    assert plt.get_fignums() == []


def test_every_figure_writes_a_png(tmp_path, records, samples):
    imgs = {r["id"]: _image(i, mode="L" if i else "RGB") for i, r in enumerate(records)}
    arrays = {"ours": calibration_arrays(records), "baseline": calibration_arrays(records[:2])}
    centres = np.linspace(0.05, 0.95, 10)
    calls = {
        "grid": lambda p: viz.example_grid([(s, _image(i)) for i, s in enumerate(samples)], max_per_cell=2,
                                           save_path=p),
        "disagree": lambda p: viz.disagreement_plot(centres, np.where(centres > 0.5, centres, np.nan),
                                                    np.arange(10), save_path=p),
        "balance": lambda p: viz.balance_plot({"train": samples[:3], "test_liver": samples[3:]}, save_path=p),
        "loss": lambda p: viz.loss_curve({"full": [dict(step=i, loss=2.0 / i, lr=1e-4, time_s=0.1)
                                                   for i in range(1, 6)], "lora": []}, save_path=p),
        "pred": lambda p: viz.prediction_panels(records, imgs, CROP, n=6, save_path=p),
        "grpo": lambda p: viz.grpo_curves({"uncertainty": _log(12, 0), "acc-only": _log(8, 1)}, save_path=p),
        "kappa": lambda p: viz_calibration.kappa_distributions(arrays, save_path=p),
        "rel": lambda p: viz_calibration.reliability_diagram(arrays, n_bins=10, save_path=p),
        "rc": lambda p: viz_calibration.risk_coverage_plot(arrays, save_path=p),
        "qual": lambda p: viz.qualitative_case(records[0], imgs["A"], CROP, title="case A", save_path=p),
        "claims": lambda p: viz_calibration.claims_forest(
            [dict(metric=m, better="b", worse="w", dataset=d, delta=0.1, low=lo, high=lo + 0.2, verdict=v)
             for m in ("acc", "ece10") for d, lo, v in (("liver", 0.01, "supported"), ("breast", -0.1, "x"))]
            + [dict(metric="align", better="b", worse="w", dataset="d", delta=float("nan"), low=float("nan"),
                    high=float("nan"), verdict="not measured")], save_path=p),
        "pretrain": lambda p: viz.pretrain_curves(
            [dict(step=i, text=1.0 / i, stage=1 + (i > 3)) for i in range(1, 7)],
            [dict(step=3, liver=dict(miou=0.2, miou_ci=[0.1, 0.3], mean_box_miou=0.1, acc=0.5, acc_ci=[0.4, 0.6],
                                     majority_acc=0.4))], save_path=p),
    }
    for name, call in calls.items():
        path = tmp_path / "figs" / f"{name}.png"
        _check(call(path), path)
    assert viz.example_grid([(samples[0], _image(0))]).savefig is not None  # no save_path: nothing written


def test_rolling_mean_ignores_nan():
    out = viz.rolling_mean([1.0, np.nan, 3.0, 5.0], 2)
    assert out.tolist() == [1.0, 1.0, 3.0, 4.0]
    assert np.isnan(viz.rolling_mean([np.nan, 1.0], 1)[0])


def test_rationale_extracts_think():
    assert viz.rationale("<think> a   b </think><answer>x</answer>") == "a b"
    assert viz.rationale("plain " * 40, 20).endswith("...") and len(viz.rationale("plain " * 40, 20)) == 20
    assert viz.rationale(None) == ""


def test_filter_records(records):
    ids = lambda rs: [r["id"] for r in rs]  # noqa: E731
    assert ids(widgets.filter_records(records)) == ["A", "B", "C"]
    assert ids(widgets.filter_records(records, c=1)) == ["A", "C"]
    assert ids(widgets.filter_records(records, c=0)) == ["B"]
    assert ids(widgets.filter_records(records, correct=True)) == ["A", "B"]      # B: tie 4/4, Oval first
    assert ids(widgets.filter_records(records, correct=False)) == ["C"]
    assert ids(widgets.filter_records(records, kappa_range=(0.7, 1.0))) == ["A", "C"]  # kappas .75, .5, 1
    assert ids(widgets.filter_records(records, kappa_range=(0.75, 0.75))) == ["A"]
    assert ids(widgets.filter_records(records, c=1, correct=True, kappa_range=(0.0, 0.5))) == []
    assert widgets.record_summary(records[1]) == dict(mode="Oval", kappa=0.5, correct=True)


def test_rollout_table_by_hand(records):
    # A: c=1, kappa 6/8 = 0.75 >= delta and mode right -> R_group 1 for all.
    t = widgets.rollout_table(records[0])
    assert [r["i"] for r in t] == list(range(1, 9))
    assert t[0]["loc"] == 1.0 and t[0]["acc"] == 1.0 and t[0]["fmt"] == 1.0 and t[0]["group"] == 1.0
    assert t[0]["individual"] == pytest.approx(0.1 + 0.3 + 0.1) and t[0]["total"] == pytest.approx(1.0)
    # rollout 7: IoU 800/2400 = 1/3, wrong answer, format ok -> 0.1/3 + 0.1 (+0.5 group)
    assert t[6]["loc"] == pytest.approx(1 / 3) and t[6]["acc"] == 0.0
    assert t[6]["individual"] == pytest.approx(0.1 / 3 + 0.1) and t[6]["total"] == pytest.approx(0.1 / 3 + 0.6)
    assert t[7]["box"] is None and t[7]["total"] == pytest.approx(0.5) and t[7]["tool_error"] == "no_tool_call"
    # B: c=0, kappa 0.5 < 0.75 -> R_group 1; accuracy term off for c=0 -> 0.1 + 0.1 + 0.5
    tb = widgets.rollout_table(records[1])
    assert [r["acc"] for r in tb] == [1.0] * 4 + [0.0] * 4
    assert all(r["total"] == pytest.approx(0.7) and r["group"] == 1.0 for r in tb)
    # C: c=1, unanimous but wrong -> R_group 0, total 0.2
    assert all(r["total"] == pytest.approx(0.2) and r["group"] == 0.0 for r in widgets.rollout_table(records[2]))
    assert t[0]["turn2"].startswith("<think>")


def test_filter_samples_and_messages_text(samples):
    assert [s.id for s in widgets.filter_samples(samples, split="train", c=1)] == ["s0", "s2"]
    assert [s.id for s in widgets.filter_samples(samples, attribute="margin")] == ["s3"]
    assert len(widgets.filter_samples(samples, "all", "all", "all")) == 4
    msgs = [{"role": "user", "content": [{"type": "image", "image": "images/s0.png"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": "<answer>x</answer>"}]
    assert widgets.messages_text(msgs) == "user: [image images/s0.png] Q?\n\nassistant: <answer>x</answer>"


def test_browsers_build(tmp_path, samples, records, capsys):
    (tmp_path / "images").mkdir()
    for i, s in enumerate(samples):
        _image(i).save(tmp_path / s.image_path)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is the echo?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>t</think><tool_call>{}</tool_call>"}]}]
    (tmp_path / "dialogues_train.jsonl").write_text(json.dumps({"id": "s0", "messages": msgs}) + "\n")
    sb = widgets.sample_browser(samples, tmp_path, CROP)
    assert isinstance(sb, widgets.widgets.VBox)
    split, attr, conf = sb.children[0].children
    split.value = "test_liver"   # s3 has no dialogue file: falls back to the question
    conf.value = 1               # nothing matches
    split.value = "all"
    sb.children[1].children[0].value = 1
    rb = widgets.rollout_browser({("liver", "ours"): records, ("liver", "base"): records[:1], ("breast", "ours"): []},
                                 lambda d, i: _image(0) if i != "B" else None, CROP)
    assert isinstance(rb, widgets.widgets.VBox)
    ds, meth, conf, corr = rb.children[0].children
    kap, case = rb.children[1].children[0], rb.children[2]
    assert ds.options == ("breast", "liver") and case.value is None   # breast/ours holds no case
    ds.value = "liver"
    assert meth.options == ("base", "ours") and meth.value == "ours"   # the method is kept across datasets
    assert len(case.options) == 3
    meth.value = "base"
    assert len(case.options) == 1
    meth.value = "ours"
    corr.value = "correct"
    kap.value = (0.0, 0.5)
    assert [label.split()[0] for label, _ in case.options] == ["B"]
    ds.value = "breast"
    assert case.options == () and case.value is None
    assert plt.get_fignums() == []


def test_case_dropdown_is_sized_for_the_longest_case_label(records):
    long_id = dict(records[1], id="bus_bra-test_bus_bra-fold3-bus_0123-l-benign-birads4a")
    assert widgets.case_label(records[0]) == f"{records[0]['id']} c={records[0]['c']} kappa=0.750"
    width = widgets.case_dropdown_width(records + [long_id])
    chars = len(widgets.case_label(long_id))
    assert width == f"calc(var(--jp-widgets-inline-label-width, 80px) + {math.ceil(1.15 * chars) + 4}ch)"
    rb = widgets.rollout_browser({("liver", "ours"): records[:1], ("breast", "ours"): [long_id]},
                                 lambda d, i: _image(0), CROP)
    case = rb.children[2]
    assert case.layout.width == width     # the longest label of any dataset, not only the one shown first
