"""HTML playback, GIF export and ``easytune export``; the headless-browser check runs when chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.motion.skeleton import get_skeleton
from easytune_lab.viz.playback import (bench, demo_joints, external_scripts, figure_dict, motion_figure, to_display,
                                       to_joints, write_motion_html)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "scripts" / "screenshot_html.sh"
BLUE = np.array([0x1F, 0x77, 0xB4])  # colour of the first motion's skeleton


@pytest.fixture(scope="module")
def fixture_joints(fixture_dir: Path) -> np.ndarray:
    return np.load(fixture_dir / "new_joints" / "012314.npy").astype(np.float64)


def _skeleton_xyz(frame: dict, index: int) -> np.ndarray:
    data = frame["data"][index]
    return np.array([[np.nan if v is None else v for v in data[a]] for a in "xyz"]).T


def test_display_rotation_is_proper_and_z_up():
    basis = np.eye(3)
    rotated = to_display(basis)
    assert np.isclose(np.linalg.det(rotated), 1.0)  # a rotation: left and right are not mirrored
    np.testing.assert_allclose(rotated[1], [0, 0, 1])  # dataset Y (up) -> plotly Z (up)


def test_features_decode_to_the_dataset_joints(fixture_dir: Path, fixture_joints: np.ndarray):
    features = np.load(fixture_dir / "new_joint_vecs" / "012314.npy")
    np.testing.assert_allclose(to_joints(features), fixture_joints, atol=1e-4)
    np.testing.assert_allclose(to_joints(fixture_joints.reshape(len(fixture_joints), 66)), fixture_joints)


def test_frames_hold_every_pose_of_every_motion(fixture_joints: np.ndarray):
    short = fixture_joints[:40]
    fig = figure_dict([fixture_joints, short], ["long", "short"], fps=20)
    frames = fig["frames"]
    assert len(frames) == len(fixture_joints)
    chains = get_skeleton("t2m").chains
    for k in (0, 17, 39, 120):
        for i, motion in enumerate((fixture_joints, short)):
            xyz = _skeleton_xyz(frames[k], i)
            pose = to_display(motion[min(k, len(motion) - 1)])
            expected = np.concatenate([np.vstack([pose[list(c)], [np.nan] * 3]) for c in chains])
            np.testing.assert_allclose(xyz, expected, atol=1e-4)  # shorter motion holds its last pose
    # the slider has a step per frame and Play runs at the requested rate
    assert len(fig["layout"]["sliders"][0]["steps"]) == len(fixture_joints)
    assert fig["layout"]["updatemenus"][0]["buttons"][0]["args"][1]["frame"]["duration"] == pytest.approx(50.0)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == ["long", "short"]


def test_follow_camera_is_centred_on_the_root(fixture_joints: np.ndarray):
    fig = figure_dict([fixture_joints], ["walk"], follow=True)
    root = to_display(fixture_joints[:, 0])
    widths = set()
    for k in (0, 60, 169):
        ranges = fig["frames"][k]["layout"]["scene"]
        assert np.mean(ranges["xaxis"]["range"]) == pytest.approx(root[k, 0], abs=1e-6)
        assert np.mean(ranges["yaxis"]["range"]) == pytest.approx(root[k, 1], abs=1e-6)
        widths.add(round(np.diff(ranges["xaxis"]["range"])[0], 9))
    assert len(widths) == 1  # fixed-size window
    # a staying camera covers the whole trajectory instead
    still = figure_dict([fixture_joints], ["walk"])
    lo, hi = still["layout"]["scene"]["xaxis"]["range"]
    assert lo <= root[:, 0].min() and hi >= root[:, 0].max()
    assert "layout" not in still["frames"][0]


def test_motion_figure_is_a_plotly_figure(fixture_joints: np.ndarray):
    fig = motion_figure([fixture_joints[:5]], ["a"], trace=False)
    assert len(fig.frames) == 5
    assert [t.name for t in fig.data] == ["ground", "grid", "motion 0"]


def test_html_is_offline_and_written_atomically(tmp_path: Path, fixture_joints: np.ndarray):
    out = tmp_path / "play" / "x.html"
    write_motion_html([fixture_joints[:20]] * 2, ["one", "two"], out, title="t")
    html = out.read_text()
    assert external_scripts(html) == []
    assert "Plotly.newPlot" in html or "Plotly.animate" in html or "plotly" in html.lower()
    assert len(html) > 1_000_000  # plotly.js is inlined
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.html"]  # no temporary left behind


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 5)), "263"),
    (np.zeros((10, 22, 2)), "shape"),
    (np.full((4, 22, 3), np.nan), "NaN"),
])
def test_bad_motions_are_user_errors(bad, message):
    with pytest.raises(UserError, match=message):
        figure_dict([bad], ["x"])


def test_caption_count_must_match():
    with pytest.raises(UserError, match="captions"):
        figure_dict([demo_joints(5)], ["a", "b"])


def test_bench_reports_size_and_time(tmp_path: Path):
    report = bench(num_motions=2, num_frames=30, out_dir=tmp_path)
    assert report["external_scripts"] == 0
    assert report["html_bytes"] > report["frames_json_bytes"] > 0
    assert report["write_html_seconds"] > 0


def test_gif_has_one_image_per_frame(tmp_path: Path, fixture_joints: np.ndarray):
    from PIL import Image

    from easytune_lab.viz.gif import write_gif

    out = tmp_path / "x.gif"
    write_gif([fixture_joints[:6], fixture_joints[100:104]], ["a", "b"], out, fps=10)
    with Image.open(out) as im:
        assert im.n_frames == 6
        assert im.info["duration"] == pytest.approx(100, abs=1)
        first = np.asarray(im.convert("RGB")).copy()
        im.seek(5)
        last = np.asarray(im.convert("RGB"))
    assert first.shape[1] > first.shape[0]  # two panels side by side
    assert np.any(first != last)


def test_gif_rejects_other_formats(tmp_path: Path, monkeypatch):
    from easytune_lab.viz import gif

    with pytest.raises(UserError, match=r"\.gif or \.mp4"):
        gif.write_gif([demo_joints(3)], ["a"], tmp_path / "x.avi")
    monkeypatch.setattr(gif.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="ffmpeg"):
        gif.write_gif([demo_joints(3)], ["a"], tmp_path / "x.mp4")


def test_export_cli(tmp_path: Path, fixture_dir: Path, capsys):
    html = tmp_path / "a.html"
    assert main(["export", "html", "--data", str(fixture_dir), "--id", "012314", "--id", "012314",
                 "--out", str(html), "--follow", "--caption", "x", "--caption", "y"]) == 0
    assert html.stat().st_size > 1_000_000
    bvh = tmp_path / "a.bvh"
    assert main(["export", "bvh", "--features", str(fixture_dir / "new_joints" / "012314.npy"),
                 "--out", str(bvh)]) == 0
    assert bvh.read_text().startswith("HIERARCHY")
    gif = tmp_path / "a.gif"
    np.save(tmp_path / "short.npy", np.load(fixture_dir / "new_joint_vecs" / "012314.npy")[:3])
    assert main(["export", "gif", "--features", str(tmp_path / "short.npy"), "--out", str(gif)]) == 0
    assert gif.stat().st_size > 0
    capsys.readouterr()
    assert main(["export", "html", "--data", str(fixture_dir), "--id", "nope", "--out", str(html)]) == 2
    assert main(["export", "bvh", "--out", str(bvh)]) == 2
    assert main(["export", "html", "--features", str(bvh), "--out", str(html)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("easytune: error:") for line in err)


# ---------------------------------------------------------------------------------------------------------------
# Headless browser: the exported page really draws the skeleton
# ---------------------------------------------------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(page: Path, png: Path) -> np.ndarray:
    from PIL import Image

    subprocess.run(["bash", str(SCREENSHOT), str(page), str(png), "1200", "800"], check=True, capture_output=True,
                   timeout=180)
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _skeleton_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.argwhere(np.abs(rgb - BLUE).sum(axis=-1) < 60)


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_headless_browser_draws_the_skeleton_and_animates(tmp_path: Path, fixture_joints: np.ndarray):
    page = tmp_path / "play.html"
    write_motion_html([fixture_joints], ["a person walks"], page, title="fixture 012314")
    first = _screenshot(page, tmp_path / "first.png")
    assert first.std() > 10  # not a blank page
    blue = _skeleton_pixels(first)
    assert len(blue) > 150, f"only {len(blue)} skeleton-coloured pixels"

    # Jump to a late frame through plotly's own animation API: the skeleton must move on screen.
    html = page.read_text()
    jump = ("<script>window.addEventListener('load', function () {"
            "var gd = document.getElementsByClassName('plotly-graph-div')[0];"
            "Plotly.animate(gd, ['150'], {frame: {duration: 0, redraw: true}, mode: 'immediate',"
            " transition: {duration: 0}});});</script></body>")
    moved_page = tmp_path / "moved.html"
    moved_page.write_text(html.replace("</body>", jump, 1))
    moved = _skeleton_pixels(_screenshot(moved_page, tmp_path / "moved.png"))
    assert len(moved) > 150
    before = {tuple(p) for p in blue}
    after = {tuple(p) for p in moved}
    changed = len(before ^ after) / len(before | after)
    assert changed > 0.3, f"only {changed:.0%} of the skeleton's pixels changed between frames 0 and 150"


# ---------------------------------------------------------------------------------------------------------------
# Claim-figure helpers
# ---------------------------------------------------------------------------------------------------------------

def test_mean_ci_is_the_student_t_interval():
    from easytune_lab.viz.plots import mean_ci

    mean, lo, hi = mean_ci([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])
    np.testing.assert_allclose(mean, [2.0, 10.0])
    np.testing.assert_allclose(hi - mean, [4.302653 / np.sqrt(3), 0.0], atol=1e-5)  # t_{0.975, 2} * s / sqrt(n)
    np.testing.assert_allclose(mean - lo, hi - mean)
    one = mean_ci([[5.0, 6.0]])
    np.testing.assert_allclose(one[1], one[2])


def test_plots_are_written_as_png(tmp_path: Path):
    from PIL import Image

    from easytune_lab.viz.plots import Series, bar_chart, line_plot

    samples = np.arange(15, dtype=float).reshape(3, 5) + np.array([[0.0], [1.0], [2.0]])
    line = line_plot([Series.from_samples("a", [1, 2, 3, 4, 5], samples)], tmp_path / "l.png", xlabel="steps")
    assert len(line.axes[0].collections) == 1  # the CI band
    bars = bar_chart(["x", "y"], [1.0, 2.0], tmp_path / "b.png", errors=[0.1, 0.2], highlight=["y"])
    heights = [p.get_height() for p in bars.axes[0].patches]
    assert heights == [1.0, 2.0]
    for name in ("l.png", "b.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "l.png"]
    with pytest.raises(UserError, match="png"):
        bar_chart(["x"], [1.0], tmp_path / "b.jpg")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not on PATH")
def test_mp4_with_ffmpeg(tmp_path: Path):
    from easytune_lab.viz.gif import write_gif

    out = tmp_path / "x.mp4"
    write_gif([demo_joints(10)], ["a"], out, fps=10)
    probe = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True)
    assert probe.returncode == 0 and out.read_bytes()[4:8] == b"ftyp"
    frames = subprocess.run(["ffmpeg", "-i", str(out), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                            capture_output=True, text=True).stderr
    assert "frame=   10" in frames or "frame=10" in frames.replace(" ", "")
