"""``easytune export bvh|gif|html``: write a motion as BVH, an animated GIF/MP4, or an offline HTML playback.

A motion comes from a HumanML3D/KIT-format directory (``--data DIR --id ID``; features are stored
de-normalised in ``new_joint_vecs/``) or from a ``.npy`` file (``--features FILE``) holding features
``(T, 263|251)`` or joint positions ``(T, J, 3)``, or a batch of them as ``easytune sample --out x.npy`` writes it,
``(N, T, D)`` or ``(N, T, J, 3)``: ``--index I`` picks motion I of the batch (a batch of one needs none). ``gif``
and ``html`` take several ``--id`` or ``--features`` and show the motions side by side, and every motion of a
batch when no ``--index`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data.humanml import load_npy, read_motion
from ..errors import UserError
from ..motion.bvh import write_bvh
from ..runtime import OutputPath, integer, real
from ..viz.gif import write_gif
from ..viz.playback import write_motion_html

SKELETON_BY_WIDTH = {263: "t2m", 251: "kit", 22: "t2m", 21: "kit"}  # feature width or joint count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write motions as BVH, GIF/MP4 or offline HTML playback")
    esub = p.add_subparsers(dest="export_command", metavar="FORMAT")
    esub.required = True

    b = esub.add_parser("bvh", help="one motion as a BVH file (exact joint positions through IK)")
    _add_source(b, many=False)
    b.add_argument("--out", required=True, type=OutputPath(".bvh"), help="output .bvh file")
    b.add_argument("--skeleton", choices=["t2m", "kit"], default=None, help="default: inferred from the data width")
    b.add_argument("--fps", type=real(0.0, 1000.0, low_open=True), default=20.0, help="frame rate (default 20, HumanML3D)")
    b.add_argument("--source", choices=["positions", "rot6d"], default="positions",
                   help="joint positions from the features' rotation-invariant coordinates (default) or "
                        "from their 6-D joint rotations")
    b.add_argument("--scale", type=real(0.0, 1e6, low_open=True), default=1.0, help="multiply lengths (e.g. 100: metres -> centimetres)")
    b.set_defaults(func=cmd_bvh)

    g = esub.add_parser("gif", help="motions side by side as an animated .gif (or .mp4 with ffmpeg)")
    _add_source(g, many=True)
    g.add_argument("--out", required=True, type=OutputPath(".gif", ".mp4"), help="output .gif or .mp4 file")
    g.set_defaults(many=True)
    _add_view_options(g)
    g.set_defaults(func=cmd_gif)

    h = esub.add_parser("html", help="motions side by side as a self-contained offline HTML playback")
    _add_source(h, many=True)
    h.add_argument("--out", required=True, type=OutputPath(".html", ".htm"), help="output .html file")
    h.set_defaults(many=True)
    _add_view_options(h)
    h.set_defaults(func=cmd_html)


def _add_source(p: argparse.ArgumentParser, many: bool) -> None:
    more = " (repeat for several motions)" if many else ""
    action = "append" if many else "store"
    p.add_argument("--data", type=Path, default=None, help="HumanML3D/KIT-format dataset directory")
    p.add_argument("--id", dest="ids", action=action, default=None, help=f"motion id in --data{more}")
    p.add_argument("--features", action=action, type=Path, default=None,
                   help=f".npy file with features (T, 263|251) or joints (T, J, 3), or a batch of them (N, T, D) as "
                        f"`easytune sample` writes it{more}")
    p.add_argument("--index", type=integer(-1_000_000, 1_000_000), default=None,
                   help="which motion of a batch file (N, T, D) to take (default: the only one"
                        + ("; all of them side by side)" if many else ")"))


def _add_view_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fps", type=real(0.0, 1000.0, low_open=True), default=20.0, help="frame rate (default 20, HumanML3D)")
    p.add_argument("--follow", action="store_true", help="camera follows the root (default: stays)")
    p.add_argument("--no-trace", action="store_true", help="hide the root trajectory on the ground")
    p.add_argument("--caption", action="append", default=None, help="caption per motion (default: dataset text)")
    p.add_argument("--title", default=None, help="title above the motions")


def load_motions(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str]]:
    """Motions (features or joints) and default captions named by ``--data/--id`` or ``--features``."""
    ids = args.ids if isinstance(args.ids, list) or args.ids is None else [args.ids]
    files = args.features if isinstance(args.features, list) or args.features is None else [args.features]
    if files and (ids or args.data is not None):
        raise UserError("--features: give either --features or --data with --id, not both")
    motions: list[np.ndarray] = []
    captions: list[str] = []
    index = getattr(args, "index", None)
    if index is not None and not files:
        raise UserError("--index: picks a motion of a --features batch file; with --data use --id")
    if files:
        for path in files:
            arr = load_npy(path)
            if arr.dtype.kind not in "fiu" or arr.ndim not in (2, 3, 4) or 0 in arr.shape:
                raise UserError(f"{path}: expected features (T, D) or joints (T, J, 3), or a batch (N, T, D) / "
                                f"(N, T, J, 3), got {arr.dtype} {arr.shape}")
            batch = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] != 3)
            if not batch:
                if index not in (None, 0):
                    raise UserError(f"--index {index}: {path} holds one motion {arr.shape}, not a batch")
                chosen = [(arr, Path(path).stem)]
            elif index is not None:
                if not -len(arr) <= index < len(arr):
                    raise UserError(f"--index {index}: {path} holds {len(arr)} motion(s) (0 to {len(arr) - 1})")
                chosen = [(arr[index], f"{Path(path).stem}[{index % len(arr)}]")]
            elif len(arr) == 1 or getattr(args, "many", False):
                chosen = [(m, Path(path).stem if len(arr) == 1 else f"{Path(path).stem}[{i}]") for i, m in enumerate(arr)]
            else:
                raise UserError(f"--index: {path} holds {len(arr)} motions {arr.shape}; pick one with --index I")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise UserError(f"{path}: holds {int(arr.size - np.isfinite(arr).sum())} NaN/Inf value(s)")
            for motion, caption in chosen:
                motions.append(np.asarray(motion, dtype=np.float32))
                captions.append(caption)
        return motions, captions
    if args.data is None or not ids:
        raise UserError("--data/--id: name a motion with --data DIR --id ID, or give --features FILE.npy")
    for motion_id in ids:
        features, texts = read_motion(args.data, motion_id)
        motions.append(features)
        captions.append(texts[0] if texts else motion_id)
    return motions, captions


def _captions(args: argparse.Namespace, defaults: list[str]) -> list[str]:
    if args.caption is None:
        return defaults
    if len(args.caption) != len(defaults):
        raise UserError(f"--caption: {len(args.caption)} given for {len(defaults)} motion(s)")
    return list(args.caption)


def _infer_skeleton(motion: np.ndarray) -> str:
    width = motion.shape[1]  # feature width (T, D) or joint count (T, J, 3)
    if width not in SKELETON_BY_WIDTH:
        raise UserError(f"--skeleton: cannot infer the skeleton from shape {motion.shape} (263/251 features or 22/21 joints)")
    return SKELETON_BY_WIDTH[width]


def cmd_bvh(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".bvh":
        raise UserError(f"--out {args.out}: must end in .bvh")
    if args.scale <= 0:
        raise UserError(f"--scale: must be positive (got {args.scale})")
    motions, _ = load_motions(args)
    skeleton = args.skeleton or _infer_skeleton(motions[0])
    motion = write_bvh(motions[0], args.out, skeleton=skeleton, fps=args.fps, source=args.source, scale=args.scale)
    print(f"wrote {args.out} ({motion.num_frames} frames, {len(motion.joints)} joints, {skeleton}; "
          f"largest joint position error {motion.fit_error:.2g})")
    return 0


def cmd_gif(args: argparse.Namespace) -> int:
    motions, captions = load_motions(args)
    write_gif(motions, _captions(args, captions), args.out, fps=args.fps, follow=args.follow,
              trace=not args.no_trace, title=args.title)
    print(f"wrote {args.out}")
    return 0


def cmd_html(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {args.out}: must end in .html")
    motions, captions = load_motions(args)
    write_motion_html(motions, _captions(args, captions), args.out, title=args.title, fps=args.fps,
                      follow=args.follow, trace=not args.no_trace)
    print(f"wrote {args.out}")
    return 0
