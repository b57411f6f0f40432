"""Crop use: turn 2 answered from substituted crops; the substitutes are what they claim to be."""
import numpy as np
from PIL import Image

from zoomdx_lib.eval.crop_use import CROP_SOURCES, crop_use_summary, elsewhere_box, substitute
from zoomdx_lib.geometry import crop_image, iou
from zoomdx_lib.protocol import parse_tool_call
from zoomdx_lib.rl.rollout import ScriptedPolicy, rollout
from zoomdx_lib.schema import Sample

T1 = '<think>Scan.</think>\n<tool_call>{"bbox_2d": [10, 10, 60, 60]}</tool_call>'
T2 = '<think>Dark.</think>\n<answer>{"echo": "Hypoechoic"}</answer>'


def _sample():
    return Sample(id="case-7", image_path="x", box=(120, 120, 200, 200), attribute="echo", label="Hypoechoic", c=1,
                  organ="liver", question="Analyze the echo feature of the ultrasound image.", image_size=(256, 256))


def _image():
    a = np.zeros((256, 256), np.uint8)
    a[120:200, 120:200] = 200           # the lesion: a bright square at the true box
    return Image.fromarray(a, mode="L")


def test_substitutes_have_the_own_crop_size_and_content(tiny):
    _, processor = tiny
    img = _image().convert("RGB")
    call = parse_tool_call(T1, (224, 224), (256, 256))
    own = crop_image(img, call.box_original, 112 * 112)
    s = _sample()
    true = substitute("true", 112 * 112)(s, img, call, own)
    blank = substitute("blank", 112 * 112)(s, img, call, own)
    away = substitute("elsewhere", 112 * 112)(s, img, call, own)
    assert substitute("own", 112 * 112) is None
    assert true.size == blank.size == away.size == own.size
    assert np.asarray(true).mean() > 150                     # the lesion fills the true crop
    assert np.ptp(np.asarray(blank)) == 0                    # uniform
    assert abs(int(np.asarray(blank)[0, 0, 0]) - np.asarray(img.convert("L")).mean()) <= 1
    assert np.asarray(away).mean() < 60                      # away from the lesion


def test_rollout_sends_the_substituted_crop_to_turn_2(tiny):
    _, processor = tiny
    seen = []

    def crop_fn(sample, image, call, crop):
        seen.append((sample.id, call.ok, crop.size))
        return Image.new("RGB", crop.size, (7, 7, 7))

    policy = ScriptedPolicy(processor, [T1], [T2])
    [[t]] = rollout([(_sample(), _image())], policy, processor, 1, crop_fn=crop_fn)
    assert seen and seen[0][0] == "case-7" and seen[0][1]
    assert t.label == "Hypoechoic" and t.box is not None   # the trajectory keeps its own box
    own = ScriptedPolicy(processor, [T1], [T2])
    [[u]] = rollout([(_sample(), _image())], own, processor, 1)
    # the crop's pixel values reach turn 2: its encoded image differs from the own crop's
    assert not np.allclose(t.image_inputs[1][0].numpy(), u.image_inputs[1][0].numpy())


def test_elsewhere_box_avoids_the_lesion_and_is_deterministic():
    for k in range(20):
        b = elsewhere_box((100, 100, 160, 160), (60, 60), (256, 256), f"id{k}")
        assert iou(b, (100, 100, 160, 160)) < 0.1 and b == elsewhere_box((100, 100, 160, 160), (60, 60), (256, 256), f"id{k}")
        assert 0 <= b[0] and b[2] <= 256 and abs((b[2] - b[0]) - 60) < 1e-9


def test_summary_counts_changes_only_where_a_crop_was_seen():
    rec = lambda i, a, ok=True, c=1: dict(id=str(i), c=c, label="A", answer=a, tool_ok=ok)   # noqa: E731
    rows = {r["source"]: r for r in crop_use_summary({
        "own": [rec(0, "A"), rec(1, "B"), rec(2, None, ok=False), rec(3, "A", c=0)],
        "blank": [rec(0, "B"), rec(1, "B"), rec(2, None, ok=False), rec(3, "A", c=0)]})}
    assert rows["own"]["changed"] == 0.0 and rows["blank"]["changed"] == 1 / 3
    assert rows["own"]["acc_c1"] == 1 / 3 and rows["blank"]["acc_c1"] == 0.0 and rows["blank"]["acc_all"] == 0.25
    assert set(CROP_SOURCES) == {"own", "true", "blank", "elsewhere"}


def test_cache_name_follows_the_two_turn_methods_weights(tmp_path):
    from zoomdx_lib.config import get_profile
    from zoomdx_lib.eval.crop_use import crop_use_cache_name
    from zoomdx_lib.eval.generate import Method
    prof = get_profile("smoke")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    zoom = Method("zoom_sft", "zoom", "base", str(adapter))
    single = Method("single_turn_sft", "single", "base", None)
    first = crop_use_cache_name([zoom, single], prof, 40)
    assert first.startswith("crop_use_40_") and first.endswith(".json")
    assert crop_use_cache_name([zoom], prof, 40) == first          # a single-turn row has no crop to swap
    assert crop_use_cache_name([zoom], prof, 12) != first
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")   # retrained: never reuse stale rows
    assert crop_use_cache_name([zoom], prof, 40) != first
