"""Chain coefficients over draws (notebook 02): per-sample norms on linear maps with closed forms, the per-draw
summary, intervals and verdicts on known inputs, and one study on a smoke backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from easytune_lab.analysis.chain import chain_coefficients, chain_norms
from easytune_lab.analysis.chain_draws import (ATTENUATES, CONSTANT_EPS, GROWS, LAST_STEP, NO_DIFFERENCE, ONE_DRAW,
                                               attenuation_verdict, chain_study, draw_captions, draw_summary,
                                               profile_draws, step_intervals, summarize, summary_rows)
from easytune_lab.errors import UserError
from easytune_lab.stats import interval


class DiagonalTrajectory:
    """x_{t-1} = d_i ⊙ x_t (float64): v^T ∂x_0/∂x_{t_i} = v ⊙ ∏_{s>=i} d_s exactly."""

    def __init__(self, factors):
        self.factors = [torch.as_tensor(f, dtype=torch.float64) for f in factors]
        self.num_steps = len(self.factors)

    def initial_noise(self, generator):
        return torch.randn(3, self.factors[0].numel(), generator=generator, dtype=torch.float64)

    def draw_noise(self, i, x, generator):
        return None

    def step(self, x, i, noise, detach_input):
        return self.factors[i] * x, self.factors[i] * x


FACTORS = [[0.5, 2.0], [0.9, 1.5], [1.0, 0.25]]


def test_chain_norms_are_the_products_of_the_step_factors_per_sample():
    traj = DiagonalTrajectory(FACTORS)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    got = chain_norms(traj, [v], generator=torch.Generator().manual_seed(0))
    assert got.shape == (1, 3, 3)
    for i in range(3):
        prod = np.prod(np.asarray(FACTORS[i:]), axis=0)           # ∏_{s>=i} d_s, per coordinate
        want = np.linalg.norm(v.numpy() * prod, axis=1) / np.linalg.norm(v.numpy(), axis=1)
        np.testing.assert_allclose(got[0, i], want, rtol=1e-12)
    # first coordinate: 0.5·0.9·1 = 0.45 at step 0; second: 2·1.5·0.25 = 0.75
    np.testing.assert_allclose(got[0, 0, :2], [0.45, 0.75], rtol=1e-12)


def test_several_directions_in_one_pass_equal_separate_passes():
    traj = DiagonalTrajectory(FACTORS)
    v = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 4.0]], dtype=torch.float64)
    both = chain_norms(traj, [lambda x0: v, None], generator=torch.Generator().manual_seed(3))
    alone_v = chain_coefficients(traj, v, generator=torch.Generator().manual_seed(3))
    alone_random = chain_coefficients(traj, None, generator=torch.Generator().manual_seed(3))  # same draw order
    np.testing.assert_allclose(both[0].mean(axis=1), alone_v, rtol=1e-12)
    np.testing.assert_allclose(both[1].mean(axis=1), alone_random, rtol=1e-12)
    assert not np.allclose(both[0], both[1])


class _Net:
    """A denoiser output ``scale · x_t + shift`` in the parameterisation ``prediction``."""

    def __init__(self, prediction, scale, shift=0.0):
        self.prediction, self.scale, self.shift = prediction, scale, shift

    def __call__(self, x_t, t, cond, drop_text=False):
        return self.scale * x_t + self.shift


def _ddim(net, steps=10):
    from easytune_lab.diffusion.schedule import NoiseSchedule
    from easytune_lab.diffusion.trajectory import Trajectory

    return Trajectory(net, NoiseSchedule.create("scaled_linear", 1000), steps, "ddim", None, shape=(3, 4),
                      dtype=torch.float64)


def test_an_eps_network_that_ignores_its_input_gives_the_chain_one_over_sqrt_alpha_bar():
    traj = _ddim(_Net("eps", 0.0, shift=0.3))
    got = chain_norms(traj, [None], generator=torch.Generator().manual_seed(0))[0]
    want = [1 / math.sqrt(traj.schedule.alpha_bar(t)) for t, _ in traj.pairs]
    np.testing.assert_allclose(got, np.repeat(np.asarray(want)[:, None], 3, axis=1), rtol=1e-10)
    assert got[0, 0] > 5 and got[-1, 0] == pytest.approx(1 / math.sqrt(traj.schedule.alpha_bar(0)))


def test_the_last_ddim_step_is_near_the_identity_for_eps_and_the_network_for_x0():
    """x_0 = (x_1 − √(1−ᾱ) ε̂)/√ᾱ with ε̂ = a·x_1 has gain (1 − √(1−ᾱ)·a)/√ᾱ; x_0 = x̂0 = a·x_1 has gain a."""
    for a in (0.5, 4.0):
        eps = _ddim(_Net("eps", a))
        ab = eps.schedule.alpha_bar(eps.pairs[-1][0])
        got = chain_norms(eps, [None], generator=torch.Generator().manual_seed(1))[0, -1]
        np.testing.assert_allclose(got, abs(1 - math.sqrt(1 - ab) * a) / math.sqrt(ab), rtol=1e-10)
        assert abs(got[0] - 1) < 0.2                       # √(1−ᾱ) = 0.029 at t = 0: close to the identity
        x0 = chain_norms(_ddim(_Net("x0", a)), [None], generator=torch.Generator().manual_seed(1))[0, -1]
        np.testing.assert_allclose(x0, a, rtol=1e-10)      # the network's own Jacobian, no identity term


def test_draw_summary_of_a_known_series():
    s = draw_summary([4.0, 4.0, 2.0, 2.0, 1.0, 1.0])            # thirds of 6 steps: 2 steps each
    assert s == {"early": 4.0, "late": 1.0, "ratio": 4.0}
    assert draw_summary([1.0, 2.0, 3.0], parts=3)["ratio"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="late"):
        draw_summary([1.0, 0.0, 0.0])


def _study(ratios_by_draw, steps=6):
    """A study of one run whose draw d has coefficients r_d (first third), 1 (middle), 1 (last third)."""
    table = [[r, r, 1.0, 1.0, 1.0, 1.0][:steps] for r in ratios_by_draw]
    per_draw = [draw_summary(row) for row in table]
    return {"runs": {"base": {"coefficients": {"reward": table}, "per_draw": {"reward": per_draw}}}}


def test_summary_intervals_and_verdicts_on_known_inputs():
    summary = summarize(_study([0.5, 0.6, 0.7]))["base"]["reward"]
    half = 4.303 * 0.1 / math.sqrt(3)                            # t_{0.975, 2} · s / √n with s = 0.1
    assert summary["ratio"]["mean"] == pytest.approx(0.6)
    assert summary["ratio"]["ci95"] == pytest.approx(half)
    assert summary["ratio"]["hi"] == pytest.approx(0.6 + half) and summary["ratio"]["hi"] < 1
    assert summary["verdict"] == ATTENUATES
    assert summary["early"] == interval([0.5, 0.6, 0.7]) and summary["late"]["mean"] == 1.0
    assert summary["per_step"]["mean"][0] == pytest.approx(0.6)
    assert summary["per_step"]["lo"][0] == pytest.approx(0.6 - half) and summary["per_step"]["hi"][5] == 1.0
    assert summarize(_study([2.0, 3.0, 2.5]))["base"]["reward"]["verdict"] == GROWS
    assert summarize(_study([0.5, 1.5, 1.0]))["base"]["reward"]["verdict"] == NO_DIFFERENCE
    assert summarize(_study([0.5]))["base"]["reward"]["verdict"] == ONE_DRAW
    rows = summary_rows({"mld": summarize(_study([0.5, 0.6, 0.7]))})
    assert len(rows) == 1 and rows[0]["backbone"] == "mld" and rows[0]["verdict"] == ATTENUATES
    assert rows[0]["ratio"] == pytest.approx(0.6) and rows[0]["draws"] == 3


def test_verdict_reads_the_interval_against_one():
    def iv(lo, hi):
        return {"mean": (lo + hi) / 2, "ci95": (hi - lo) / 2, "lo": lo, "hi": hi}

    assert attenuation_verdict(iv(0.2, 0.99)) == ATTENUATES
    assert attenuation_verdict(iv(1.01, 3.0)) == GROWS
    assert attenuation_verdict(iv(0.5, 1.0)) == NO_DIFFERENCE      # an interval touching 1 contains it
    assert attenuation_verdict(iv(1.0, 2.0)) == NO_DIFFERENCE
    assert attenuation_verdict(interval([0.3])) == ONE_DRAW


def test_step_intervals_need_a_table():
    got = step_intervals([[1.0, 2.0], [3.0, 2.0]])
    assert got["mean"] == [2.0, 2.0] and got["hi"][1] == 2.0 and got["lo"][0] < 0
    assert step_intervals([[1.0, 2.0]])["lo"] == [None, None]
    with pytest.raises(ValueError):
        step_intervals([1.0, 2.0])


class _Captions:
    def __init__(self, n=20):
        self.captions = [f"caption {i}" for i in range(n)]

    def draw(self, n, rng):
        idx = rng.choice(len(self.captions), size=n, replace=False)
        return [self.captions[i] for i in idx], [40 + 4 * int(i) for i in idx]


def test_draws_of_captions_are_independent_and_draw_zero_is_a_single_draw():
    draws = draw_captions(_Captions(), 4, 3, seed=7)
    assert len(draws) == 4 and all(len(t) == 3 for t, _ in draws)
    assert draws[0] == _Captions().draw(3, np.random.default_rng(7))
    assert len({tuple(t) for t, _ in draws}) == 4
    with pytest.raises(UserError, match="draws"):
        draw_captions(_Captions(), 0, 3, seed=0)
    with pytest.raises(UserError, match="batch"):
        draw_captions(_Captions(), 2, 0, seed=0)


def test_profile_draws():
    assert profile_draws("smoke") == 2 and profile_draws("quick") == 8 and profile_draws("quick", 3) == 3
    with pytest.raises(UserError, match="draws"):
        profile_draws("quick", -1)
    with pytest.raises(UserError, match="profile"):
        profile_draws("laptop")


def test_chain_study_on_a_smoke_backbone_is_paired_and_matches_single_trajectories(smoke_runs):
    from easytune_lab.diffusion.generate import load_generator
    from easytune_lab.diffusion.trajectory import BackboneTrajectory
    from easytune_lab.finetune.train import Prompts
    from easytune_lab.reward.retrieval import load_reward

    reward = load_reward(smoke_runs["reward"], "cpu")
    gen = load_generator(smoke_runs["base"], "cpu")
    prompts = Prompts.from_split(smoke_runs["data"], "test", gen.max_frames)
    study = chain_study({"base": smoke_runs["base"], "same model": smoke_runs["base"]}, reward, prompts, draws=2,
                        batch=2, sample_steps=4, seed=11, device="cpu")
    base, again = study["runs"]["base"], study["runs"]["same model"]
    assert study["noise_seeds"] == [11, 12] and len(study["captions"]) == 2
    assert study["captions"][0] != study["captions"][1]
    for direction in ("reward", "random"):
        table = np.asarray(base["coefficients"][direction])
        assert table.shape == (2, 4) and np.all(np.isfinite(table)) and table.min() > 0
        assert base["coefficients"][direction] == again["coefficients"][direction]   # the same draws for every run
    assert base[LAST_STEP]["prediction"] == "x0" and base[LAST_STEP]["t"] == 0
    reference = base[CONSTANT_EPS]      # 1/√ᾱ_t: 1 at the last step (t = 0 is not quite clean), larger before
    assert len(reference) == 4 and reference[-1] == pytest.approx(1.0, abs=1e-3)
    assert all(a > b for a, b in zip(reference, reference[1:]))
    # draw 1 is one random-direction trajectory of its captions from noise seed 12
    traj = BackboneTrajectory(gen.backbone, study["captions"][1], study["lengths"][1], "ddim", 4, gen.guidance)
    gen.backbone.requires_grad_(False)
    single = chain_norms(traj, [lambda x0: torch.zeros_like(x0) + 1.0, None],
                         generator=torch.Generator().manual_seed(12))[1].mean(axis=1)
    np.testing.assert_allclose(base["coefficients"]["random"][1], single, rtol=1e-5)
    summary = summarize(study)
    assert set(summary) == {"base", "same model"}
    assert summary["base"]["reward"]["verdict"] in (ATTENUATES, GROWS, NO_DIFFERENCE)
    assert summary["base"]["reward"]["ratio"]["n"] == 2
