"""A rule-based judge of procedural motions: does a motion show the actions a caption claims?

No learning: hand-written rules on joint positions (T, 22, 3) (t2m joints, +Y up, 20 fps), in the
heading frame of the body (forward = ŷ × (right - left hips and shoulders), HumanML3D's facing direction).
For each claimed action ``{"family", "attributes", "start", "end"}`` the claimed frame span is rescaled to the
motion's length, the segment is measured (:func:`measure`) and classified into one family
(:func:`classify`). The action's ``family`` is shown when the class equals the claim (so the families must also
come in the claimed order), and each attribute (side, direction, speed, angle, mode) is shown when the
family is shown *and* the measured attribute equals the claim. The rules and thresholds are listed in
``data_cards/procedural_humanml3d.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 20.0
PELVIS, L_ANKLE, R_ANKLE, HEAD = 0, 7, 8, 15
L_HIP, R_HIP, L_SHOULDER, R_SHOULDER, L_WRIST, R_WRIST = 1, 2, 16, 17, 20, 21
# Standing pelvis height above the floor for the t2m target skeleton (thigh + shin + ankle clearance),
# measured on the procedural standing pose; the floor is the lowest joint of the whole motion (HumanML3D).
STAND_HEIGHT = 0.93


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of :func:`classify` (SI units; angles in degrees)."""

    spin_deg: float = 270.0  # |heading change| for a spin
    turn_deg: float = 50.0  # |heading change| for a turn (when stationary)
    turn_180_deg: float = 135.0  # 90 vs 180 degree turns
    jump_rise: float = 0.15  # pelvis above standing height
    jump_forward: float = 0.3  # horizontal displacement of a forward jump (m)
    moving: float = 0.28  # mean horizontal root speed of locomotion (m/s)
    crouch_drop: float = 0.17  # pelvis below standing height while moving
    walk_jog: float = 1.85  # m/s
    jog_run: float = 2.85
    walk_slow: float = 0.82
    walk_fast: float = 1.32
    jacks_spread: float = 0.45  # ankle distance (m)
    squat_drop: float = 0.25
    kick_ankle: float = 0.4  # ankle height above the floor (m)
    bow_forward: float = 0.2  # head ahead of the pelvis (m)
    clap_close: float = 0.15  # wrist distance (m)
    punch_reach: float = 0.46  # wrist ahead of its shoulder (m)
    wave_wiggle: float = 3.6  # lateral path length / lateral range of a raised wrist
    arm_up: float = 0.1  # wrist above the head (m)


THRESHOLDS = Thresholds()


def heading(joints: np.ndarray) -> np.ndarray:
    """(T,) unwrapped yaw (radians, positive = facing turned to the left, 0 = facing +Z)."""
    across = (joints[:, R_HIP] - joints[:, L_HIP]) + (joints[:, R_SHOULDER] - joints[:, L_SHOULDER])
    fwd = np.cross(np.array([0.0, 1.0, 0.0]), across)
    return np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))


