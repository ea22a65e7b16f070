"""The cross-batch transfer experiment (easytune_lab.analysis.transfer) on hand-made gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easytune_lab.analysis.transfer import PER_STEP, cross_batch_transfer

# Per batch: the final-reward gradient (DRaFT-T's update) and EasyTune's summed per-step gradients.
# (flat float64 vectors, as gradient_alignment returns them)
TOTALS = [torch.tensor(v, dtype=torch.float64) for v in ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0])]
SUMS = [torch.tensor(v, dtype=torch.float64) for v in ([2.0, -1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 1.0])]
PER_STEP_GAIN = [[0.5, 0.0, -0.5, 1.0], [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]]


class Captions:
    """Batch k is captions ``k-0 .. k-(n-1)``, each of length 40 + the rng's draw (to see the rng is used)."""

    def __init__(self):
        self.drawn = 0

    def draw(self, n, rng):
        k, self.drawn = self.drawn, self.drawn + 1
        return [f"{k}-{i}" for i in range(n)], [40 + int(rng.integers(0, 4)) for _ in range(n)]


def test_cross_batch_transfer_pairs_every_update_with_every_batch():
    calls = []

    def align(texts, lengths, noise_seed, vectors=False, targets=()):
        b = int(texts[0].split("-")[0])
        calls.append((b, noise_seed, len(texts), vectors, len(targets)))
        if vectors:
            return {"vectors": {"total": TOTALS[b], "easytune_sum": SUMS[b]}}
        assert all(any(t is total for total in TOTALS if total is not TOTALS[b]) for t in targets)
        return {"transfer_sign_gain": PER_STEP_GAIN[b]}

    result = cross_batch_transfer(align, Captions(), num_batches=3, batch_size=2, seed=7)
    # one vector pass and one per-step pass per batch, noise seed = seed + batch, the others' gradients as targets
    assert calls == [(b, 7 + b, 2, True, 0) for b in range(3)] + [(b, 7 + b, 2, False, 2) for b in range(3)]
    rows = result["pairs"]
    assert len(rows) == 3 * 3 * 2
    assert [r["update"] for r in rows[:2]] == ["DRaFT-T gradient", "EasyTune summed per-step gradients"]
    assert sum(r["same batch"] for r in rows) == 6
    on_batch = [r for r in rows if r["same batch"] and r["update"] == "DRaFT-T gradient"]
    assert all(r["cos"] == pytest.approx(1.0) and r["sign_gain"] == pytest.approx(1.0) for r in on_batch)

    def by_hand(updates):   # cosine and sign-step gain over the pairs a != b
        cos, gain = [], []
        for a in range(3):
            for b in range(3):
                if a != b:
                    u, t = updates[a], TOTALS[b]
                    cos.append(float(u @ t / (u.norm() * t.norm())))
                    gain.append(float(t @ torch.sign(u) / t.abs().sum()))
        return np.mean(cos), np.mean(gain)

    other = result["other_batches"]
    for kind, updates in (("DRaFT-T gradient", TOTALS), ("EasyTune summed per-step gradients", SUMS)):
        cos, gain = by_hand(updates)
        assert other[kind]["pairs"] == 6
        assert other[kind]["cos_mean"] == pytest.approx(cos, abs=1e-12)
        assert other[kind]["sign_gain_mean"] == pytest.approx(gain, abs=1e-12)
    per_step = np.mean(PER_STEP_GAIN, axis=0)
    np.testing.assert_allclose(other[PER_STEP]["sign_gain_per_step"], per_step, atol=1e-12)
    assert other[PER_STEP]["early"] == pytest.approx(per_step[0]) and other[PER_STEP]["late"] == pytest.approx(per_step[-1])


def test_cross_batch_transfer_draws_batches_with_its_seed():
    seen = []

    def align(texts, lengths, noise_seed, vectors=False, targets=()):
        seen.append(list(lengths))
        b = int(texts[0].split("-")[0])
        return {"vectors": {"total": TOTALS[b], "easytune_sum": SUMS[b]}} if vectors else \
            {"transfer_sign_gain": PER_STEP_GAIN[b]}

    cross_batch_transfer(align, Captions(), 2, 3, seed=11)
    rng = np.random.default_rng(11)
    assert seen[:2] == [[40 + int(rng.integers(0, 4)) for _ in range(3)] for _ in range(2)]


def test_cross_batch_transfer_needs_two_batches():
    with pytest.raises(ValueError, match="num_batches"):
        cross_batch_transfer(lambda *a, **k: {}, Captions(), 1, 4, seed=0)
