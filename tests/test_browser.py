"""The live dashboard in a real browser: JupyterLab driven by Debian's Chromium via Playwright.

The test opens a parameterized copy of notebooks/02_dashboard.ipynb (attached with
``reuse=True`` to the demo app the tests share) in a headless JupyterLab, runs all its cells
from the Run menu, and checks what the page shows while the notebook's load runs: a KV-cache bar
per replica, a plotly chart with drawn lines, and a tokens/s number above zero in the header. A
screenshot goes to artifacts/dashboard.png. JupyterLab, its kernel and the browser are gone
afterwards, also after a failure.

Needs /usr/bin/chromium (scripts/install_test_tools.sh) and the ``playwright`` package (the dev
extra; never ``playwright install``). Without them the test is skipped, except under CI
(``CI`` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import nbserve

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_dashboard.ipynb"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PARAMETERS = {"reuse": True, "load_seconds": 50, "interval": 1.0}  # and app_name: the shared app
# Bounded waits (seconds); generous because the 2 cores may be shared with other test runs.
LAB_START_TIMEOUT = 120
KERNEL_IDLE_TIMEOUT = 120
VALUES_TIMEOUT = 240  # from "Run All Cells" to a dashboard showing tokens/s > 0
NOTEBOOK_TIMEOUT = 180  # from then to the last cell done
SCREENSHOT_DELAY = 5  # after the values appear, so the chart has a few more points
TOK_S = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*tok/s")

# Evaluated in the page: what the dashboard's output shows right now. The dashboard is the
# ipywidgets VBox (.widget-vbox) holding the plotly chart (.js-plotly-plot); its first child is
# the header HTML widget (.widget-html-content), the second the HBox of per-replica
# FloatProgress bars: ipywidgets 8 draws each as .widget-hprogress with a label and a
# .progress-bar whose CSS width is the value in percent.
DASHBOARD_JS = """() => {
  const plot = document.querySelector('.jp-OutputArea-output .js-plotly-plot');
  const box = plot && plot.closest('.widget-vbox');
  if (!box) return null;
  const header = box.querySelector(':scope > .widget-html .widget-html-content');
  const bars = [...box.querySelectorAll(':scope > .widget-hbox > .widget-hprogress')];
  const lines = [...plot.querySelectorAll('.scatterlayer .trace path.js-line')];
  return {
    header: header ? header.innerText : '',
    bars: bars.map(b => ({
      label: (b.querySelector('.widget-label') || {}).innerText || '',
      percent: parseFloat((b.querySelector('.progress .progress-bar') || {style: {}}).style.width),
    })),
    traces: plot.querySelectorAll('.scatterlayer .trace').length,
    latency: box.querySelectorAll('.nbserve-latency > div').length,
    drawn: lines.filter(p => (p.getAttribute('d') || '').length > 1).length,
  };
}"""


# Evaluated in the page: scroll the dashboard into view, let two frames pass, and return its box
# in viewport pixels (JupyterLab scrolls the notebook panel, not the document).
DASHBOARD_BOX_JS = """async () => {
  const plot = document.querySelector('.jp-OutputArea-output .js-plotly-plot');
  const box = plot && plot.closest('.widget-vbox');
  if (!box) return null;
  box.scrollIntoView({block: 'start'});
  for (let i = 0; i < 2; i++) await new Promise(r => requestAnimationFrame(r));
  const r = box.getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height};
}"""


def labelled(state: dict[str, Any]) -> bool:
    """Whether the dashboard shows a KV-cache bar per replica, each with its label and value."""
    bars = state["bars"]
    return bool(bars) and all(b["label"] and 0 <= b["percent"] <= 100 for b in bars)


def require_browser() -> Any:
    """Playwright's sync API, or skip (fail under CI) when it or Debian's Chromium is missing."""
    missing = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (run scripts/install_test_tools.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI that is an error, not a skip")
        pytest.skip(reason)
    return sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parameterized_notebook(folder: Path, parameters: dict[str, Any]) -> Path:
    """A copy of notebook 02 with ``parameters`` injected by papermill, not executed."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK)), parameters)
    for cell in nb.cells:  # papermill's execution bookkeeping means nothing to JupyterLab
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


