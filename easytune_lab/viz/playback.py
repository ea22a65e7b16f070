"""Offline HTML skeleton playback with pre-computed plotly animation frames.

A motion is given either as HumanML3D/KIT features ``(T, 263|251)`` (joints are recovered with
``recover_from_ric``, the T2M convention) or as joint positions ``(T, J, 3)`` in the dataset's frame:
Y is up, the body faces +Z in the first frame, units are the dataset's (metres for HumanML3D).
Bones are drawn along the skeleton's kinematic chains (``Skeleton.chains``), one polyline per chain.

Plotly's 3-D scenes are Z-up, so positions are turned by +90 degrees about X for display:
``(x, y, z) -> (x, -z, y)`` (a proper rotation, so left and right are not mirrored).

Run ``python -m easytune_lab.viz.playback --bench`` to time a 4-motion x 196-frame playback and print
its size as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..io import write_text
from ..motion.features import JOINTS_BY_DIM, to_joints  # noqa: F401 - re-exported (tests, notebooks)
from ..motion.skeleton import forward_kinematics, get_skeleton

# Colours of successive motions (skeleton lines); the root trajectory reuses them, lighter.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class PlaybackStyle:
    """Appearance of a playback; the defaults suit HumanML3D (metres) and KIT alike (sizes scale with the body)."""

    line_width: float = 6.0
    marker_size: float = 3.0
    caption_width: int = 48  # characters per caption line in subplot titles
    margin: float = 0.25  # extra room around the motion, as a fraction of the body height
    height_px: int = 600
    width_px_per_motion: int = 520


# --------------------------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------------------------

def _to_numpy(motion: Any) -> np.ndarray:
    if hasattr(motion, "detach"):  # torch tensor
        motion = motion.detach().cpu().numpy()
    return np.asarray(motion, dtype=np.float64)


def kinematic_chains(num_joints: int) -> list[list[int]]:
    """The skeleton's chains (lists of joint indices from a root outwards) for 22 (t2m) or 21 (KIT) joints."""
    names = {22: "t2m", 21: "kit"}
    if num_joints not in names:
        raise UserError(f"motion: {num_joints} joints matches neither t2m (22) nor KIT (21)")
    return [list(map(int, c)) for c in get_skeleton(names[num_joints]).chains]


def to_display(joints: np.ndarray) -> np.ndarray:
    """Dataset frame (Y up) -> plotly frame (Z up): rotate +90 degrees about X, ``(x, y, z) -> (x, -z, y)``."""
    return np.stack([joints[..., 0], -joints[..., 2], joints[..., 1]], axis=-1)


def _polyline(points: np.ndarray, chains: Sequence[Sequence[int]]) -> tuple[list, list, list]:
    """x, y, z lists drawing every chain of one pose, chains separated by ``None`` (a break in the line)."""
    xs: list = []
    ys: list = []
    zs: list = []
    for chain in chains:
        seg = np.round(points[list(chain)], 4)
        xs += seg[:, 0].tolist() + [None]
        ys += seg[:, 1].tolist() + [None]
        zs += seg[:, 2].tolist() + [None]
    return xs, ys, zs


def _wrap(caption: str, width: int) -> str:
    return "<br>".join(textwrap.wrap(caption, width) or [""])


# --------------------------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------------------------

