"""Does an update computed on one caption batch raise the final reward of another?

A fine-tuning update is computed on a few captions; it is useful only if it also raises the reward of captions it
was not computed on. :func:`cross_batch_transfer` draws ``num_batches`` caption batches and, for each batch ``a``,
measures its two updates along one trajectory per batch (:func:`easytune_lab.analysis.gradient_alignment.gradient_alignment`):

* DRaFT-T's update, the whole-trajectory gradient ∇θR_a of the final reward (paper Eq. 5–6), and
* EasyTune's update, the sum over steps of its per-step gradients Σ_i g_i (paper Eq. 8–9),

against the final-reward gradient ∇θR_b of every batch ``b`` (:func:`~easytune_lab.analysis.gradient_alignment.transfer`):
their cosine and the first-order reward gain of an Adam-like sign step, ``∇θR_b · sign(update) / ‖∇θR_b‖₁``
(1: as much as a DRaFT-T step on ``b`` itself; 0: none; below 0: the step lowers ``b``'s reward). Pairs with
``a == b`` are the on-batch reference; pairs ``a != b`` answer the question. Last, per denoising step: does step i's
EasyTune gradient on one batch raise the final reward of the other batches (``transfer_sign_gain`` of
:func:`gradient_alignment` with the other batches' ∇θR as targets, averaged over batches)?
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from .chain import early_late
from .gradient_alignment import transfer

UPDATES = {"DRaFT-T gradient": "total", "EasyTune summed per-step gradients": "easytune_sum"}
PER_STEP = "EasyTune per-step gradients, by step"


class CaptionSource(Protocol):
    def draw(self, n: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
        """``n`` captions and their motion lengths (e.g. :class:`easytune_lab.finetune.train.Prompts`)."""


# align(texts, lengths, noise_seed, vectors=..., targets=...) -> gradient_alignment's result for that batch,
# along one trajectory drawn with noise_seed (the caller fixes the model, reward, sampler and step count).
Align = Callable[..., dict]


def cross_batch_transfer(align: Align, prompts: CaptionSource, num_batches: int, batch_size: int,
                         seed: int) -> dict:
    """Measure how updates computed on one caption batch move the final reward of the others.

    ``num_batches`` (at least 2) batches of ``batch_size`` captions are drawn from ``prompts`` with
    ``np.random.default_rng(seed)``; batch ``b``'s trajectory uses noise seed ``seed + b``. ``align`` runs
    :func:`~easytune_lab.analysis.gradient_alignment.gradient_alignment` on one batch (see :data:`Align`).

    Returns ``{"pairs": rows, "other_batches": summary}``: ``rows`` has one dict per (update kind, batch a,
    batch b), in that order of loops (a, b, kind), with ``update`` (a key of :data:`UPDATES`), ``same batch``
    (``a == b``), ``cos`` and ``sign_gain``; ``summary`` maps each update kind to the mean ``cos`` and
    ``sign_gain`` over the pairs ``a != b`` (NaN cosines of zero gradients left out) and their count, and :data:`PER_STEP` to ``sign_gain_per_step`` (per
    step, index 0 the noisiest, averaged over batches) with its ``early``/``late`` means (:func:`early_late`).
    """
    if num_batches < 2:
        raise ValueError(f"num_batches: needs at least 2 batches to compare (got {num_batches})")
    rng = np.random.default_rng(seed)
    batches = [prompts.draw(batch_size, rng) for _ in range(num_batches)]
    vectors = [align(texts, lengths, seed + b, vectors=True)["vectors"] for b, (texts, lengths) in enumerate(batches)]
    rows = []
    for a in range(num_batches):
        for b in range(num_batches):
            for kind, key in UPDATES.items():
                rows.append({"update": kind, "same batch": a == b, **transfer(vectors[a][key], vectors[b]["total"])})
    summary: dict[str, dict] = {}
    for kind in UPDATES:
        others = [row for row in rows if row["update"] == kind and not row["same batch"]]
        summary[kind] = {"cos_mean": _mean([row["cos"] for row in others]),
                         "sign_gain_mean": _mean([row["sign_gain"] for row in others]), "pairs": len(others)}
    per_step = np.mean([
        align(texts, lengths, seed + b, targets=[v["total"] for j, v in enumerate(vectors) if j != b])[
            "transfer_sign_gain"] for b, (texts, lengths) in enumerate(batches)], axis=0).tolist()
    summary[PER_STEP] = {"sign_gain_per_step": per_step, **early_late(per_step)}
    return {"pairs": rows, "other_batches": summary}


def _mean(values: Sequence[float]) -> float:
    """The mean with NaN left out, as pandas takes it (NaN when nothing is left)."""
    kept = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    return float(kept.mean()) if kept.size else float("nan")
