"""The two HumanML3D skeletons (t2m: 22 SMPL joints, KIT-ML: 21 MMM joints), forward and inverse kinematics.

Facts follow HumanML3D's ``paramUtil.py`` and ``common/skeleton.py`` (Guo et al., CVPR 2022):
kinematic chains, unit "raw offset" directions of every bone in the rest pose, face joints and foot joints.

Rest pose
    With all-identity rotations a bone points along its raw offset: +Y is up, legs point down (-Y), the
    spine points up (+Y), the hips and collar bones point sideways (±X), the feet and the t2m head point
    forward (+Z) and, as in HumanML3D's raw offsets, shoulder→elbow→wrist point *down* (-Y): the rest
    pose has the arms hanging, not a T-pose. The t2m rest pose faces +Z (left hip at +X). KIT's raw
    offsets put the joints HumanML3D uses as the right hip/shoulder (11, 5) at +X, so by HumanML3D's own
    facing rule the KIT rest pose faces -Z; processing rotates every clip to face +Z anyway.

Rotation convention (HumanML3D's own, used by ``forward_kinematics_np`` / ``inverse_kinematics_np``)
    Quaternion 0 is the *global* root rotation. Each kinematic chain starts from the root rotation again
    (also the arm chains, which start at joint 9 but do *not* inherit the spine's rotations):
    ``R = q_root``; for every joint j after the chain's first, ``R = R * q_j`` and
    ``pos_j = pos_parent(j) + rotate(R, offset_j)``. So ``q_j`` rotates the bone that *ends* at joint j
    (the knee's quaternion turns the thigh hip→knee, the ankle's the shin knee→ankle). Every non-root
    joint is the non-first member of exactly one chain, so each quaternion is used exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .quaternion import is_torch, qbetween, qinv, qmul, qrot, stack

Array = Any  # np.ndarray | torch.Tensor

__all__ = ["Skeleton", "T2M", "KIT", "get_skeleton", "forward_kinematics", "inverse_kinematics", "facing_direction"]


@dataclass(frozen=True)
class Skeleton:
    """A HumanML3D skeleton. Arrays are read-only numpy float64.

    Attributes:
        name: ``"t2m"`` (HumanML3D, 22 SMPL joints) or ``"kit"`` (KIT-ML, 21 joints).
        num_joints: J.
        parents: parent index of each joint, root ``-1`` (derived from the chains).
        chains: the five kinematic chains, each starting at the root or at a joint of an earlier chain.
        raw_offsets: (J, 3) unit bone directions in the rest pose (``t2m_raw_offsets`` / ``kit_raw_offsets``).
        offsets: (J, 3) rest-pose bone vectors of the dataset's *target* skeleton (raw direction × length).
        face_joints: (right hip, left hip, right shoulder, left shoulder), HumanML3D's ``face_joint_indx``.
        foot_left, foot_right: (ankle, toe) joint pairs whose velocities give the foot contacts.
        leg_joints: HumanML3D's ``l_idx1, l_idx2``: the leg length used to retarget is
            ``max|offset[l_idx1]| + max|offset[l_idx2]|``.
        feature_dim: length of the per-frame feature vector (263 / 251).
        joint_names: one name per joint.
    """

    name: str
    num_joints: int
    parents: tuple[int, ...]
    chains: tuple[tuple[int, ...], ...]
    raw_offsets: np.ndarray
    offsets: np.ndarray
    face_joints: tuple[int, int, int, int]
    foot_left: tuple[int, int]
    foot_right: tuple[int, int]
    leg_joints: tuple[int, int]
    feature_dim: int
    joint_names: tuple[str, ...]

    @property
    def bone_lengths(self) -> np.ndarray:
        """(J,) length of the bone ending at each joint (0 for the root)."""
        return np.linalg.norm(self.offsets, axis=-1)

    def rest_pose(self) -> np.ndarray:
        """(J, 3) joint positions with identity rotations and the root at the origin."""
        quats = np.zeros((1, self.num_joints, 4))
        quats[..., 0] = 1.0
        return forward_kinematics(quats, np.zeros((1, 3)), self)[0]


def _parents_from_chains(chains: tuple[tuple[int, ...], ...], num_joints: int) -> tuple[int, ...]:
    parents = [-1] * num_joints
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:]):
            parents[b] = a
    return tuple(parents)


def _readonly(a: Any) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------------------------------
# t2m (HumanML3D): SMPL's first 22 joints
# --------------------------------------------------------------------------------------------------
T2M_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
T2M_CHAINS = ((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15), (9, 14, 17, 19, 21), (9, 13, 16, 18, 20))
T2M_RAW_OFFSETS = (
    (0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0),
    (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, -1, 0), (0, -1, 0),
    (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0),
)  # fmt: skip
# Bone lengths (metres) of the HumanML3D target skeleton, indexed by the joint each bone ends at.
# MEASURED on the real sample new_joints/012314.npy (already retargeted by HumanML3D): the Euclidean
# distance |p_j - p_parent(j)| averaged over its 170 frames; it is constant over frames to within 2e-6 m
# (float32 storage), i.e. the bone lengths HumanML3D copied from its reference motion 000021.
T2M_BONE_LENGTHS = (
    0.0,
    0.103074, 0.109883, 0.131568, 0.393623, 0.390188, 0.143190, 0.432433, 0.425643, 0.057365, 0.143382,
    0.149419, 0.219360, 0.137487, 0.143383, 0.103039, 0.131614, 0.122984, 0.256840, 0.263092, 0.266012,
    0.269876,
)  # fmt: skip

# --------------------------------------------------------------------------------------------------
# KIT-ML: 21 joints of the MMM model. HumanML3D treats joints 11-15 and 5-7 as the RIGHT leg/arm
# (face_joint_indx = [11, 16, 5, 8], fid_r = [14, 15]); the names below follow that usage.
# --------------------------------------------------------------------------------------------------
KIT_JOINT_NAMES = (
    "root", "pelvis", "torso", "lower_neck", "head", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "right_metatarsal",
    "right_toe", "left_hip", "left_knee", "left_ankle", "left_metatarsal", "left_toe",
)  # fmt: skip
KIT_CHAINS = ((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7), (3, 8, 9, 10))
KIT_RAW_OFFSETS = (
    (0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (-1, 0, 0),
    (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1), (-1, 0, 0), (0, -1, 0),
    (0, -1, 0), (0, 0, 1), (0, 0, 1),
)  # fmt: skip
# KIT-ML positions are in millimetres. HumanML3D takes its KIT target skeleton from one reference motion
# and publishes no numbers, so these lengths are OUR CHOICE: Winter's anthropometric segment ratios
# (Biomechanics and Motor Control of Human Movement, 4th ed., Fig. 4.1) times a body height H = 1750 mm:
# root→pelvis 0.05H, pelvis→torso 0.12H, torso→lower neck 0.12H, neck→head 0.10H, neck→shoulder 0.129H
# (half the biacromial width), upper arm 0.186H, forearm 0.146H, root→hip 0.0955H (half the hip width),
# thigh 0.245H, shank 0.246H, ankle→metatarsal 0.11H, metatarsal→toe 0.04H.
_H = 1750.0
_KIT_RATIOS = (
    0.0, 0.05, 0.12, 0.12, 0.10, 0.129, 0.186, 0.146, 0.129, 0.186, 0.146,
    0.0955, 0.245, 0.246, 0.11, 0.04, 0.0955, 0.245, 0.246, 0.11, 0.04,
)  # fmt: skip
KIT_BONE_LENGTHS = tuple(round(r * _H, 3) for r in _KIT_RATIOS)


def _make(name, names, chains, raw, lengths, face, foot_left, foot_right, leg, dim) -> Skeleton:
    raw_arr = np.array(raw, dtype=np.float64)
    return Skeleton(
        name=name,
        num_joints=len(names),
        parents=_parents_from_chains(chains, len(names)),
        chains=chains,
        raw_offsets=_readonly(raw_arr),
        offsets=_readonly(raw_arr * np.asarray(lengths, dtype=np.float64)[:, None]),
        face_joints=face,
        foot_left=foot_left,
        foot_right=foot_right,
        leg_joints=leg,
        feature_dim=dim,
        joint_names=names,
    )


T2M = _make("t2m", T2M_JOINT_NAMES, T2M_CHAINS, T2M_RAW_OFFSETS, T2M_BONE_LENGTHS, (2, 1, 17, 16), (7, 10), (8, 11), (5, 8), 263)
KIT = _make("kit", KIT_JOINT_NAMES, KIT_CHAINS, KIT_RAW_OFFSETS, KIT_BONE_LENGTHS, (11, 16, 5, 8), (19, 20), (14, 15), (17, 18), 251)

_SKELETONS = {"t2m": T2M, "humanml3d": T2M, "humanml": T2M, "kit": KIT, "kit-ml": KIT, "kitml": KIT}


def get_skeleton(name: str | Skeleton) -> Skeleton:
    """The skeleton called ``name`` (``"t2m"``/``"humanml3d"`` or ``"kit"``); a Skeleton passes through."""
    if isinstance(name, Skeleton):
        return name
    key = str(name).strip().lower()
    if key not in _SKELETONS:
        raise UserError(f"--skeleton: unknown skeleton {name!r} (expected 't2m' or 'kit')")
    return _SKELETONS[key]


# --------------------------------------------------------------------------------------------------
# forward kinematics
# --------------------------------------------------------------------------------------------------
def forward_kinematics(local_quats: Array, root_pos: Array, skeleton: Skeleton | str, offsets: Array | None = None) -> Array:
    """Joint positions from HumanML3D-convention local rotations (``Skeleton.forward_kinematics_np``).

    Args:
        local_quats: (..., T, J, 4) unit quaternions, wxyz. ``local_quats[..., 0, :]`` is the global root
            rotation; ``local_quats[..., j, :]`` rotates the bone that ends at joint j relative to the
            accumulated rotation of the earlier joints of its chain (see the module docstring: every
            chain restarts from the root rotation, ``R = q_root; R = R q_j; p_j = p_parent + R·offset_j``).
        root_pos: (..., T, 3) root positions.
        skeleton: a :class:`Skeleton` or its name.
        offsets: bone vectors to use instead of ``skeleton.offsets``: (J, 3) or broadcastable to
            (..., T, J, 3).

    Returns:
        (..., T, J, 3) joint positions, of the kind of ``local_quats`` (numpy array, or torch tensor
        on its device/dtype, differentiable w.r.t. the quaternions, root positions and offsets).
    """
    skel = get_skeleton(skeleton)
    if local_quats.shape[-2] != skel.num_joints or local_quats.shape[-1] != 4:
        raise UserError(f"local_quats: expected shape (..., {skel.num_joints}, 4) for {skel.name}, got {tuple(local_quats.shape)}")
    off = skel.offsets if offsets is None else offsets
    if is_torch(local_quats):
        off = off if is_torch(off) else np.array(off)  # a writable copy (the skeleton's arrays are read-only)
        off = torch.as_tensor(off, dtype=local_quats.dtype, device=local_quats.device)
        root_pos = torch.as_tensor(root_pos, dtype=local_quats.dtype, device=local_quats.device)
    else:
        off = np.asarray(off.detach().cpu().numpy() if is_torch(off) else off, dtype=np.result_type(local_quats, np.float32))
        root_pos = np.asarray(root_pos)
    positions: list[Any] = [None] * skel.num_joints
    positions[0] = root_pos
    q_root = local_quats[..., 0, :]
    for chain in skel.chains:
        rot = q_root
        for parent, joint in zip(chain[:-1], chain[1:]):
            rot = qmul(rot, local_quats[..., joint, :])
            positions[joint] = positions[parent] + qrot(rot, off[..., joint, :])
    return stack(positions, axis=-2)


# --------------------------------------------------------------------------------------------------
# inverse kinematics
# --------------------------------------------------------------------------------------------------
def facing_direction(joints: np.ndarray, skeleton: Skeleton | str, smooth_sigma: float = 0.0, ik_hips: bool = False) -> np.ndarray:
    """(..., T, 3) unit horizontal forward direction of each frame, as HumanML3D computes it.

    ``across = (p[r_hip] - p[l_hip]) + (p[r_shoulder] - p[l_shoulder])``, normalised; the forward direction
    is ``ŷ × across`` (so a body whose right side is at -X faces +Z). This is ``process_file``'s
    "all initially face Z+" step.

    ``ik_hips=True`` reproduces HumanML3D's ``inverse_kinematics_np``, which unpacks ``face_joint_indx``
    (ordered r_hip, l_hip, ...) as ``l_hip, r_hip, ...`` and so uses ``(p[l_hip] - p[r_hip])`` as the hip
    term: the shoulder line (wider than the hips) still dominates, so the direction is roughly forward,
    but the hips count against it. The released features were computed this way (checked on sample
    012314: the root angular velocities match to 3e-4 only with this variant).

    With ``smooth_sigma > 0`` the forward vectors are Gaussian-filtered over time
    (``scipy.ndimage.gaussian_filter1d``, mode ``"nearest"``; HumanML3D uses sigma 20 frames for the
    rotation features) before normalising.
    """
    skel = get_skeleton(skeleton)
    r_hip, l_hip, r_sdr, l_sdr = skel.face_joints
    joints = np.asarray(joints, dtype=np.float64)
    hips = joints[..., r_hip, :] - joints[..., l_hip, :]
    if ik_hips:
        hips = -hips
    across = hips + (joints[..., r_sdr, :] - joints[..., l_sdr, :])
    across = across / np.linalg.norm(across, axis=-1, keepdims=True)
    forward = np.cross(np.array([0.0, 1.0, 0.0]), across)
    if smooth_sigma > 0:
        from scipy.ndimage import gaussian_filter1d  # scipy.ndimage takes ~0.5 s to import; only IK needs it

        forward = gaussian_filter1d(forward, smooth_sigma, axis=-2, mode="nearest")
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def inverse_kinematics(
    joints: np.ndarray,
    skeleton: Skeleton | str,
    smooth_forward: bool = False,
    *,
    first_frame_identity: bool = True,
) -> np.ndarray:
    """HumanML3D's inverse kinematics (``Skeleton.inverse_kinematics_np``): local quaternions from positions.

    The root rotation of each frame turns the facing direction onto +Z: ``q_root = qbetween(forward, ẑ)``
    with ``forward = facing_direction(joints, ik_hips=True)`` (HumanML3D's IK variant), Gaussian-smoothed over
    time with sigma 20 frames if ``smooth_forward``. As in the release that produced the dataset, frame
    0's root quaternion is then set to the identity (``first_frame_identity``; the stored root angular
    velocities of sample 012314 match only with this). Along every chain, starting from ``R = q_root``,
    the joint quaternion is ``q_j = R⁻¹ · qbetween(raw_offset_j, p_j - p_parent)`` and ``R = R q_j``: the
    shortest-arc rotation of the rest bone onto the observed bone, expressed in the frame accumulated
    so far. Twist about a bone is not observable from positions and is left at zero. Whatever the root
    rotation, ``forward_kinematics(inverse_kinematics(J), J[..., 0, :])`` reproduces ``J`` whenever its
    bone lengths equal the skeleton's.

    Args:
        joints: (..., T, J, 3) positions (numpy; a torch tensor is converted).
        skeleton: a :class:`Skeleton` or its name.
        smooth_forward: smooth the facing direction over time (HumanML3D does for its rotation features).
        first_frame_identity: set frame 0's root quaternion to (1, 0, 0, 0).

    Returns:
        (..., T, J, 4) float64 quaternions (wxyz).
    """
    skel = get_skeleton(skeleton)
    if is_torch(joints):
        joints = joints.detach().cpu().numpy()
    joints = np.asarray(joints, dtype=np.float64)
    if joints.shape[-2:] != (skel.num_joints, 3):
        raise UserError(f"joints: expected shape (..., {skel.num_joints}, 3) for {skel.name}, got {joints.shape}")
    forward = facing_direction(joints, skel, smooth_sigma=20.0 if smooth_forward else 0.0, ik_hips=True)
    root_quat = qbetween(forward, np.array([0.0, 0.0, 1.0]))
    if first_frame_identity:
        root_quat[..., 0, :] = np.array([1.0, 0.0, 0.0, 0.0])
    quats = np.zeros(joints.shape[:-1] + (4,))
    quats[..., 0] = 1.0
    quats[..., 0, :] = root_quat
    for chain in skel.chains:
        rot = root_quat
        for parent, joint in zip(chain[:-1], chain[1:]):
            bone = joints[..., joint, :] - joints[..., parent, :]
            world = qbetween(np.broadcast_to(skel.raw_offsets[joint], bone.shape), bone)
            local = qmul(qinv(rot), world)
            quats[..., joint, :] = local
            rot = qmul(rot, local)
    return quats
