"""The T2M evaluation metrics, computed from evaluator embeddings.

These follow the protocol of Guo et al. 2022 ("Generating Diverse and Natural 3D Human Motions from Text",
the T2M benchmark), as used unchanged by MDM, MLD and EasyTune (arXiv 2602.07967, Tab. 1):

* **R-Precision** (top-1/2/3): rows are split into consecutive groups of 32 (the evaluation batch size; an
  incomplete last group is dropped, as the reference loader does with ``drop_last``); inside a group each text
  embedding ranks the 32 motion embeddings by Euclidean distance, and a hit at top-k means its own motion is
  among the k nearest.
* **MM-Dist** (matching score): mean Euclidean distance between each text embedding and its own motion's
  embedding (the trace of the distance matrix of each group, summed and divided by the number of rows).
* **FID**: Fréchet distance between Gaussians fitted to two sets of motion embeddings,
  ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.
* **Diversity**: mean distance between ``times`` (300) random pairs of motion embeddings.
* **MultiModality**: for each text, mean distance between ``times`` (10) random pairs of its R generated
  motions, averaged over texts.
* Every number is reported over replications as mean ± 1.96·std/√n (:func:`replicate`).

All functions take NumPy arrays (or anything ``np.asarray`` accepts) and compute in float64.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

R_PRECISION_GROUP = 32
PROTOCOLS = ("t2m", "legacy")  # evaluation protocols (:mod:`.protocol`); the first is the default
MAX_MOTION_LENGTH = 196  # T2M's max_motion_length (HumanML3D and KIT-ML): motions are padded to it
UNIT_LENGTH = 4  # T2M's unit_length: crops are multiples of it
DIVERSITY_TIMES = 300
MULTIMODALITY_TIMES = 10


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, dim), got shape {arr.shape}")
    return arr


def euclidean_distance_matrix(a, b) -> np.ndarray:
    """Pairwise Euclidean distances ``D[i, j] = |a_i - b_j|`` of ``a`` (N, D) and ``b`` (M, D).

    Uses the expansion ``|a|^2 - 2 a·b + |b|^2`` of the reference implementation, clipped at zero before the
    square root so that rounding never produces NaN.
    """
    a = _as_2d(a, "a")
    b = _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    sq = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


def _groups(n_rows: int, group_size: int) -> int:
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    return n_rows // group_size


def match_ranks(text_emb, motion_emb, group_size: int = R_PRECISION_GROUP) -> np.ndarray:
    """0-based rank of each text's own motion among the motions of its group of ``group_size`` rows.

    Tie rule (pessimistic): every other motion of the group at a distance *less than or equal to* the true
    motion's distance is ranked ahead of it, i.e. ``rank_i = #{j != i : D[i, j] <= D[i, i]}``. A collapsed
    evaluator (all embeddings equal) therefore scores 0, never chance. Rows of an incomplete last group are
    dropped; the result has ``(N // group_size) * group_size`` entries.
    """
    t = _as_2d(text_emb, "text_emb")
    m = _as_2d(motion_emb, "motion_emb")
    if t.shape != m.shape:
        raise ValueError(f"text and motion embeddings must have the same shape, got {t.shape} and {m.shape}")
    n_groups = _groups(len(t), group_size)
    ranks = []
    for g in range(n_groups):
        sl = slice(g * group_size, (g + 1) * group_size)
        dist = euclidean_distance_matrix(t[sl], m[sl])
        own = np.diag(dist)[:, None]
        ahead = (dist <= own).sum(1) - 1  # minus the true motion itself
        ranks.append(ahead)
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def r_precision(text_emb, motion_emb, top_k: int = 3, group_size: int = R_PRECISION_GROUP) -> np.ndarray:
    """Top-1..top-k hit rates of text→motion retrieval within groups of ``group_size`` (see :func:`match_ranks`).

    Returns a float array of length ``top_k``; entry ``k-1`` is the fraction of texts whose own motion ranks
    among the ``k`` nearest. Raises ``ValueError`` when there is not one complete group.
    """
    ranks = match_ranks(text_emb, motion_emb, group_size)
    if ranks.size == 0:
        raise ValueError(f"R-Precision needs at least {group_size} rows, got {len(np.asarray(text_emb))}")
    return np.array([(ranks < k).mean() for k in range(1, top_k + 1)], dtype=np.float64)


def matching_score(text_emb, motion_emb, group_size: int | None = R_PRECISION_GROUP) -> float:
    """MM-Dist: mean Euclidean distance between each text embedding and its own motion embedding.

    With ``group_size`` set, only the rows of complete groups count (the rows R-Precision sees), as in the
    reference protocol; ``None`` uses every row.
    """
    t = _as_2d(text_emb, "text_emb")
    m = _as_2d(motion_emb, "motion_emb")
    if t.shape != m.shape:
        raise ValueError(f"text and motion embeddings must have the same shape, got {t.shape} and {m.shape}")
    n = len(t) if group_size is None else _groups(len(t), group_size) * group_size
    if n == 0:
        raise ValueError("matching_score: no complete group of rows")
    return float(np.linalg.norm(t[:n] - m[:n], axis=1).mean())


def gaussian_statistics(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N-1``) covariance of embeddings (N, D), as ``np.cov(rowvar=False)``."""
    e = _as_2d(emb, "emb")
    if len(e) < 2:
        raise ValueError("need at least 2 embeddings for a covariance")
    return e.mean(0), np.cov(e, rowvar=False)


def _sym_sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negatives clipped)."""
    m = 0.5 * (m + m.T)
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet distance of two Gaussians: ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})``.

    The trace term is computed stably: ``S_a S_b`` is similar to the PSD matrix ``S_a^{1/2} S_b S_a^{1/2}``
    (same eigenvalues), whose square root is taken by ``eigh`` with negative rounding clipped. This avoids the
    complex / non-finite results ``scipy.linalg.sqrtm(S_a @ S_b)`` gives on singular covariances (fewer
    samples than dimensions), which the reference code patches with an ``eps·I`` offset.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _sym_sqrt_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    inner = 0.5 * (inner + inner.T)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum()
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt
    return float(max(value, 0.0))


def frechet_distance(emb_a, emb_b) -> float:
    """FID between two sets of embeddings (N_a, D) and (N_b, D) (Heusel et al. 2017, Eq. 6 of T2M's protocol)."""
    mu_a, cov_a = gaussian_statistics(emb_a)
    mu_b, cov_b = gaussian_statistics(emb_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"embedding widths differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def diversity(emb, times: int = DIVERSITY_TIMES, rng=None) -> float:
    """Diversity: mean distance between ``times`` random pairs of embeddings.

    As in the reference protocol, two index sets of size ``times`` are drawn independently, each without
    replacement, and row ``i`` of one is paired with row ``i`` of the other (a pair may repeat an index, with
    probability 1/N). The expectation is the mean distance over all N² ordered pairs, diagonal included.
    """
    e = _as_2d(emb, "emb")
    if times > len(e):
        raise ValueError(f"diversity: times={times} exceeds the number of embeddings ({len(e)})")
    g = _rng(rng)
    first = g.choice(len(e), times, replace=False)
    second = g.choice(len(e), times, replace=False)
    return float(np.linalg.norm(e[first] - e[second], axis=1).mean())


def multimodality(emb, times: int = MULTIMODALITY_TIMES, rng=None) -> float:
    """MultiModality from embeddings (N texts, R generations per text, D).

    ``times`` generation indices are drawn twice without replacement (shared by all texts, as in the reference
    code); the result is the mean distance between paired generations of the same text.
    """
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 3:
        raise ValueError(f"multimodality: expected (texts, repeats, dim), got shape {e.shape}")
    if times > e.shape[1]:
        raise ValueError(f"multimodality: times={times} exceeds the repeats per text ({e.shape[1]})")
    g = _rng(rng)
    first = g.choice(e.shape[1], times, replace=False)
    second = g.choice(e.shape[1], times, replace=False)
    return float(np.linalg.norm(e[:, first] - e[:, second], axis=2).mean())


def mean_ci95(values) -> dict:
    """``{"mean", "ci95"}`` of replicated values, with ci95 = 1.96·std/√n (population std, as T2M)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    return {"mean": float(v.mean()), "ci95": float(1.96 * v.std() / np.sqrt(v.size))}


def replicate(fn: Callable[[int], float], n: int) -> dict:
    """Call ``fn(i)`` for replications ``i = 0..n-1`` and summarise as :func:`mean_ci95`."""
    if n < 1:
        raise ValueError(f"replications must be at least 1, got {n}")
    return mean_ci95([float(fn(i)) for i in range(n)])
