"""Skeletons, quaternion helpers, forward/inverse kinematics (easytune_lab.motion.skeleton / .quaternion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easytune_lab.errors import UserError
from easytune_lab.motion import quaternion as Q
from easytune_lab.motion.skeleton import KIT, T2M, forward_kinematics, get_skeleton, inverse_kinematics


def smooth_random_quats(rng: np.random.Generator, frames: int, joints: int, amplitude: float = 0.7) -> np.ndarray:
    """(T, J, 4) local rotations whose rotation vectors are sums of two random sinusoids per axis."""
    t = np.arange(frames)[:, None, None] / 20.0
    rotvec = np.zeros((frames, joints, 3))
    for _ in range(2):
        amp = rng.uniform(-amplitude, amplitude, size=(1, joints, 3)) / 2
        freq = rng.uniform(0.2, 1.5, size=(1, joints, 3))
        phase = rng.uniform(0, 2 * np.pi, size=(1, joints, 3))
        rotvec += amp * np.sin(2 * np.pi * freq * t + phase)
    return Q.quat_from_axis_angle(rotvec)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    return Q.qnormalize(rng.normal(size=(n, 4)))


# ---------------------------------------------------------------------------------------------- skeletons
def test_skeleton_constants_match_humanml3d():
    assert (T2M.num_joints, T2M.feature_dim, KIT.num_joints, KIT.feature_dim) == (22, 263, 21, 251)
    assert T2M.chains[0] == (0, 2, 5, 8, 11) and T2M.chains[3] == (9, 14, 17, 19, 21)
    assert T2M.parents[:6] == (-1, 0, 0, 0, 1, 2) and T2M.parents[16] == 13 and T2M.parents[21] == 19
    assert KIT.parents[11] == 0 and KIT.parents[5] == 3 and KIT.parents[15] == 14
    assert T2M.face_joints == (2, 1, 17, 16) and KIT.face_joints == (11, 16, 5, 8)
    assert (T2M.foot_left, T2M.foot_right, KIT.foot_left, KIT.foot_right) == ((7, 10), (8, 11), (19, 20), (14, 15))
    for skel in (T2M, KIT):
        assert len(skel.joint_names) == skel.num_joints == len(skel.parents)
        np.testing.assert_allclose(np.linalg.norm(skel.raw_offsets[1:], axis=-1), 1.0)
        # offsets are raw directions scaled by positive lengths
        lengths = skel.bone_lengths
        assert np.all(lengths[1:] > 0)
        np.testing.assert_allclose(skel.offsets[1:], skel.raw_offsets[1:] * lengths[1:, None])
        every_non_root = sorted(j for chain in skel.chains for j in chain[1:])
        assert every_non_root == list(range(1, skel.num_joints))


def test_get_skeleton_names_and_errors():
    assert get_skeleton("t2m") is T2M and get_skeleton("KIT") is KIT and get_skeleton(T2M) is T2M
    with pytest.raises(UserError, match="unknown skeleton"):
        get_skeleton("smplx")


def test_t2m_bone_lengths_are_those_of_the_fixture(fixture_dir):
    joints = np.load(fixture_dir / "new_joints" / "012314.npy").astype(np.float64)
    parents = np.array(T2M.parents[1:])
    measured = np.linalg.norm(joints[:, 1:] - joints[:, parents], axis=-1)
    assert measured.std(axis=0).max() < 1e-5  # retargeted data: lengths constant over frames
    np.testing.assert_allclose(T2M.bone_lengths[1:], measured.mean(axis=0), atol=2e-6)


def test_rest_pose_geometry():
    rest = T2M.rest_pose()
    assert rest[1, 0] > 0 > rest[2, 0]  # left hip at +x, right hip at -x
    assert rest[12, 1] > rest[9, 1] > rest[0, 1] > rest[4, 1] > rest[7, 1]  # spine up, legs down
    assert rest[15, 2] > 0  # HumanML3D's head offset points forward (+z) from the neck
    assert rest[10, 2] > 0 and rest[11, 2] > 0  # toes point forward (+z)
    # HumanML3D's raw offsets hang the arms down from the collars
    assert rest[20, 1] < rest[18, 1] < rest[16, 1] and abs(rest[20, 0] - rest[13, 0]) < 1e-12
    # with identity rotations the parent -> child vector is exactly the offset
    for skel in (T2M, KIT):
        r = skel.rest_pose()
        for j in range(1, skel.num_joints):
            np.testing.assert_allclose(r[j] - r[skel.parents[j]], skel.offsets[j], atol=1e-12)


# ---------------------------------------------------------------------------------------------- quaternions
def test_quaternion_helpers_agree_with_matrices():
    rng = np.random.default_rng(0)
    q = random_rotations(rng, 200)
    r = random_rotations(rng, 200)
    v = rng.normal(size=(200, 3))
    m = Q.quat_to_matrix(q)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", m, v), Q.qrot(q, v), atol=1e-12)
    np.testing.assert_allclose(Q.quat_to_matrix(Q.qmul(q, r)), m @ Q.quat_to_matrix(r), atol=1e-12)
    np.testing.assert_allclose(Q.qrot(Q.qinv(q), Q.qrot(q, v)), v, atol=1e-12)
    np.testing.assert_allclose(np.einsum("nij,nik->njk", m, m), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    back = Q.matrix_to_quat(m)
    np.testing.assert_allclose(np.abs((back * q).sum(-1)), 1.0, atol=1e-12)  # same rotation up to sign
    # about-Y helper: 90 degrees takes +z to +x
    np.testing.assert_allclose(Q.qrot(Q.quat_about_y(np.pi / 2), np.array([0.0, 0.0, 1.0])), [1.0, 0.0, 0.0], atol=1e-12)


def test_qbetween_including_opposite_vectors():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 3))
    b = rng.normal(size=(100, 3))
    q = Q.qbetween(a, b)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(unit(Q.qrot(q, a)), unit(b), atol=1e-12)
    opposite = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.2, -0.5]])
    q = Q.qbetween(opposite, -opposite)
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(Q.qrot(q, opposite), -opposite, atol=1e-12)


def test_cont6d_round_trips_numpy_and_torch():
    rng = np.random.default_rng(2)
    q = random_rotations(rng, 300)
    m = Q.quat_to_matrix(q)
    d6 = Q.matrix_to_cont6d(m)
    assert d6.shape == (300, 6)
    np.testing.assert_allclose(d6[:, :3], m[:, :, 0]) and np.testing.assert_allclose(d6[:, 3:], m[:, :, 1])
    np.testing.assert_allclose(Q.cont6d_to_matrix(d6), m, atol=1e-12)
    np.testing.assert_allclose(np.abs((Q.cont6d_to_quat(d6) * q).sum(-1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(Q.quat_to_cont6d(q), d6, atol=1e-12)
    # a perturbed 6-D vector still maps to a proper rotation
    noisy = Q.cont6d_to_matrix(d6 + 0.1 * rng.normal(size=d6.shape))
    np.testing.assert_allclose(np.linalg.det(noisy), 1.0, atol=1e-12)
    # torch: same numbers, gradients flow
    d6_t = torch.tensor(d6, requires_grad=True)
    m_t = Q.cont6d_to_matrix(d6_t)
    np.testing.assert_allclose(m_t.detach().numpy(), m, atol=1e-12)
    np.testing.assert_allclose(Q.matrix_to_quat(m_t).detach().numpy(), Q.matrix_to_quat(m), atol=1e-12)
    m_t.sum().backward()
    assert torch.isfinite(d6_t.grad).all() and d6_t.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- kinematics
def test_forward_kinematics_convention():
    """q at the knee rotates the thigh; the arm chains restart from the root rotation."""
    quats = np.zeros((1, 22, 4))
    quats[..., 0] = 1.0
    quats[0, 4] = Q.quat_from_axis_angle(np.array([np.pi / 2, 0.0, 0.0]))  # left knee: +90 deg about x
    joints = forward_kinematics(quats, np.zeros((1, 3)), T2M)[0]
    rest = T2M.rest_pose()
    thigh = joints[4] - joints[1]
    np.testing.assert_allclose(thigh, [0.0, 0.0, -T2M.bone_lengths[4]], atol=1e-12)  # -y turned to -z
    np.testing.assert_allclose(joints[7] - joints[4], [0.0, 0.0, -T2M.bone_lengths[7]], atol=1e-12)  # shin follows
    np.testing.assert_allclose(joints[1], rest[1], atol=1e-12)  # the hip does not move
    # a spine rotation (joint 3, 6, 9) does not turn the arms' bones: their chains restart at q_root
    quats2 = np.zeros((1, 22, 4))
    quats2[..., 0] = 1.0
    quats2[0, 6] = Q.quat_about_y(np.array(1.0))
    j2 = forward_kinematics(quats2, np.zeros((1, 3)), T2M)[0]
    np.testing.assert_allclose(j2[20] - j2[13], rest[20] - rest[13], atol=1e-12)
    # the root quaternion rotates everything about the root
    quats3 = np.zeros((1, 22, 4))
    quats3[..., 0] = 1.0
    quats3[0, 0] = Q.quat_about_y(np.array(np.pi))
    j3 = forward_kinematics(quats3, np.zeros((1, 3)), T2M)[0]
    np.testing.assert_allclose(j3, rest * np.array([-1.0, 1.0, -1.0]), atol=1e-12)


@pytest.mark.parametrize("skel", [T2M, KIT], ids=["t2m", "kit"])
def test_fk_numpy_torch_batched_and_ik_round_trip(skel):
    rng = np.random.default_rng(3)
    scale = 1.0 if skel is T2M else 1000.0
    quats = np.stack([smooth_random_quats(rng, 40, skel.num_joints) for _ in range(2)])  # (B, T, J, 4)
    root = rng.normal(size=(2, 40, 3)) * scale
    joints = forward_kinematics(quats, root, skel)
    assert joints.shape == (2, 40, skel.num_joints, 3)
    # bone lengths are the skeleton's
    parents = np.array(skel.parents[1:])
    lengths = np.linalg.norm(joints[..., 1:, :] - joints[..., parents, :], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(skel.bone_lengths[1:], lengths.shape), rtol=1e-12)
    # batch element == single call
    np.testing.assert_allclose(forward_kinematics(quats[1], root[1], skel), joints[1], atol=1e-12 * scale)
    # torch: same numbers and a gradient
    q_t = torch.tensor(quats, requires_grad=True)
    j_t = forward_kinematics(q_t, torch.tensor(root), skel)
    np.testing.assert_allclose(j_t.detach().numpy(), joints, atol=1e-12 * scale)
    j_t[..., -1, :].sum().backward()
    assert torch.isfinite(q_t.grad).all() and q_t.grad.abs().sum() > 0
    # FK(IK(J)) == J for skeleton-consistent J
    for b in range(2):
        for smooth in (False, True):
            local = inverse_kinematics(joints[b], skel, smooth_forward=smooth)
            np.testing.assert_allclose(Q.norm(local, keepdim=False), 1.0, atol=1e-12)
            again = forward_kinematics(local, joints[b, :, 0], skel)
            assert np.abs(again - joints[b]).max() < 1e-9 * scale
    # IK's root quaternion turns the facing direction onto +Z (frames > 0; frame 0 is set to identity)
    local = inverse_kinematics(joints[0], skel)
    np.testing.assert_allclose(local[0, 0], [1.0, 0.0, 0.0, 0.0])


def test_ik_root_faces_plus_z():
    rng = np.random.default_rng(4)
    rest = T2M.rest_pose()
    yaw = rng.uniform(-3, 3, size=10)
    q = Q.quat_about_y(yaw)
    joints = Q.qrot(np.broadcast_to(q[:, None], (10, 22, 4)), np.broadcast_to(rest, (10, 22, 3)))
    root = inverse_kinematics(joints, T2M, first_frame_identity=False)[:, 0]
    # undoing the yaw: the root quaternion is the inverse rotation
    np.testing.assert_allclose(np.abs((root * Q.qinv(q)).sum(-1)), 1.0, atol=1e-9)


def test_fk_rejects_wrong_shapes():
    with pytest.raises(UserError, match="local_quats"):
        forward_kinematics(np.zeros((3, 21, 4)), np.zeros((3, 3)), T2M)
    with pytest.raises(UserError, match="joints"):
        inverse_kinematics(np.zeros((3, 22, 3)), KIT)
