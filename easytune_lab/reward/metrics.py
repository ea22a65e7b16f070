"""Retrieval metrics of a text–motion embedding space: R@k and median rank (TMR / Guo et al. 2022 protocol).

Pair i is (motion i, caption i). For text→motion, caption i ranks every motion by similarity and the rank of
motion i is 1 + the number of motions scoring strictly higher; motion→text is the transpose. R@k is the
percentage of queries whose ground truth has rank ≤ k. Two protocols are reported:

* ``all``: every pair of the split is in one gallery (TMR's "all" protocol, the hardest);
* ``batch32``: the split is shuffled with a fixed seed and cut into galleries of 32 pairs (the T2M
  evaluator's R-precision batch size; a last incomplete batch is dropped); R@k and median rank are averaged
  over batches.
"""

from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_KS = (1, 2, 3, 5, 10)


def ranks_of_targets(scores: torch.Tensor) -> torch.Tensor:
    """(N,) 1-based rank of the diagonal entry in each row of a (N, N) score matrix (ties favour the target)."""
    diag = scores.diagonal()[:, None]
    return (scores > diag).sum(1) + 1


def _summary(ranks: torch.Tensor, ks: Sequence[int]) -> dict:
    out = {f"R@{k}": float((ranks <= k).float().mean() * 100) for k in ks}
    out["median_rank"] = float(ranks.float().median())
    return out


def retrieval_metrics(motion_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """R@k (percent) and median rank, text→motion (``t2m``) and motion→text (``m2t``), one gallery."""
    sim = text_emb.float() @ motion_emb.float().T          # (N_text, N_motion)
    return {"t2m": _summary(ranks_of_targets(sim), ks), "m2t": _summary(ranks_of_targets(sim.T), ks),
            "n": int(sim.shape[0])}


def batched_retrieval_metrics(motion_emb: torch.Tensor, text_emb: torch.Tensor, batch_size: int = 32,
                              ks: Sequence[int] = DEFAULT_KS, seed: int = 0) -> dict:
    """The same metrics averaged over shuffled galleries of ``batch_size`` pairs (incomplete batch dropped)."""
    n = motion_emb.shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_batches = n // batch_size
    if n_batches == 0:
        raise ValueError(f"need at least {batch_size} pairs for batch-{batch_size} retrieval metrics, got {n}")
    per = {"t2m": [], "m2t": []}
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        m = retrieval_metrics(motion_emb[idx], text_emb[idx], ks)
        per["t2m"].append(m["t2m"])
        per["m2t"].append(m["m2t"])
    out = {d: {key: float(sum(r[key] for r in rows) / len(rows)) for key in rows[0]} for d, rows in per.items()}
    out["n"] = n_batches * batch_size
    out["batch_size"] = batch_size
    out["num_batches"] = n_batches
    return out
