"""Golden numbers of the noise schedules and inference timesteps (values derived by hand / closed form)."""

import math

import pytest
import torch

from easytune_lab.diffusion.schedule import NoiseSchedule, inference_timesteps, make_betas, timestep_pairs
from easytune_lab.errors import UserError


def test_linear_schedule_endpoints_and_alpha_bar():
    betas = make_betas("linear", 1000)
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-12)
    assert betas[1].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / 999, abs=1e-12)
    sched = NoiseSchedule(betas)
    assert sched.alpha_bar(0) == pytest.approx(0.9999, abs=1e-12)
    assert sched.alpha_bar(1) == pytest.approx(0.9999 * (1 - 1e-4 - (0.02 - 1e-4) / 999), abs=1e-12)
    # log ᾱ_T = Σ log(1-β) ≈ -Σβ - Σβ²/2 - Σβ³/3 with Σβ = 1000·(a+b)/2 and mean β² = (a²+ab+b²)/3
    a, b = 1e-4, 0.02
    log_ab = -1000 * (a + b) / 2 - 1000 * (a * a + a * b + b * b) / 3 / 2 - 1000 * (b**3 / 4) / 3
    assert sched.alpha_bar(999) == pytest.approx(math.exp(log_ab), rel=2e-3)
    assert sched.alpha_bar(999) == pytest.approx(4.0358e-5, rel=1e-3)  # the value quoted for DDPM's schedule
    assert sched.alpha_bar(-1) == 1.0


def test_scaled_linear_and_cosine():
    b = make_betas("scaled_linear", 1000)
    assert b[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert b[-1].item() == pytest.approx(0.012, rel=1e-12)
    mid = ((math.sqrt(0.00085) + math.sqrt(0.012)) / 2) ** 2  # 1000 points: the mean of indices 499 and 500
    assert ((b[499].sqrt() + b[500].sqrt()) / 2).item() ** 2 == pytest.approx(mid, rel=1e-12)

    sched = NoiseSchedule.create("cosine", 1000)
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # ᾱ at index t is f((t+1)/N)/f(0) while no β is clipped
    assert sched.alpha_bar(499) == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert sched.alpha_bar(0) == pytest.approx(f(0.001) / f(0.0), rel=1e-9)
    assert sched.betas[-1].item() == pytest.approx(0.999)  # f(1) = 0 -> β_N clipped
    assert torch.all(sched.betas[:-1] < 0.999)


def test_unknown_schedule_is_user_error():
    with pytest.raises(UserError, match="beta_schedule"):
        make_betas("quadratic")


def test_inference_timesteps():
    assert inference_timesteps(1000, 50)[:3] == [980, 960, 940]
    assert inference_timesteps(1000, 50)[-1] == 0
    assert len(inference_timesteps(1000, 50)) == 50
    assert inference_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert inference_timesteps(1000, 1, "trailing") == [999]
    assert inference_timesteps(1000, 2, "trailing") == [999, 499]
    assert inference_timesteps(1000, 3, "linspace") == [999, 500, 0]  # 499.5 rounds to even 500
    assert inference_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert timestep_pairs([999, 499]) == [(999, 499), (499, -1)]
    with pytest.raises(UserError, match="--steps"):
        inference_timesteps(1000, 0)
    with pytest.raises(UserError, match="--steps"):
        inference_timesteps(10, 11)


def test_add_noise_is_eq4():
    sched = NoiseSchedule(torch.tensor([0.1, 0.2, 0.5, 0.75], dtype=torch.float64))  # ᾱ = 0.9, 0.72, 0.36, 0.09
    assert [round(sched.alpha_bar(t), 12) for t in range(4)] == [0.9, 0.72, 0.36, 0.09]
    x0 = torch.full((2, 3), 2.0)
    eps = torch.full((2, 3), -1.0)
    xt = sched.add_noise(x0, eps, torch.tensor([3, 0]))
    assert xt[0, 0].item() == pytest.approx(0.3 * 2 - math.sqrt(0.91), abs=1e-6)
    assert xt[1, 0].item() == pytest.approx(math.sqrt(0.9) * 2 - math.sqrt(0.1), abs=1e-6)
