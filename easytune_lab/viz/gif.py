"""GIF / MP4 export of skeleton playback with matplotlib (no display needed).

Motions are features ``(T, 263|251)`` or joints ``(T, J, 3)`` (see :func:`easytune_lab.viz.playback.to_joints`),
drawn side by side, one 3-D axes each, with the same display rotation as the HTML playback (Y-up dataset
frame turned Z-up). The artists are created once and updated in place every frame (``Line3D.set_data_3d``),
never by clearing ``ax.lines``. GIFs use matplotlib's ``PillowWriter``; ``.mp4`` uses ``FFMpegWriter`` and
needs ``ffmpeg`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from .playback import PALETTE, kinematic_chains, to_display, to_joints


@dataclass(frozen=True)
class GifStyle:
    """Size and look of an exported animation."""

    panel_inches: float = 3.2  # width and height of one motion's panel
    dpi: int = 80
    line_width: float = 2.5
    margin: float = 0.25  # room around the motion, as a fraction of the body height
    caption_width: int = 36  # characters per caption line


def ffmpeg_available() -> bool:
    """Whether ``ffmpeg`` is on PATH (needed for ``.mp4``)."""
    return shutil.which("ffmpeg") is not None


def skeleton_animation(
    motions: Sequence[Any],
    captions: Sequence[str] | None = None,
    follow: bool = False,
    trace: bool = True,
    title: str | None = None,
    chains: Sequence[Sequence[int]] | None = None,
    style: GifStyle = GifStyle(),
) -> tuple[Any, Callable[[int], None], int]:
    """A matplotlib Figure (Agg canvas) of motions side by side, ``draw(k)`` posing frame k, and the frame count.

    ``follow`` re-centres each panel on its root every frame; ``trace`` draws the root's ground trajectory.
    Shorter motions hold their last pose.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(motions) == 0:
        raise UserError("motions: nothing to draw")
    captions = list(captions) if captions is not None else [""] * len(motions)
    if len(captions) != len(motions):
        raise UserError(f"captions: {len(captions)} captions for {len(motions)} motions")

    displays = [to_display(to_joints(m)) for m in motions]
    n = len(displays)
    num_frames = max(d.shape[0] for d in displays)
    floor = min(float(d[..., 2].min()) for d in displays)
    body = max(max(float(d[..., 2].max()) for d in displays) - floor, 1e-6)
    pad = style.margin * body

    fig = Figure(figsize=(style.panel_inches * n, style.panel_inches + (0.4 if title else 0.0)), dpi=style.dpi)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    panels = []
    for i, disp in enumerate(displays):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        ax.computed_zorder = False  # keep the ground under the skeleton instead of depth-sorting it over the feet
        chain_list = chains if chains is not None else kinematic_chains(disp.shape[1])
        colour = PALETTE[i % len(PALETTE)]
        root = disp[:, 0]
        if follow:
            half = max(float(np.max(np.abs(disp[..., :2] - root[:, None, :2]))) + pad, 0.5 * body)
            lo, hi = disp[..., :2].reshape(-1, 2).min(0) - half, disp[..., :2].reshape(-1, 2).max(0) + half
        else:
            lo, hi = disp[..., :2].reshape(-1, 2).min(0) - pad, disp[..., :2].reshape(-1, 2).max(0) + pad
            mid, half = (lo + hi) / 2, float(max(hi - lo)) / 2
            ax.set_xlim(mid[0] - half, mid[0] + half)
            ax.set_ylim(mid[1] - half, mid[1] + half)
        ax.set_zlim(floor, floor + body + pad)
        ax.set_box_aspect((1, 1, (body + pad) / (2 * half)))
        ground = [[(lo[0], lo[1], floor), (hi[0], lo[1], floor), (hi[0], hi[1], floor), (lo[0], hi[1], floor)]]
        ax.add_collection3d(Poly3DCollection(ground, facecolor="#d9d9d9", edgecolor="none", alpha=0.6,
                                             zorder=0))
        if trace:
            ax.plot(root[:, 0], root[:, 1], np.full(len(root), floor), color=colour, lw=1, ls=":", alpha=0.7, zorder=1)
        lines = [ax.plot([], [], [], color=colour, lw=style.line_width, marker="o", ms=2, zorder=3)[0] for _ in chain_list]
        ax.view_init(elev=20, azim=-60)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
        ax.set_title("\n".join(textwrap.wrap(captions[i], style.caption_width)), fontsize=8)
        panels.append((ax, disp, chain_list, lines, half))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.85 if title else 0.9, wspace=0)

    def draw(k: int) -> None:
        for ax, disp, chain_list, lines, half in panels:
            pose = disp[min(k, disp.shape[0] - 1)]
            for line, chain in zip(lines, chain_list):
                seg = pose[list(chain)]
                line.set_data_3d(seg[:, 0], seg[:, 1], seg[:, 2])
            if follow:
                ax.set_xlim(pose[0, 0] - half, pose[0, 0] + half)
                ax.set_ylim(pose[0, 1] - half, pose[0, 1] + half)

    draw(0)
    return fig, draw, num_frames


def write_gif(
    motions: Sequence[Any],
    captions: Sequence[str] | None,
    out_path: str | Path,
    fps: float = 20,
    follow: bool = False,
    trace: bool = True,
    title: str | None = None,
    chains: Sequence[Sequence[int]] | None = None,
    style: GifStyle = GifStyle(),
) -> Path:
    """Render motions side by side to ``out_path`` (``.gif``, or ``.mp4`` with ffmpeg), atomically.

    See :func:`skeleton_animation` for ``follow``/``trace``. Returns the path written.
    """
    from matplotlib import animation

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise UserError(f"--out {out_path}: must end in .gif or .mp4")
    if suffix == ".mp4" and not ffmpeg_available():
        raise UserError(f"--out {out_path}: .mp4 needs ffmpeg on PATH (not found); write a .gif instead")
    if fps <= 0:
        raise UserError(f"--fps: must be positive (got {fps})")
    fig, draw, num_frames = skeleton_animation(motions, captions, follow, trace, title, chains, style)
    writer = (animation.PillowWriter(fps=fps) if suffix == ".gif"
              else animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        tmp_file = Path(tmp) / f"animation{suffix}"  # the writers pick the format from the suffix
        with writer.saving(fig, str(tmp_file), dpi=style.dpi):
            for k in range(num_frames):
                draw(k)
                writer.grab_frame()
        os.replace(tmp_file, out_path)
    return out_path