def _bounds(disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = disp.reshape(-1, 3)
    return flat.min(axis=0), flat.max(axis=0)


def figure_dict(
    motions: Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
    fps: float = 20,
    follow: bool = False,
    trace: bool = True,
    chains: Sequence[Sequence[int]] | None = None,
    style: PlaybackStyle = PlaybackStyle(),
) -> dict:
    """The playback as a plain plotly figure dict (``data``, ``layout``, ``frames``); see :func:`motion_figure`."""
    if len(motions) == 0:
        raise UserError("motions: nothing to play")
    if fps <= 0:
        raise UserError(f"--fps: must be positive (got {fps})")
    captions = list(captions) if captions is not None else [""] * len(motions)
    if len(captions) != len(motions):
        raise UserError(f"captions: {len(captions)} captions for {len(motions)} motions")

    joints = [to_joints(m) for m in motions]
    displays = [to_display(j) for j in joints]
    n = len(displays)
    num_frames = max(d.shape[0] for d in displays)
    lows = np.min([_bounds(d)[0] for d in displays], axis=0)
    highs = np.max([_bounds(d)[1] for d in displays], axis=0)
    floor = float(lows[2])
    body_height = max(float(highs[2] - floor), 1e-6)
    pad = style.margin * body_height

    data: list[dict] = []
    skeleton_traces: list[int] = []
    layout: dict[str, Any] = {
        "title": {"text": title or "", "x": 0.5},
        "showlegend": False,
        "height": style.height_px,
        "width": style.width_px_per_motion * n,
        "margin": {"l": 0, "r": 0, "t": 90, "b": 0},
        "annotations": [],
    }
    follow_ranges: list[list[tuple[list[float], list[float]]]] = []
    chain_lists = [chains if chains is not None else kinematic_chains(d.shape[1]) for d in displays]
    for i, disp in enumerate(displays):
        chain_list = chain_lists[i]
        scene = "scene" if i == 0 else f"scene{i + 1}"
        colour = PALETTE[i % len(PALETTE)]
        root = disp[:, 0]
        lo, hi = _bounds(disp)
        if follow:
            # A fixed-size window centred on the root: as large as the widest pose around its root, plus margin.
            half = float(np.max(np.abs(disp[..., :2] - root[:, None, :2]))) + pad
            half = max(half, 0.5 * body_height)
            centres = root[:, :2]
            ground_lo = lo[:2] - half
            ground_hi = hi[:2] + half
            x_range = [float(centres[0, 0] - half), float(centres[0, 0] + half)]
            y_range = [float(centres[0, 1] - half), float(centres[0, 1] + half)]
            span_x = span_y = 2 * half
            follow_ranges.append([
                ([float(c[0] - half), float(c[0] + half)], [float(c[1] - half), float(c[1] + half)])
                for c in (centres[min(k, len(centres) - 1)] for k in range(num_frames))
            ])
        else:
            ground_lo = lo[:2] - pad
            ground_hi = hi[:2] + pad
            # equal scale on both ground axes: widen the narrower one
            span = float(max(ground_hi - ground_lo))
            mid = (ground_lo + ground_hi) / 2
            ground_lo, ground_hi = mid - span / 2, mid + span / 2
            x_range = [float(ground_lo[0]), float(ground_hi[0])]
            y_range = [float(ground_lo[1]), float(ground_hi[1])]
            span_x = span_y = span
        z_range = [floor - 0.02 * body_height, floor + body_height + pad]
        span_z = z_range[1] - z_range[0]
        biggest = max(span_x, span_y, span_z)

        gx = [float(ground_lo[0]), float(ground_hi[0]), float(ground_hi[0]), float(ground_lo[0])]
        gy = [float(ground_lo[1]), float(ground_lo[1]), float(ground_hi[1]), float(ground_hi[1])]
        data.append({"type": "mesh3d", "scene": scene, "x": gx, "y": gy, "z": [floor] * 4, "i": [0, 0], "j": [1, 2],
                     "k": [2, 3], "color": "#d9d9d9", "opacity": 0.6, "hoverinfo": "skip", "name": "ground"})
        data.append(_grid_trace(scene, ground_lo, ground_hi, floor, spacing=body_height / 2))
        if trace:
            data.append({"type": "scatter3d", "scene": scene, "mode": "lines", "name": "root trajectory",
                         "x": np.round(root[:, 0], 4).tolist(), "y": np.round(root[:, 1], 4).tolist(),
                         "z": [floor] * len(root), "line": {"color": colour, "width": 3, "dash": "dot"},
                         "opacity": 0.6, "hoverinfo": "skip"})
        xs, ys, zs = _polyline(disp[0], chain_list)
        skeleton_traces.append(len(data))
        data.append({"type": "scatter3d", "scene": scene, "mode": "lines+markers", "name": f"motion {i}",
                     "x": xs, "y": ys, "z": zs, "line": {"color": colour, "width": style.line_width},
                     "marker": {"color": colour, "size": style.marker_size}, "hoverinfo": "skip"})

        left, right = i / n, (i + 1) / n
        layout[scene] = {
            "domain": {"x": [left, right], "y": [0.0, 1.0]},
            "xaxis": {"range": x_range, "showticklabels": False, "title": {"text": ""}, "autorange": False},
            "yaxis": {"range": y_range, "showticklabels": False, "title": {"text": ""}, "autorange": False},
            "zaxis": {"range": z_range, "showticklabels": False, "title": {"text": ""}, "autorange": False},
            "aspectmode": "manual",
            "aspectratio": {"x": span_x / biggest, "y": span_y / biggest, "z": span_z / biggest},
            # In front of the body (which faces -y after the display rotation), slightly raised and to the side.
            "camera": {"eye": {"x": 0.7, "y": -1.25, "z": 0.55}, "up": {"x": 0, "y": 0, "z": 1},
                       "center": {"x": 0, "y": 0, "z": -0.1}},
            "dragmode": "turntable",
        }
        layout["annotations"].append({"text": _wrap(captions[i], style.caption_width), "x": (left + right) / 2,
                                      "y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "center",
                                      "yanchor": "bottom", "showarrow": False, "font": {"size": 13}})

    frames = []
    for k in range(num_frames):
        frame_data = []
        for disp, chain_list in zip(displays, chain_lists):
            xs, ys, zs = _polyline(disp[min(k, disp.shape[0] - 1)], chain_list)
            frame_data.append({"type": "scatter3d", "x": xs, "y": ys, "z": zs})
        frame: dict[str, Any] = {"name": str(k), "data": frame_data, "traces": skeleton_traces}
        if follow:
            frame["layout"] = {}
            for i in range(n):
                scene = "scene" if i == 0 else f"scene{i + 1}"
                xr, yr = follow_ranges[i][k]
                frame["layout"][scene] = {"xaxis": {"range": xr}, "yaxis": {"range": yr}}
        frames.append(frame)

    duration = 1000.0 / fps
    play_args = {"frame": {"duration": duration, "redraw": True}, "fromcurrent": True,
                 "transition": {"duration": 0}, "mode": "immediate"}
    layout["updatemenus"] = [{
        "type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "y": 0.0, "xanchor": "left",
        "yanchor": "top", "pad": {"t": 10, "r": 10},
        "buttons": [
            {"label": "&#9654; Play", "method": "animate", "args": [None, play_args]},
            {"label": "&#10073;&#10073; Pause", "method": "animate",
             "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate",
                               "transition": {"duration": 0}}]},
        ],
    }]
    slider_x = min(0.5, 170.0 / layout["width"])  # right of the Play/Pause buttons (about 160 px wide)
    layout["sliders"] = [{
        "active": 0, "x": slider_x, "len": 1.0 - slider_x, "y": 0.0, "yanchor": "top", "pad": {"t": 10},
        "currentvalue": {"prefix": "frame ", "suffix": f" / {num_frames - 1} ({fps:g} fps)"},
        "steps": [{"label": str(k), "method": "animate",
                   "args": [[str(k)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate",
                                       "transition": {"duration": 0}}]} for k in range(num_frames)],
    }]
    layout["margin"]["b"] = 70
    return {"data": data, "layout": layout, "frames": frames}