@dataclass
class Lab:
    """A headless JupyterLab server in a process group of its own."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    runtime_dir: Path
    log: Path
    stray_kernels: list[int] = field(default_factory=list)

    def api(self, method: str, path: str, timeout: float = 30) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/api/{path}",
            timeout=timeout,
            headers={"Authorization": f"token {self.token}"},
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kernel_pids(runtime_dir: Path) -> list[int]:
    """Live ipykernel processes whose connection file is in ``runtime_dir`` (this server's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state != "Z"
            and any(b"ipykernel_launcher" in a for a in argv)
            and any(str(runtime_dir).encode() in a for a in argv)
        ):
            pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def jupyterlab(root: Path, home: Path) -> Iterator[Lab]:
    """Start JupyterLab on a free loopback port; on exit shut its kernels and itself down."""
    port, token = free_port(), secrets.token_hex(16)
    runtime_dir, settings = home / "runtime", home / "lab-settings"
    for folder in (runtime_dir, settings, home / "config", home / "workspaces"):
        folder.mkdir(parents=True, exist_ok=True)
    # No news or update-check toasts over the dashboard.
    notification = (
        settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    )
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ)  # NBSERVE_HOME included: the kernel attaches to the same local head
    env.update(
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        PYTHONUNBUFFERED="1",
    )
    log = home / "jupyterlab.log"
    cmd = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        # Nothing asks PyPI or jupyter.org anything.
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    lab = Lab(proc, f"http://127.0.0.1:{port}", token, runtime_dir, log)
    try:
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({proc.returncode}):\n{lab.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if lab.api("GET", "status", timeout=5).ok:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"JupyterLab not up in {LAB_START_TIMEOUT}s:\n{lab.log_tail()}"
                )
            time.sleep(0.5)
        yield lab
    finally:
        _shutdown(lab)


