"""The rule-based oracle judge on procedural motions and on hand-made transformations of them."""

from __future__ import annotations

import numpy as np
import pytest

from easytune_lab.eval.oracle import classify, judge, measure, oracle_accuracy
from easytune_lab.motion.synth import make_motion, synthesize

MIRROR_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))


@pytest.fixture(scope="module")
def motions() -> list[dict]:
    return [make_motion(11, i) for i in range(90)]


def _single(family: str, attrs: dict, frames: int = 60, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    m = synthesize([{"family": family, "attributes": attrs, "frames": frames}], np.random.default_rng(seed))
    return m.joints, m.actions


def _mirror(joints: np.ndarray) -> np.ndarray:
    out = joints.copy()
    out[..., 0] *= -1
    for a, b in MIRROR_PAIRS:
        out[:, [a, b]] = out[:, [b, a]]
    return out


def _claim(actions: list[dict], **changes) -> list[dict]:
    return [dict(a, attributes=dict(a["attributes"], **changes)) for a in actions]


def test_ground_truth_accuracy_high_and_shuffled_low(motions):
    joints = [m["new_joints"] for m in motions]
    claims = [m["actions"] for m in motions]
    gt = oracle_accuracy(joints, claims)
    assert gt["overall"] >= 0.95
    assert set(gt["per_attribute"]) >= {"family", "side", "direction", "speed", "angle", "mode"}
    assert gt["count"] == sum(1 + len(a["attributes"]) for c in claims for a in c)
    order = np.roll(np.arange(len(motions)), 1)  # every motion paired with another motion's claim
    shuffled = oracle_accuracy(joints, [claims[k] for k in order])
    assert shuffled["overall"] <= 0.35
    assert shuffled["overall"] < gt["overall"] - 0.5


def test_judge_reports_each_attribute(motions):
    m = next(m for m in motions if any(a["family"] == "walk" for a in m["actions"]))
    res = judge(m["new_joints"], m["actions"])
    assert res["total"] == sum(1 + len(a["attributes"]) for a in m["actions"])
    assert res["correct"] == res["total"] and res["score"] == 1.0
    k = next(i for i, a in enumerate(m["actions"]) if a["family"] == "walk")
    wrong = [dict(a) for a in m["actions"]]
    flipped = "backward" if wrong[k]["attributes"]["direction"] == "forward" else "forward"
    wrong[k] = dict(wrong[k], attributes=dict(wrong[k]["attributes"], direction=flipped))
    res = judge(m["new_joints"], wrong)
    assert res["actions"][k] == {"family": True, "direction": False, "speed": True}


def test_mirroring_swaps_left_and_right():
    for family, attrs in (("wave", {"side": "left"}), ("kick", {"side": "left"}), ("punch", {"side": "right"}),
                          ("sidestep", {"side": "left"}), ("turn", {"side": "left", "angle": "90"})):
        joints, actions = _single(family, attrs, frames=50)
        other = "right" if attrs["side"] == "left" else "left"
        assert judge(joints, actions)["score"] == 1.0, family
        mirrored = _mirror(joints)
        assert judge(mirrored, actions)["actions"][0] == {"family": True, **{k: k != "side" for k in attrs}}, family
        assert judge(mirrored, _claim(actions, side=other))["score"] == 1.0, family


def test_time_reversal_turns_forward_walking_into_backward_walking():
    joints, actions = _single("walk", {"direction": "forward", "speed": "normal"}, frames=80)
    assert judge(joints, actions)["score"] == 1.0
    back = judge(joints[::-1].copy(), actions)["actions"][0]
    assert back == {"family": True, "direction": False, "speed": True}


@pytest.mark.parametrize("speed,expected", [(0.6, ("walk", "slow")), (1.1, ("walk", "normal")), (1.6, ("walk", "fast")),
                                            (2.3, ("jog", None)), (3.5, ("run", None))])
def test_speed_classes_from_a_translated_standing_body(speed, expected):
    joints, _ = _single("stand", {}, frames=60)
    forward = np.cross(joints[0, 1] - joints[0, 2], [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    moved = joints + (np.arange(60)[:, None] * speed / 20.0 * forward)[:, None, :]
    family, attrs = classify(measure(moved, 0, 60))
    assert family == expected[0]
    if expected[1]:
        assert attrs == {"direction": "forward", "speed": expected[1]}


def test_judgement_is_invariant_to_rotation_and_translation_and_rescales_spans():
    joints, actions = _single("turn", {"side": "right", "angle": "180"}, frames=44)
    a = np.deg2rad(73.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    moved = joints @ rot.T + np.array([3.0, 0.5, -2.0])
    assert judge(moved, actions)["score"] == 1.0
    doubled = [dict(x, start=2 * x["start"], end=2 * x["end"]) for x in actions]  # a claim made for 2x frames
    assert judge(moved, doubled)["score"] == 1.0
    assert judge(moved, _claim(actions, angle="90"))["actions"][0]["angle"] is False


def test_claims_without_spans_are_split_evenly():
    plan = [{"family": "walk", "attributes": {"direction": "forward", "speed": "fast"}, "frames": 60},
            {"family": "clap", "attributes": {}, "frames": 60}]
    m = synthesize(plan, np.random.default_rng(5))
    bare = [{"family": a["family"], "attributes": a["attributes"]} for a in m.actions]
    assert judge(m.joints, bare)["score"] == 1.0
    assert judge(m.joints, bare[::-1])["actions"][0]["family"] is False  # wrong order
