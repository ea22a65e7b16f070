"""BVH (Biovision Hierarchy) export and import of HumanML3D/KIT skeleton motions.

Writing. Joint positions ``(T, J, 3)`` (given, or recovered from 263/251-d features with ``recover_from_ric``,
or from the features' 6-D joint rotations by forward kinematics) are turned into a BVH hierarchy by
inverse kinematics that reproduces the positions exactly for a rigid skeleton:

* the hierarchy follows the skeleton's kinematic chains (``Skeleton.chains``); every joint that has children is
  a BVH ``JOINT`` whose rotation turns the offsets of its children (BVH convention), leaves get an ``End Site``;
* rest offsets: a bone leaving a joint with one child points along the skeleton's raw offset direction
  (the T2M T-pose) with the bone's median length over the motion; bones leaving a branching joint (pelvis,
  upper spine) keep the geometry they have in the first frame, turned into the T-pose orientation, so that one
  rotation can place all of them;
* per frame, a branching joint's global rotation is the least-squares (Kabsch) rotation taking its rest child
  offsets onto the current bones; a single-child joint's is the smallest rotation taking the bone, as carried by
  the parent's rotation, onto the current bone (no spurious twist). Local rotation = parent^-1 * global.
* channels: the root has ``Xposition Yposition Zposition Zrotation Yrotation Xrotation``, other joints
  ``Zrotation Yrotation Xrotation``; angles in degrees; the rotation of a joint is Rz @ Ry @ Rx (channels applied
  in the order listed, the usual BVH reading). Offsets and positions are in the input's units (metres for
  HumanML3D) times ``scale`` (e.g. 100 for centimetres); Y is up as in HumanML3D.

Reading. :func:`read_bvh` parses any BVH file (any channel order, position channels on any joint, End Sites);
:func:`bvh_forward_kinematics` gives joint positions ``(T, J, 3)`` in file order:
``pos_j = pos_parent + G_parent @ (offset_j + translation_j)``, ``G_j = G_parent @ R_j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..io import write_text
from .features import feature_layout, joints_num_for_dim, recover_root_rot_pos, to_joints
from .quaternion import cont6d_to_quat
from .skeleton import forward_kinematics, get_skeleton

ROOT_CHANNELS = ("Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation")
JOINT_CHANNELS = ("Zrotation", "Yrotation", "Xrotation")
_AXIS = {"X": 0, "Y": 1, "Z": 2}


@dataclass
class BvhJoint:
    """One joint of a BVH hierarchy."""

    name: str
    parent: int  # index into the joint list, -1 for the root
    offset: np.ndarray  # (3,)
    channels: list[str]
    end_site: np.ndarray | None = None  # offset of the End Site, if the joint has one


@dataclass
class BvhMotion:
    """A parsed (or to-be-written) BVH file: the hierarchy in file order and the motion channel values."""

    joints: list[BvhJoint]
    frame_time: float
    values: np.ndarray  # (T, total channels), in the order the channels appear in the hierarchy
    channel_index: list[slice] = field(default_factory=list)  # per joint, its columns in ``values``
    # Largest |FK(BVH) - input joints| when built from joint positions (0 for a rigid skeleton up to rounding;
    # bones that stretch, or pelvis/chest bones that move relative to each other, cannot be reproduced).
    fit_error: float | None = None

    def __post_init__(self) -> None:
        if not self.channel_index:
            start = 0
            for joint in self.joints:
                self.channel_index.append(slice(start, start + len(joint.channels)))
                start += len(joint.channels)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])


# --------------------------------------------------------------------------------------------------------------
# Rotations (numpy, batched over frames)
# --------------------------------------------------------------------------------------------------------------

def _min_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation matrices taking directions ``a`` onto ``b`` (both (..., 3)); Rodrigues' formula."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    v = np.cross(a, b)
    c = np.sum(a * b, axis=-1)
    out = np.empty(a.shape[:-1] + (3, 3))
    eye = np.eye(3)
    normal = c > -1 + 1e-9
    vx = np.zeros(v.shape + (3,))
    vx[..., 0, 1], vx[..., 0, 2] = -v[..., 2], v[..., 1]
    vx[..., 1, 0], vx[..., 1, 2] = v[..., 2], -v[..., 0]
    vx[..., 2, 0], vx[..., 2, 1] = -v[..., 1], v[..., 0]
    k = np.where(normal, 1.0 / np.where(normal, 1 + c, 1.0), 0.0)[..., None, None]
    out[...] = eye + vx + vx @ vx * k
    if not np.all(normal):  # opposite directions: half turn about any axis perpendicular to a
        aa = a[~normal]
        helper = np.where(np.abs(aa[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
        axis = np.cross(aa, helper)
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        out[~normal] = 2 * axis[:, :, None] * axis[:, None, :] - eye
    return out


def _kabsch(rest: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotations ``R`` (T, 3, 3) minimising sum_c |R rest_c - current_c|^2; rest (C, 3), current (T, C, 3)."""
    h = np.einsum("ci,tcj->tij", rest, current)  # sum_c rest_c current_c^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    fix = np.ones(u.shape[:-1])
    fix[:, -1] = np.where(d == 0, 1.0, d)
    return np.swapaxes(vt, -1, -2) @ (fix[..., None] * np.swapaxes(u, -1, -2))


