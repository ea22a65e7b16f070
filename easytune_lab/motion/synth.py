"""The procedural text-motion dataset in HumanML3D format (``easytune data synth``).

Each motion is a sequence of 1-3 actions (:mod:`easytune_lab.motion.actions`) animated in joint-rotation
space on the t2m skeleton with a root trajectory, turned into joint positions by HumanML3D-convention forward
kinematics, and then processed exactly like captured data: :func:`~easytune_lab.motion.features.joints_to_features`
(retarget, floor, origin, face +Z, IK, 263-d features) and ``new_joints = recover_from_ric(features)``.

Layout (HumanML3D's): ``new_joint_vecs/<id>.npy`` float32 (T-1, 263), ``new_joints/<id>.npy`` float32
(T-1, 22, 3), ``texts/<id>.txt``, ``train.txt``/``val.txt``/``test.txt`` (80/5/15 %) and ``all.txt``,
``Mean.npy``/``Std.npy`` (train split; Std averaged within each feature block as HumanML3D's
``mean_variance`` does), plus ``attributes.jsonl`` (ground-truth actions with frame spans, for the oracle
judge) and ``dataset.json``.

Determinism: every random choice of motion ``i`` comes from generators seeded with ``(seed, i, stream)``,
so the files do not depend on the number of workers or the order in which motions finish.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import write_json, write_npy, write_text
from ..runtime import available_cores, progress_bar as tqdm
from .actions import FAMILIES, FOOT_JOINTS, FPS, POSE_KEYS, animate, concatenate, pose_to_local_quats
from .captions import make_captions, texts_file
from .features import feature_layout, joints_to_features, recover_from_ric
from .quaternion import quat_about_y
from .skeleton import T2M, forward_kinematics

GENERATOR_VERSION = "1.1"
# joint frames per motion: the features (one frame fewer) then have 40..196 frames, HumanML3D's range
MIN_FRAMES, MAX_FRAMES = 41, 197
SPLIT_FRACTIONS = (0.80, 0.05, 0.15)  # train, val, test
NUM_ACTIONS_P = (0.35, 0.35, 0.30)  # probability of 1, 2, 3 actions
NEAR_MISS_P = 0.5  # probability that an odd-numbered motion is a near miss of the one before it

# streams of the per-motion random generators
_PLAN, _NEAR, _ANIM, _TEXT = 0, 1, 2, 3


def motion_id(index: int) -> str:
    return f"{index:06d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


# --------------------------------------------------------------------------------------------------
# plans: which actions, with which attributes and durations
# --------------------------------------------------------------------------------------------------
def _random_attrs(family: str, rng: np.random.Generator) -> dict:
    return {k: v[int(rng.integers(len(v)))] for k, v in FAMILIES[family].attributes.items()}


def _fit_durations(frames: list[int]) -> list[int]:
    """Scale action durations so that the motion has MIN_FRAMES..MAX_FRAMES frames."""
    total = sum(frames)
    if total > MAX_FRAMES:
        frames = [max(24, int(f * MAX_FRAMES / total)) for f in frames]
        while sum(frames) > MAX_FRAMES:
            frames[int(np.argmax(frames))] -= 1
    elif total < MIN_FRAMES:
        frames = [f + (MIN_FRAMES - total) * (k == 0) for k, f in enumerate(frames)]
    return frames


def sample_plan(rng: np.random.Generator) -> list[dict]:
    """A random sequence of 1-3 actions ``{"family", "attributes", "frames"}``, no family twice in a row."""
    names = sorted(FAMILIES)
    k = int(rng.choice([1, 2, 3], p=NUM_ACTIONS_P))
    plan: list[dict] = []
    for _ in range(k):
        choices = [f for f in names if not plan or f != plan[-1]["family"]]
        fam = choices[int(rng.integers(len(choices)))]
        lo, hi = FAMILIES[fam].frames
        plan.append({"family": fam, "attributes": _random_attrs(fam, rng), "frames": int(rng.integers(lo, hi + 1))})
    for act, n in zip(plan, _fit_durations([a["frames"] for a in plan])):
        act["frames"] = n
    return plan


def _swappable(plan: list[dict], j: int) -> bool:
    """Whether swapping actions j and j+1 changes the plan and keeps equal families apart."""
    fams = [a["family"] for a in plan]
    fams[j], fams[j + 1] = fams[j + 1], fams[j]
    return plan[j]["family"] != plan[j + 1]["family"] and all(a != b for a, b in zip(fams[:-1], fams[1:]))


def near_miss(plan: list[dict], rng: np.random.Generator) -> list[dict]:
    """A plan that differs from ``plan`` in one thing: one attribute value (left/right, slow/fast,
    forward/backward, 90/180, ...), the order of two actions, or one action's family."""
    plan = [dict(a, attributes=dict(a["attributes"])) for a in plan]
    options = []
    for i, a in enumerate(plan):
        for key, values in FAMILIES[a["family"]].attributes.items():
            options.append(("attr", i, key))
    if any(_swappable(plan, j) for j in range(len(plan) - 1)):
        options += [("swap", 0, "")] * 2
    options.append(("family", int(rng.integers(len(plan))), ""))
    kind, i, key = options[int(rng.integers(len(options)))]
    if kind == "attr":
        values = [v for v in FAMILIES[plan[i]["family"]].attributes[key] if v != plan[i]["attributes"][key]]
        plan[i]["attributes"][key] = values[int(rng.integers(len(values)))]
    elif kind == "swap":
        pairs = [j for j in range(len(plan) - 1) if _swappable(plan, j)]
        j = pairs[int(rng.integers(len(pairs)))]
        plan[j], plan[j + 1] = plan[j + 1], plan[j]
    else:
        bad = {plan[i]["family"]} | {plan[j]["family"] for j in (i - 1, i + 1) if 0 <= j < len(plan)}
        choices = [f for f in sorted(FAMILIES) if f not in bad]
        fam = choices[int(rng.integers(len(choices)))]
        lo, hi = FAMILIES[fam].frames
        plan[i] = {"family": fam, "attributes": _random_attrs(fam, rng), "frames": int(rng.integers(lo, hi + 1))}
    for act, n in zip(plan, _fit_durations([a["frames"] for a in plan])):
        act["frames"] = n
    return plan


