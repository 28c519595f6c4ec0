"""A real browser: JupyterLab on localhost, notebook 05 opened in headless Chromium, run, one layer toggled.

Needs Debian's chromium (``.ci/run`` installs it with apt when it is missing) and the ``playwright`` package, which
drives it through its executable path. It saves a screenshot to ``build/screenshots/layer_picker.png``.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed (.ci/run installs it)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebook 05 whose parameters cell asks for the smoke profile."""
    notebook = nbformat.read(ROOT / "notebooks" / "05_interactive_layer_picker.ipynb", as_version=4)
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace('profile = "auto"', 'profile = "smoke"').replace(
                'output_dir = "../build/results"', f'output_dir = "{tmp_path}/results"').replace(
                'figure_dir = "../build/figures"', f'figure_dir = "{tmp_path}/figures"')
    nbformat.write(notebook, tmp_path / "picker.ipynb")
    port, token = free_port(), "layerfreeze-test"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield f"{url}/lab/tree/picker.ipynb?token={token}"
    server.terminate()
    server.wait(timeout=20)


def test_toggling_a_layer_in_the_browser_changes_the_trainable_count(lab):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: install it with apt-get install chromium"
    screenshots = ROOT / "build" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(lab)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # the kernel is ready when the status bar says Idle
        page.locator(".jp-StatusBar-Widget", has_text="Idle").first.wait_for(timeout=60_000)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")  # the menu, as a person would
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        count = page.locator(".trainable-count").first
        try:
            count.wait_for(timeout=120_000)
        except Exception:
            page.screenshot(path=str(screenshots / "layer_picker_failed.png"))
            raise
        # wait until every cell has run: the last one prints the run's time
        page.locator(".jp-OutputArea-output", has_text="this run took").first.wait_for(timeout=180_000)
        news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's one-time question about news
        if news.count() and news.first.is_visible():
            news.first.click()
        before = page.wait_for_function(
            "() => { const t = document.querySelector('.trainable-count')?.textContent; "
            "return /[0-9]/.test(t || '') ? t : null; }", timeout=30_000).json_value()
        embeddings = page.locator("button.jupyter-button", has_text="embeddings (").first
        embeddings.scroll_into_view_if_needed()
        embeddings.click()
        try:  # the summary widget re-renders its HTML, so look the element up afresh each time
            changed = page.wait_for_function(
                "old => { const t = document.querySelector('.trainable-count')?.textContent; "
                "return /[0-9]/.test(t || '') && t !== old ? t : null; }", arg=before, timeout=60_000)
            after = changed.json_value()
        finally:
            page.evaluate("document.querySelector('.layerfreeze-summary').scrollIntoView({block: 'center'})")
            page.screenshot(path=str(screenshots / "layer_picker.png"))
        browser.close()
    assert int(after.replace(",", "")) != int(before.replace(",", ""))
