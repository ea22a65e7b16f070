"""The JupyterLab Player: controls are wired and moving the slider poses the skeletons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from easytune_lab.errors import UserError  # noqa: E402
from easytune_lab.viz.playback import demo_joints, to_display  # noqa: E402
from easytune_lab.viz.widget import Player, plotly_widgets_available  # noqa: E402

LONG = demo_joints(30, seed=0)
SHORT = demo_joints(12, seed=1)


def _first_chain(player: Player, motion_index: int) -> np.ndarray:
    trace = player.view.data[player._traces[motion_index]]
    xyz = np.array([trace.x, trace.y, trace.z], dtype=object).T
    end = next(i for i, row in enumerate(xyz) if row[0] is None)
    return xyz[:end].astype(float)


@pytest.mark.skipif(not plotly_widgets_available(), reason="plotly FigureWidget needs anywidget")
def test_slider_poses_every_motion():
    player = Player([LONG, SHORT], ["long", "short"], fps=20)
    assert player.backend == "plotly" and player.num_frames == 30
    assert player.play.max == player.slider.max == 29
    player.slider.value = 20
    assert player.frame == 20
    chain = [0, 2, 5, 8, 11]
    np.testing.assert_allclose(_first_chain(player, 0), to_display(LONG[20])[chain], atol=1e-4)
    np.testing.assert_allclose(_first_chain(player, 1), to_display(SHORT[11])[chain], atol=1e-4)  # held last pose


@pytest.mark.skipif(not plotly_widgets_available(), reason="plotly FigureWidget needs anywidget")
def test_follow_moves_the_axes_with_the_root():
    player = Player([LONG], follow=True)
    player.slider.value = 25
    centre = np.mean(player.view.layout.scene.xaxis.range)
    assert centre == pytest.approx(to_display(LONG[25, 0])[0], abs=1e-6)


def test_speed_and_loop_controls():
    player = Player([SHORT], fps=20, backend="matplotlib")
    assert player.play.interval == 50
    player.speed.value = 2.0
    assert player.play.interval == 25
    player.speed.value = 0.25
    assert player.play.interval == 200
    assert player.play.repeat is True
    player.loop.value = False
    assert player.play.repeat is False


def test_matplotlib_fallback_redraws_the_image():
    player = Player([LONG, SHORT], ["a", "b"], backend="matplotlib")
    first = player.view.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    player.slider.value = 15
    assert player.view.value != first


def test_displayable_in_jupyter():
    player = Player([SHORT], backend="matplotlib")
    bundle = player._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == player.widget.model_id


def test_bad_options():
    with pytest.raises(UserError, match="backend"):
        Player([SHORT], backend="vtk")
    with pytest.raises(UserError, match="fps"):
        Player([SHORT], fps=0)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EASYTUNE_JUPYTERLAB_TEST") != "1" or shutil.which("chromium") is None,
                    reason="opt-in (about 40 s): EASYTUNE_JUPYTERLAB_TEST=1 with Debian chromium installed")
def test_player_plays_in_a_real_jupyterlab(tmp_path):
    """Runs the Player in JupyterLab under headless Chromium: it renders and Play advances the frame."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_jupyterlab_widget.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["errors_in_output"] == []
    assert int(summary["frame_after_play_4s"]) > int(summary["frame_before_play"])
    from PIL import Image

    with Image.open(tmp_path / "player.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert (np.abs(rgb - np.array([0x1F, 0x77, 0xB4])).sum(axis=-1) < 60).sum() > 150  # the blue skeleton
