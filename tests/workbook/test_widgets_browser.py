"""Notebook 05's rollout browser driven in a real browser: JupyterLab 4, headless Chromium, Playwright.

The notebook is copied with its parameters cell pointing at the session's smoke run, opened in
JupyterLab and run through the "Run" menu; then the method dropdown, the case dropdown and the κ
range slider (by keyboard) are changed like a user would. After each change the test waits until the
widget's Output shows what the cached rollouts say it must show (every rollout's turn texts, every
cell of the reward table, the selected case) and checks that the figure, the table and the texts
changed. The changes are chosen from the cached data so that each one must change all three.

The system Chromium is used (no browser download); without it, or without Playwright, the test skips.
The Jupyter server, its kernel and Chromium are ended by process id when the test ends, pass or fail.
A screenshot is kept at <run>/figures/widgets_browser.png (and in $ZOOMDX_ARTIFACTS when set).
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from zoomdx_lib.workbook import widgets as W

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "notebooks" / "05_rollout_browser.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODE, SEED = "sample", 0           # the notebook's defaults: the 8 sampled rollouts of seed 0
KAPPA_STEP = 0.125                 # the slider's step in widgets.rollout_browser
SERVER_START_S, PAGE_S, RUN_ALL_S, REDRAW_S = 180, 120, 240, 90

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (chromium or chromium-browser): "
                       "install it (Debian: apt-get install chromium) to run the widget browser test"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright is not importable: pip install -e .[dev]"),
]

# What the browser's Output widget shows now, read from the DOM.
SNAPSHOT_JS = """() => {
  const outs = document.querySelectorAll('.widget-output');
  const caseBox = [...document.querySelectorAll('.widget-dropdown')]
      .find(d => (d.querySelector('label') || {}).textContent === 'case');
  const sel = caseBox ? caseBox.querySelector('select') : null;
  // ipywidgets writes the spaces of option labels as no-break spaces
  const caseLabel = sel && sel.selectedOptions.length ? sel.selectedOptions[0].textContent.replace(/\u00a0/g, ' ') : null;
  if (outs.length !== 1) return {outputs: outs.length, caseLabel};
  const out = outs[0], img = out.querySelector('img'), table = out.querySelector('table');
  return {
    outputs: 1, caseLabel,
    img: img ? img.getAttribute('src') : null,
    imgWidth: img ? img.naturalWidth : 0,
    table: table ? table.outerHTML : null,
    rows: table ? [...table.querySelectorAll('tr')].map(tr => [...tr.children].map(c => c.textContent)) : [],
    turns: [...out.querySelectorAll('.jp-RenderedHTMLCommon pre')].map(p => p.textContent),  // not stream text
    text: out.textContent.slice(0, 300),
  };
}"""


# How wide the widest of `labels` (and of the options shown) is in the <select>'s own font, against the
# room its box leaves for text (its inner width less the padding that holds the arrow), in CSS pixels.
FIT_JS = """(sel, labels) => {
  const cs = getComputedStyle(sel);
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
  const texts = labels.concat([...sel.options].map(o => o.textContent));
  const widest = texts.reduce((a, t) => ctx.measureText(t).width > ctx.measureText(a).width ? t : a, '');
  return {widest, textPx: ctx.measureText(widest).width, options: sel.options.length,
          roomPx: sel.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)};
}"""


# ----------------------------------------------------------------------------- what must be shown
TABLE_KEYS = ["i", "answer", "box", "tool_error", "answer_error", "loc", "acc", "fmt", "group", "individual", "total"]
EMPTY_TEXT = "no case matches the filters"


def _norm(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def expected_view(rec) -> dict:
    """What the browser must show for record `rec` (None: no case passes the filters): the <pre> turn
    texts and every cell of the reward table, computed here from the cached rollouts."""
    if rec is None:
        return dict(id=None, turns=[], table=None)
    rows = W.rollout_table(rec)
    return dict(id=rec["id"], turns=[_norm(f"turn 1: {r['turn1']}\n\nturn 2: {r['turn2']}") for r in rows],
                table=[[_cell(r[k]) for k in TABLE_KEYS] for r in rows])


def differs(a: dict, b: dict, same_case: bool = False) -> bool:
    """Two views whose figure, reward table and turn texts must all differ: other cases, or (same_case)
    one case under two methods (the figure's title names the method)."""
    return (same_case or a["id"] != b["id"]) and a["turns"] != b["turns"] and a["table"] != b["table"]


def plan_changes(records_by: dict) -> dict:
    """The changes the test makes, chosen from the cached rollouts so that each must redraw everything:
    method m0 -> m1 (case 0 of each), case 0 -> j, then the κ lower bound 0 -> k steps (the first case
    left, or none) and back to 0 (case 0 again). Fails when the run offers no such choice."""
    ds = sorted({d for d, _ in records_by}, key=str)[0]            # the browser's initial dataset
    methods = sorted({m for d, m in records_by if d == ds}, key=str)
    m0 = methods[0]                                                 # and its initial method
    v0 = expected_view(records_by[(ds, m0)][0])
    for m1 in methods[1:]:
        recs = records_by[(ds, m1)]
        v1 = expected_view(recs[0])
        if not differs(v0, v1, same_case=True):
            continue
        for j in range(1, len(recs)):
            vj = expected_view(recs[j])
            if not differs(v1, vj):
                continue
            for k in range(1, int(round(1 / KAPPA_STEP)) + 1):
                sel = W.filter_records(recs, kappa_range=(k * KAPPA_STEP, 1.0))
                vk = expected_view(sel[0] if sel else None)
                if differs(vj, vk) and differs(vk, v1):
                    return dict(dataset=ds, m0=m0, m1=m1, case=j, kappa_steps=k, views=[v0, v1, vj, vk],
                                case_label=W.case_label(recs[j]))
    pytest.fail(f"the smoke run's cached rollouts of {ds} give no method/case/κ change that must redraw "
                f"(methods {methods}); the test needs cases whose rollouts differ")


# ----------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(marker: str) -> list[int]:
    """Processes (other than this one) whose command line contains `marker` (a folder of this test)."""
    pids = []
    if not Path("/proc").is_dir():
        return pids
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _end(pids, grace_s: float = 10.0) -> None:
    """SIGTERM each process id, then SIGKILL what is still there after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and
                                              "Z" not in _state(pid) for pid in pids):
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def write_notebook(run: Path, folder: Path) -> Path:
    """Notebook 05 as .ipynb in `folder`, its parameters cell pointing at the run folder `run` (profile,
    run_dir, seed and mode set, the cell's other parameters kept)."""
    import jupytext
    import nbformat
    nb = jupytext.read(NOTEBOOK)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(params) == 1, "notebook 05 must have one cell tagged 'parameters'"
    values = dict(profile="smoke", run_dir=str(run.resolve()), seed=SEED, mode=MODE)
    lines = []
    for line in params[0].source.splitlines():       # other parameters (e.g. overrides) stay as they are
        name = line.split("=", 1)[0].strip() if "=" in line else None
        lines.append(f"{name} = {values.pop(name)!r}" if name in values else line)
    assert "run_dir" not in values, f"notebook 05's parameters cell sets no run_dir: {params[0].source!r}"
    params[0].source = "\n".join(lines + [f"{k} = {v!r}" for k, v in values.items()]) + "\n"
    nb.metadata.pop("jupytext", None)       # not paired: JupyterLab's jupytext extension would write a .py
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    path = folder / "05_rollout_browser.ipynb"
    nbformat.write(nb, str(path))
    return path


def write_lab_settings(settings: Path) -> None:
    """Every cell attached to the DOM, no autosave, and no news or update checks (the network may be closed)."""
    for name, value in [("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
                        ("docmanager-extension/plugin", {"autosave": False})]:
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class JupyterLab:
    """`jupyter lab` on a free port with a token, rooted in `root`; its config, user data (so the venv's
    python3 kernel is the one found), runtime, settings and workspaces in `home`."""

    def __init__(self, root: Path, home: Path, log: Path):
        self.root, self.home, self.log = root, home, log
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for d in ("config", "data", "runtime", "settings", "workspaces"):
            (self.home / d).mkdir(parents=True, exist_ok=True)
        write_lab_settings(self.home / "settings")
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(self.home / "config"), JUPYTER_DATA_DIR=str(self.home / "data"),
                   JUPYTER_RUNTIME_DIR=str(self.home / "runtime"), JUPYTER_PLATFORM_DIRS="1",
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", f"--LabApp.user_settings_dir={self.home / 'settings'}",
               f"--LabApp.workspaces_dir={self.home / 'workspaces'}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + SERVER_START_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{self.tail()}")

    def api(self, path: str):
        req = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def wait_for_connected_kernel(self, timeout_s: float) -> None:
        """Until a kernel is idle with a client (the page's websocket) connected to it."""
        deadline, kernels = time.time() + timeout_s, []
        while time.time() < deadline:
            try:
                kernels = self.api("kernels")
            except urllib.error.HTTPError as err:   # a kernel still starting can make the listing fail (500)
                if err.code != 500:
                    raise
                time.sleep(0.5)
                continue
            if any(k.get("connections", 0) >= 1 and k.get("execution_state") == "idle" for k in kernels):
                return
            time.sleep(0.5)
        pytest.fail(f"no kernel connected and idle within {timeout_s} s: {kernels}\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        """Ask the server to shut down (it ends its kernels), then end by id whatever is left: the
        server's process group and every process started with this server's runtime folder (kernels)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                req = urllib.request.Request(f"{self.url}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {self.token}"})
                urllib.request.urlopen(req, timeout=10).close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=15)
        _end(_pids_mentioning(str(self.home / "runtime")))


# ----------------------------------------------------------------------------- the page
def dropdown(page, label: str):
    """The <select> of the ipywidgets Dropdown described by `label`."""
    box = page.locator(".widget-dropdown").filter(has=page.locator(f"label.widget-label:text-is('{label}')"))
    return box.locator("select")


def snapshot(page) -> dict:
    return page.evaluate(SNAPSHOT_JS)


def wait_for_view(page, want: dict, before: dict | None, what: str, timeout_s: float = REDRAW_S) -> dict:
    """Wait until the Output shows `want` (see `expected_view`), check every shown turn text and table
    cell, and that the figure, the table and the texts all differ from `before` (the last snapshot)."""
    deadline, snap = time.time() + timeout_s, {}
    while time.time() < deadline:
        snap = snapshot(page)
        if snap.get("outputs") == 1 and [_norm(t) for t in snap["turns"]] == want["turns"] and (
                (want["id"] is not None and snap["img"] and snap["table"]) or
                (want["id"] is None and not snap["img"] and not snap["table"] and EMPTY_TEXT in snap["text"])):
            break
        time.sleep(0.5)
    else:
        shown = [t[:80] for t in snap.get("turns", [])][:2]
        pytest.fail(f"after {what}: the browser did not show {want['id'] or 'the empty selection'} within "
                    f"{timeout_s} s (outputs={snap.get('outputs')}, case={snap.get('caseLabel')!r}, "
                    f"image={'yes' if snap.get('img') else 'no'}, table={'yes' if snap.get('table') else 'no'}, "
                    f"first turn texts shown {shown}, wanted {[t[:80] for t in want['turns']][:2]}; "
                    f"output text {snap.get('text')!r})")
    if want["id"] is not None:
        assert snap["img"].startswith("data:image/png;base64,") and snap["imgWidth"] > 100, \
            f"after {what}: the figure is not a decoded PNG"
        header, *rows = snap["rows"]
        assert header == TABLE_KEYS, f"after {what}: reward table columns {header}"
        assert rows == want["table"], f"after {what}: reward table {rows} != {want['table']}"
        assert snap["caseLabel"] is not None and snap["caseLabel"].startswith(want["id"] + " "), snap["caseLabel"]
    else:
        assert snap["caseLabel"] is None, f"after {what}: the case dropdown still offers {snap['caseLabel']!r}"
    if before is not None:
        assert snap["img"] != before["img"], f"after {what}: the figure did not change"
        assert snap["table"] != before["table"], f"after {what}: the reward table did not change"
        assert snap["turns"] != before["turns"], f"after {what}: the turn texts did not change"
    return snap


def run_all_cells(page, lab: JupyterLab) -> None:
    """Run -> Run All Cells, through JupyterLab's menu bar. When the page had not yet attached the
    session's kernel, JupyterLab asks for one instead of running: take the one it proposes, run again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        dialog = page.locator(".jp-Dialog")
        try:
            dialog.first.wait_for(timeout=5000)
        except PlaywrightTimeout:
            return
        dialog.locator(".jp-mod-accept").first.click()
        dialog.first.wait_for(state="detached")
        lab.wait_for_connected_kernel(PAGE_S)
    pytest.fail("JupyterLab kept asking for a kernel instead of running the cells")


def save_screenshot(page, folder: Path | None, name: str = "widgets_browser.png") -> list[Path]:
    """The page as PNG in `folder` (if given) and in $ZOOMDX_ARTIFACTS (if set)."""
    targets = [folder / name] if folder is not None else []
    if os.environ.get("ZOOMDX_ARTIFACTS"):
        targets.append(Path(os.environ["ZOOMDX_ARTIFACTS"]) / name)
    png = page.screenshot()
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_bytes(png)
    return targets


# ----------------------------------------------------------------------------- the test
def test_rollout_browser_redraws_in_jupyterlab(smoke_run, tmp_path):
    from playwright.sync_api import sync_playwright

    run, _ = smoke_run
    records_by = W.cached_rollouts(run / "generations", MODE, SEED)
    assert records_by, f"no cached {MODE} rollouts of seed {SEED} in {run / 'generations'}"
    plan = plan_changes(records_by)
    v0, v1, vj, vk = plan["views"]

    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(run, root)
    metrics = run / "metrics" / "05_rollout_browser.json"     # the notebook rewrites it: put it back after
    metrics_before = metrics.read_bytes() if metrics.exists() else None
    profile_dir = tmp_path / "chromium-profile"                # in every Chromium process's command line
    lab = JupyterLab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log")
    page = None
    try:
        lab.start()
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1400})
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(PAGE_S * 1000)
                page.goto(f"{lab.url}/lab/tree/05_rollout_browser.ipynb?token={lab.token}")
                page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
                lab.wait_for_connected_kernel(PAGE_S)
                run_all_cells(page, lab)
                page.locator(".widget-output").first.wait_for(state="attached", timeout=RUN_ALL_S * 1000)
                for label in ("dataset", "method", "c", "consensus", "case"):
                    assert dropdown(page, label).count() == 1, f"no dropdown {label!r}"
                slider = page.locator(".widget-hslider").filter(
                    has=page.locator("label.widget-label:text-is('kappa')"))
                assert slider.count() == 1, "no kappa range slider"
                assert slider.locator(".noUi-handle").count() == 2, "the kappa slider is not a range slider"
                shown = {k: dropdown(page, k).evaluate("s => s.selectedOptions[0].textContent")
                         for k in ("dataset", "method")}
                assert shown == {"dataset": plan["dataset"], "method": plan["m0"]}, shown
                snap = wait_for_view(page, v0, None, "running all cells", RUN_ALL_S)
                assert len(snap["turns"]) == 8, "one turn text per rollout (G=8)"
                # the case dropdown shows the longest case label of any dataset and method whole
                labels = [W.case_label(r) for recs in records_by.values() for r in recs]
                fit = dropdown(page, "case").evaluate(FIT_JS, labels)
                assert fit["options"] > 0 and fit["textPx"] > 0, fit
                assert fit["textPx"] <= fit["roomPx"], \
                    f"the case dropdown cuts {fit['widest']!r}: {fit['textPx']:.0f} px of text in {fit['roomPx']:.0f} px"

                dropdown(page, "method").select_option(label=plan["m1"])
                snap = wait_for_view(page, v1, snap, f"method {plan['m0']} -> {plan['m1']}")

                dropdown(page, "case").select_option(index=plan["case"])
                snap = wait_for_view(page, vj, snap, f"case -> {plan['case_label']}")

                lower = slider.locator(".noUi-handle-lower")
                k = plan["kappa_steps"]
                for key, want, lo in [("ArrowRight", vk, k * KAPPA_STEP), ("ArrowLeft", v1, 0.0)]:
                    lower.focus()
                    for _ in range(k):
                        lower.press(key)
                        time.sleep(0.3)
                    snap = wait_for_view(page, want, snap, f"kappa lower bound -> {lo}")
                    readout = slider.locator(".widget-readout").first.inner_text()
                    assert abs(float(readout.split()[0]) - lo) < 0.01, f"kappa readout {readout!r}, wanted {lo}"
                dropdown(page, "dataset").evaluate("el => el.scrollIntoView({block: 'start'})")  # controls first
                print("screenshot:", *save_screenshot(page, run / "figures"))
            except BaseException:
                if page is not None:
                    try:
                        print("failure screenshot:", *save_screenshot(page, tmp_path, "widgets_browser_failure.png"))
                    except Exception:  # noqa: BLE001 -- the failure itself is what matters
                        pass
                print("jupyter lab log (end):\n" + lab.tail())
                raise
            finally:
                ctx.close()
    finally:
        lab.stop()
        _end(_pids_mentioning(str(profile_dir)))
        if metrics_before is not None:
            metrics.write_bytes(metrics_before)
    assert not _pids_mentioning(str(profile_dir)), "Chromium processes were left behind"
    assert not _pids_mentioning(str(lab.home / "runtime")), "kernel processes were left behind"