def _to_heading_frame(v: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Horizontal vectors (T, ..., 3) -> (T, ..., 2) (to the left, forward) in each frame's heading frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    shape = (-1,) + (1,) * (v.ndim - 2)
    c, s = c.reshape(shape), s.reshape(shape)
    left = v[..., 0] * c - v[..., 2] * s
    fwd = v[..., 0] * s + v[..., 2] * c
    return np.stack([left, fwd], -1)


def _wiggle(x: np.ndarray) -> float:
    """Path length over range of a 1-D signal (1 for a monotone move, large for an oscillation)."""
    if len(x) < 3:
        return 0.0
    rng = float(x.max() - x.min())
    return float(np.abs(np.diff(x)).sum()) / max(rng, 1e-3)


def _closings(d: np.ndarray, close: float, open_: float) -> int:
    """Number of times the distance ``d`` drops below ``close`` after having been above ``open_``."""
    count, armed = 0, True
    for v in d:
        if armed and v < close:
            count, armed = count + 1, False
        elif v > open_:
            armed = True
    return count


def measure(joints: np.ndarray, start: int, end: int) -> dict:
    """Quantities of the segment [start, end) that the rules use."""
    joints = np.asarray(joints, dtype=np.float64)
    T = len(joints)
    floor = joints[..., 1].min()
    start, end = max(0, min(start, T - 2)), max(min(end, T), min(start, T - 2) + 2)
    yaw_all = heading(joints)
    seg = joints[start:end]
    yaw = yaw_all[start:end]
    L = end - start
    a, b = start + int(0.2 * L), max(start + int(0.8 * L), start + int(0.2 * L) + 2)
    core = joints[a:b]
    core_yaw = yaw_all[a:b]
    vel = np.diff(core[:, PELVIS], axis=0) * FPS
    v_local = _to_heading_frame(vel, core_yaw[:-1]).mean(axis=0) if len(vel) else np.zeros(2)
    pelvis_y = seg[:, PELVIS, 1] - floor
    rel = seg - seg[:, PELVIS:PELVIS + 1]
    rel_h = _to_heading_frame(rel, yaw)  # (L, 22, 2) left, forward relative to the pelvis
    wrist_above_head = seg[:, [L_WRIST, R_WRIST], 1] - seg[:, HEAD:HEAD + 1, 1]
    wrist_above_shoulder = seg[:, [L_WRIST, R_WRIST], 1] - seg[:, [L_SHOULDER, R_SHOULDER], 1]
    reach = rel_h[:, [L_WRIST, R_WRIST], 1] - rel_h[:, [L_SHOULDER, R_SHOULDER], 1]
    wiggle = []
    for k, w in enumerate((L_WRIST, R_WRIST)):
        up = wrist_above_shoulder[:, k] > 0.1
        wiggle.append(_wiggle(rel_h[up, w, 0]) if up.sum() >= 6 else 0.0)
    wrist_dist = np.linalg.norm(seg[:, L_WRIST] - seg[:, R_WRIST], axis=-1)
    ankle_h = seg[:, [L_ANKLE, R_ANKLE], 1] - floor
    ankle_fwd = rel_h[:, [L_ANKLE, R_ANKLE], 1]
    horiz = seg[-1, PELVIS, [0, 2]] - seg[0, PELVIS, [0, 2]]
    return {
        "turn_deg": float(np.rad2deg(yaw[-1] - yaw[0])),
        "speed_left": float(v_local[0]),
        "speed_forward": float(v_local[1]),
        "speed": float(np.hypot(*v_local)),
        "displacement": float(np.hypot(*horiz)),
        "pelvis_max": float(pelvis_y.max()),
        "pelvis_min": float(pelvis_y.min()),
        "pelvis_core_mean": float(np.mean(core[:, PELVIS, 1] - floor)),
        "ankle_spread": float(np.abs(rel_h[:, L_ANKLE, 0] - rel_h[:, R_ANKLE, 0]).max()),
        "ankle_height": [float(ankle_h[:, k].max()) for k in range(2)],
        "ankle_forward": [float(ankle_fwd[ankle_h[:, k].argmax(), k]) for k in range(2)],
        "wrist_above_head": [float(np.quantile(wrist_above_head[:, k], 0.6)) for k in range(2)],
        "wrist_above_head_max": [float(wrist_above_head[:, k].max()) for k in range(2)],
        "reach": [float(reach[:, k].max()) for k in range(2)],
        "wiggle": wiggle,
        "wrist_min_dist": float(wrist_dist.min()),
        "claps": _closings(wrist_dist, THRESHOLDS.clap_close, THRESHOLDS.clap_close + 0.1),
        "head_forward": float(rel_h[:, HEAD, 1].max()),
    }


def classify(m: dict, th: Thresholds = THRESHOLDS) -> tuple[str, dict]:
    """(family, attributes) shown by a measured segment; the rules are tried in this order."""
    side_of = lambda k: "left" if k == 0 else "right"  # noqa: E731
    turn = m["turn_deg"]
    if abs(turn) >= th.spin_deg:
        return "spin", {"side": "left" if turn > 0 else "right"}
    if min(m["wrist_above_head_max"]) > th.arm_up and m["ankle_spread"] > th.jacks_spread:
        return "jumping_jacks", {}
    if m["pelvis_max"] - STAND_HEIGHT > th.jump_rise:
        return "jump", {"mode": "forward" if m["displacement"] > th.jump_forward else "in_place"}
    if m["speed"] > th.moving:
        if m["pelvis_core_mean"] < STAND_HEIGHT - th.crouch_drop:
            return "crouch", {}
        if abs(m["speed_left"]) > abs(m["speed_forward"]):
            return "sidestep", {"side": "left" if m["speed_left"] > 0 else "right"}
        v = abs(m["speed_forward"])
        direction = "forward" if m["speed_forward"] > 0 else "backward"
        if v < th.walk_jog:
            speed = "slow" if v < th.walk_slow else ("normal" if v < th.walk_fast else "fast")
            return "walk", {"direction": direction, "speed": speed}
        if v < th.jog_run:
            return "jog", {"direction": direction}
        return "run", {}
    if abs(turn) >= th.turn_deg:
        return "turn", {"side": "left" if turn > 0 else "right", "angle": "180" if abs(turn) > th.turn_180_deg else "90"}
    if m["pelvis_min"] < STAND_HEIGHT - th.squat_drop:
        return "squat", {}
    if max(m["ankle_height"]) > th.kick_ankle:
        k = int(np.argmax(m["ankle_height"]))
        return "kick", {"side": side_of(k)}
    if m["head_forward"] > th.bow_forward:
        return "bow", {}
    if m["claps"] >= 2 and m["wrist_min_dist"] < th.clap_close:
        return "clap", {}
    if max(m["wiggle"]) > th.wave_wiggle:
        return "wave", {"side": side_of(int(np.argmax(m["wiggle"])))}
    up = [m["wrist_above_head"][k] > th.arm_up for k in range(2)]
    if all(up):
        return "raise_arms", {"side": "both"}
    if any(up):
        return "raise_arms", {"side": side_of(up.index(True))}
    if max(m["reach"]) > th.punch_reach:
        return "punch", {"side": side_of(int(np.argmax(m["reach"])))}
    return "stand", {}


def _spans(actions: list[dict], num_frames: int) -> list[tuple[int, int]]:
    """Claimed spans rescaled from the claim's length to the motion's length; a claim without spans
    (no ``start``/``end``) is split into equal parts."""
    if any("start" not in a or "end" not in a for a in actions):
        edges = np.linspace(0, num_frames, len(actions) + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    total = max(int(a["end"]) for a in actions)
    scale = num_frames / max(total, 1)
    return [(int(round(a["start"] * scale)), int(round(a["end"] * scale))) for a in actions]


def judge(joints: np.ndarray, actions: list[dict]) -> dict:
    """Judge every attribute of a claimed action sequence on a motion.

    Args:
        joints: (T, 22, 3) joint positions (t2m, +Y up, 20 fps), e.g. ``new_joints/<id>.npy``.
        actions: the claim, as in ``attributes.jsonl``: ``[{"family", "attributes", "start", "end"}, ...]``
            (spans in frames of the claimed motion, rescaled to ``joints``; without spans: equal parts).

    Returns:
        ``{"actions": [{"family": bool, <attribute>: bool, ...}, ...], "predicted": [(family, attributes)...],
        "correct": n_true, "total": n_judged, "score": n_true / n_judged}``.
    """
    joints = np.asarray(joints, dtype=np.float64)
    results, predicted = [], []
    for act, (s, e) in zip(actions, _spans(actions, len(joints))):
        fam, attrs = classify(measure(joints, s, e))
        predicted.append((fam, attrs))
        ok_family = fam == act["family"]
        res = {"family": ok_family}
        for key, value in act.get("attributes", {}).items():
            res[key] = bool(ok_family and attrs.get(key) == value)
        results.append(res)
    flat = [v for r in results for v in r.values()]
    return {"actions": results, "predicted": predicted, "correct": int(sum(flat)), "total": len(flat),
            "score": float(np.mean(flat)) if flat else 0.0}


def oracle_accuracy(list_of_joints: list[np.ndarray], list_of_actions: list[list[dict]]) -> dict:
    """Accuracy of the judge over motions paired with claims: the fraction of all judged attributes that
    the motions show (``overall``) and the same per attribute name (``per_attribute``: family, side, ...)."""
    if len(list_of_joints) != len(list_of_actions):
        raise ValueError(f"{len(list_of_joints)} motions but {len(list_of_actions)} claims")
    per: dict[str, list[bool]] = {}
    for joints, actions in zip(list_of_joints, list_of_actions):
        for res in judge(joints, actions)["actions"]:
            for key, ok in res.items():
                per.setdefault(key, []).append(bool(ok))
    flat = [v for vals in per.values() for v in vals]
    return {"overall": float(np.mean(flat)) if flat else 0.0, "count": len(flat),
            "per_attribute": {k: float(np.mean(v)) for k, v in sorted(per.items())}}