def _channel_rotation(channels: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Rotation matrices (T, 3, 3) of a joint's rotation channels, applied in the listed order (degrees)."""
    rot = np.broadcast_to(np.eye(3), (values.shape[0], 3, 3)).copy()
    for k, name in enumerate(channels):
        if not name.endswith("rotation"):
            continue
        theta = np.deg2rad(values[:, k])
        c, s = np.cos(theta), np.sin(theta)
        m = np.zeros((values.shape[0], 3, 3))
        i = _AXIS[name[0].upper()]
        j, l = (i + 1) % 3, (i + 2) % 3
        m[:, i, i] = 1.0
        m[:, j, j], m[:, j, l], m[:, l, j], m[:, l, l] = c, -s, s, c
        rot = rot @ m
    return rot


# --------------------------------------------------------------------------------------------------------------
# Hierarchy from a skeleton
# --------------------------------------------------------------------------------------------------------------

def parents_from_chains(chains: Sequence[Sequence[int]], num_joints: int) -> np.ndarray:
    """Parent index of every joint (-1 for the root) from kinematic chains that start at an already-seen joint."""
    parents = np.full(num_joints, -2, dtype=int)
    parents[chains[0][0]] = -1
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:]):
            parents[b] = a
    if np.any(parents == -2):
        raise UserError(f"skeleton: joints {np.flatnonzero(parents == -2).tolist()} are on no chain")
    return parents


def _depth_first(parents: np.ndarray) -> list[int]:
    order: list[int] = []
    stack = [int(np.flatnonzero(parents == -1)[0])]
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(sorted(np.flatnonzero(parents == j).tolist(), reverse=True))
    return order


def _rest_offsets(joints: np.ndarray, parents: np.ndarray, raw_offsets: np.ndarray) -> np.ndarray:
    """Rest-pose offsets (J, 3): T-pose directions for single-child bones, frame-0 geometry at branching joints."""
    num = len(parents)
    bones = joints - joints[:, np.maximum(parents, 0)]
    lengths = np.median(np.linalg.norm(bones, axis=-1), axis=0)
    rest = np.zeros((num, 3))
    for p in range(num):
        children = np.flatnonzero(parents == p)
        if len(children) == 0:
            continue
        raw = np.asarray(raw_offsets, dtype=np.float64)[children]
        raw = raw / np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)
        canonical = raw * lengths[children, None]
        if len(children) == 1:
            rest[children[0]] = canonical[0]
            continue
        first = bones[0, children]
        first = first / np.maximum(np.linalg.norm(first, axis=-1, keepdims=True), 1e-12) * lengths[children, None]
        turn = _kabsch(canonical, first[None])[0]  # canonical -> frame 0
        rest[children] = first @ turn  # turn^T applied to each row: frame-0 geometry in T-pose orientation
    return rest


