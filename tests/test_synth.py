"""The procedural dataset: HumanML3D layout, determinism, features, captions, action semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from easytune_lab.errors import UserError
from easytune_lab.eval.oracle import heading
from easytune_lab.motion import actions as act
from easytune_lab.motion.captions import LEXICON, _clause_variants, make_captions, pos_tokens, texts_file
from easytune_lab.motion.features import feature_layout, recover_from_ric
from easytune_lab.motion.synth import (FAMILIES, MAX_FRAMES, MIN_FRAMES, block_std, combine_moments, generate_dataset,
                                       motion_plan, near_miss, read_attributes, sample_plan, synthesize)

POS_TAGS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
            "SCONJ", "SYM", "VERB", "X"}
N = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "procedural"
    summary = generate_dataset(out, num_motions=N, seed=7, workers=1, progress=False)
    assert summary["num_motions"] == N
    return out


def _ids(root: Path, name: str) -> list[str]:
    return [line for line in (root / name).read_text().splitlines() if line]


def test_same_seed_is_byte_identical_for_any_worker_count(dataset, tmp_path):
    other = tmp_path / "again"
    generate_dataset(other, num_motions=N, seed=7, workers=2, progress=False)
    files_a = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (dataset / rel).read_bytes() == (other / rel).read_bytes(), rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_another_seed_gives_other_motions(dataset):
    plan_a, _ = motion_plan(7, 0)
    plan_b, _ = motion_plan(8, 0)
    rng = np.random.default_rng(0)
    a = synthesize(plan_a, rng).joints
    b = synthesize(plan_b, np.random.default_rng(0)).joints
    assert a.shape != b.shape or not np.allclose(a, b)


def test_layout_shapes_and_features_match_new_joints(dataset):
    ids = _ids(dataset, "all.txt")
    assert ids == [f"{i:06d}" for i in range(N)]
    attrs = read_attributes(dataset)
    for mid in ids:
        feats = np.load(dataset / "new_joint_vecs" / f"{mid}.npy")
        joints = np.load(dataset / "new_joints" / f"{mid}.npy")
        assert feats.dtype == np.float32 and feats.shape[1] == 263
        assert MIN_FRAMES - 1 <= feats.shape[0] <= MAX_FRAMES - 1
        assert joints.dtype == np.float32 and joints.shape == (feats.shape[0], 22, 3)
        assert np.abs(recover_from_ric(feats, 22) - joints).max() < 1e-4
        assert attrs[mid]["num_frames"] == feats.shape[0] + 1
        assert np.isfinite(feats).all()


def test_motions_are_smooth_across_action_boundaries(dataset):
    # joint speeds relative to the pelvis stay human (a sprinting foot reaches ~8 m/s); a jump cut or a
    # direction flipping through zero during a blend would show up as tens of m/s
    for mid in _ids(dataset, "all.txt"):
        j = np.load(dataset / "new_joints" / f"{mid}.npy").astype(np.float64)
        rel = j - j[:, :1]
        speed = np.linalg.norm(np.diff(rel, axis=0), axis=-1).max() * 20.0
        assert speed < 10.0, mid


def test_splits_partition_the_ids_80_5_15(dataset):
    parts = {name: _ids(dataset, f"{name}.txt") for name in ("train", "val", "test")}
    assert [len(parts[k]) for k in ("train", "val", "test")] == [32, 2, 6]
    joined = parts["train"] + parts["val"] + parts["test"]
    assert sorted(joined) == _ids(dataset, "all.txt")
    assert all(p == sorted(p) for p in parts.values())


def test_mean_std_computed_on_train_with_block_averaged_std(dataset, fixture_dir):
    train = _ids(dataset, "train.txt")
    data = np.concatenate([np.load(dataset / "new_joint_vecs" / f"{i}.npy") for i in train]).astype(np.float64)
    mean, std = np.load(dataset / "Mean.npy"), np.load(dataset / "Std.npy")
    assert mean.dtype == np.float32 and std.shape == (263,)
    np.testing.assert_allclose(mean, data.mean(0), atol=1e-5)
    np.testing.assert_allclose(std, block_std(data.std(0)), rtol=1e-4, atol=1e-7)
    real = np.load(fixture_dir / "Std.npy")
    for sl in feature_layout(22).values():  # the real Std is constant within each block too
        assert np.ptp(real[sl]) < 1e-6 and np.ptp(std[sl]) < 1e-6
    assert len(np.unique(std)) == 7


def test_combine_moments_equals_direct_statistics():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(int(n), 5)) * (k + 1) for k, n in enumerate(rng.integers(3, 30, 6))]
    moments = [(len(p), p.mean(0), ((p - p.mean(0)) ** 2).sum(0)) for p in parts]
    mean, std = combine_moments(moments)
    allx = np.concatenate(parts)
    np.testing.assert_allclose(mean, allx.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, allx.std(0), rtol=1e-12)


def test_texts_in_humanml3d_format(dataset):
    for mid in _ids(dataset, "all.txt"):
        lines = (dataset / "texts" / f"{mid}.txt").read_text().splitlines()
        assert len(lines) >= 3 and len(set(lines)) == len(lines)
        for line in lines:
            caption, tokens, t0, t1 = line.split("#")
            assert (t0, t1) == ("0.0", "0.0")
            words = caption.replace(",", " ").replace(".", " ").split()
            toks = tokens.split(" ")
            assert len(toks) == len(words)
            assert all(t.count("/") == 1 and t.split("/")[1] in POS_TAGS for t in toks)


def test_pos_tokens_use_lemmas_and_coarse_tags():
    assert pos_tokens("a person walks forward slowly, then jumps.") == \
        "a/DET person/NOUN walk/VERB forward/ADV slowly/ADV then/ADV jump/VERB"
    assert pos_tokens("someone does star jumps.") == "someone/PRON do/VERB star/NOUN jump/NOUN"
    assert pos_tokens("a man turns left.") == "a/DET man/NOUN turn/VERB left/ADV"
    assert texts_file(["a man claps."]) == "a man claps.#a/DET man/NOUN clap/VERB#0.0#0.0\n"


def test_every_family_and_attribute_animates_and_every_caption_word_is_tagged():
    assert len(FAMILIES) >= 15
    rng = np.random.default_rng(0)
    for name, fam in FAMILIES.items():
        values = [dict(zip(fam.attributes, combo)) for combo in _combos(fam.attributes)]
        for attrs in values:
            plan = [{"family": name, "attributes": attrs, "frames": fam.frames[0]}]
            joints = synthesize(plan, rng).joints
            assert joints.shape == (fam.frames[0], 22, 3) and np.isfinite(joints).all()
            for clause in _clause_variants(name, attrs):
                pos_tokens(clause)  # KeyError if a word is missing from the lexicon
            caps = make_captions([{"family": name, "attributes": attrs}], rng, count=3)
            assert len(caps) == 3 and len(set(caps)) == 3
    assert all(pos in POS_TAGS for _, pos in LEXICON.values())


def _combos(attributes: dict) -> list[tuple]:
    combos: list[tuple] = [()]
    for values in attributes.values():
        combos = [c + (v,) for c in combos for v in values]
    return combos


def test_attributes_jsonl_spans_tile_the_motion(dataset):
    lines = (dataset / "attributes.jsonl").read_text().splitlines()
    assert len(lines) == N
    seen_lengths = set()
    for line in lines:
        rec = json.loads(line)
        spans = [(a["start"], a["end"]) for a in rec["actions"]]
        assert 1 <= len(spans) <= 3 and spans[0][0] == 0 and spans[-1][1] == rec["num_frames"]
        assert all(e0 == s1 for (_, e0), (s1, _) in zip(spans[:-1], spans[1:]))
        for a in rec["actions"]:
            fam = FAMILIES[a["family"]]
            assert set(a["attributes"]) == set(fam.attributes)
            assert all(a["attributes"][k] in fam.attributes[k] for k in fam.attributes)
        seen_lengths.add(len(spans))
    assert seen_lengths == {1, 2, 3}
    summary = json.loads((dataset / "dataset.json").read_text())
    assert summary["seed"] == 7 and summary["num_captions"] >= 3 * N


def test_near_miss_differs_in_exactly_one_thing():
    rng = np.random.default_rng(3)
    for _ in range(200):
        base = sample_plan(rng)
        other = near_miss(base, rng)
        key = lambda p: [(a["family"], a["attributes"]) for a in p]  # noqa: E731
        assert key(other) != key(base)
        assert len(other) == len(base)
        fams = [a["family"] for a in other]
        assert all(a != b for a, b in zip(fams[:-1], fams[1:]))  # never the same family twice in a row
        if sorted(map(str, key(other))) == sorted(map(str, key(base))):
            continue  # a swap of two actions
        assert sum(x != y for x, y in zip(key(other), key(base))) == 1


def test_refuses_a_non_empty_output_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        generate_dataset(tmp_path / "x", num_motions=20, seed=0, workers=1, progress=False)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


# ---- action semantics: left is +X, a left turn increases the heading, forward is the facing direction ----
def _single(family: str, attrs: dict, frames: int = 60, seed: int = 0) -> np.ndarray:
    return synthesize([{"family": family, "attributes": attrs, "frames": frames}], np.random.default_rng(seed)).joints


def _body_left(joints: np.ndarray) -> np.ndarray:
    """(T, 3) unit vector to the body's left (from the right hip to the left hip)."""
    v = joints[:, 1] - joints[:, 2]
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_left_arm_waves_and_right_leg_kicks():
    j = _single("wave", {"side": "left"})
    mid = slice(20, 45)
    assert (j[mid, act.L_WRIST, 1] - j[mid, act.R_WRIST, 1]).min() > 0.3
    # the waving wrist is on the body's left side
    assert ((j[mid, act.L_WRIST] - j[mid, act.PELVIS]) * _body_left(j[mid])).sum(-1).min() > 0.1
    k = _single("kick", {"side": "right"}, frames=40)
    assert k[:, act.R_ANKLE, 1].max() - k[:, act.L_ANKLE, 1].max() > 0.3


def test_turn_left_and_walk_forward_directions():
    j = _single("turn", {"side": "left", "angle": "90"}, frames=40)
    yaw = heading(j)
    assert 60 < np.rad2deg(yaw[-1] - yaw[0]) < 120
    w = _single("walk", {"direction": "backward", "speed": "normal"}, frames=80)
    facing = np.cross(_body_left(w)[40], [0.0, 1.0, 0.0])  # left x up = forward
    move = w[60, 0] - w[20, 0]
    assert np.dot(move, facing) < -0.5  # moved about 2 s x 1 m/s backwards
    s = _single("sidestep", {"side": "right"}, frames=60)
    assert np.dot(s[45, 0] - s[15, 0], _body_left(s)[30]) < -0.3


def test_feet_stay_on_the_ground_except_in_jumps():
    j = _single("walk", {"direction": "forward", "speed": "slow"}, frames=80)
    feet = j[:, act.FOOT_JOINTS, 1].min(axis=1)
    assert np.abs(feet - feet[0]).max() < 1e-6
    jump = _single("jump", {"mode": "in_place"}, frames=40)
    feet = jump[:, act.FOOT_JOINTS, 1].min(axis=1)
    assert feet.max() - feet.min() > 0.2
