"""HumanML3D features (easytune_lab.motion.features): the real sample 012314 and procedural motions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easytune_lab.errors import UserError
from easytune_lab.motion import quaternion as Q
from easytune_lab.motion.features import (
    feature_layout,
    joints_num_for_dim,
    joints_to_features,
    process_joints,
    recover_from_ric,
    recover_from_rot,
    recover_root_rot_pos,
)
from easytune_lab.motion.skeleton import KIT, T2M, Skeleton, facing_direction, forward_kinematics

MAIN_DIMS = np.r_[0:67, 193:263]  # every t2m block but the 6-D rotations


def procedural_motion(skel: Skeleton, seed: int, frames: int = 80) -> np.ndarray:
    """(T, J, 3) joints from smooth random local rotations, a yaw that turns > 180°, and a wandering root."""
    rng = np.random.default_rng(seed)
    unit = 1.0 if skel.name == "t2m" else 1000.0  # KIT-ML positions are in millimetres
    t = np.arange(frames)[:, None, None] / 20.0
    rotvec = np.zeros((frames, skel.num_joints, 3))
    for _ in range(2):
        amp = rng.uniform(-0.3, 0.3, size=(1, skel.num_joints, 3))
        freq = rng.uniform(0.2, 1.5, size=(1, skel.num_joints, 3))
        rotvec += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, size=amp.shape))
    quats = Q.quat_from_axis_angle(rotvec)
    yaw = rng.choice([-1.0, 1.0]) * rng.uniform(1.2, 2.0) * np.pi * np.linspace(0, 1, frames) + rng.uniform(-3, 3)
    quats[:, 0] = Q.qmul(Q.quat_about_y(yaw), quats[:, 0])
    step = 0.03 * unit
    root = np.stack([np.cumsum(step * np.sin(yaw)), unit * (0.9 + 0.03 * np.sin(5 * t[:, 0, 0])), np.cumsum(step * np.cos(yaw))], -1)
    root[:, [0, 2]] += rng.normal(size=2) * unit
    return forward_kinematics(quats, root, skel)


@pytest.fixture(scope="module")
def sample(fixture_dir):
    joints = np.load(fixture_dir / "new_joints" / "012314.npy")
    feats = np.load(fixture_dir / "new_joint_vecs" / "012314.npy")
    return joints, feats


# ---------------------------------------------------------------------------------------------- layout
def test_feature_layout_and_dims():
    lay = feature_layout(22)
    assert [(k, s.start, s.stop) for k, s in lay.items()] == [
        ("root_rot_vel", 0, 1), ("root_lin_vel", 1, 3), ("root_y", 3, 4), ("ric", 4, 67),
        ("rot6d", 67, 193), ("local_vel", 193, 259), ("foot_contact", 259, 263),
    ]  # fmt: skip
    kit = feature_layout(21)
    assert (kit["ric"].stop, kit["rot6d"].stop, kit["local_vel"].stop, kit["foot_contact"].stop) == (64, 184, 247, 251)
    assert joints_num_for_dim(263) == 22 and joints_num_for_dim(251) == 21
    with pytest.raises(UserError, match="263"):
        joints_num_for_dim(264)


# ---------------------------------------------------------------------------------------------- real sample
def test_recover_from_ric_matches_new_joints(sample):
    joints, feats = sample
    rec = recover_from_ric(feats, 22)
    assert rec.shape == joints.shape and rec.dtype == np.float32
    err_np = np.abs(rec - joints).max()
    feats_t = torch.tensor(feats, requires_grad=True)
    rec_t = recover_from_ric(feats_t, 22)
    err_t = (rec_t.detach().numpy() - joints).__abs__().max()
    print(f"\nrecover_from_ric vs new_joints: numpy {err_np:.2e}, torch {err_t:.2e}")
    assert err_np <= 1e-4 and err_t <= 1e-4
    # batched (B, T, D): every element recovered as alone
    batch = np.stack([feats, feats[::-1].copy()])
    rec_b = recover_from_ric(torch.tensor(batch), 22).numpy()
    np.testing.assert_allclose(rec_b[0], joints, atol=1e-4)
    np.testing.assert_allclose(rec_b[1], recover_from_ric(batch[1], 22), atol=1e-4)
    np.testing.assert_allclose(recover_from_ric(batch)[1], rec_b[1], atol=1e-4)  # joints_num inferred
    # gradients flow to the root and ric blocks, finite, and nowhere else
    (rec_t**2).sum().backward()
    grad = feats_t.grad
    assert torch.isfinite(grad).all()
    assert grad[:, :67].abs().sum() > 0 and grad[:, 67:].abs().sum() == 0


def _restore_last_frame(joints: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """HumanML3D stores T-1 recovered frames of a T-frame clip; the dropped last frame is the one before plus
    the last row's local velocity rotated back to the world (frame 0's root rotation is the identity)."""
    r_rot, _ = recover_root_rot_pos(feats.astype(np.float64))
    vel = feats[-1, feature_layout(22)["local_vel"]].reshape(22, 3)
    last = joints[-1] + Q.qrot(np.broadcast_to(Q.qinv(r_rot[-1]), (22, 4)), vel)
    return np.concatenate([joints, last[None]], axis=0)


def test_joints_to_features_matches_new_joint_vecs(sample):
    joints, feats = sample
    ours = joints_to_features(joints)
    assert ours.shape == (len(joints) - 1, 263) and ours.dtype == np.float32
    err = np.abs(ours - feats[: len(ours)])
    # new_joints lacks the clip's last frame, and the facing behind the root rotation is smoothed with a
    # sigma-20 Gaussian (radius 80 frames), so frames >= 90 see the missing frame; frames 0-89 cannot.
    early = err[:90]
    print(f"\nnew_joints (170 frames) -> features, frames 0-89: main {early[:, MAIN_DIMS].max():.2e}, "
          f"rot6d {early[:, 67:193].max():.2e}; all 169 frames: main {err[:, MAIN_DIMS].max():.2e}, rot6d {err[:, 67:193].max():.2e}")
    assert early.max() <= 1e-4
    assert err[:, MAIN_DIMS].max() <= 1e-2
    assert err[:, 259:].max() == 0  # foot contacts identical on every frame
    # with the dropped frame restored, every frame matches
    full = joints_to_features(_restore_last_frame(joints.astype(np.float64), feats))
    assert full.shape == feats.shape
    err_full = np.abs(full - feats)
    print(f"restored 171 frames -> features: main {err_full[:, MAIN_DIMS].max():.2e}, rot6d {err_full[:, 67:193].max():.2e}")
    assert err_full[:, MAIN_DIMS].max() <= 1e-4
    assert err_full[:, 67:193].max() <= 1e-4


def test_recover_from_rot_agrees_with_ric_on_the_sample(sample):
    _, feats = sample
    ric = recover_from_ric(feats.astype(np.float64))
    rot = recover_from_rot(feats.astype(np.float64), T2M)
    # the sample was retargeted to T2M's bone lengths, so both encodings give the same pose
    assert np.abs(rot - ric).max() < 1e-3


# ---------------------------------------------------------------------------------------------- procedural motions
@pytest.mark.parametrize("skel", [T2M, KIT], ids=["t2m", "kit"])
def test_procedural_round_trip(skel):
    for seed in range(2):
        joints = procedural_motion(skel, seed)
        proc = process_joints(joints, skel)
        assert proc.features.shape == (len(joints) - 1, skel.feature_dim)
        target = proc.positions[:-1]
        err_np = np.abs(recover_from_ric(proc.features) - target).max()
        err_t = np.abs(recover_from_ric(torch.tensor(proc.features)).numpy() - target).max()
        assert err_np <= 1e-4, err_np
        assert err_t <= (1e-4 if skel is T2M else 1e-3), err_t  # KIT: float32 in millimetres
        # the 6-D block encodes the same pose (smoothed-facing root, target offsets)
        unit = 1.0 if skel is T2M else 1000.0
        assert np.abs(recover_from_rot(proc.features.astype(np.float64), skel) - target).max() <= 1e-4 * unit
        # the yaw turned past ±180°: the integrated facing covers more than a half turn
        total = 2 * np.abs(proc.features[:, 0].sum())
        assert total > np.pi


def test_processing_normalises_pose_and_is_invariant():
    skel = T2M
    joints = procedural_motion(skel, 7)
    proc = process_joints(joints, skel)
    pos = proc.positions
    assert abs(pos[..., 1].min()) < 1e-12  # on the floor
    np.testing.assert_allclose(pos[0, 0, [0, 2]], 0.0, atol=1e-12)  # first root at the XZ origin
    np.testing.assert_allclose(facing_direction(pos[0], skel), [0.0, 0.0, 1.0], atol=1e-9)  # faces +Z
    parents = np.array(skel.parents[1:])
    lengths = np.linalg.norm(pos[:, 1:] - pos[:, parents], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(skel.bone_lengths[1:], lengths.shape), atol=1e-9)
    # features ignore a global yaw, an XZ shift, a lift and a uniform scale of the input
    moved = Q.qrot(np.broadcast_to(Q.quat_about_y(np.array(2.0)), joints.shape[:-1] + (4,)), joints)
    moved = 1.3 * (moved + np.array([5.0, 0.4, -3.0]))
    np.testing.assert_allclose(joints_to_features(moved), proc.features, atol=2e-5)


def test_retargeting_changes_bone_lengths_not_directions():
    # a skeleton with 20% longer bones everywhere except the right leg: same pose, different proportions
    skel = T2M
    rng = np.random.default_rng(5)
    quats = Q.quat_from_axis_angle(rng.uniform(-0.3, 0.3, size=(30, 22, 3)))
    offsets = skel.offsets * 1.2
    offsets[[5, 8]] = skel.offsets[[5, 8]]
    src = forward_kinematics(quats, np.tile([0.0, 1.0, 0.0], (30, 1)), skel, offsets=offsets)
    proc = process_joints(src, skel)
    parents = np.array(skel.parents[1:])
    bones_src = src[:, 1:] - src[:, parents]
    bones_out = proc.positions[:, 1:] - proc.positions[:, parents]
    np.testing.assert_allclose(np.linalg.norm(bones_out, axis=-1), np.broadcast_to(skel.bone_lengths[1:], (30, 21)), atol=1e-9)
    # the bone directions are kept up to the one global yaw applied to face +Z
    unit_src = bones_src / np.linalg.norm(bones_src, axis=-1, keepdims=True)
    unit_out = bones_out / np.linalg.norm(bones_out, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit_out[..., 1], unit_src[..., 1], atol=1e-9)
    horizontal = np.linalg.norm(unit_src[..., [0, 2]], axis=-1) > 0.2
    yaw = np.arctan2(unit_out[..., 0], unit_out[..., 2]) - np.arctan2(unit_src[..., 0], unit_src[..., 2])
    yaw = np.angle(np.exp(1j * yaw[horizontal]))
    assert horizontal.sum() > 100 and np.ptp(yaw) < 1e-6


def test_foot_contacts_follow_the_threshold():
    skel = T2M
    rest = skel.rest_pose() + np.array([0.0, 1.0, 0.0])
    frames = 12
    speed = 0.04  # metres per frame along +Z: squared displacement 0.0016
    joints = np.stack([rest + np.array([0.0, 0.0, speed * i]) for i in range(frames)])
    contact = feature_layout(22)["foot_contact"]
    assert np.all(joints_to_features(joints, feet_threshold=0.002)[:, contact] == 1.0)
    assert np.all(joints_to_features(joints, feet_threshold=0.001)[:, contact] == 0.0)
    feats = joints_to_features(joints)
    np.testing.assert_allclose(feats[:, 0], 0.0, atol=1e-9)  # no turning
    np.testing.assert_allclose(feats[:, 1:3], np.tile([0.0, speed], (frames - 1, 1)), atol=1e-9)  # forward in root frame
    lay = feature_layout(22)
    np.testing.assert_allclose(feats[:, lay["local_vel"]].reshape(-1, 22, 3), np.broadcast_to([0.0, 0.0, speed], (frames - 1, 22, 3)), atol=1e-9)


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="joints"):
        joints_to_features(np.zeros((10, 21, 3)), "t2m")
    with pytest.raises(UserError, match="frames"):
        joints_to_features(np.zeros((1, 22, 3)))
    with pytest.raises(UserError, match="NaN"):
        joints_to_features(np.full((5, 22, 3), np.nan))
    with pytest.raises(UserError, match="features"):
        recover_from_ric(np.zeros((4, 100)))