def _shutdown(lab: Lab) -> None:
    """Kernels first (they run in sessions of their own), then the server and its group."""
    with contextlib.suppress(requests.RequestException, ValueError):
        for kernel in lab.api("GET", "kernels").json():
            lab.api("DELETE", f"kernels/{kernel['id']}", timeout=60)
    with contextlib.suppress(requests.RequestException):
        lab.api("POST", "shutdown", timeout=30)
    try:
        lab.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(lab.proc.pid, sig)
        try:
            lab.proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 20
    while (pids := kernel_pids(lab.runtime_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    lab.stray_kernels = pids
    for pid in pids:  # leave nothing running, and let the test say so
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def open_notebook(page: Any, lab: Lab, name: str) -> None:
    """Open a notebook in JupyterLab and wait until its kernel runs and is idle."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}", timeout=120_000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)
    deadline = time.monotonic() + KERNEL_IDLE_TIMEOUT
    while time.monotonic() < deadline:
        # JupyterLab may ask which kernel to start (e.g. when its kernelspecs load late).
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if page.locator(".jp-Dialog", has_text="Select Kernel").count() and accept.count():
            accept.first.click()
        sessions = lab.api("GET", "sessions").json()
        if (
            any(
                s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle"
                for s in sessions
            )
            and page.locator(
                ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']"
            ).count()
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for {name} in {KERNEL_IDLE_TIMEOUT}s:\n{lab.log_tail()}")


def menu(page: Any, top: str, item: str) -> None:
    """Click ``item`` in the menu bar's ``top`` menu, as a user does."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^\s*{top}\s*$")).click()
    page.locator(
        ".lm-Menu-item:not(.lm-mod-disabled)", has_text=re.compile(rf"^\s*{item}")
    ).first.click()


def shown_tracebacks(page: Any) -> list[str]:
    """Tracebacks the notebook shows in its outputs (IPython prints this line in each)."""
    outputs = page.locator(
        ".jp-Notebook .jp-OutputArea-output", has_text="Traceback (most recent call last)"
    )
    return [text[-2000:] for text in outputs.all_inner_texts()]


def wait_until_done(page: Any, lab: Lab, name: str, timeout: float) -> None:
    """Wait until no cell is queued or running ([*]) and the kernel is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = page.locator(".jp-Notebook .jp-InputPrompt", has_text="*").count()
        idle = any(
            s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle"
            for s in lab.api("GET", "sessions").json()
        )
        if not busy and idle:
            return
        if tracebacks := shown_tracebacks(page):
            raise AssertionError("a cell failed:\n" + "\n".join(tracebacks))
        time.sleep(1)
    raise AssertionError(f"notebook still running after {timeout}s")


def saved_errors(page: Any, lab: Lab, name: str) -> list[str]:
    """Save the notebook from the File menu; the error outputs of what was saved."""
    before = lab.api("GET", f"contents/{name}?content=0").json()["last_modified"]
    menu(page, "File", "Save Notebook(?! As)")
    deadline = time.monotonic() + 60
    # Poll without content: reading a notebook while JupyterLab's atomic save replaces it
    # makes the server "recover" the half-written file and breaks the save. Read it once saved.
    while True:
        reply = lab.api("GET", f"contents/{name}?content=0")
        if reply.status_code == 200 and reply.json()["last_modified"] != before:
            break
        assert time.monotonic() < deadline, f"the notebook was not saved: {reply.text[:300]}"
        time.sleep(0.5)
    time.sleep(1)  # let the save's rename settle before the one full read
    model = lab.api("GET", f"contents/{name}").json()
    return [
        f"{out['ename']}: {out['evalue']}"
        for cell in model["content"]["cells"]
        for out in cell.get("outputs", ())
        if out["output_type"] == "error"
    ]


@pytest.fixture(scope="session")
def playwright_api() -> Any:
    """Checked before the cluster starts (session scope, first argument), so a skip is cheap."""
    return require_browser()


def test_dashboard_live_in_jupyterlab(
    playwright_api: Any, tiny_app: nbserve.App, tmp_path: Path
) -> None:
    sync_playwright = playwright_api
    root = tmp_path / "notebooks"
    notebook = parameterized_notebook(root, {**PARAMETERS, "app_name": tiny_app.name})
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    seen: dict[str, Any] = {}
    console: list[str] = []
    phases: dict[str, float] = {}  # seconds since JupyterLab was asked to start
    start = time.monotonic()
    with jupyterlab(root, tmp_path / "jupyter") as lab:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.on("console", lambda msg: msg.type == "error" and console.append(msg.text))
                open_notebook(page, lab, notebook.name)
                phases["kernel idle"] = time.monotonic() - start
                menu(page, "Run", "Run All Cells")

                # Wait for the dashboard to render and the notebook's load to move it.
                deadline, state, peak = time.monotonic() + VALUES_TIMEOUT, None, 0.0
                while time.monotonic() < deadline:
                    state = page.evaluate(DASHBOARD_JS)
                    if state is not None:
                        now = max([0.0, *(float(v) for v in TOK_S.findall(state["header"]))])
                        peak = max(peak, now)
                        # One state shows it all: the DOM is read while widgets redraw (a new
                        # replica's bar exists a moment before its label does).
                        if now > 0 and labelled(state) and state["drawn"] and state["latency"]:
                            break
                    if tracebacks := shown_tracebacks(page):
                        pytest.fail(
                            "a cell failed before the dashboard showed values:\n"
                            + "\n".join(tracebacks)
                        )
                    time.sleep(0.5)
                seen = state or {}
                prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
                assert state is not None, (
                    "no dashboard (.widget-vbox with .js-plotly-plot) in "
                    f"{VALUES_TIMEOUT}s; code cell prompts: "
                    f"{prompts.all_inner_texts()}"
                )
                assert state["bars"], f"no per-replica KV-cache bar: {state}"
                assert all(b["label"] and 0 <= b["percent"] <= 100 for b in state["bars"]), state
                assert state["traces"] >= 4 and state["drawn"] >= 1, f"no drawn chart: {state}"
                assert peak > 0, f"no tokens/s > 0 in the header during the load: {state}"
                # The latency breakdown's stacked bar: at least prefill and decode.
                assert state["latency"] >= 2, f"no latency breakdown bar: {state}"
                phases["values shown"] = time.monotonic() - start
                time.sleep(SCREENSHOT_DELAY)  # a few more points on the chart
                # A clip of the page, not Locator.screenshot: that waits for the box to hold
                # still for two frames, and JupyterLab may scroll the notebook under it as the
                # running cells' outputs grow (it timed out so on a loaded machine).
                box = page.evaluate(DASHBOARD_BOX_JS)
                assert box is not None, "the dashboard left the page"
                page.screenshot(path=str(screenshot), clip=box)

                # The notebook runs to its end, its own checks of the recorded window included.
                wait_until_done(page, lab, notebook.name, NOTEBOOK_TIMEOUT)
                phases["notebook done"] = time.monotonic() - start
                errors = saved_errors(page, lab, notebook.name)
                assert not errors, errors
            except BaseException:
                with contextlib.suppress(Exception):  # what the page showed, for the report
                    page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
                print("browser console errors:", *console[-20:], sep="\n")
                raise
            finally:
                browser.close()
    phases["shut down"] = time.monotonic() - start
    print("browser test phases (s):", {k: round(v, 1) for k, v in phases.items()})
    assert not lab.stray_kernels, f"kernels left running after shutdown: {lab.stray_kernels}"
    assert screenshot.stat().st_size > 10_000, seen
