"""BVH export/import: write -> read -> forward kinematics gives back the joint positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from easytune_lab.errors import UserError
from easytune_lab.motion.bvh import (bvh_forward_kinematics, parents_from_chains, read_bvh, rot6d_joints,
                                     write_bvh)
from easytune_lab.motion.skeleton import get_skeleton
from easytune_lab.viz.playback import demo_joints, to_joints


def _round_trip(motion, tmp_path: Path, skeleton: str = "t2m", **kwargs) -> tuple[np.ndarray, object]:
    """Positions read back from the written file, in the skeleton's joint order."""
    out = tmp_path / f"{skeleton}.bvh"
    write_bvh(motion, out, skeleton=skeleton, **kwargs)
    parsed = read_bvh(out)
    positions = bvh_forward_kinematics(parsed)
    order = [parsed.names.index(name) for name in get_skeleton(skeleton).joint_names]
    return positions[:, order], parsed


def test_round_trip_of_the_real_sample_joints(fixture_dir: Path, tmp_path: Path):
    joints = np.load(fixture_dir / "new_joints" / "012314.npy").astype(np.float64)
    back, parsed = _round_trip(joints, tmp_path)
    assert back.shape == joints.shape
    assert np.abs(back - joints).max() < 1e-3
    assert np.abs(back - joints).max() < 1e-5  # in fact exact up to the 6 printed decimals
    assert parsed.frame_time == pytest.approx(0.05)


def test_round_trip_of_features_by_both_sources(fixture_dir: Path, tmp_path: Path):
    features = np.load(fixture_dir / "new_joint_vecs" / "012314.npy")
    target = to_joints(features)
    for source in ("positions", "rot6d"):
        back, _ = _round_trip(features, tmp_path, source=source)
        assert np.abs(back - target).max() < 1e-3, source
    # the 6-D rotations of the sample reproduce its positions through the skeleton's forward kinematics
    assert np.abs(rot6d_joints(features) - target).max() < 1e-4


@pytest.mark.parametrize("skeleton", ["t2m", "kit"])
def test_round_trip_of_forward_kinematics_motions(skeleton: str, tmp_path: Path):
    joints = demo_joints(40, seed=3, skeleton=skeleton)
    back, _ = _round_trip(joints, tmp_path, skeleton=skeleton, fps=30)
    height = np.ptp(joints[..., 1])
    assert np.abs(back - joints).max() < 1e-3 * height / 1.7  # 1e-3 of a 1.7-unit body, in the motion's units


def test_hierarchy_rest_pose_and_channels(tmp_path: Path):
    joints = demo_joints(10, seed=1)
    motion = write_bvh(joints, tmp_path / "x.bvh", scale=100.0)
    parsed = read_bvh(tmp_path / "x.bvh")
    skel = get_skeleton("t2m")
    assert parsed.names[0] == "pelvis" and len(parsed.joints) == 22
    assert parsed.joints[0].channels == ["Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation"]
    # parents match the skeleton's chains
    parents = parents_from_chains(skel.chains, 22)
    for joint in parsed.joints[1:]:
        assert parents[skel.joint_names.index(joint.name)] == skel.joint_names.index(parsed.joints[joint.parent].name)
    # single-child bones rest along the T-pose directions (left elbow along +x), lengths in centimetres
    elbow = parsed.joints[parsed.names.index("left_elbow")]
    bone = np.linalg.norm(joints[:, 18] - joints[:, 16], axis=-1).mean() * 100
    np.testing.assert_allclose(elbow.offset / np.linalg.norm(elbow.offset), skel.raw_offsets[18], atol=1e-6)
    assert np.linalg.norm(elbow.offset) == pytest.approx(bone, rel=1e-4)
    assert sum(j.end_site is not None for j in parsed.joints) == 5  # feet, head, wrists
    np.testing.assert_allclose(parsed.values, motion.values, atol=1e-6)


def test_reader_follows_channel_order_and_translation(tmp_path: Path):
    # Root at (1, 2, 3) turned +90 degrees about Z; child one unit up in the rest pose; the child's own channels
    # list X before Z and include a translation.
    text = """HIERARCHY
ROOT hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT arm
  {
    OFFSET 0 1 0
    CHANNELS 4 Xposition Xrotation Zrotation Yrotation
    End Site
    {
      OFFSET 0 0 2
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.1
1 2 3 90 0 0 0 0 0 0
1 2 3 0 0 0 0.5 90 0 0
"""
    path = tmp_path / "hand.bvh"
    path.write_text(text)
    parsed = read_bvh(path)
    pos = bvh_forward_kinematics(parsed, include_end_sites=True)
    np.testing.assert_allclose(pos[0, 1], [0, 2, 3], atol=1e-9)  # Rz(90) (0,1,0) = (-1,0,0)
    np.testing.assert_allclose(pos[0, 2], [0, 2, 5], atol=1e-9)
    np.testing.assert_allclose(pos[1, 1], [1.5, 3, 3], atol=1e-9)  # offset + translation, no rotation
    np.testing.assert_allclose(pos[1, 2], [1.5, 1, 3], atol=1e-9)  # Rx(90) (0,0,2) = (0,-2,0)


def test_agrees_with_bvhio(tmp_path: Path):
    bvhio = pytest.importorskip("bvhio")
    joints = demo_joints(12, seed=5)
    write_bvh(joints, tmp_path / "x.bvh")
    ours = bvh_forward_kinematics(read_bvh(tmp_path / "x.bvh"))
    root = bvhio.readAsHierarchy(str(tmp_path / "x.bvh"))
    layout = root.layout()
    assert [joint.Name for joint, _, _ in layout] == read_bvh(tmp_path / "x.bvh").names
    for frame in (0, 5, 11):
        root.loadPose(frame)
        theirs = np.array([[j.PositionWorld.x, j.PositionWorld.y, j.PositionWorld.z] for j, _, _ in layout])
        np.testing.assert_allclose(theirs, ours[frame], atol=1e-4)


def test_errors_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="22 joints"):
        write_bvh(demo_joints(5, skeleton="kit"), tmp_path / "x.bvh", skeleton="t2m")
    with pytest.raises(UserError, match="rot6d"):
        write_bvh(demo_joints(5), tmp_path / "x.bvh", source="rot6d")
    bad = tmp_path / "bad.bvh"
    bad.write_text("HIERARCHY\nROOT a\n{\n OFFSET 0 0 0\n CHANNELS 3 Xposition Yposition Zposition\n}\n"
                   "MOTION\nFrames: 2\nFrame Time: 0.05\n0 0 0\n")
    with pytest.raises(UserError, match="expected 2 frames"):
        read_bvh(bad)
    with pytest.raises(UserError, match="not a BVH"):
        (tmp_path / "empty.bvh").write_text("hello")
        read_bvh(tmp_path / "empty.bvh")


def test_fit_error_reports_what_a_rigid_hierarchy_cannot_reproduce(tmp_path: Path):
    joints = demo_joints(20, seed=2)
    rigid = write_bvh(joints, tmp_path / "rigid.bvh")
    assert rigid.fit_error < 1e-5
    stretched = joints.copy()
    stretched[10:, 20] += (stretched[10:, 20] - stretched[10:, 18]) * 0.5  # left forearm 50% longer from frame 10
    motion = write_bvh(stretched, tmp_path / "stretched.bvh")
    back, _ = _round_trip(stretched, tmp_path)
    assert motion.fit_error > 0.01
    assert np.abs(back - stretched).max() == pytest.approx(motion.fit_error, abs=1e-5)