def motion_plan(seed: int, index: int) -> tuple[list[dict], int | None]:
    """The plan of motion ``index`` and the index it is a near miss of (None if independent)."""
    if index % 2 == 1 and _rng(seed, index, _NEAR).uniform() < NEAR_MISS_P:
        base = sample_plan(_rng(seed, index - 1, _PLAN))
        return near_miss(base, _rng(seed, index, _NEAR)), index - 1
    return sample_plan(_rng(seed, index, _PLAN)), None


# --------------------------------------------------------------------------------------------------
# one motion
# --------------------------------------------------------------------------------------------------
@dataclass
class Motion:
    joints: np.ndarray  # (T, 22, 3) float64 world positions before processing
    actions: list[dict]  # family, attributes, start, end (frames of ``joints``)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float, sigma: float = 6.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d  # heavy import (~0.5 s); only generation needs it

    noise = gaussian_filter1d(rng.standard_normal(shape), sigma, axis=0, mode="nearest")
    return scale * noise / max(float(noise.std()), 1e-9)


def synthesize(plan: list[dict], rng: np.random.Generator) -> Motion:
    """Animate a plan: clips -> smooth transitions -> local quaternions + root trajectory -> FK positions.

    The root height keeps the lowest foot joint on the ground (plus each clip's flight ``lift``); the root
    moves with the clips' heading-frame velocities and turns with their yaw rates from a random facing.
    """
    clips = [animate(a["family"], a["attributes"], a["frames"], rng) for a in plan]
    clip = concatenate(clips)
    n = clip.num_frames
    # natural variation: slow drifts of posture and arm carriage
    clip.spine += _smooth_noise(rng, (n, 3), 0.025)
    clip.head += _smooth_noise(rng, (n, 3), 0.04)
    for key in POSE_KEYS:
        if key.startswith(("uarm", "farm")):
            d = clip.dirs[key] + _smooth_noise(rng, (n, 3), 0.025)
            clip.dirs[key] = d / np.linalg.norm(d, axis=-1, keepdims=True)
    quats = pose_to_local_quats(clip)
    yaw = rng.uniform(-np.pi, np.pi) + np.concatenate([[0.0], np.cumsum(clip.yaw_rate[:-1])]) / FPS
    quats[:, 0] = quat_about_y(yaw)
    local = forward_kinematics(quats, np.zeros((n, 3)), T2M)
    ground = -local[:, FOOT_JOINTS, 1].min(axis=1)
    vx, vz = clip.vel[:, 0], clip.vel[:, 1]
    step = np.stack([vx * np.cos(yaw) + vz * np.sin(yaw), np.zeros(n), -vx * np.sin(yaw) + vz * np.cos(yaw)], -1) / FPS
    root = np.concatenate([np.zeros((1, 3)), np.cumsum(step[:-1], axis=0)])
    root[:, [0, 2]] += rng.uniform(-1.0, 1.0, size=2)
    root[:, 1] = ground + clip.lift
    joints = local + root[:, None, :]
    actions, start = [], 0
    for a in plan:
        actions.append({"family": a["family"], "attributes": dict(a["attributes"]), "start": start, "end": start + a["frames"]})
        start += a["frames"]
    return Motion(joints=joints, actions=actions)


