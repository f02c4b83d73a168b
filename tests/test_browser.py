"""The interactive notebooks in a real browser: JupyterLab driven by a headless Chromium.

A JupyterLab server is started on 127.0.0.1 (random port, random token) over a temporary copy of
``notebooks/`` (the committed notebooks never receive outputs), and playwright drives the system's
Chromium (Debian's ``chromium`` package, or ``CSA_CHROMIUM=/path``; no browser download). For notebook
09 the test runs all cells, draws a stroke with mouse events on the drawing canvas, waits for the fill,
checks in the browser's own pixels that the composite changed inside the stroke and not outside it, and
clicks a hole position to see the attention panel change. For notebook 08 it clicks on the explorer's
ipympl figure and checks that the picked position and the picture change.

Skips (with the reason) when playwright, JupyterLab, ipycanvas/ipympl or a Chromium is missing; `make
test-browser` installs what it can. Screenshots of failures go to ``runs/browser_tests/`` (or
``CSA_BROWSER_ARTIFACTS``). Every server and browser started here is stopped.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from csa_lib.config import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("CSA_BROWSER_ARTIFACTS", REPO_ROOT / "runs" / "browser_tests"))
BLANK = [235, 235, 235]  # csa_lib.interactive's empty panel


def chromium_path() -> str | None:
    env = os.environ.get("CSA_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _requirements():
    for module, why in (("playwright.sync_api", "playwright (pip install -e '.[browser]')"),
                        ("jupyterlab", "jupyterlab (the lab extra)"), ("ipycanvas", "ipycanvas (the lab extra)"),
                        ("ipympl", "ipympl (the lab extra)")):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"browser tests need {why}")
    exe = chromium_path()
    if exe is None:
        pytest.skip("browser tests need a Chromium: apt-get install chromium (Debian/Ubuntu), "
                    "or set CSA_CHROMIUM=/path/to/chrome")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of notebooks/: yields (base URL, token); stopped afterwards."""
    _requirements()
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks")
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "news" and update pop-ups over the page (and no requests for them)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, CSA_SMOKE="1", OMP_NUM_THREADS="1", JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend; Agg would swallow the figures
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}",
           "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--LabServerApp.workspaces_dir=" + str(root / "workspaces"),
           "--LabServerApp.user_settings_dir=" + str(root / "settings")]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    clock = Clock("lab")
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {root / 'jupyterlab.log'}:\n"
                                       + (root / "jupyterlab.log").read_text()[-2000:])
                time.sleep(0.5)
        clock(f"JupyterLab up at {url}")
        yield url, token
    finally:
        _stop(proc)  # the server, its kernels and anything else in its process group
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture
def page(lab, request):
    """A fresh Chromium page; a screenshot goes to ARTIFACTS when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        failed_before = request.session.testsfailed
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            yield pg
            # The call phase is reported before fixtures are torn down: a failure has been counted.
            if request.session.testsfailed > failed_before:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / f"{request.node.name}.png"
                pg.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
        finally:
            browser.close()


def open_and_run_all(page, lab, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab (a fresh workspace of its own, so no tab of another test is
    restored), wait for its kernel, run all cells (JupyterLab's own command)."""
    url, token = lab
    workspace = Path(notebook).stem.replace("_", "-")
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=180_000)
    page.wait_for_function("""(path) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.context && w.context.path === path && w.sessionContext.session
                  && w.sessionContext.session.kernel;
        return k && k.connectionStatus === 'connected' && k.status === 'idle'; }""", arg=notebook,
                           timeout=180_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def pixel(page, selector: str, x: float, y: float) -> list[int]:
    """RGB of canvas pixel (x, y) (canvas coordinates) of the first canvas matching ``selector``."""
    return page.eval_on_selector(selector, """(c, [x, y]) => {
        const el = c.tagName === 'CANVAS' ? c : c.querySelector('canvas');
        const d = el.getContext('2d').getImageData(Math.round(x), Math.round(y), 1, 1).data;
        return [d[0], d[1], d[2]];
    }""", [x, y])


def canvas_selector(name: str) -> str:
    return f"canvas.csa-{name}, .csa-{name} canvas"


def errors_in_outputs(page) -> list[str]:
    """Tracebacks shown in the notebook's outputs (warnings on stderr are not errors)."""
    texts = page.eval_on_selector_all(".jp-OutputArea-output", "els => els.map(e => e.innerText)")
    return [t[:800] for t in texts if "Traceback" in t or "Error:" in t and "Warning" not in t]


class Clock:
    """Prints how long each phase took (shown with pytest -s; CI logs keep them)."""

    def __init__(self, name: str):
        self.name, self.t0 = name, time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"[{self.name}] {time.monotonic() - self.t0:6.1f} s  {what}", flush=True)


