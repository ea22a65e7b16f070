"""The T2M evaluation protocol's loader conventions: random-offset crops, padding to 196 frames, complete groups."""

from pathlib import Path

import numpy as np
import pytest
import torch

from easytune_lab.data.humanml import build_vocabulary
from easytune_lab.errors import UserError
from easytune_lab.eval import metrics as M
from easytune_lab.eval.evaluator import EvaluatorConfig, LoadedEvaluator, TextMotionEvaluator, embed_motions
from easytune_lab.eval.protocol import (MAX_MOTION_LENGTH, PROTOCOLS, GroundTruth, ProtocolConfig, evaluate,
                                        replication_metrics, t2m_crop)
from helpers import write_random_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 80-motion dataset and an untrained small evaluator (the conventions do not need a trained one)."""
    root = write_random_dataset(tmp_path_factory.mktemp("protocol") / "data", num_motions=80, seed=3)
    torch.manual_seed(0)
    config = EvaluatorConfig(movement_hidden=16, movement_latent=16, motion_hidden=16, word_dim=8, text_hidden=16,
                             output_dim=16, dropout=0.0)
    vocab = build_vocabulary(root, "train")
    model = TextMotionEvaluator(config, len(vocab)).eval()
    mean, std = np.load(root / "Mean.npy"), np.load(root / "Std.npy")
    ev = LoadedEvaluator(model, vocab, mean, std, torch.device("cpu"), Path(root), {})
    return root, ev


def test_t2m_crop_rule_and_reproducibility():
    lengths = np.random.default_rng(0).integers(40, 200, size=600)
    crops = [t2m_crop(int(n), 4, np.random.default_rng((7, i))) for i, n in enumerate(lengths)]
    again = [t2m_crop(int(n), 4, np.random.default_rng((7, i))) for i, n in enumerate(lengths)]
    other = [t2m_crop(int(n), 4, np.random.default_rng((8, i))) for i, n in enumerate(lengths)]
    assert crops == again and crops != other
    shorter = 0
    for n, (offset, frames) in zip(lengths, crops):
        assert frames % 4 == 0 and 0 <= offset <= n - frames
        assert frames in ((n // 4) * 4, (n // 4 - 1) * 4)
        shorter += frames < (n // 4) * 4
    assert 0.27 < shorter / len(lengths) < 0.40  # T2M's coin: one clip in three one unit shorter
    assert len({offset for offset, _ in crops}) > 3  # not always the start
    # a unit length of 10 or more never shortens (T2M draws the coin only below 10)
    assert all(t2m_crop(int(n), 10, np.random.default_rng(i))[1] == (n // 10) * 10 for i, n in enumerate(lengths))


def test_ground_truth_crops_are_reproducible_under_a_seed(tiny):
    root, ev = tiny
    first, second = GroundTruth(root, "train", ev), GroundTruth(root, "train", ev)
    a, b = first.rows(11, crop="t2m"), second.rows(11, crop="t2m")
    assert a.motion_ids == b.motion_ids and a.captions == b.captions
    assert all(np.array_equal(x, y) for x, y in zip(a.gt_motions, b.gt_motions))
    c = first.rows(12, crop="t2m")
    by_clip = {int(i): m for i, m in zip(c.clip_index, c.gt_motions)}
    assert any(not np.array_equal(by_clip[int(i)], m) for i, m in zip(a.clip_index, a.gt_motions))
    # each crop is a contiguous piece of its clip, at a multiple-of-4 length that the row carries
    starts = 0
    for i, motion, n in zip(a.clip_index, a.gt_motions, a.lengths):
        full = first.dataset.clip_features(int(i))
        assert len(motion) == n and n % 4 == 0
        hits = [o for o in range(len(full) - n + 1) if np.array_equal(full[o: o + n], motion)]
        assert hits
        starts += hits[0] == 0
    assert starts < len(a)  # random offsets, not all at the start
    legacy = first.rows(11, crop="legacy")
    assert all(np.array_equal(m, first.motions[int(i)]) for i, m in zip(legacy.clip_index, legacy.gt_motions))


def test_embeddings_do_not_depend_on_batch_composition(tiny):
    root, ev = tiny
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(60, 263)).astype(np.float32) * ev.std + ev.mean
    companions = [rng.normal(size=(n, 263)).astype(np.float32) * ev.std + ev.mean for n in (196, 124, 44)]
    alone = embed_motions(ev, [motion], normalised=False, pad_to=MAX_MOTION_LENGTH)[0]
    for batch in ([motion, companions[0]], [companions[1], motion, companions[2]], [motion] + companions):
        emb = embed_motions(ev, batch, normalised=False, pad_to=MAX_MOTION_LENGTH)
        k = next(i for i, m in enumerate(batch) if m is motion)
        np.testing.assert_allclose(emb[k], alone, rtol=0, atol=1e-6)
    # a padded tensor whose padding holds garbage embeds like the clean list (frames past the length are zeroed)
    padded = torch.randn(2, MAX_MOTION_LENGTH, 263) * 50
    padded[0, :60] = torch.from_numpy((motion - ev.mean) / ev.std)
    emb = embed_motions(ev, padded, lengths=[60, 196], pad_to=MAX_MOTION_LENGTH)
    np.testing.assert_allclose(emb[0], alone, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="196"):
        embed_motions(ev, [np.zeros((200, 263), np.float32)], normalised=False, pad_to=MAX_MOTION_LENGTH)


def test_fid_and_diversity_drop_the_incomplete_last_group():
    rng = np.random.default_rng(1)
    text, motion, ref = (rng.normal(size=(40, 8)) for _ in range(3))
    spoiled = motion.copy()
    spoiled[32:] += 100.0  # the 8 rows of the incomplete group
    for protocol in PROTOCOLS:
        config = ProtocolConfig(protocol=protocol)
        clean = replication_metrics(text, motion, ref, config, np.random.default_rng(0))
        bad = replication_metrics(text, spoiled, ref, config, np.random.default_rng(0))
        assert bad["r_precision_top1"] == clean["r_precision_top1"] and bad["mm_dist"] == clean["mm_dist"]
        if protocol == "t2m":
            assert bad["fid"] == clean["fid"] and bad["diversity"] == clean["diversity"]
            assert clean["fid"] == M.frechet_distance(ref, motion[:32])
        else:
            assert bad["fid"] > clean["fid"] + 100


def test_t2m_is_the_default_and_legacy_stays_available(tiny):
    root, ev = tiny
    assert ProtocolConfig().protocol == "t2m" == PROTOCOLS[0]
    with pytest.raises(UserError, match="--protocol"):
        ProtocolConfig(protocol="mdm")
    gt = GroundTruth(root, "train", ev)
    results = {p: evaluate(ev, gt, gt.source(), ProtocolConfig(split="train", replications=2, protocol=p))
               for p in PROTOCOLS}
    assert results["legacy"]["fid"]["mean"] < 1e-6  # start crops against themselves
    assert results["t2m"]["fid"]["mean"] > 1e-4  # against an independent draw of crops, as T2M
    again = evaluate(ev, gt, gt.source(), ProtocolConfig(split="train", replications=2))
    assert again["per_replication"] == results["t2m"]["per_replication"]