def _grid_trace(scene: str, lo: np.ndarray, hi: np.ndarray, z: float, spacing: float) -> dict:
    """Grid lines on the ground plane (one scatter3d trace), so that motion over the floor is visible."""
    xs: list = []
    ys: list = []
    zs: list = []
    for x in np.arange(math.floor(lo[0] / spacing) * spacing, hi[0] + 1e-9, spacing):
        if x >= lo[0]:
            xs += [float(x), float(x), None]
            ys += [float(lo[1]), float(hi[1]), None]
            zs += [z, z, None]
    for y in np.arange(math.floor(lo[1] / spacing) * spacing, hi[1] + 1e-9, spacing):
        if y >= lo[1]:
            xs += [float(lo[0]), float(hi[0]), None]
            ys += [float(y), float(y), None]
            zs += [z, z, None]
    return {"type": "scatter3d", "scene": scene, "mode": "lines", "x": xs, "y": ys, "z": zs, "name": "grid",
            "line": {"color": "#a0a0a0", "width": 1}, "hoverinfo": "skip"}


def motion_figure(
    motions: Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
    fps: float = 20,
    follow: bool = False,
    trace: bool = True,
    chains: Sequence[Sequence[int]] | None = None,
    style: PlaybackStyle = PlaybackStyle(),
):
    """A plotly Figure playing one or several motions side by side (one 3-D scene each).

    Each scene has its caption as title, a ground plane with grid at the lowest joint height, the root's
    ground trajectory (``trace``), and a camera that stays (axes cover the whole motion) or follows the root
    (``follow``: fixed-size axes re-centred on the root every frame). Play/Pause buttons and a frame slider
    drive pre-computed frames at ``fps``; shorter motions hold their last pose.
    """
    import plotly.graph_objects as go

    return go.Figure(figure_dict(motions, captions, title, fps, follow, trace, chains, style))


