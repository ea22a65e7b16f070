"""Action families of the procedural dataset, animated in joint-rotation space on the t2m skeleton.

Every family turns (attributes, number of frames, random generator) into a :class:`Clip`: per-frame bone
*directions* (thighs, shins, feet in the root frame; upper arms and forearms in the torso frame), spine and
head bend angles, and the root's motion (velocity in the heading frame, yaw rate, lift above the ground).
:func:`pose_to_local_quats` converts a clip into HumanML3D-convention local quaternions (the bone that ends
at joint j is rotated by ``q_j``, every chain restarting from the root rotation, see
:mod:`easytune_lab.motion.skeleton`); :mod:`easytune_lab.motion.synth` then runs forward kinematics and the
HumanML3D feature pipeline on the result, exactly as for captured data.

Body frame: +X is the body's left, +Y up, +Z forward (the t2m rest pose faces +Z with its left hip at +X).
A positive yaw rate turns the body to its left (+Z towards +X). Frame rate 20 fps (HumanML3D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from .quaternion import qbetween, qinv, qmul, qrot
from .skeleton import T2M

FPS = 20.0
LEFT, RIGHT = 1.0, -1.0
_SIDE = {"left": LEFT, "right": RIGHT}

# Joints of the t2m skeleton used here (HumanML3D paramUtil numbering).
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
L_FOOT, R_FOOT, NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER = range(10, 18)
L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = range(18, 22)
FOOT_JOINTS = (L_ANKLE, R_ANKLE, L_FOOT, R_FOOT)

# Bone directions chosen for the bones no action moves (unit vectors in the parent frame; the t2m raw
# offsets are axis-aligned, a real body's are not): hips slightly below the pelvis, collar bones up and out,
# shoulders out, feet forward and slightly down.
_HIP_DIR = {LEFT: (0.8, -0.6, 0.0), RIGHT: (-0.8, -0.6, 0.0)}
_COLLAR_DIR = {LEFT: (0.55, 0.83, -0.05), RIGHT: (-0.55, 0.83, -0.05)}
_SHOULDER_DIR = {LEFT: (0.95, 0.12, -0.05), RIGHT: (-0.95, 0.12, -0.05)}
_FOOT_PITCH = 0.3  # rad: foot bone (ankle -> toe) points this far below the horizontal when flat

POSE_KEYS = ("thigh_l", "thigh_r", "shin_l", "shin_r", "foot_l", "foot_r", "uarm_l", "uarm_r", "farm_l", "farm_r")


@dataclass
class Clip:
    """One action as per-frame pose channels (n frames).

    dirs: bone directions, (n, 3) unit vectors: legs in the root frame, arms in the torso frame.
    spine: (n, 3) whole-spine (forward bend, bend to the left, twist to the left) in radians.
    head: (n, 3) neck + head, same convention.
    vel: (n, 2) root velocity in the heading frame (to the left, forward), m/s.
    yaw_rate: (n,) rad/s, positive = turning left.
    lift: (n,) pelvis height above the ground contact of the lowest foot joint, metres (flight).
    """

    dirs: dict[str, np.ndarray]
    spine: np.ndarray
    head: np.ndarray
    vel: np.ndarray
    yaw_rate: np.ndarray
    lift: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.yaw_rate)


@dataclass(frozen=True)
class Family:
    """An action family: its attributes with their allowed values and its duration range (frames)."""

    name: str
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    frames: tuple[int, int] = (40, 70)


@dataclass(frozen=True)
class Body:
    """Rest geometry of the t2m skeleton needed to place limbs (metres)."""

    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    shoulder: dict  # side -> (3,) shoulder joint in the torso frame, relative to spine3


@lru_cache(maxsize=1)
def body() -> Body:
    lengths = T2M.bone_lengths
    shoulders = {}
    for side, collar, shoulder in ((LEFT, L_COLLAR, L_SHOULDER), (RIGHT, R_COLLAR, R_SHOULDER)):
        c = _unit(np.array(_COLLAR_DIR[side])) * lengths[collar]
        s = _unit(np.array(_SHOULDER_DIR[side])) * lengths[shoulder]
        shoulders[side] = c + s
    return Body(thigh=float((lengths[L_KNEE] + lengths[R_KNEE]) / 2), shin=float((lengths[L_ANKLE] + lengths[R_ANKLE]) / 2),
                upper_arm=float((lengths[L_ELBOW] + lengths[R_ELBOW]) / 2),
                forearm=float((lengths[L_WRIST] + lengths[R_WRIST]) / 2), shoulder=shoulders)


# --------------------------------------------------------------------------------------------------
# small geometry helpers
# --------------------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _col(x, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,)).astype(np.float64)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Hermite ease 3x² - 2x³ on [0, 1] (clipped)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def envelope(n: int, ramp: int) -> np.ndarray:
    """(n,) 0 -> 1 over the first ``ramp`` frames, 1, then 1 -> 0 over the last ``ramp`` frames."""
    i = np.arange(n, dtype=np.float64)
    ramp = max(1, min(ramp, n // 2))
    return smoothstep(i / ramp) * smoothstep((n - 1 - i) / ramp)


def leg_dirs(flex, knee, side: float, abduct=0.0, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Thigh and shin directions (root frame) from hip flexion (thigh forward of vertical), knee flexion
    (shin back relative to the thigh) and hip abduction (outwards), all radians, (n,) or scalars."""
    flex, knee, abduct = _col(flex, n), _col(knee, n), _col(abduct, n)
    shin_angle = flex - knee
    ca, sa = np.cos(abduct), np.sin(abduct)
    thigh = np.stack([side * sa, -ca * np.cos(flex), ca * np.sin(flex)], -1)
    shin = np.stack([side * sa, -ca * np.cos(shin_angle), ca * np.sin(shin_angle)], -1)
    return _unit(thigh), _unit(shin)


