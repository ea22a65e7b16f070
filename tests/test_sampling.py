"""Golden-number tests of the reverse steps and the sampling loop on tiny dummy models.

Schedule ᾱ = (0.9, 0.72, 0.36, 0.09) so that every coefficient can be worked out by hand.
"""

import math

import pytest
import torch

from easytune_lab.diffusion.sampling import Predictor, consistency_scalings, consistency_step, ddim_step, ddpm_step
from easytune_lab.diffusion.trajectory import sample
from easytune_lab.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule(torch.tensor([0.1, 0.2, 0.5, 0.75], dtype=torch.float64))


class AffineX0(torch.nn.Module):
    """x̂0 = a·x_t + cond (cond dropped -> 0); a is a parameter so gradients can be checked."""

    prediction = "x0"

    def __init__(self, a: float = 0.5):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.calls = 0

    def forward(self, x_t, t, cond, drop_text=False):
        self.calls += 1
        return self.a * x_t + (0.0 if drop_text else cond)


class PointMassEps(torch.nn.Module):
    """The exact ε-predictor of data that is a point mass at μ: ε = (x_t - √ᾱ_t μ)/√(1-ᾱ_t)."""

    prediction = "eps"

    def __init__(self, mu: float, schedule: NoiseSchedule):
        super().__init__()
        self.mu, self.schedule = mu, schedule

    def forward(self, x_t, t, cond, drop_text=False):
        ab = self.schedule.alpha_bar_at(t).view(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - ab.sqrt() * self.mu) / (1 - ab).sqrt()


def test_ddpm_step_golden():
    model = Predictor(AffineX0(), SCHED)
    x = torch.ones(2, 3)
    x_prev, x0 = ddpm_step(model, x, 3, 1, torch.tensor(0.2), 1.0, noise=torch.ones(2, 3))
    assert torch.allclose(x0, torch.full((2, 3), 0.7))
    # μ̃ = 0.7·√0.72·0.875/0.91 + √0.125·0.28/0.91, β̃ = 0.28/0.91·0.875, worked by hand: 1.1987849
    assert torch.allclose(x_prev, torch.full((2, 3), 1.1987849), atol=1e-6)
    last, x0_last = ddpm_step(model, x, 0, -1, torch.tensor(0.2), 1.0, noise=torch.ones(2, 3))
    assert torch.equal(last, x0_last)