def global_rotations(joints: np.ndarray, parents: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Global rotation (T, J, 3, 3) of every joint such that ``pos_c = pos_p + G_p rest_c`` for every bone p->c."""
    num_frames, num = joints.shape[:2]
    glob = np.broadcast_to(np.eye(3), (num_frames, num, 3, 3)).copy()
    bones = joints - joints[:, np.maximum(parents, 0)]
    for p in _depth_first(parents):
        children = np.flatnonzero(parents == p)
        parent_rot = glob[:, parents[p]] if parents[p] >= 0 else np.broadcast_to(np.eye(3), (num_frames, 3, 3))
        if len(children) == 0:
            glob[:, p] = parent_rot
        elif len(children) == 1 and parents[p] >= 0:
            c = children[0]
            carried = parent_rot @ rest[c]
            glob[:, p] = _min_rotation(carried, bones[:, c]) @ parent_rot
        elif len(children) == 1:  # a root with one child: minimal rotation from the rest offset
            c = children[0]
            glob[:, p] = _min_rotation(np.broadcast_to(rest[c], (num_frames, 3)), bones[:, c])
        else:
            glob[:, p] = _kabsch(rest[children], bones[:, children])
    return glob


def joints_to_bvh(
    joints: np.ndarray,
    chains: Sequence[Sequence[int]],
    raw_offsets: np.ndarray,
    joint_names: Sequence[str] | None = None,
    fps: float = 20,
    scale: float = 1.0,
) -> BvhMotion:
    """Build a :class:`BvhMotion` (hierarchy + ZYX Euler channels) reproducing ``joints`` (T, J, 3)."""
    from scipy.spatial.transform import Rotation  # heavy import, needed only when a BVH file is written

    joints = np.asarray(joints, dtype=np.float64) * scale
    num = joints.shape[1]
    parents = parents_from_chains(chains, num)
    names = list(joint_names) if joint_names is not None else [f"joint{j}" for j in range(num)]
    names = [n.replace(" ", "_") for n in names]
    rest = _rest_offsets(joints, parents, raw_offsets)
    glob = global_rotations(joints, parents, rest)
    local = glob.copy()
    has_parent = parents >= 0
    local[:, has_parent] = np.swapaxes(glob[:, parents[has_parent]], -1, -2) @ glob[:, has_parent]

    order = _depth_first(parents)
    index = {j: k for k, j in enumerate(order)}
    bvh_joints = []
    columns = []
    for j in order:
        is_root = parents[j] < 0
        channels = list(ROOT_CHANNELS if is_root else JOINT_CHANNELS)
        end_site = None
        if not np.any(parents == j):  # a leaf: an End Site continuing its bone a little
            end_site = rest[j] * 0.25 if np.linalg.norm(rest[j]) > 0 else np.array([0.0, 0.05 * scale, 0.0])
        bvh_joints.append(BvhJoint(names[j], -1 if is_root else index[int(parents[j])],
                                   np.zeros(3) if is_root else rest[j], channels, end_site))
        euler = Rotation.from_matrix(local[:, j]).as_euler("ZYX", degrees=True)  # intrinsic: Rz @ Ry @ Rx
        if is_root:
            columns.append(joints[:, j])
        columns.append(euler)
    values = np.concatenate(columns, axis=1)
    motion = BvhMotion(bvh_joints, 1.0 / fps, values)
    fitted = bvh_forward_kinematics(motion)[:, [index[j] for j in range(num)]]
    motion.fit_error = float(np.abs(fitted - joints).max())
    return motion


# --------------------------------------------------------------------------------------------------------------
# Text format
# --------------------------------------------------------------------------------------------------------------

def _fmt(values: Sequence[float]) -> str:
    return " ".join(f"{v:.6f}" for v in values)


def bvh_text(motion: BvhMotion) -> str:
    """The BVH file contents of a :class:`BvhMotion`."""
    lines = ["HIERARCHY"]
    children: dict[int, list[int]] = {}
    for k, joint in enumerate(motion.joints):
        children.setdefault(joint.parent, []).append(k)

    def emit(k: int, depth: int) -> None:
        joint = motion.joints[k]
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if joint.parent < 0 else 'JOINT'} {joint.name}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {_fmt(joint.offset)}")
        lines.append(f"{pad}  CHANNELS {len(joint.channels)} {' '.join(joint.channels)}")
        for c in children.get(k, []):
            emit(c, depth + 1)
        if joint.end_site is not None:
            lines.append(f"{pad}  End Site")
            lines.append(f"{pad}  {{")
            lines.append(f"{pad}    OFFSET {_fmt(joint.end_site)}")
            lines.append(f"{pad}  }}")
        lines.append(f"{pad}}}")

    for root in children.get(-1, []):
        emit(root, 0)
    lines.append("MOTION")
    lines.append(f"Frames: {motion.num_frames}")
    lines.append(f"Frame Time: {motion.frame_time:.6f}")
    lines.extend(_fmt(row) for row in motion.values)
    return "\n".join(lines) + "\n"


def read_bvh(path: str | Path) -> BvhMotion:
    """Parse a BVH file (hierarchy, channels, End Sites, motion values)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    head, sep, body = text.partition("MOTION")
    if not sep or "HIERARCHY" not in head:
        raise UserError(f"{path}: not a BVH file (needs HIERARCHY and MOTION sections)")
    tokens = head.split("HIERARCHY", 1)[1].split()
    joints: list[BvhJoint] = []
    stack: list[int] = []  # open joints; -2 marks an open End Site
    pos = 0

    def take(n: int) -> list[str]:
        nonlocal pos
        if pos + n > len(tokens):
            raise UserError(f"{path}: hierarchy ends unexpectedly")
        out = tokens[pos:pos + n]
        pos += n
        return out

    pending_end = False
    while pos < len(tokens):
        tok = take(1)[0]
        if tok in ("ROOT", "JOINT"):
            name = take(1)[0]
            parent = next((s for s in reversed(stack) if s >= 0), -1) if stack else -1
            joints.append(BvhJoint(name, parent, np.zeros(3), []))
            pending_end = False
        elif tok == "End":
            take(1)  # "Site"
            pending_end = True
        elif tok == "{":
            stack.append(-2 if pending_end else len(joints) - 1)
            pending_end = False
        elif tok == "}":
            if not stack:
                raise UserError(f"{path}: unbalanced braces in the hierarchy")
            stack.pop()
        elif tok == "OFFSET":
            try:
                off = np.array([float(v) for v in take(3)])
            except ValueError as exc:
                raise UserError(f"{path}: bad OFFSET ({exc})") from exc
            if stack and stack[-1] == -2:
                owner = next((s for s in reversed(stack) if s >= 0), None)
                if owner is not None:
                    joints[owner].end_site = off
            else:
                joints[-1].offset = off
        elif tok == "CHANNELS":
            n = int(take(1)[0])
            joints[-1].channels = take(n)
        else:
            raise UserError(f"{path}: unexpected token {tok!r} in the hierarchy")
    if not joints:
        raise UserError(f"{path}: no joints in the hierarchy")

    lines = body.strip().splitlines()
    header: dict[str, str] = {}
    k = 0
    while k < len(lines) and ":" in lines[k]:
        key, _, val = lines[k].partition(":")
        header[key.strip().lower()] = val.strip()
        k += 1
    try:
        num_frames = int(header["frames"])
        frame_time = float(header["frame time"])
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: MOTION section needs 'Frames:' and 'Frame Time:'") from exc
    width = sum(len(j.channels) for j in joints)
    rows = [line.split() for line in lines[k:] if line.strip()]
    if len(rows) != num_frames or any(len(r) != width for r in rows):
        raise UserError(f"{path}: expected {num_frames} frames of {width} values, found {len(rows)} rows")
    values = np.array(rows, dtype=np.float64).reshape(num_frames, width)
    return BvhMotion(joints, frame_time, values)


def bvh_forward_kinematics(motion: BvhMotion, include_end_sites: bool = False) -> np.ndarray:
    """World positions (T, J, 3) of the joints in file order (then the End Sites, if asked)."""
    num_frames = motion.num_frames
    glob: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for k, joint in enumerate(motion.joints):
        vals = motion.values[:, motion.channel_index[k]]
        shift = np.zeros((num_frames, 3))
        for c, name in enumerate(joint.channels):
            if name.endswith("position"):
                shift[:, _AXIS[name[0].upper()]] = vals[:, c]
        local = _channel_rotation(joint.channels, vals)
        offset = joint.offset[None] + shift
        if joint.parent < 0:
            glob.append(local)
            positions.append(offset)
        else:
            g = glob[joint.parent]
            positions.append(positions[joint.parent] + np.einsum("tij,tj->ti", g, offset))
            glob.append(g @ local)
    if include_end_sites:
        for k, joint in enumerate(motion.joints):
            if joint.end_site is not None:
                positions.append(positions[k] + glob[k] @ joint.end_site)
    return np.stack(positions, axis=1)


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------

def motion_joints(features_or_joints: Any, skeleton: str = "t2m", source: str = "positions") -> np.ndarray:
    """Joint positions (T, J, 3) of features (via ``recover_from_ric`` or the 6-D rotations) or of joints."""
    arr = features_or_joints
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float64)
    if source not in ("positions", "rot6d"):
        raise UserError(f"--source: must be 'positions' or 'rot6d' (got {source!r})")
    if arr.ndim == 3:
        if source == "rot6d":
            raise UserError("--source rot6d: needs features (T, D), not joint positions")
        return arr
    if arr.ndim != 2:
        raise UserError(f"motion: expected features (T, D) or joints (T, J, 3), got shape {arr.shape}")
    if source == "rot6d":
        return rot6d_joints(arr, skeleton)

    return to_joints(arr)