def foot_dir(pitch, n: int = 1) -> np.ndarray:
    """Foot bone direction (root frame): forward, ``_FOOT_PITCH + pitch`` below the horizontal."""
    p = _col(pitch, n) + _FOOT_PITCH
    return np.stack([np.zeros(n), -np.sin(p), np.cos(p)], -1)


def arm_dir(abduct, flex, side: float, n: int = 1) -> np.ndarray:
    """Upper-arm direction (torso frame): raised sideways by ``abduct`` (0 hanging, π/2 horizontal, π up)
    and forwards by ``flex`` (π/2 pointing forward)."""
    a, f = _col(abduct, n), _col(flex, n)
    return _unit(np.stack([side * np.sin(a) * np.cos(f), -np.cos(a) * np.cos(f), np.sin(f)], -1))


def bend(upper: np.ndarray, elbow, towards) -> np.ndarray:
    """Forearm direction: ``upper`` turned by ``elbow`` radians towards the direction ``towards``."""
    n = upper.shape[0]
    e = _col(elbow, n)[:, None]
    t = np.broadcast_to(np.asarray(towards, dtype=np.float64), upper.shape)
    perp = t - (t * upper).sum(-1, keepdims=True) * upper
    bad = np.linalg.norm(perp, axis=-1) < 1e-6
    if bad.any():  # towards ∥ upper: fall back to bending forwards/upwards
        alt = np.array([0.0, 0.3, 1.0])
        perp[bad] = alt - (alt * upper[bad]).sum(-1, keepdims=True) * upper[bad]
    return _unit(np.cos(e) * upper + np.sin(e) * _unit(perp))


def standing(n: int, rng: np.random.Generator) -> Clip:
    """A relaxed standing pose: straight legs, arms hanging slightly away from the body, elbows a bit bent."""
    dirs = {}
    for key, side in (("l", LEFT), ("r", RIGHT)):
        thigh, shin = leg_dirs(0.02, 0.04, side, abduct=0.03, n=n)
        dirs[f"thigh_{key}"], dirs[f"shin_{key}"] = thigh, shin
        dirs[f"foot_{key}"] = foot_dir(0.0, n)
        up = arm_dir(rng.uniform(0.10, 0.2), rng.uniform(-0.05, 0.1), side, n)
        dirs[f"uarm_{key}"] = up
        dirs[f"farm_{key}"] = bend(up, rng.uniform(0.15, 0.35), (0.0, 0.0, 1.0))
    zeros3 = np.zeros((n, 3))
    return Clip(dirs=dirs, spine=zeros3.copy(), head=zeros3.copy(), vel=np.zeros((n, 2)), yaw_rate=np.zeros(n),
                lift=np.zeros(n))