def write_motion_html(
    motions: Sequence[Any],
    captions: Sequence[str] | None,
    out_path: str | Path,
    title: str | None = None,
    fps: float = 20,
    follow: bool = False,
    trace: bool = True,
    chains: Sequence[Sequence[int]] | None = None,
    style: PlaybackStyle = PlaybackStyle(),
) -> Path:
    """Write a self-contained offline HTML playback (plotly.js inlined, no network) atomically; returns the path."""
    import plotly.io as pio

    fig = figure_dict(motions, captions, title, fps, follow, trace, chains, style)
    html = pio.to_html(fig, include_plotlyjs=True, full_html=True, auto_play=False, validate=False,
                       config={"displaylogo": False, "responsive": True})
    out_path = Path(out_path)
    write_text(out_path, html)
    return out_path


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------

def demo_joints(num_frames: int = 196, seed: int = 0, skeleton: str = "t2m") -> np.ndarray:
    """A walking-and-waving t2m/KIT motion ``(T, J, 3)`` built by forward kinematics (for benchmarks and demos)."""
    skel = get_skeleton(skeleton)
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / 20.0
    angles = np.zeros((num_frames, skel.num_joints, 3))
    for j in range(1, skel.num_joints):
        amp = rng.uniform(0.05, 0.5)
        angles[:, j, rng.integers(0, 3)] = amp * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.3))
    parents = np.asarray(skel.parents)
    branching = [j for j in range(1, skel.num_joints) if np.sum(parents == parents[j]) > 1]
    # Keep the pelvis and chest rigid, as in real data: chains restart from the root rotation in T2M forward
    # kinematics, so bones leaving a branching joint, and the spine up to the chest, stay unrotated here.
    stiff = set(branching)
    for b in [j for j in range(1, skel.num_joints) if np.sum(parents == j) > 1]:
        while b > 0:
            stiff.add(b)
            b = int(parents[b])
    angles[:, sorted(stiff)] = 0.0
    angles[:, 0, 1] = 0.3 * t  # slow turn of the whole body about the vertical axis
    half = np.linalg.norm(angles, axis=-1, keepdims=True) / 2
    axis = angles / np.maximum(2 * half, 1e-12)
    quats = np.concatenate([np.cos(half), np.sin(half) * axis], axis=-1)
    identity = np.zeros((1, skel.num_joints, 4), dtype=np.float32)
    identity[..., 0] = 1.0
    rest = _to_numpy(forward_kinematics(identity, np.zeros((1, 3), dtype=np.float32), skel))[0]
    unit = float(np.ptp(rest[:, 1])) / 1.7  # body-height units: metres for t2m, millimetres for KIT
    root = np.stack([0.4 * np.sin(0.5 * t), np.zeros_like(t), 0.8 * t], -1) * unit
    joints = _to_numpy(forward_kinematics(quats.astype(np.float32), root.astype(np.float32), skel))
    joints[..., 1] -= joints[..., 1].min()
    return joints


def bench(num_motions: int = 4, num_frames: int = 196, out_dir: Path | None = None) -> dict:
    """Time :func:`write_motion_html` for ``num_motions`` x ``num_frames`` and measure the file it writes."""
    motions = [demo_joints(num_frames, seed=s) for s in range(num_motions)]
    captions = [f"demo motion {s}" for s in range(num_motions)]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        out = Path(tmp) / "bench.html"
        start = time.perf_counter()
        fig = figure_dict(motions, captions, title="benchmark")
        t_frames = time.perf_counter() - start
        write_motion_html(motions, captions, out, title="benchmark")
        t_total = time.perf_counter() - start - t_frames
        size = out.stat().st_size
        html = out.read_text()
    import plotly

    return {
        "num_motions": num_motions, "num_frames": num_frames, "plotly": plotly.__version__,
        "figure_dict_seconds": round(t_frames, 3), "write_html_seconds": round(t_total, 3),
        "html_bytes": size, "html_mib": round(size / 2**20, 3),
        "frames_json_bytes": len(json.dumps(fig["frames"])), "external_scripts": len(external_scripts(html)),
    }


def external_scripts(html: str) -> list[str]:
    """``src`` of every ``<script>`` tag that loads code from elsewhere (an offline playback has none)."""
    return re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)", html)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m easytune_lab.viz.playback")
    parser.add_argument("--bench", action="store_true", help="time a playback and print JSON")
    parser.add_argument("--motions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=196)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 0
    print(json.dumps(bench(args.motions, args.frames), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