def _moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) per feature, float64 (for Chan's parallel combination)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    return x.shape[0], mean, ((x - mean) ** 2).sum(axis=0)


def make_motion(seed: int, index: int, out_dir: Path | None = None) -> dict:
    """Generate motion ``index``: features, processed joints, captions; write them under ``out_dir``
    (HumanML3D layout) if given. Returns its record (id, frames, actions, captions, moments)."""
    plan, base = motion_plan(seed, index)
    motion = synthesize(plan, _rng(seed, index, _ANIM))
    features = joints_to_features(motion.joints).astype(np.float32)
    new_joints = np.asarray(recover_from_ric(features, 22), dtype=np.float32)
    text_rng = _rng(seed, index, _TEXT)
    captions = make_captions(motion.actions, text_rng, count=3 + int(text_rng.uniform() < 0.3))
    mid = motion_id(index)
    if out_dir is not None:
        write_npy(out_dir / "new_joint_vecs" / f"{mid}.npy", features)
        write_npy(out_dir / "new_joints" / f"{mid}.npy", new_joints)
        write_text(out_dir / "texts" / f"{mid}.txt", texts_file(captions))
    return {"id": mid, "num_frames": int(motion.joints.shape[0]), "actions": motion.actions,
            "near_miss_of": None if base is None else motion_id(base), "captions": captions,
            "moments": _moments(features), "features": None if out_dir is not None else features,
            "new_joints": None if out_dir is not None else new_joints}


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def split_ids(ids: list[str], seed: int) -> dict[str, list[str]]:
    """Random 80/5/15 train/val/test split (seeded), each list sorted."""
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(len(ids))
    n_train = int(round(SPLIT_FRACTIONS[0] * len(ids)))
    n_val = int(round(SPLIT_FRACTIONS[1] * len(ids)))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: sorted(ids[i] for i in v) for k, v in parts.items()}


def block_std(std: np.ndarray, joints_num: int = 22) -> np.ndarray:
    """HumanML3D ``mean_variance``: replace the Std of each feature block (root rot vel, root lin vel,
    root y, ric, rot6d, local vel, foot contacts) by the block's average (all divided by 1.0 there)."""
    out = np.array(std, dtype=np.float64)
    for sl in feature_layout(joints_num).values():
        out[sl] = out[sl].mean()
    return out