def rot6d_joints(features: np.ndarray, skeleton: str = "t2m") -> np.ndarray:
    """Positions from the features' own rotations: FK of the 6-D joint rotations (T2M layout) on the skeleton.

    The root's rotation and position come from ``recover_root_rot_pos`` (as in HumanML3D's
    ``recover_from_rot``); joint j's 6-D rotation (``feature_layout['rot6d']``, joints 1..J-1) is the local
    rotation of the bone ending at j, as in HumanML3D's forward kinematics.
    """
    skel = get_skeleton(skeleton)
    num = joints_num_for_dim(features.shape[1])
    if num != skel.num_joints:
        raise UserError(f"--skeleton {skeleton}: features of width {features.shape[1]} are for {num} joints")
    feats = features.astype(np.float64)
    root_quat, root = (np.asarray(a) for a in recover_root_rot_pos(feats))
    d6 = feats[:, feature_layout(num)["rot6d"]].reshape(len(feats), num - 1, 6)
    quats = np.concatenate([root_quat[:, None], np.asarray(cont6d_to_quat(d6))], axis=1)
    return np.asarray(forward_kinematics(quats, root, skel), dtype=np.float64)


def write_bvh(
    features_or_joints: Any,
    out_path: str | Path,
    skeleton: str = "t2m",
    fps: float = 20,
    source: str = "positions",
    scale: float = 1.0,
) -> BvhMotion:
    """Write a motion (features ``(T, 263|251)`` or joints ``(T, J, 3)``) as a BVH file, atomically.

    ``source='positions'`` (default) uses the joint positions (``recover_from_ric`` for features);
    ``source='rot6d'`` uses the features' 6-D joint rotations through forward kinematics. Either way the BVH
    rotations are solved by inverse kinematics (module docstring), so reading the file back and running
    :func:`bvh_forward_kinematics` returns the positions (exactly, up to printing, for a rigid skeleton).
    Returns the :class:`BvhMotion` written.
    """
    if fps <= 0:
        raise UserError(f"--fps: must be positive (got {fps})")
    if skeleton not in ("t2m", "kit"):
        raise UserError(f"--skeleton: must be 't2m' or 'kit' (got {skeleton!r})")
    skel = get_skeleton(skeleton)
    joints = motion_joints(features_or_joints, skeleton, source)
    if joints.shape[1] != skel.num_joints:
        raise UserError(f"--skeleton {skeleton}: expects {skel.num_joints} joints, the motion has {joints.shape[1]}")
    if not np.all(np.isfinite(joints)):
        raise UserError("motion: joint positions contain NaN or Inf")
    names = list(getattr(skel, "joint_names", None) or [f"joint{j}" for j in range(skel.num_joints)])
    motion = joints_to_bvh(joints, skel.chains, np.asarray(skel.raw_offsets), names, fps=fps, scale=scale)
    write_text(out_path, bvh_text(motion))
    return motion