def test_ddim_step_golden_and_deterministic():
    model = Predictor(AffineX0(), SCHED)
    x = torch.ones(1, 4)
    x_prev, x0 = ddim_step(model, x, 3, 1, torch.tensor(0.2), 1.0)
    # ε̂ = (1 - 0.3·0.7)/√0.91;  x_1 = √0.72·0.7 + √0.28·ε̂ = 1.0321829
    assert torch.allclose(x_prev, torch.full((1, 4), 1.0321829), atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    out1 = sample(model, (3, 5), SCHED, 4, torch.tensor(0.2), "ddim", x_T=torch.ones(3, 5), generator=g1)
    out2 = sample(model, (3, 5), SCHED, 4, torch.tensor(0.2), "ddim", x_T=torch.ones(3, 5), generator=g2)
    assert torch.equal(out1, out2)  # η = 0: no noise is drawn


def test_consistency_step_golden_and_boundary():
    assert consistency_scalings(0) == (1.0, 0.0)
    c_skip, c_out = consistency_scalings(999)
    assert c_skip == pytest.approx(0.25 / (9990**2 + 0.25)) and c_out == pytest.approx(1.0, abs=1e-8)
    model = Predictor(AffineX0(), SCHED)
    x_prev, x0 = consistency_step(model, torch.ones(1, 1), 3, 1, torch.tensor(0.2), 1.0, noise=torch.ones(1, 1))
    # c_skip = 0.25/900.25, c_out = 30/√900.25: f = 0.7001805; x_1 = √0.72·f + √0.28 = 1.1232731
    assert x0.item() == pytest.approx(0.7001805, abs=1e-6)
    assert x_prev.item() == pytest.approx(1.1232731, abs=1e-6)


def test_guidance_scale_one_is_the_conditional_model_and_scale_s_is_linear():
    net = AffineX0()
    model = Predictor(net, SCHED)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    x0_g1, _ = model(x, 2, torch.tensor(0.2), guidance=1.0)
    assert torch.equal(x0_g1, net(x, torch.full((2,), 2), torch.tensor(0.2)))
    x0_g3, _ = model(x, 2, torch.tensor(0.2), guidance=3.0)  # u + 3(c - u) = 0.5x + 3·0.2
    assert torch.allclose(x0_g3, 0.5 * x + 0.6, atol=1e-6)
    x0_g0, _ = model(x, 2, torch.tensor(0.2), guidance=0.0)
    assert torch.allclose(x0_g0, 0.5 * x, atol=1e-6)


def test_eps_and_x0_parameterisations_agree():
    x0_net = AffineX0()

    class SameAsEps(torch.nn.Module):
        prediction = "eps"

        def forward(self, x_t, t, cond, drop_text=False):
            ab = SCHED.alpha_bar_at(t).view(-1, 1)
            x0 = x0_net(x_t, t, cond, drop_text)
            return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    a = ddim_step(Predictor(x0_net, SCHED), x, 2, 0, torch.tensor(-0.3), 2.5)[0]
    b = ddim_step(Predictor(SameAsEps(), SCHED), x, 2, 0, torch.tensor(-0.3), 2.5)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_exact_denoiser_lands_on_point_mass_and_ddpm_marginals_are_exact():
    mu = 1.5
    net = PointMassEps(mu, SCHED)
    x_T = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    out = sample(net, (20000, 1), SCHED, 4, None, "ddim", x_T=x_T)
    assert torch.allclose(out, torch.full_like(out, mu), atol=1e-4)
    # DDPM with the exact x̂0: x_{t_prev} ~ q(x_{t_prev} | x0 = μ) = N(√ᾱ μ, 1-ᾱ) at every step
    x_T = math.sqrt(0.09) * mu + math.sqrt(0.91) * x_T
    seen = {}
    out = sample(net, (20000, 1), SCHED, 4, None, "ddpm", x_T=x_T, generator=torch.Generator().manual_seed(1),
                 hook=lambda i, t, x_t, x_prev, x0_hat: seen.setdefault(t, x_prev.clone()))
    assert sorted(seen) == [0, 1, 2, 3]
    for t, ab in [(3, 0.36), (2, 0.72), (1, 0.9)]:
        assert seen[t].mean().item() == pytest.approx(math.sqrt(ab) * mu, abs=0.02)
        assert seen[t].var().item() == pytest.approx(1 - ab, rel=0.04)
    assert torch.allclose(out, torch.full_like(out, mu), atol=1e-4)


def test_sampling_loop_hook_seed_and_gradients():
    net = AffineX0()
    calls = []
    hook = lambda i, t, x_t, x_prev, x0_hat: calls.append((i, t))  # noqa: E731
    a = sample(net, (2, 3), SCHED, 2, torch.tensor(0.1), "ddpm", hook=hook, generator=torch.Generator().manual_seed(5))
    assert calls == [(0, 2), (1, 0)]  # leading spacing with 2 of 4 steps: t = 2, 0
    b = sample(net, (2, 3), SCHED, 2, torch.tensor(0.1), "ddpm", generator=torch.Generator().manual_seed(5))
    c = sample(net, (2, 3), SCHED, 2, torch.tensor(0.1), "ddpm", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # steps keep the graph: the fine-tuning loop differentiates through them
    x_prev, x0 = ddim_step(Predictor(net, SCHED), torch.ones(1, 1), 3, 1, torch.tensor(0.0), 1.0)
    x_prev.sum().backward()
    # d x_1 / d a = √0.72·1 + √0.28·(-0.3·1)/√0.91
    assert net.a.grad.item() == pytest.approx(math.sqrt(0.72) - math.sqrt(0.28) * 0.3 / math.sqrt(0.91), abs=1e-6)
