"""Run the skeleton Player in a real JupyterLab, driven by headless Chromium, and screenshot it.

    .venv/bin/python scripts/screenshot_jupyterlab_widget.py OUT_DIR [--motion FILE.npy]

Starts ``jupyter lab`` (no token, a free local port, the app exposed to page scripts), writes a one-cell
notebook that shows ``Player([...])``, opens it in headless Chromium through the DevTools protocol, runs the
cell, screenshots the player (``player.png``), clicks Play, waits, screenshots again (``playing.png``), and
prints a JSON summary (frame readout before/after Play). Needs Debian's chromium, jupyterlab, ipywidgets,
anywidget and websocket-client. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOTION = ROOT.parent / "shared" / "fixtures" / "humanml3d" / "new_joint_vecs" / "012314.npy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


class DevTools:
    """Minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_js(self, expression: str, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


def make_notebook(path: Path, motion: Path) -> None:
    source = ("import numpy as np\n"
              "from easytune_lab.viz.widget import Player\n"
              f"motion = np.load({str(motion)!r})\n"
              "player = Player([motion, motion[::-1]], ['a real HumanML3D sample', 'the same, reversed'], fps=20)\n"
              "player")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "player", "metadata": {}, "outputs": [],
                     "source": source}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--motion", type=Path, default=DEFAULT_MOTION)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 3
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jl-widget-"))
    make_notebook(work / "player.ipynb", args.motion.resolve())
    lab_port, cdp_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={lab_port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True", "--allow-root"],
        stdout=open(work / "lab.log", "w"), stderr=subprocess.STDOUT, env=env)
    chrome = None
    summary: dict = {}
    try:
        wait_http(f"http://127.0.0.1:{lab_port}/api", 90)
        chrome = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={work / 'profile'}", f"--remote-debugging-port={cdp_port}",
             "--remote-allow-origins=*", "--window-size=1300,1150", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        targets = json.loads(wait_http(f"http://127.0.0.1:{cdp_port}/json", 30))
        page = next(t for t in targets if t.get("type") == "page")
        cdp = DevTools(page["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{lab_port}/lab/tree/player.ipynb")
        start = time.time()
        cdp.wait_js("!!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))", args.timeout,
                    "JupyterLab to open the notebook")
        time.sleep(2)
        summary["lab_ready_s"] = round(time.time() - start, 1)
        cdp.js("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        cdp.wait_js("!!document.querySelector('.jp-OutputArea .widget-play button')", args.timeout,
                    "the Player widget")
        cdp.wait_js("document.querySelectorAll('.jp-OutputArea .js-plotly-plot .gl-container canvas, "
                    ".jp-OutputArea .js-plotly-plot canvas').length > 0", 60, "the plotly scenes")
        time.sleep(3)
        summary["widget_ready_s"] = round(time.time() - start, 1)
        readout = ("(() => { const r = document.querySelector('.jp-OutputArea .widget-slider .widget-readout');"
                   " return r ? (r.value !== undefined && r.value !== '' ? r.value : r.textContent) : null; })()")
        summary["frame_before_play"] = cdp.js(readout)
        cdp.screenshot(args.out_dir / "player.png")
        cdp.js("document.querySelector('.jp-OutputArea .widget-play button').click()")
        time.sleep(4)
        summary["frame_after_play_4s"] = cdp.js(readout)
        cdp.screenshot(args.out_dir / "playing.png")
        summary["errors_in_output"] = cdp.js("Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type"
                                             "=\"application/vnd.jupyter.stderr\"]')).map(e => e.textContent)")
        print(json.dumps(summary, indent=2))
        return 0
    except Exception:
        if chrome is not None and "cdp" in locals():
            cdp.screenshot(args.out_dir / "failure.png")
            summary["shell"] = cdp.js("(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                                      " return w ? [w.id, w.constructor.name, w.sessionContext ?"
                                      " String(w.sessionContext.kernelDisplayStatus) : null] : null; })()")
            print(json.dumps(summary), file=sys.stderr)
        shutil.copy(work / "lab.log", args.out_dir / "lab.log")
        raise
    finally:
        for proc in (chrome, lab):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work / "profile", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
