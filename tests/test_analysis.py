"""Chain coefficients and noisy/clean similarity on toy trajectories with closed forms."""

from __future__ import annotations

import numpy as np
import torch

from easytune_lab.analysis.chain import chain_coefficients
from easytune_lab.analysis.similarity import crossing_step, similarity_curve
from easytune_lab.diffusion.schedule import NoiseSchedule


class LinearTrajectory:
    """x_{t-1} = c_i · x_t: the chain from step i to the end is ∏_{s>=i} c_s exactly."""

    def __init__(self, coeffs):
        self.coeffs = list(coeffs)
        self.num_steps = len(self.coeffs)

    def initial_noise(self, generator):
        return torch.randn(4, 5, generator=generator, dtype=torch.float64)

    def draw_noise(self, i, x, generator):
        return None

    def step(self, x, i, noise, detach_input):
        return self.coeffs[i] * x, self.coeffs[i] * x


def test_chain_coefficients_match_products_of_step_jacobians():
    coeffs = [0.5, 0.8, 0.9, 0.95, 1.0]
    got = chain_coefficients(LinearTrajectory(coeffs), generator=torch.Generator().manual_seed(0))
    want = [float(np.prod(coeffs[i:])) for i in range(len(coeffs))]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] < got[-1]  # early steps receive the smallest share of the gradient


def test_chain_coefficients_with_reward_gradient_vector():
    coeffs = [0.5, 2.0]
    got = chain_coefficients(LinearTrajectory(coeffs), v=lambda x0: 2 * x0, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(got, [1.0, 2.0], rtol=1e-12)


def test_similarity_decreases_with_noise_and_crosses_unrelated_level():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 32, generator=g, dtype=torch.float64)
    x0 = base + 0.8 * torch.randn(64, 32, generator=g, dtype=torch.float64)  # related-looking motions
    schedule = NoiseSchedule.create("linear", 1000)
    curve = similarity_curve(x0, [-1, 50, 200, 500, 999], schedule, embed=lambda x, t: x, generator=g)
    assert curve.noisy[0] > 0.999
    assert all(a > b for a, b in zip(curve.noisy, curve.noisy[1:]))
    assert 0.0 < curve.unrelated < 0.9
    assert crossing_step(curve) in (200, 500, 999)
