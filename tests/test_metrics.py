"""The T2M metrics against direct reference formulas on random embeddings."""

import numpy as np
import pytest
import scipy.linalg

from easytune_lab.eval import metrics as M


def brute_force_ranks(text, motion, group=32):
    """Rank of the true motion by explicit sorting, ties counted pessimistically (others first)."""
    ranks = []
    for g in range(len(text) // group):
        for i in range(group):
            row = g * group + i
            d = [float(np.sqrt(((text[row] - motion[g * group + j]) ** 2).sum())) for j in range(group)]
            # stable sort with the true motion placed after every tied competitor
            order = sorted(range(group), key=lambda j: (d[j], j == i))
            ranks.append(order.index(i))
    return np.array(ranks)


def test_euclidean_distance_matrix_matches_direct():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    direct = np.linalg.norm(a[:, None] - b[None], axis=2)
    np.testing.assert_allclose(M.euclidean_distance_matrix(a, b), direct, atol=1e-10)
    assert M.euclidean_distance_matrix(a, a).diagonal().max() < 1e-6


def test_r_precision_brute_force_with_ties_and_incomplete_group():
    rng = np.random.default_rng(1)
    n = 32 * 3 + 13  # an incomplete last group of 13 rows is dropped
    motion = rng.normal(size=(n, 8)).round(0)  # coarse values -> many exact distance ties
    text = motion + rng.integers(-1, 2, size=motion.shape)
    ranks = brute_force_ranks(text, motion)
    assert len(ranks) == 96
    got = M.r_precision(text, motion, top_k=3)
    want = [(ranks < k).mean() for k in (1, 2, 3)]
    np.testing.assert_allclose(got, want)
    np.testing.assert_array_equal(M.match_ranks(text, motion), ranks)
    # the ties really occur in this data, so the rule is exercised
    d = M.euclidean_distance_matrix(text[:32], motion[:32])
    assert any((np.isclose(d[i], d[i, i]).sum() > 1) for i in range(32))


def test_r_precision_tie_rule_is_pessimistic():
    # all motions identical: every competitor ties with the true motion -> never a hit
    text = np.random.default_rng(2).normal(size=(64, 4))
    motion = np.ones((64, 4))
    np.testing.assert_array_equal(M.r_precision(text, motion), [0.0, 0.0, 0.0])
    # perfect embeddings -> every top-k is 1, and the incomplete group does not change it
    motion = np.random.default_rng(3).normal(size=(40, 4))
    np.testing.assert_array_equal(M.r_precision(motion, motion), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        M.r_precision(motion[:31], motion[:31])


def test_r_precision_random_is_near_chance():
    rng = np.random.default_rng(4)
    t, m = rng.normal(size=(32 * 200, 16)), rng.normal(size=(32 * 200, 16))
    top = M.r_precision(t, m)
    np.testing.assert_allclose(top, [1 / 32, 2 / 32, 3 / 32], atol=0.012)


def test_matching_score_uses_complete_groups():
    rng = np.random.default_rng(5)
    t, m = rng.normal(size=(70, 6)), rng.normal(size=(70, 6))
    want = np.mean([np.linalg.norm(t[i] - m[i]) for i in range(64)])
    assert M.matching_score(t, m) == pytest.approx(want)
    assert M.matching_score(t, m, group_size=None) == pytest.approx(np.linalg.norm(t - m, axis=1).mean())


def reference_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.5
    assert M.frechet_distance(a, b) == pytest.approx(reference_fid(a, b), rel=1e-6)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # closed form for isotropic Gaussians: |dmu|^2 + D (s1 - s2)^2 with sample stats
    assert M.frechet_distance_from_stats(np.zeros(3), 4 * np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3 + 3 * 1.0)


def test_frechet_distance_stable_on_singular_covariances():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))  # rank-deficient covariances
    value = M.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_diversity_matches_exact_mean_pairwise_distance():
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(500, 10))
    d = M.euclidean_distance_matrix(emb, emb)
    exact = d.mean()  # all N^2 ordered pairs, diagonal included (what the sampling estimates)
    samples = [M.diversity(emb, times=300, rng=np.random.default_rng(s)) for s in range(40)]
    sem = np.std(samples) / np.sqrt(len(samples))
    assert abs(np.mean(samples) - exact) < 4 * sem + 1e-3
    # one repeated embedding has no diversity
    assert M.diversity(np.tile(emb[:1], (400, 1)), rng=0) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        M.diversity(emb[:100], times=300)


def test_multimodality_matches_direct_formula():
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(20, 30, 5))
    got = M.multimodality(emb, times=10, rng=np.random.default_rng(11))
    g = np.random.default_rng(11)
    i, j = g.choice(30, 10, replace=False), g.choice(30, 10, replace=False)
    want = np.mean([[np.linalg.norm(emb[n, i[k]] - emb[n, j[k]]) for k in range(10)] for n in range(20)])
    assert got == pytest.approx(want)
    assert M.multimodality(np.repeat(emb[:, :1], 30, axis=1), rng=0) == pytest.approx(0.0)


def test_replicate_mean_and_ci95():
    values = [1.0, 2.0, 4.0, 7.0]
    out = M.replicate(lambda i: values[i], 4)
    assert out["mean"] == pytest.approx(3.5)
    assert out["ci95"] == pytest.approx(1.96 * np.std(values) / 2.0)
    with pytest.raises(ValueError):
        M.replicate(lambda i: 0.0, 0)
