"""Joint positions <-> the HumanML3D feature vector (263-d for t2m, 251-d for KIT).

The per-frame layout (Guo et al., CVPR 2022, Sec. 3.2 "Pose representation"; HumanML3D's
``motion_representation.ipynb``), for J joints, D = 12 J - 1:

====================  =======================  =============================================================
block                 t2m dims (KIT dims)      content
====================  =======================  =============================================================
``root_rot_vel``      0 (0)                    root angular velocity about +Y, stored as arcsin of the
                                               y-component of the frame-to-frame root quaternion, i.e. the
                                               HALF angle Δθ/2 (radians per frame)
``root_lin_vel``      1:3 (1:3)                root XZ displacement to the next frame, in the next frame's
                                               root-facing frame
``root_y``            3 (3)                    root height
``ric``               4:67 (4:64)              (J-1)×3 positions of joints 1.. relative to the root's XZ,
                                               rotated into the root-facing frame ("rotation-invariant
                                               coordinates")
``rot6d``             67:193 (64:184)          (J-1)×6 continuous 6-D local rotations of joints 1..
                                               (first two columns of the matrix; HumanML3D IK with the
                                               facing direction smoothed over time)
``local_vel``         193:259 (184:247)        J×3 joint displacements to the next frame, in the current
                                               frame's root-facing frame
``foot_contact``      259:263 (247:251)        left (ankle, toe), right (ankle, toe): 1 where the squared
                                               displacement to the next frame is below the threshold
====================  =======================  =============================================================

A sequence of T frames of joints gives T-1 feature frames (velocities look one frame ahead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .quaternion import cont6d_to_quat, is_torch, qbetween, qinv, qmul, qrot, quat_about_y, quat_to_cont6d, stack
from .skeleton import Skeleton, facing_direction, forward_kinematics, get_skeleton, inverse_kinematics

Array = Any  # np.ndarray | torch.Tensor

__all__ = [
    "feature_layout",
    "joints_num_for_dim",
    "ProcessedMotion",
    "process_joints",
    "joints_to_features",
    "uniform_skeleton",
    "recover_root_rot_pos",
    "recover_from_ric",
    "recover_from_rot",
]


# --------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------
def feature_layout(joints_num: int) -> dict[str, slice]:
    """Named slices of the feature vector for ``joints_num`` joints (22 -> 263 dims, 21 -> 251)."""
    if joints_num < 2:
        raise UserError(f"joints_num: need at least 2 joints, got {joints_num}")
    sizes = [
        ("root_rot_vel", 1),
        ("root_lin_vel", 2),
        ("root_y", 1),
        ("ric", 3 * (joints_num - 1)),
        ("rot6d", 6 * (joints_num - 1)),
        ("local_vel", 3 * joints_num),
        ("foot_contact", 4),
    ]
    out: dict[str, slice] = {}
    start = 0
    for name, size in sizes:
        out[name] = slice(start, start + size)
        start += size
    return out


def joints_num_for_dim(dim: int) -> int:
    """Number of joints J whose feature vector has ``dim = 12 J - 1`` entries (263 -> 22, 251 -> 21)."""
    if (dim + 1) % 12 != 0 or dim < 23:
        raise UserError(f"features: last dimension {dim} is not a HumanML3D feature size (12*J - 1, e.g. 263 or 251)")
    return (dim + 1) // 12


# --------------------------------------------------------------------------------------------------
# joints -> features
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessedMotion:
    """The result of :func:`process_joints`.

    Attributes:
        features: (T-1, D) float32 HumanML3D features.
        positions: (T, J, 3) float64 processed global positions (retargeted, on the floor, first root at the
            XZ origin, first frame facing +Z): what :func:`recover_from_ric` reconstructs from ``features``
            (frames ``0..T-2``).
        local_quats: (T, J, 4) IK quaternions behind the 6-D block (smoothed facing; root = global facing).
    """

    features: np.ndarray
    positions: np.ndarray
    local_quats: np.ndarray


def uniform_skeleton(joints: np.ndarray, skeleton: Skeleton | str) -> np.ndarray:
    """Retarget ``joints`` (T, J, 3) onto the skeleton's target bone lengths (HumanML3D ``uniform_skeleton``).

    The source bone lengths are read on frame 0; the root trajectory is scaled by the leg-length ratio
    ``(L[l1] + L[l2])_target / (L[l1] + L[l2])_source`` (t2m: thigh 5 + shin 8; KIT: 17 + 18); the pose is
    carried over by IK (unsmoothed facing) followed by FK with the target offsets.
    """
    skel = get_skeleton(skeleton)
    joints = np.asarray(joints, dtype=np.float64)
    parents = np.array(skel.parents[1:])
    src_len = np.linalg.norm(joints[0, 1:] - joints[0, parents], axis=-1)
    src_len = np.concatenate([[0.0], src_len])
    tgt_len = skel.bone_lengths
    l1, l2 = skel.leg_joints
    src_leg = src_len[l1] + src_len[l2]
    if src_leg <= 0:
        raise UserError("joints: the legs of the first frame have zero length; cannot retarget")
    scale = (tgt_len[l1] + tgt_len[l2]) / src_leg
    quats = inverse_kinematics(joints, skel, smooth_forward=False)
    return forward_kinematics(quats, joints[:, 0] * scale, skel)


def _foot_contacts(positions: np.ndarray, feet: tuple[int, int], threshold: float) -> np.ndarray:
    """(T-1, 2) 1.0 where ``|p[t+1] - p[t]|² < threshold`` for each of the two foot joints."""
    disp = positions[1:, list(feet)] - positions[:-1, list(feet)]
    return ((disp**2).sum(-1) < threshold).astype(np.float32)


def process_joints(joints: np.ndarray, skeleton: Skeleton | str = "t2m", feet_threshold: float = 0.002) -> ProcessedMotion:
    """HumanML3D's ``process_file``: any (T, J, 3) joint sequence -> features and processed positions.

    Steps: retarget (:func:`uniform_skeleton`); put on the floor (subtract the lowest joint height over
    the clip); move frame 0's root to the XZ origin; rotate about Y so that frame 0 faces +Z (facing from
    hips and shoulders, unsmoothed); foot contacts; IK with the facing smoothed over time (sigma 20 frames);
    root rotation r_t = that IK's root quaternion; then the blocks of :func:`feature_layout`.

    ``feet_threshold`` is in squared units of the positions per frame (HumanML3D: 0.002 m² for t2m).
    KIT-ML positions are in millimetres, so a KIT caller must scale it (0.002 m² is 2000 mm²); the
    default is left at the t2m value.

    One deliberate difference from HumanML3D: the frame-to-frame root quaternion is taken with w >= 0
    before ``arcsin(y)``, so the stored angular velocity keeps its sign when the facing crosses ±180°
    (HumanML3D's flips there); everywhere else the two are identical.
    """
    skel = get_skeleton(skeleton)
    if is_torch(joints):
        joints = joints.detach().cpu().numpy()
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (skel.num_joints, 3):
        raise UserError(f"joints: expected shape (T, {skel.num_joints}, 3) for {skel.name}, got {joints.shape}")
    if joints.shape[0] < 2:
        raise UserError(f"joints: need at least 2 frames, got {joints.shape[0]}")
    if not np.all(np.isfinite(joints)):
        raise UserError("joints: contains NaN or infinite values")

    pos = uniform_skeleton(joints, skel)
    pos[..., 1] -= pos[..., 1].min()  # on the floor
    pos = pos - pos[0, 0] * np.array([1.0, 0.0, 1.0])  # frame 0's root at the XZ origin
    face_q = qbetween(facing_direction(pos[0], skel), np.array([0.0, 0.0, 1.0]))
    pos = qrot(np.broadcast_to(face_q, pos.shape[:-1] + (4,)), pos)  # frame 0 faces +Z
    global_pos = pos.copy()

    feet_l = _foot_contacts(global_pos, skel.foot_left, feet_threshold)
    feet_r = _foot_contacts(global_pos, skel.foot_right, feet_threshold)

    quats = inverse_kinematics(global_pos, skel, smooth_forward=True)
    cont6d = quat_to_cont6d(quats)
    r_rot = quats[:, 0]
    velocity = qrot(r_rot[1:], global_pos[1:, 0] - global_pos[:-1, 0])
    r_velocity = qmul(r_rot[1:], qinv(r_rot[:-1]))
    # q and -q are the same rotation; HumanML3D takes arcsin(y) as is, which flips the sign of the stored
    # velocity whenever the facing crosses ±180° (w < 0). We take the w >= 0 representative, so the
    # stored half-angle is always right; where HumanML3D's is right (w >= 0) the two agree exactly.
    r_velocity = np.where(r_velocity[:, :1] < 0, -r_velocity, r_velocity)

    ric = global_pos.copy()
    ric[..., 0] -= global_pos[:, 0:1, 0]
    ric[..., 2] -= global_pos[:, 0:1, 2]
    ric = qrot(np.broadcast_to(r_rot[:, None], ric.shape[:-1] + (4,)), ric)

    n = len(global_pos) - 1
    local_vel = qrot(np.broadcast_to(r_rot[:-1, None], (n, skel.num_joints, 4)), global_pos[1:] - global_pos[:-1])
    features = np.concatenate(
        [
            np.arcsin(np.clip(r_velocity[:, 2:3], -1.0, 1.0)),
            velocity[:, [0, 2]],
            ric[:-1, 0, 1:2],
            ric[:-1, 1:].reshape(n, -1),
            cont6d[:-1, 1:].reshape(n, -1),
            local_vel.reshape(n, -1),
            feet_l,
            feet_r,
        ],
        axis=-1,
    ).astype(np.float32)
    assert features.shape[-1] == skel.feature_dim
    return ProcessedMotion(features=features, positions=global_pos, local_quats=quats)


def joints_to_features(joints: np.ndarray, skeleton: Skeleton | str = "t2m", feet_threshold: float = 0.002) -> np.ndarray:
    """(T, J, 3) joint positions -> (T-1, D) float32 HumanML3D features (see :func:`process_joints`)."""
    return process_joints(joints, skeleton, feet_threshold).features


# --------------------------------------------------------------------------------------------------
# features -> joints
# --------------------------------------------------------------------------------------------------
def _cumsum(x: Array, axis: int) -> Array:
    return torch.cumsum(x, dim=axis) if is_torch(x) else np.cumsum(x, axis=axis)


def _cat(parts: list[Array], axis: int) -> Array:
    return torch.cat(parts, dim=axis) if is_torch(parts[0]) else np.concatenate(parts, axis=axis)


def recover_root_rot_pos(features: Array) -> tuple[Array, Array]:
    """Root rotation and position from the first four feature dims (HumanML3D ``recover_root_rot_pos``).

    The root's facing angle is integrated from the stored half-angle velocities: ``a_0 = 0``,
    ``a_t = sum_{k<t} f[k, 0]``, and the root-facing quaternion is ``(cos a_t, 0, sin a_t, 0)`` (a rotation
    by ``2 a_t`` about +Y, mapping world to root frame). The root XZ position is the running sum of
    ``rotate(r_t⁻¹, (f[t-1, 1], 0, f[t-1, 2]))``, starting at the origin, and its height is ``f[t, 3]``.

    Args:
        features: (..., T, D) numpy array or torch tensor.

    Returns:
        ``(r_rot_quat (..., T, 4), r_pos (..., T, 3))``, same kind as the input; differentiable in torch.
    """
    rot_vel = features[..., 0]
    zero = rot_vel[..., :1] * 0.0
    angle = _cumsum(_cat([zero, rot_vel[..., :-1]], axis=-1), axis=-1)
    r_rot_quat = quat_about_y(2.0 * angle)
    zero_t = features[..., :1, 1] * 0.0
    vx = _cat([zero_t, features[..., :-1, 1]], axis=-1)
    vz = _cat([zero_t, features[..., :-1, 2]], axis=-1)
    step = qrot(qinv(r_rot_quat), stack([vx, vx * 0.0, vz], axis=-1))
    xz = _cumsum(step, axis=-2)
    r_pos = stack([xz[..., 0], features[..., 3], xz[..., 2]], axis=-1)
    return r_rot_quat, r_pos


def recover_from_ric(features: Array, joints_num: int | None = None) -> Array:
    """Joint positions (..., T, J, 3) from HumanML3D features (..., T, D) (HumanML3D ``recover_from_ric``).

    Uses only the root block and the rotation-invariant positions: joints 1.. are rotated out of the root
    frame by ``r_t⁻¹`` (:func:`recover_root_rot_pos`) and shifted by the root's XZ. Works for numpy arrays
    and torch tensors, batched over any leading axes, and is differentiable in torch (rewards
    backpropagate through it). ``joints_num`` defaults to the one implied by ``D``.
    """
    dim = features.shape[-1]
    if joints_num is None:
        joints_num = joints_num_for_dim(dim)
    elif dim < 4 + 3 * (joints_num - 1):
        raise UserError(f"features: last dimension {dim} is too small for {joints_num} joints")
    out_dtype = None
    if not is_torch(features):
        # numpy: integrate in float64 (a float32 running sum drifts), return the input's float dtype
        features = np.asarray(features)
        out_dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64
        features = features.astype(np.float64)
    r_rot_quat, r_pos = recover_root_rot_pos(features)
    ric = features[..., 4 : 4 + 3 * (joints_num - 1)]
    ric = ric.reshape(tuple(ric.shape[:-1]) + (joints_num - 1, 3))
    inv = qinv(r_rot_quat)[..., None, :]
    if is_torch(inv):
        inv = inv.expand(tuple(ric.shape[:-1]) + (4,))
    else:
        inv = np.broadcast_to(inv, ric.shape[:-1] + (4,))
    world = qrot(inv, ric)
    offset = stack([r_pos[..., 0], r_pos[..., 0] * 0.0, r_pos[..., 2]], axis=-1)[..., None, :]
    joints = _cat([r_pos[..., None, :], world + offset], axis=-2)
    return joints if out_dtype is None else joints.astype(out_dtype)


def recover_from_rot(features: Array, skeleton: Skeleton | str = "t2m") -> Array:
    """Joint positions (..., T, J, 3) from the root block and the 6-D rotations (HumanML3D ``recover_from_rot``).

    The root rotation is :func:`recover_root_rot_pos`'s facing quaternion, the other joints' local rotations
    are the ``rot6d`` block, and :func:`~easytune_lab.motion.skeleton.forward_kinematics` places the bones
    with the skeleton's target offsets. For features of skeleton-consistent motion this agrees with
    :func:`recover_from_ric` (the two encode the same pose twice).
    """
    skel = get_skeleton(skeleton)
    layout = feature_layout(skel.num_joints)
    if features.shape[-1] != skel.feature_dim:
        raise UserError(f"features: last dimension {features.shape[-1]} does not match {skel.name} ({skel.feature_dim})")
    r_rot_quat, r_pos = recover_root_rot_pos(features)
    d6 = features[..., layout["rot6d"]]
    d6 = d6.reshape(tuple(d6.shape[:-1]) + (skel.num_joints - 1, 6))
    quats = _cat([r_rot_quat[..., None, :], cont6d_to_quat(d6)], axis=-2)
    return forward_kinematics(quats, r_pos, skel)


# Flattened joint positions (J * 3) for t2m / KIT, accepted by :func:`to_joints` next to features and joints.
JOINTS_BY_DIM = {66: 22, 63: 21}


def to_joints(motion: Any) -> np.ndarray:
    """Joint positions ``(T, J, 3)`` (float64 NumPy) of a motion given as features ``(T, D)``, flat joints
    ``(T, J*3)`` or joints ``(T, J, 3)``, as a NumPy array or a torch tensor.

    Features of width 263 (HumanML3D, 22 joints) or 251 (KIT-ML, 21 joints) are decoded with
    :func:`recover_from_ric` (rotation-invariant coordinates + root integration).
    """
    arr = _float64(motion)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        joints = arr
    elif arr.ndim == 2 and arr.shape[1] in JOINTS_BY_DIM:
        joints = arr.reshape(arr.shape[0], JOINTS_BY_DIM[arr.shape[1]], 3)
    elif arr.ndim == 2:
        num_joints = joints_num_for_dim(arr.shape[1])  # UserError unless 12 J - 1 (263 HumanML3D, 251 KIT)
        joints = _float64(recover_from_ric(arr.astype(np.float32), num_joints))
    else:
        raise UserError(f"motion: expected features (T, D) or joints (T, J, 3), got shape {tuple(arr.shape)}")
    if joints.shape[0] == 0:
        raise UserError("motion: has no frames")
    if not np.all(np.isfinite(joints)):
        raise UserError("motion: joint positions contain NaN or Inf")
    return joints


def _float64(motion: Any) -> np.ndarray:
    if hasattr(motion, "detach"):  # torch tensor
        motion = motion.detach().cpu().numpy()
    return np.asarray(motion, dtype=np.float64)