def combine_moments(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) Std of concatenated frames from per-motion moments (Chan et al. 1979)."""
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in moments:
        if mean is None:
            n, mean, m2 = nb, mb.copy(), m2b.copy()
            continue
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    return mean, np.sqrt(m2 / n)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _job(args: tuple[int, int, str]) -> dict:
    seed, index, out = args
    return make_motion(seed, index, Path(out))


def generate_dataset(out_dir: str | os.PathLike, num_motions: int = 4000, seed: int = 0, workers: int | None = None,
                     progress: bool = True) -> dict:
    """Generate the procedural dataset into ``out_dir`` (absent or an empty directory).

    Everything is written into a temporary sibling directory that is renamed onto ``out_dir`` at the end,
    so an interrupted run leaves nothing half-written. Returns the contents of ``dataset.json``.
    """
    out_dir = Path(out_dir)
    if num_motions < 20:
        raise UserError(f"--num-motions: must be at least 20 (got {num_motions})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir}: exists and is not an empty directory")
    workers = max(1, min(workers or available_cores(), num_motions))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    _remove_stale_temporaries(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        (tmp / sub).mkdir(parents=True)
    try:
        records = _run_jobs(seed, num_motions, tmp, workers, progress)
        summary = _write_index(tmp, records, seed)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the temporary directories of earlier runs on ``out_dir`` that were killed (their process is gone)."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: not ours to remove
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


def _run_jobs(seed: int, num_motions: int, tmp: Path, workers: int, progress: bool) -> list[dict]:
    jobs = [(seed, i, str(tmp)) for i in range(num_motions)]
    bar = tqdm(total=num_motions, desc="synth", unit="motion", disable=not progress)
    records: list[dict] = []
    try:
        if workers == 1:
            for job in jobs:
                records.append(_job(job))
                bar.update(1)
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers, initializer=_worker_init) as pool:
                for rec in pool.imap(_job, jobs, chunksize=8):
                    records.append(rec)
                    bar.update(1)
    finally:
        bar.close()
    return records


def _write_index(root: Path, records: list[dict], seed: int) -> dict:
    ids = [r["id"] for r in records]
    splits = split_ids(ids, seed)
    for name, part in splits.items():
        write_text(root / f"{name}.txt", "".join(f"{i}\n" for i in part))
    write_text(root / "all.txt", "".join(f"{i}\n" for i in ids))
    by_id = {r["id"]: r for r in records}
    mean, std = combine_moments([by_id[i]["moments"] for i in splits["train"]])
    write_npy(root / "Mean.npy", mean.astype(np.float32))
    write_npy(root / "Std.npy", block_std(std).astype(np.float32))
    lines = [json.dumps({"id": r["id"], "num_frames": r["num_frames"], "near_miss_of": r["near_miss_of"],
                         "actions": r["actions"]}, sort_keys=True) for r in records]
    write_text(root / "attributes.jsonl", "\n".join(lines) + "\n")
    frames = np.array([r["num_frames"] for r in records])
    num_actions = np.array([len(r["actions"]) for r in records])
    family_counts = {f: 0 for f in sorted(FAMILIES)}
    for r in records:
        for a in r["actions"]:
            family_counts[a["family"]] += 1
    summary = {
        "generator": "easytune_lab.motion.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_motions": len(records),
        "num_captions": int(sum(len(r["captions"]) for r in records)),
        "fps": int(FPS),
        "skeleton": "t2m",
        "splits": {k: len(v) for k, v in splits.items()},
        # feature frames (what a HumanML3D loader sees); attributes.jsonl spans index the joint frames (one more)
        "frames": {"min": int(frames.min()) - 1, "max": int(frames.max()) - 1, "mean": round(float(frames.mean()) - 1, 2)},
        "actions_per_motion": {str(k): int((num_actions == k).sum()) for k in (1, 2, 3)},
        "near_misses": int(sum(r["near_miss_of"] is not None for r in records)),
        "family_counts": family_counts,
    }
    write_json(root / "dataset.json", summary)
    return summary


def read_attributes(root: str | os.PathLike) -> dict[str, dict]:
    """``attributes.jsonl`` of a procedural dataset as {id: record}."""
    path = Path(root) / "attributes.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found (not a procedural dataset?)")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["id"]] = rec
    return out