# --------------------------------------------------------------------------------------------------
# notebook 09: draw a hole, fill it, click for the attention
# --------------------------------------------------------------------------------------------------
def test_notebook09_draw_fill_and_click_attention(page, lab):
    clock = Clock("09")
    open_and_run_all(page, lab, "09_inpaint_your_own_photo.ipynb")
    clock("notebook open, run-all started")
    draw = page.locator(canvas_selector("draw")).first
    draw.wait_for(state="visible", timeout=300_000)  # the fallback model trains first when no weights
    draw.scroll_into_view_if_needed()
    clock("widget shown")
    size = page.eval_on_selector(canvas_selector("draw"), "c => (c.tagName === 'CANVAS' ? c : "
                                 "c.querySelector('canvas')).width")
    # The photo is on the canvas once the widget rendered it.
    page.wait_for_function("""(sel) => { const e = document.querySelector(sel);
        const c = e.tagName === 'CANVAS' ? e : e.querySelector('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] !== d[i + 1]) return true;
        return false; }""", arg=canvas_selector("draw"), timeout=60_000)
    # Stroke from 25% to 75% of the width at 40% height; the points checked lie on it, one far away.
    ys = 0.4 * size
    on_stroke = [(f * size, ys) for f in (0.35, 0.5, 0.65)]
    far = (0.1 * size, 0.9 * size)
    photo = {pt: pixel(page, canvas_selector("draw"), *pt) for pt in on_stroke + [far]}

    box = draw.bounding_box()
    sx, sy = box["width"] / size, box["height"] / size

    def to_page(x, y):
        return box["x"] + x * sx, box["y"] + y * sy

    # One drag, three passes (a zigzag): a band thick enough to cover whole cells of the CSA layer's
    # 1/8 grid, so the click below lands on a hole position.
    path = [(0.25, -0.05), (0.75, -0.05), (0.75, 0.0), (0.25, 0.0), (0.25, 0.05), (0.75, 0.05)]
    page.mouse.move(*to_page(path[0][0] * size, ys + path[0][1] * size))
    page.mouse.down()
    for (x0, d0), (x1, d1) in zip(path, path[1:]):
        for k in range(1, 11):
            f = k / 10
            page.mouse.move(*to_page((x0 + (x1 - x0) * f) * size, ys + (d0 + (d1 - d0) * f) * size))
    page.mouse.up()  # releasing the button fills the hole
    clock("stroke drawn")

    status = page.locator(".csa-status").first
    page.wait_for_function("(sel) => document.querySelector(sel).innerText.includes('filled')",
                           arg=".csa-status", timeout=120_000)
    page.wait_for_timeout(500)  # the canvases are drawn in the same message batch; let them paint
    clock("filled")
    comp = {pt: pixel(page, canvas_selector("composite"), *pt) for pt in on_stroke + [far]}
    assert comp[far] == photo[far], "a known pixel of the composite differs from the photo"
    changed = [pt for pt in on_stroke if max(abs(a - b) for a, b in zip(comp[pt], photo[pt])) > 3]
    assert changed, f"the composite did not change inside the stroke: {comp} vs {photo}"

    # Click a hole position on the composite: the attention panel gets a heat map.
    centre = (size / 2, ys)
    before = pixel(page, canvas_selector("attention"), *centre)
    assert before == BLANK
    target = page.locator(canvas_selector("composite")).first
    cbox = target.bounding_box()
    page.mouse.click(cbox["x"] + centre[0] * cbox["width"] / size, cbox["y"] + centre[1] * cbox["height"] / size)
    page.wait_for_function("(sel) => /source cell|known position/.test(document.querySelector(sel).innerText)",
                           arg=".csa-status", timeout=60_000)
    page.wait_for_timeout(500)
    att = page.eval_on_selector(canvas_selector("attention"), """e => {
        const c = e.tagName === 'CANVAS' ? e : e.querySelector('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== 235 || d[i+1] !== 235) n++;
        return n; }""")
    clock("attention shown")
    assert att > 0, "the attention panel stayed blank after a click in the hole"
    assert "source cell" in status.inner_text()
    assert not errors_in_outputs(page), errors_in_outputs(page)


# --------------------------------------------------------------------------------------------------
# notebook 08: the explorer's ipympl canvas answers clicks
# --------------------------------------------------------------------------------------------------
def test_notebook08_explorer_click_to_pick(page, lab):
    clock = Clock("08")
    open_and_run_all(page, lab, "08_visualizing_attention.ipynb")
    clock("notebook open, run-all started")
    fig = page.locator(".csa-explorer").first
    fig.wait_for(state="visible", timeout=600_000)
    canvas = page.locator(".csa-explorer canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    fig.scroll_into_view_if_needed()
    # The two sliders' values as the page shows them: the readouts in the explorer's own box.
    sliders = """() => { const box = document.querySelector('.csa-explorer').closest('.widget-vbox');
        return [...box.querySelectorAll('.widget-readout')].map(e => (e.textContent || '').trim()); }"""
    page.wait_for_function(f"() => {{ const v = ({sliders})(); return v.length === 2 && v.every(x => x !== ''); }}",
                           timeout=60_000)
    page.wait_for_function("""() => [...document.querySelectorAll('.csa-explorer canvas')].some(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200)) return true;
        return false; })""", timeout=60_000)
    clock("explorer shown")

    def state():
        return page.evaluate(sliders)

    before, picture = state(), canvas.screenshot()
    assert len(before) == 2 and all(v.isdigit() for v in before), (
        before, page.evaluate("() => document.querySelector('.csa-explorer').closest('.widget-vbox')"
                              ".outerHTML.slice(0, 3000)"))
    box = canvas.bounding_box()
    # The overview is the left third of the figure; try a few points inside its image until one lands
    # on another cell (any click inside the overview moves the sliders).
    for fx, fy in ((0.3, 0.3), (0.7, 0.35), (0.35, 0.7), (0.65, 0.65)):
        page.mouse.click(box["x"] + box["width"] * (0.03 + 0.28 * fx), box["y"] + box["height"] * (0.1 + 0.8 * fy))
        try:
            page.wait_for_function(f"(old) => ({sliders})().join() !== old.join()", arg=before, timeout=20_000)
            break
        except Exception:  # playwright's TimeoutError: that click hit the cell already shown
            continue
    after = state()
    clock(f"clicked: sliders {before} -> {after}")
    assert after != before, "clicks on the explorer's overview did not move the sliders"
    page.wait_for_timeout(2000)  # the redrawn frame
    assert canvas.screenshot() != picture, "the explorer's figure did not change after the click"
    assert not errors_in_outputs(page), errors_in_outputs(page)