def slerp_dirs(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation between unit directions ``u`` and ``v`` (n, 3) with weights ``w`` (n,) or
    (n, 1): the direction moves along the great circle at constant angular speed (a linear blend of two
    nearly opposite directions would pass close to zero and flip)."""
    w = np.asarray(w, dtype=np.float64).reshape(-1, 1)
    cos = np.clip((u * v).sum(-1, keepdims=True), -1.0, 1.0)
    angle = np.arccos(cos)
    sin = np.sin(angle)
    small = sin < 1e-4
    safe = np.where(small, 1.0, sin)
    a = np.where(small, 1 - w, np.sin((1 - w) * angle) / safe)
    b = np.where(small, w, np.sin(w * angle) / safe)
    return _unit(a * u + b * v)


def set_arm(clip: Clip, side: float, upper: np.ndarray, fore: np.ndarray, weight: np.ndarray | None = None) -> None:
    """Overwrite (or blend in with per-frame ``weight``) one arm's upper-arm and forearm directions."""
    k = "l" if side == LEFT else "r"
    if weight is None:
        clip.dirs[f"uarm_{k}"], clip.dirs[f"farm_{k}"] = upper, fore
        return
    clip.dirs[f"uarm_{k}"] = slerp_dirs(clip.dirs[f"uarm_{k}"], upper, weight)
    clip.dirs[f"farm_{k}"] = slerp_dirs(clip.dirs[f"farm_{k}"], fore, weight)


def set_leg(clip: Clip, side: float, thigh: np.ndarray, shin: np.ndarray, foot: np.ndarray | None = None) -> None:
    k = "l" if side == LEFT else "r"
    clip.dirs[f"thigh_{k}"], clip.dirs[f"shin_{k}"] = thigh, shin
    if foot is not None:
        clip.dirs[f"foot_{k}"] = foot


# --------------------------------------------------------------------------------------------------
# locomotion
# --------------------------------------------------------------------------------------------------
def gait(n: int, rng: np.random.Generator, *, speed: float, cadence: float, direction: float = 1.0,
         lateral: float = 0.0, stance: float = 1.0, knee_amp: float = 0.9, arm_amp: float = 0.35,
         elbow: float = 0.3, flight: float = 0.0, crouch_hip: float = 0.0, crouch_knee: float = 0.0,
         lean: float = 0.0, ramp: int = 8) -> Clip:
    """A periodic stepping cycle (walk, jog, run, crouch-walk, stepping in place).

    ``cadence`` is strides (two steps) per second; the hip swing amplitude follows from the step length
    ``speed / (2 cadence)`` covered during a stance of relative length ``stance``:
    ``2 (thigh + shin) sin A = stance · step``. The knee flexes while its leg swings in the direction
    of travel; arms swing opposite to the legs; ``flight`` adds a pelvis bump twice per stride.
    """
    clip = standing(n, rng)
    b = body()
    env = envelope(n, ramp)
    t = np.arange(n) / FPS
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * cadence * t
    step = speed / (2.0 * cadence) if cadence > 0 else 0.0
    amp = np.arcsin(min(0.75, stance * step / (2.0 * (b.thigh + b.shin)))) + (0.1 if speed == 0 else 0.0)
    travel = direction if lateral == 0 else 1.0
    for side, ph in ((LEFT, phase), (RIGHT, phase + np.pi)):
        swing_rate = np.cos(ph) * travel
        lifted = np.clip(swing_rate, 0, None) ** 1.5
        if lateral != 0:  # side steps: abduction alternates, the leading leg opens first
            lead = 1.0 if side * lateral > 0 else 0.0
            abd = env * (0.06 + 0.16 * (0.5 + 0.5 * np.sin(ph + lead * np.pi / 2)))
            thigh, shin = leg_dirs(env * (crouch_hip + 0.15 * lifted), env * (crouch_knee + 0.5 * lifted) + 0.05, side, abd, n)
        else:
            flex = env * (crouch_hip + amp * np.sin(ph))
            knee = 0.06 + env * (crouch_knee + knee_amp * lifted)
            thigh, shin = leg_dirs(flex, knee, side, 0.03, n)
        set_leg(clip, side, thigh, shin, foot_dir(env * 0.25 * lifted * (1 if lateral == 0 else 0.5), n))
        arm_swing = -arm_amp * env * np.sin(ph) * (1.0 if lateral == 0 else 0.3)
        up = arm_dir(0.12 + 0.05 * env, arm_swing, side, n)
        set_arm(clip, side, up, bend(up, elbow + 0.3 * np.clip(arm_swing, 0, None), (0.0, 0.0, 1.0)))
    clip.spine[:, 0] = env * lean + 0.02 * np.sin(2 * phase)
    clip.spine[:, 2] = 0.05 * env * np.sin(phase) * (1.0 if lateral == 0 else 0.0)
    clip.vel[:, 0] = env * lateral * speed
    clip.vel[:, 1] = env * (0.0 if lateral else direction * speed)
    clip.lift = flight * env * np.clip(-np.cos(2 * phase), 0, None)
    return clip


WALK_SPEEDS = {"slow": (0.5, 0.7), "normal": (0.95, 1.2), "fast": (1.45, 1.7)}
WALK_CADENCE = {"slow": 0.72, "normal": 0.88, "fast": 1.0}


def walk(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    speed = rng.uniform(*WALK_SPEEDS[attrs["speed"]])
    d = 1.0 if attrs["direction"] == "forward" else -1.0
    return gait(n, rng, speed=speed, cadence=WALK_CADENCE[attrs["speed"]] * rng.uniform(0.93, 1.07), direction=d,
                arm_amp=rng.uniform(0.2, 0.4), lean=0.04 * d)


def jog(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    d = 1.0 if attrs["direction"] == "forward" else -1.0
    speed = rng.uniform(2.1, 2.5) if d > 0 else rng.uniform(2.0, 2.3)
    return gait(n, rng, speed=speed, cadence=rng.uniform(1.3, 1.45), direction=d, stance=0.7, knee_amp=1.4,
                arm_amp=0.45, elbow=1.3, flight=0.03, lean=0.1 * d)


def run(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    return gait(n, rng, speed=rng.uniform(3.2, 3.8), cadence=rng.uniform(1.45, 1.6), stance=0.55, knee_amp=1.8,
                arm_amp=0.7, elbow=1.5, flight=0.05, lean=0.2, ramp=6)


def crouch(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """Walking forward with bent knees and a bent back (sneaking)."""
    return gait(n, rng, speed=rng.uniform(0.4, 0.7), cadence=rng.uniform(0.65, 0.8), knee_amp=0.5,
                crouch_hip=1.05, crouch_knee=1.75, lean=0.45, arm_amp=0.2, elbow=0.8)


def sidestep(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    return gait(n, rng, speed=rng.uniform(0.45, 0.7), cadence=rng.uniform(0.85, 1.0), lateral=_SIDE[attrs["side"]],
                arm_amp=0.1)


# --------------------------------------------------------------------------------------------------
# turning
# --------------------------------------------------------------------------------------------------
def _yaw_profile(n: int, total: float, margin: float = 0.15) -> np.ndarray:
    """(n,) yaw rate (rad/s) turning by ``total`` radians with a smooth bell between the margins."""
    i = np.arange(n, dtype=np.float64)
    a, b = margin * (n - 1), (1 - margin) * (n - 1)
    x = np.clip((i - a) / max(b - a, 1.0), 0, 1)
    rate = np.where((i >= a) & (i <= b), 1 - np.cos(2 * np.pi * x), 0.0)
    return rate / rate.sum() * total * FPS


def turn(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    angle = np.deg2rad(float(attrs["angle"]) + rng.uniform(-12, 12))
    clip = gait(n, rng, speed=0.0, cadence=rng.uniform(0.9, 1.1), knee_amp=0.5, arm_amp=0.1, ramp=5)
    clip.yaw_rate = _yaw_profile(n, _SIDE[attrs["side"]] * angle)
    return clip


def spin(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = gait(n, rng, speed=0.0, cadence=rng.uniform(1.2, 1.4), knee_amp=0.6, arm_amp=0.0, ramp=4)
    env = envelope(n, 6)
    for side in (LEFT, RIGHT):
        up = arm_dir(0.2 + env * rng.uniform(0.4, 0.7), 0.1, side, n)
        set_arm(clip, side, up, bend(up, 0.4, (0.0, 0.0, 1.0)))
    clip.yaw_rate = _yaw_profile(n, _SIDE[attrs["side"]] * np.deg2rad(360 + rng.uniform(-15, 15)), margin=0.12)
    return clip


# --------------------------------------------------------------------------------------------------
# jumps
# --------------------------------------------------------------------------------------------------
def jump(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """One or two jumps: crouch, take off with an arm swing, ballistic flight, land in a crouch, stand up."""
    clip = standing(n, rng)
    count = 1 if n < 50 else int(rng.integers(1, 3))
    forward = attrs["mode"] == "forward"
    hip = np.zeros(n)
    knee = np.zeros(n)
    arms = np.zeros(n)
    lift = np.zeros(n)
    vel = np.zeros(n)
    edges = np.linspace(0.06 * n, 0.97 * n, count + 1)
    i = np.arange(n, dtype=np.float64)
    for k in range(count):
        a, b = edges[k], edges[k + 1]
        length = b - a
        s = (i - a) / length  # 0..1 within this jump
        inside = (s >= 0) & (s <= 1)
        # phases: crouch 0-.3, push off .3-.42, flight .42-.66, absorb the landing .66-.78, stand up .78-1
        crouch_in = smoothstep(s / 0.3) * (1 - smoothstep((s - 0.3) / 0.12))
        landing = smoothstep((s - 0.64) / 0.12) * (1 - smoothstep((s - 0.76) / 0.24))
        depth = crouch_in + 0.8 * landing
        hip += 0.9 * depth * inside
        knee += 1.5 * depth * inside
        swing = -0.6 * smoothstep(s / 0.3) + 2.2 * smoothstep((s - 0.25) / 0.25) - 1.6 * smoothstep((s - 0.6) / 0.35)
        arms += np.where(inside, swing, 0.0)
        fl = (s > 0.42) & (s < 0.66)
        x = (s - 0.42) / 0.24
        height = rng.uniform(0.22, 0.34)
        lift += np.where(fl, 4 * height * x * (1 - x), 0.0)
        if forward:
            dist = rng.uniform(0.6, 1.0)
            vel += np.where(fl, dist / (0.24 * length / FPS), 0.0)
    for side in (LEFT, RIGHT):
        thigh, shin = leg_dirs(0.02 + hip, 0.04 + knee, side, 0.05, n)
        set_leg(clip, side, thigh, shin, foot_dir(0.5 * (lift > 0), n))
        up = arm_dir(0.15, arms, side, n)
        set_arm(clip, side, up, bend(up, 0.3, (0.0, 0.0, 1.0)))
    clip.spine[:, 0] = 0.35 * hip
    clip.lift = lift
    clip.vel[:, 1] = vel
    return clip


def jumping_jacks(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    cycles = max(2, int(round(n / FPS / rng.uniform(0.8, 1.0))))
    t = np.arange(n) / (n - 1)
    u = (1 - np.cos(2 * np.pi * cycles * np.clip((t - 0.05) / 0.9, 0, 1))) / 2  # 0 closed, 1 open
    hop = rng.uniform(0.05, 0.08)
    for side in (LEFT, RIGHT):
        thigh, shin = leg_dirs(0.02, 0.08 + 0.2 * np.sin(np.pi * u), side, 0.04 + 0.24 * u, n)
        set_leg(clip, side, thigh, shin)
        up = arm_dir(0.2 + 2.7 * u, 0.1, side, n)
        set_arm(clip, side, up, bend(up, 0.2, (0.0, 0.0, 1.0)))
    clip.lift = hop * np.sin(np.pi * u) ** 2
    return clip


# --------------------------------------------------------------------------------------------------
# arm actions
# --------------------------------------------------------------------------------------------------
def _raise_weight(n: int, up: float, down: float) -> np.ndarray:
    """(n,) 0 -> 1 by the fraction ``up`` of the clip, back to 0 from the fraction ``down`` on."""
    t = np.arange(n) / max(n - 1, 1)
    return smoothstep(t / up) * (1 - smoothstep((t - down) / (1 - down)))


def wave(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    side = _SIDE[attrs["side"]]
    w = _raise_weight(n, 0.2, 0.82)
    t = np.arange(n) / FPS
    osc = 0.1 + rng.uniform(0.4, 0.55) * np.sin(2 * np.pi * rng.uniform(1.6, 2.4) * t + rng.uniform(0, 2 * np.pi))
    up = arm_dir(rng.uniform(1.75, 2.05), rng.uniform(0.15, 0.4), side, n)
    fore = _unit(np.stack([side * np.sin(osc), np.cos(osc), np.full(n, 0.2)], -1))
    set_arm(clip, side, up, fore, w)
    return clip


def raise_arms(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    w = _raise_weight(n, 0.3, 0.8)
    sides = {"left": (LEFT,), "right": (RIGHT,), "both": (LEFT, RIGHT)}[attrs["side"]]
    sideways = rng.uniform() < 0.5
    for side in sides:
        up = arm_dir(rng.uniform(2.75, 3.0), 0.15, side, n) if sideways else arm_dir(0.1, rng.uniform(2.75, 3.0), side, n)
        set_arm(clip, side, up, bend(up, 0.1, (0.0, 0.0, 1.0)), w)
    return clip


def punch(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """Boxing guard with both fists; the named arm punches straight forward 2-4 times."""
    clip = standing(n, rng)
    side = _SIDE[attrs["side"]]
    guard_w = _raise_weight(n, 0.15, 0.88)
    for s in (LEFT, RIGHT):
        up = arm_dir(0.25, 0.45, s, n)
        fore = _unit(np.broadcast_to(np.array([-s * 0.35, 0.85, 0.45]), (n, 3)))
        set_arm(clip, s, up, fore, guard_w)
    count = int(rng.integers(2, 5))
    t = np.arange(n) / max(n - 1, 1)
    ext = np.zeros(n)
    for k in range(count):
        c = 0.22 + 0.56 * (k + 0.5) / count
        ext = np.maximum(ext, np.exp(-0.5 * ((t - c) / (0.22 / count)) ** 2))
    ext = np.clip(ext * 1.15, 0, 1)
    straight = _unit(np.broadcast_to(np.array([-side * 0.12, 0.08, 1.0]), (n, 3)))
    k = "l" if side == LEFT else "r"
    clip.dirs[f"uarm_{k}"] = slerp_dirs(clip.dirs[f"uarm_{k}"], straight, ext)
    clip.dirs[f"farm_{k}"] = slerp_dirs(clip.dirs[f"farm_{k}"], straight, ext)
    clip.spine[:, 2] = -side * 0.25 * ext
    return clip


def clap(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """Hands in front of the chest, brought together 3-6 times."""
    clip = standing(n, rng)
    b = body()
    w = _raise_weight(n, 0.15, 0.85)
    count = int(rng.integers(3, 7))
    t = np.arange(n) / max(n - 1, 1)
    x = np.clip((t - 0.15) / 0.7, 0, 1)
    gap = 0.5 + 0.5 * np.cos(2 * np.pi * count * x)  # 1 apart, 0 together
    for side in (LEFT, RIGHT):
        up = arm_dir(0.2, rng.uniform(0.55, 0.7), side, n)
        elbow = b.shoulder[side] + b.upper_arm * up
        target = np.stack([side * (-0.1 + 0.3 * gap), np.full(n, b.shoulder[side][1] - 0.05), np.full(n, 0.42)], -1)
        set_arm(clip, side, up, _unit(target - elbow), w)
    return clip


# --------------------------------------------------------------------------------------------------
# leg and whole-body actions
# --------------------------------------------------------------------------------------------------
def kick(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """A front kick: chamber the knee, extend the leg high in front, retract, put the foot down."""
    clip = standing(n, rng)
    side = _SIDE[attrs["side"]]
    t = np.arange(n) / max(n - 1, 1)
    s = np.clip((t - 0.15) / 0.7, 0, 1)
    peak = rng.uniform(1.25, 1.6)
    flex = peak * np.sin(np.pi * s) ** 1.5
    extend = np.exp(-0.5 * ((s - 0.5) / 0.12) ** 2)
    knee = (1.5 * np.sin(np.pi * s) ** 0.7) * (1 - extend) + 0.05
    thigh, shin = leg_dirs(flex, knee, side, 0.03, n)
    set_leg(clip, side, thigh, shin, foot_dir(-0.4 * extend, n))
    for s_arm in (LEFT, RIGHT):
        up = arm_dir(0.35 + 0.3 * np.sin(np.pi * s), 0.3, s_arm, n)
        set_arm(clip, s_arm, up, bend(up, 0.9, (0.0, 0.0, 1.0)))
    clip.spine[:, 0] = -0.2 * np.sin(np.pi * s)
    return clip


def squat(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    count = 1 if n < 45 else int(rng.integers(1, 4))
    t = np.arange(n) / max(n - 1, 1)
    x = np.clip((t - 0.08) / 0.84, 0, 1)
    depth = rng.uniform(0.85, 1.0) * (0.5 - 0.5 * np.cos(2 * np.pi * count * x))
    for side in (LEFT, RIGHT):
        thigh, shin = leg_dirs(0.02 + 1.45 * depth, 0.04 + 2.2 * depth, side, 0.12 * depth + 0.03, n)
        set_leg(clip, side, thigh, shin)
        up = arm_dir(0.12, 1.4 * depth, side, n)
        set_arm(clip, side, up, bend(up, 0.2, (0.0, 1.0, 0.0)))
    clip.spine[:, 0] = 0.45 * depth
    return clip


def bow(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    w = _raise_weight(n, 0.35, 0.7)
    clip.spine[:, 0] = rng.uniform(0.9, 1.25) * w
    clip.head[:, 0] = 0.3 * w
    return clip


def stand(attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    clip = standing(n, rng)
    t = np.arange(n) / FPS
    sway = 0.03 * np.sin(2 * np.pi * rng.uniform(0.15, 0.3) * t + rng.uniform(0, 6.3))
    for side in (LEFT, RIGHT):
        thigh, shin = leg_dirs(0.02, 0.04, side, 0.03 + side * sway, n)
        set_leg(clip, side, thigh, shin)
    clip.spine[:, 1] = sway
    return clip


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("walk", {"direction": ("forward", "backward"), "speed": ("slow", "normal", "fast")}, (50, 90)),
    Family("jog", {"direction": ("forward", "backward")}, (40, 70)),
    Family("run", {}, (34, 56)),
    Family("crouch", {}, (50, 80)),
    Family("sidestep", {"side": ("left", "right")}, (40, 70)),
    Family("turn", {"side": ("left", "right"), "angle": ("90", "180")}, (30, 46)),
    Family("spin", {"side": ("left", "right")}, (30, 44)),
    Family("jump", {"mode": ("in_place", "forward")}, (36, 60)),
    Family("jumping_jacks", {}, (50, 80)),
    Family("wave", {"side": ("left", "right")}, (40, 70)),
    Family("raise_arms", {"side": ("left", "right", "both")}, (40, 70)),
    Family("punch", {"side": ("left", "right")}, (36, 60)),
    Family("clap", {}, (40, 64)),
    Family("kick", {"side": ("left", "right")}, (30, 46)),
    Family("squat", {}, (40, 80)),
    Family("bow", {}, (40, 60)),
    Family("stand", {}, (30, 50)),
)}

ANIMATORS: dict[str, Callable[[dict, int, np.random.Generator], Clip]] = {
    "walk": walk, "jog": jog, "run": run, "crouch": crouch, "sidestep": sidestep, "turn": turn, "spin": spin,
    "jump": jump, "jumping_jacks": jumping_jacks, "wave": wave, "raise_arms": raise_arms, "punch": punch,
    "clap": clap, "kick": kick, "squat": squat, "bow": bow, "stand": stand,
}


def animate(family: str, attrs: dict, n: int, rng: np.random.Generator) -> Clip:
    """The clip of one action (``n`` frames at 20 fps)."""
    return ANIMATORS[family](attrs, n, rng)


# --------------------------------------------------------------------------------------------------
# sequences of clips and conversion to local quaternions
# --------------------------------------------------------------------------------------------------
def concatenate(clips: list[Clip], blend: int = 4) -> Clip:
    """Concatenate clips; across each boundary ±``blend`` frames are replaced by a smoothstep blend between
    the last kept frame of one clip and the first kept frame of the next (a smooth transition)."""
    dirs = {k: np.concatenate([c.dirs[k] for c in clips]) for k in POSE_KEYS}
    out = Clip(dirs=dirs, spine=np.concatenate([c.spine for c in clips]), head=np.concatenate([c.head for c in clips]),
               vel=np.concatenate([c.vel for c in clips]), yaw_rate=np.concatenate([c.yaw_rate for c in clips]),
               lift=np.concatenate([c.lift for c in clips]))
    channels = [out.spine, out.head, out.vel, out.yaw_rate, out.lift]
    boundary = 0
    for c in clips[:-1]:
        boundary += c.num_frames
        a, b = boundary - blend - 1, boundary + blend
        w = smoothstep((np.arange(a + 1, b) - a) / (b - a))
        for ch in channels:
            wa = w.reshape((-1,) + (1,) * (ch.ndim - 1))
            ch[a + 1:b] = (1 - wa) * ch[a] + wa * ch[b]
        for k in POSE_KEYS:  # directions along great circles
            d = out.dirs[k]
            d[a + 1:b] = slerp_dirs(np.broadcast_to(d[a], (b - a - 1, 3)), np.broadcast_to(d[b], (b - a - 1, 3)), w)
    return out


def _axis_angle(axis: tuple[float, float, float], angle: np.ndarray) -> np.ndarray:
    half = 0.5 * np.asarray(angle, dtype=np.float64)
    ax = np.asarray(axis, dtype=np.float64)
    return np.concatenate([np.cos(half)[:, None], np.sin(half)[:, None] * ax], -1)


def _spine_quat(angles: np.ndarray, weight: float) -> np.ndarray:
    """Local quaternion of one spine/neck bone taking ``weight`` of the (forward, left, twist) bend."""
    fwd = _axis_angle((1.0, 0.0, 0.0), weight * angles[:, 0])  # +X rotation tips +Y towards +Z
    side = _axis_angle((0.0, 0.0, 1.0), -weight * angles[:, 1])  # -Z rotation tips +Y towards +X (left)
    twist = _axis_angle((0.0, 1.0, 0.0), weight * angles[:, 2])
    return qmul(twist, qmul(fwd, side))


def _chain_quats(rest: list[np.ndarray], dirs: list[np.ndarray]) -> list[np.ndarray]:
    """Local quaternions of consecutive bones whose rest directions ``rest[k]`` must point along ``dirs[k]``
    (both (m, 3), the targets given in the frame in which the chain starts): the shortest arc for each bone,
    expressed in the frame accumulated along the chain."""
    out = []
    acc = None
    for r, d in zip(rest, dirs):
        local_d = d if acc is None else qrot(qinv(acc), d)
        q = qbetween(r, local_d)
        out.append(q)
        acc = q if acc is None else qmul(acc, q)
    return out


_LIMB_CHAINS = ((L_HIP, L_KNEE, L_ANKLE, L_FOOT), (R_HIP, R_KNEE, R_ANKLE, R_FOOT),
                (L_COLLAR, L_SHOULDER, L_ELBOW, L_WRIST), (R_COLLAR, R_SHOULDER, R_ELBOW, R_WRIST))


def pose_to_local_quats(clip: Clip) -> np.ndarray:
    """(n, 22, 4) HumanML3D-convention local quaternions of a clip, root slot = identity (the caller sets the
    root's yaw). Arms are placed in the torso frame: the collar quaternions carry the accumulated spine
    rotation, because in HumanML3D's FK the arm chains restart from the root rotation. The four limb chains
    are solved together (stacked along the frame axis)."""
    n = clip.num_frames
    raw = T2M.raw_offsets
    q = np.zeros((n, 22, 4))
    q[..., 0] = 1.0
    torso = None
    for j, wgt in ((SPINE1, 0.3), (SPINE2, 0.35), (SPINE3, 0.35)):
        q[:, j] = _spine_quat(clip.spine, wgt)
        torso = q[:, j] if torso is None else qmul(torso, q[:, j])
    q[:, NECK] = _spine_quat(clip.head, 0.5)
    q[:, HEAD] = _spine_quat(clip.head, 0.5)
    fixed = lambda v: np.broadcast_to(_unit(np.array(v)), (n, 3))  # noqa: E731
    arm = qrot(np.concatenate([torso] * 8), np.concatenate([
        fixed(_COLLAR_DIR[LEFT]), fixed(_COLLAR_DIR[RIGHT]), fixed(_SHOULDER_DIR[LEFT]), fixed(_SHOULDER_DIR[RIGHT]),
        clip.dirs["uarm_l"], clip.dirs["uarm_r"], clip.dirs["farm_l"], clip.dirs["farm_r"]]))
    collar, shoulder, upper, fore = (arm[k * 2 * n:(k + 1) * 2 * n] for k in range(4))
    targets = [
        np.concatenate([fixed(_HIP_DIR[LEFT]), fixed(_HIP_DIR[RIGHT]), collar]),
        np.concatenate([clip.dirs["thigh_l"], clip.dirs["thigh_r"], shoulder]),
        np.concatenate([clip.dirs["shin_l"], clip.dirs["shin_r"], upper]),
        np.concatenate([clip.dirs["foot_l"], clip.dirs["foot_r"], fore]),
    ]
    rest = [np.repeat(raw[[chain[k] for chain in _LIMB_CHAINS]], n, axis=0) for k in range(4)]
    solved = _chain_quats(rest, targets)
    for k in range(4):
        for c, chain in enumerate(_LIMB_CHAINS):
            q[:, chain[k]] = solved[k][c * n:(c + 1) * n]
    return q
