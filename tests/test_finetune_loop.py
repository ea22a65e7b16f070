"""The shared trajectory loop on a tiny float64 model: gradients, counted graph calls, memory scaling.

The toy trajectory is a deterministic DDIM-like sampler (x_{t-1} = a_i·x̂0 + b_i·x_t) around a small network
x̂0 = tanh(W x_t + u·s_i), with a quadratic reward; every quantity can be recomputed independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easytune_lab.memory import SavedTensorMeter
from easytune_lab.finetune.loop import LoopConfig, run_trajectory
from easytune_lab.finetune.policy import POLICIES, PolicyConfig, graph_steps, make_policy

DIM, BATCH = 6, 3


@pytest.fixture(autouse=True)
def float64():
    """Every test here runs in float64; the default dtype is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class ToyNet(torch.nn.Module):
    def __init__(self, width: int = DIM):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = torch.nn.Parameter(0.3 * torch.randn(width, width, generator=g))
        self.u = torch.nn.Parameter(0.3 * torch.randn(width, generator=g))
        self.calls: list[tuple[int, bool]] = []  # (step, built a graph)

    def forward(self, x: torch.Tensor, s: float, i: int) -> torch.Tensor:
        out = torch.tanh(x @ self.W.T + s * self.u)
        self.calls.append((i, out.requires_grad))
        return out


class ToyTrajectory:
    """x_T ~ N(0, I); step i maps x_t to a_i·x̂0 + b_i·x_t; re-noising mixes x0 with fresh noise."""

    def __init__(self, net: ToyNet, num_steps: int, batch: int = BATCH, seed: int = 1):
        self.net, self.num_steps, self.batch, self.seed = net, num_steps, batch, seed
        self.levels = np.linspace(1.0, 1.0 / num_steps, num_steps)

    def initial_noise(self, generator):
        return torch.randn(self.batch, DIM, generator=torch.Generator().manual_seed(self.seed))

    def draw_noise(self, i, x, generator):
        return None

    def coefficients(self, i):
        s = float(self.levels[i])
        s_prev = float(self.levels[i + 1]) if i + 1 < self.num_steps else 0.0
        return s_prev / s, 1.0 - s_prev / s  # (b: weight of x_t, a: weight of x0_hat)

    def step(self, x_t, i, noise, detach_input):
        net_in = x_t.detach() if detach_input else x_t
        x0_hat = self.net(net_in, float(self.levels[i]), i)
        b, a = self.coefficients(i)
        return a * x0_hat + b * x_t, x0_hat

    def noise_level(self, i):
        return int(1000 * self.levels[i])

    def renoise(self, x0, i, generator):
        s = float(self.levels[i])
        return (1 - s) * x0 + s * torch.randn(x0.shape, generator=generator)


TARGET = torch.linspace(-0.5, 0.5, DIM, dtype=torch.float64)


def reward(x: torch.Tensor, t: int) -> torch.Tensor:
    return -((x - TARGET) ** 2).sum(-1)


class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradient it is asked to apply at every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.recorded: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.recorded.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def run(method: str, num_steps: int, lr: float = 0.0, cfg: PolicyConfig | None = None, seed: int = 0,
        meter: SavedTensorMeter | None = None):
    net = ToyNet()
    traj = ToyTrajectory(net, num_steps)
    policy = make_policy(method, cfg or PolicyConfig(k=num_steps))
    plans = policy.plan(num_steps, np.random.default_rng(seed))
    params = list(net.parameters())
    opt = RecordingSGD(params, lr=lr)
    stats = run_trajectory(traj, policy, plans, reward, opt, params, LoopConfig(grad_clip=0.0), probe=meter,
                           generator=torch.Generator().manual_seed(5))
    return net, traj, plans, opt, stats


def test_easytune_step_gradient_equals_isolated_step_gradient():
    num_steps = 5
    net, traj, plans, opt, stats = run("easytune", num_steps, lr=0.0)
    assert stats.optimizer_steps == num_steps
    # Recompute x_t along the (unchanged, lr = 0) trajectory and the gradient of R(pi(sg(x_t))) per step.
    x = traj.initial_noise(None)
    for i in range(num_steps):
        x = x.detach()
        net.zero_grad()
        x_prev, x0_hat = traj.step(x, i, None, False)
        (-reward(x0_hat, 0).mean()).backward()
        expected = [p.grad.clone() for p in net.parameters()]
        for got, want in zip(opt.recorded[i], expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        x = x_prev


@pytest.mark.parametrize("k", [1, 3, 10])
def test_easytune_last_k_trains_exactly_the_last_k_steps(k):
    """``train_steps="last"``: the last k steps build a graph and update, each with the isolated-step gradient of
    the (sampled, gradient-free) trajectory; no earlier step builds a graph."""
    num_steps = 12
    net, traj, plans, opt, stats = run("easytune", num_steps, lr=0.0,
                                       cfg=PolicyConfig(train_steps="last", num_train_steps=k))
    last = list(range(num_steps - k, num_steps))
    assert graph_steps(plans) == last and stats.graph_calls == last
    assert [i for i, grad in net.calls if grad] == last
    assert stats.optimizer_steps == k and stats.reward_steps == last
    x = traj.initial_noise(None)
    for i in range(num_steps):
        x = x.detach()
        net.zero_grad()
        x_prev, x0_hat = traj.step(x, i, None, False)
        if i >= num_steps - k:
            (-reward(x0_hat, 0).mean()).backward()
            for got, p in zip(opt.recorded[i - (num_steps - k)], net.parameters()):
                torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12)
        x = x_prev


def test_easytune_last_defaults_to_ten_steps_and_refuses_more_than_T():
    from easytune_lab.errors import UserError
    from easytune_lab.finetune.policy import LAST_K
    from easytune_lab.finetune.train import expected_updates, finetune_config

    plans = make_policy("easytune", PolicyConfig(train_steps="last")).plan(50, np.random.default_rng(0))
    assert graph_steps(plans) == list(range(50 - LAST_K, 50)) and LAST_K == 10
    assert expected_updates(finetune_config("easytune", "quick", train_steps="last")) == LAST_K
    with pytest.raises(UserError, match="num_train_steps"):
        finetune_config("easytune", "smoke", train_steps="last", num_train_steps=11)


def trajectory_reward(net: ToyNet, num_steps: int) -> float:
    traj = ToyTrajectory(net, num_steps)
    x = traj.initial_noise(None)
    with torch.no_grad():
        for i in range(num_steps):
            x, x0_hat = traj.step(x, i, None, False)
    return float(reward(x0_hat, 0).mean())


def test_draft_full_chain_matches_finite_differences():
    num_steps = 6
    net, _, _, opt, stats = run("draft", num_steps, lr=0.0, cfg=PolicyConfig(k=num_steps))
    grads = opt.recorded[0]  # gradient of -R
    rng = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(3):
        directions = [torch.randn(p.shape, generator=rng) for p in net.parameters()]
        analytic = -sum(float((g * d).sum()) for g, d in zip(grads, directions))
        with torch.no_grad():
            for p, d in zip(net.parameters(), directions):
                p.add_(eps * d)
        r_plus = trajectory_reward(net, num_steps)
        with torch.no_grad():
            for p, d in zip(net.parameters(), directions):
                p.sub_(2 * eps * d)
        r_minus = trajectory_reward(net, num_steps)
        with torch.no_grad():
            for p, d in zip(net.parameters(), directions):
                p.add_(eps * d)
        numeric = (r_plus - r_minus) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_draft_truncated_gradient_differs_from_full_chain():
    _, _, _, full, _ = run("draft", 6, cfg=PolicyConfig(k=6))
    _, _, _, last, _ = run("draft", 6, cfg=PolicyConfig(k=1))
    assert not torch.allclose(full.recorded[0][0], last.recorded[0][0])


@pytest.mark.parametrize("method", sorted(POLICIES))
def test_graph_building_calls_are_exactly_those_the_policy_names(method):
    num_steps = 8
    cfg = PolicyConfig(k=3, lv_samples=2)
    net, _, plans, _, stats = run(method, num_steps, lr=0.01, cfg=cfg, seed=4)
    named = graph_steps(plans) + [num_steps - 1] * getattr(make_policy(method, cfg), "lv_samples", 0)
    built = [i for i, grad in net.calls if grad]
    assert sorted(built) == sorted(named)
    assert stats.graph_calls == named
    assert stats.optimizer_steps >= 1


def test_policy_shapes():
    rng = np.random.default_rng(0)
    T = 50
    easy = make_policy("easytune").plan(T, rng)
    assert all(p.grad and p.detach == "state" and p.update and p.reward_weight > 0 for p in easy)
    draft = make_policy("draft", PolicyConfig(k=5)).plan(T, rng)
    assert graph_steps(draft) == list(range(T - 5, T))
    assert [i for i, p in enumerate(draft) if p.reward_weight] == [T - 1]
    ref = make_policy("refl").plan(T, rng)
    assert len(graph_steps(ref)) == 1 and ref[graph_steps(ref)[0]].stop
    dr = make_policy("drtune", PolicyConfig(k=4)).plan(T, rng)
    stop = next(i for i, p in enumerate(dr) if p.stop)
    assert stop >= int(T * 0.7) - 1 and len(graph_steps(dr)) <= 4
    assert all(p.detach == "input" for p in dr[: stop + 1])
    sub = make_policy("easytune", PolicyConfig(train_steps="uniform", num_train_steps=7)).plan(T, rng)
    assert len(graph_steps(sub)) == 7
    early = make_policy("easytune", PolicyConfig(train_steps="weighted", weighting="early")).plan(T, rng)
    assert early[0].lr_scale > early[-1].lr_scale and all(p.reward_weight == 1.0 for p in early)
    assert abs(np.mean([p.lr_scale for p in early]) - 1.0) < 1e-12
    chain = make_policy("easytune-chain", PolicyConfig(train_steps="weighted", weighting="early")).plan(T, rng)
    assert [p.reward_weight for p in chain] == [p.lr_scale for p in early]   # one update: weights on the losses
    assert all(p.lr_scale == 1.0 for p in chain)


def test_easytune_updates_parameters_every_step_and_raises_reward():
    net0 = ToyNet()
    before = trajectory_reward(net0, 10)
    net, _, _, _, stats = run("easytune", 10, lr=0.05)
    assert stats.optimizer_steps == 10
    assert trajectory_reward(net, 10) > before


def peak(method: str, num_steps: int, k: int | None = None, plans=None) -> int:
    net = ToyNet()
    meter = SavedTensorMeter(exclude=list(net.parameters()))
    traj = ToyTrajectory(net, num_steps)
    policy = make_policy(method, PolicyConfig(k=k or num_steps))
    plans = plans or policy.plan(num_steps, np.random.default_rng(0))
    params = list(net.parameters())
    with meter:
        stats = run_trajectory(traj, policy, plans, reward, torch.optim.SGD(params, lr=0.0), params,
                               LoopConfig(grad_clip=0.0), probe=meter)
    return stats.peak_bytes


def test_saved_tensor_memory_is_constant_for_easytune_and_linear_for_draft():
    e10, e200 = peak("easytune", 10), peak("easytune", 200)
    d10, d200 = peak("draft", 10), peak("draft", 200)
    assert e10 > 0 and e10 == e200
    assert d200 >= 0.9 * 20 * d10
    assert e10 < 0.2 * d10


def test_checkpointing_saves_less_than_the_same_plan_without_it():
    from dataclasses import replace

    plans = make_policy("draft", PolicyConfig(k=20)).plan(20, np.random.default_rng(0))
    checkpointed = [replace(p, checkpoint=p.grad) for p in plans]
    assert peak("draft", 20, plans=checkpointed) < peak("draft", 20, plans=plans)


def _isolated_step_gradients(net: ToyNet, traj: ToyTrajectory) -> list[torch.Tensor]:
    """∇θ R(x̂0_θ(sg(x_t))) per step along the unchanged trajectory, computed on its own."""
    out, x = [], traj.initial_noise(None)
    for i in range(traj.num_steps):
        x = x.detach()
        x_prev, x0_hat = traj.step(x, i, None, False)
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(reward(x0_hat, 0).mean(),
                                                                          list(net.parameters()))]))
        x = x_prev
    return out


def test_gradient_alignment_shares_sum_to_the_whole_trajectory_gradient():
    from easytune_lab.analysis.gradient_alignment import gradient_alignment

    num_steps = 5
    net = ToyNet()
    traj = ToyTrajectory(net, num_steps)
    got = gradient_alignment(traj, reward, list(net.parameters()))
    assert got["share_sum_error"] < 1e-12
    # the whole-trajectory gradient, independently (DRaFT-T through the loop records it)
    _, _, _, opt, _ = run("draft", num_steps, lr=0.0, cfg=PolicyConfig(k=num_steps))
    total = torch.cat([g.reshape(-1) for g in opt.recorded[0]])
    np.testing.assert_allclose(got["total_norm"], float(total.norm()), rtol=1e-12)
    # EasyTune's per-step gradients: norms and cosines against the whole gradient (the loss is −R, so the
    # recorded gradient of the loop is −∇R; the module reports ascent directions)
    net2 = ToyNet()
    easy = _isolated_step_gradients(net2, ToyTrajectory(net2, num_steps))
    np.testing.assert_allclose(got["easytune_norm"], [float(g.norm()) for g in easy], rtol=1e-12)
    cos = [float(g @ -total / (g.norm() * total.norm())) for g in easy]
    np.testing.assert_allclose(got["cos_total"], cos, rtol=1e-10)
    summed = torch.stack(easy).sum(0)
    np.testing.assert_allclose(got["cos_easytune_sum_total"],
                               float(summed @ -total / (summed.norm() * total.norm())), rtol=1e-10)


def test_gradient_alignment_last_step_share_is_easytunes_gradient():
    """At the last step the reward is taken on that step's x̂0 either way, so g*_T-1 = g_T-1 exactly; earlier
    shares differ from EasyTune's gradients (they carry the chain)."""
    from easytune_lab.analysis.gradient_alignment import gradient_alignment

    net = ToyNet()
    got = gradient_alignment(ToyTrajectory(net, 4), reward, list(net.parameters()))
    assert got["cos_step"][-1] == pytest.approx(1.0, abs=1e-12)
    assert got["true_share_norm"][-1] == pytest.approx(got["easytune_norm"][-1], rel=1e-12)
    assert min(got["cos_step"][:-1]) < 1 - 1e-6
    assert len(got["true_share_norm"]) == 4 and all(n > 0 for n in got["true_share_norm"])


def test_gradient_alignment_sign_gain_is_first_order_reward_of_a_sign_step():
    from easytune_lab.analysis.gradient_alignment import gradient_alignment

    num_steps = 4
    net = ToyNet()
    got = gradient_alignment(ToyTrajectory(net, num_steps), reward, list(net.parameters()))
    _, _, _, opt, _ = run("draft", num_steps, lr=0.0, cfg=PolicyConfig(k=num_steps))
    total = -torch.cat([g.reshape(-1) for g in opt.recorded[0]])          # ∇θR (the loop records ∇θ(−R))
    net2 = ToyNet()
    easy = _isolated_step_gradients(net2, ToyTrajectory(net2, num_steps))
    want = [float(total @ torch.sign(g) / total.abs().sum()) for g in easy]
    np.testing.assert_allclose(got["sign_gain"], want, rtol=1e-10)
    assert got["sign_gain"][-1] <= 1.0 + 1e-12
    # a step along R's own gradient signs gains exactly ‖∇θR‖₁: the largest first-order gain of any sign step
    assert all(v <= 1.0 + 1e-12 for v in got["sign_gain"]) and got["sign_gain_easytune_sum"] <= 1.0 + 1e-12


def test_gradient_alignment_transfer_to_other_batches_per_step():
    from easytune_lab.analysis.gradient_alignment import gradient_alignment, transfer

    net = ToyNet()
    params = list(net.parameters())
    other = gradient_alignment(ToyTrajectory(net, 3, seed=7), reward, params, return_vectors=True)["vectors"]
    own = gradient_alignment(ToyTrajectory(net, 3), reward, params, return_vectors=True)
    got = gradient_alignment(ToyTrajectory(net, 3), reward, params, targets=[other["total"], own["vectors"]["total"]])
    assert len(got["transfer_sign_gain"]) == 3
    # against its own batch's gradient the last step's gain is the plain sign gain; averaged with the other batch
    last = transfer(torch.cat([g.reshape(-1) for g in _isolated_step_gradients(net, ToyTrajectory(net, 3))[-1:]]),
                    other["total"])["sign_gain"]
    np.testing.assert_allclose(got["transfer_sign_gain"][-1], (last + got["sign_gain"][-1]) / 2, rtol=1e-10)


class RecordingLR(torch.optim.SGD):
    """SGD that records the learning rate of every step it takes."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.lrs: list[float] = []

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def _weighted(weighting: str, opt_cls, lr: float, clip: float, accumulate: bool = False):
    net = ToyNet()
    traj = ToyTrajectory(net, 6)
    policy = make_policy("easytune", PolicyConfig(train_steps="weighted", weighting=weighting))
    plans = policy.plan(6, np.random.default_rng(0))
    params = list(net.parameters())
    opt = opt_cls(params, lr=lr)
    run_trajectory(traj, policy, plans, reward, opt, params, LoopConfig(grad_clip=clip), accumulate=accumulate)
    return net, opt, plans


def test_step_weights_scale_each_update_and_the_lr_is_restored():
    from easytune_lab.finetune.policy import step_weights

    _, opt, _ = _weighted("early", RecordingLR, 0.1, 0.0)
    np.testing.assert_allclose(opt.lrs, 0.1 * step_weights(6, "early"), rtol=1e-12)
    assert opt.param_groups[0]["lr"] == 0.1


def test_step_weights_act_as_loss_weights_under_sgd_without_clipping():
    """θ ← θ − w_t·lr·∇L_t is SGD on the weighted loss w_t·L_t: recompute it step by step."""
    from easytune_lab.finetune.policy import step_weights

    got, _, _ = _weighted("late", torch.optim.SGD, 0.05, 0.0)
    net = ToyNet()
    traj = ToyTrajectory(net, 6)
    w = step_weights(6, "late")
    x = traj.initial_noise(None)
    for i in range(6):
        x = x.detach()
        x_prev, x0_hat = traj.step(x, i, None, False)
        grads = torch.autograd.grad(-w[i] * reward(x0_hat, 0).mean(), list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= 0.05 * g
        x = x_prev
    for a, b in zip(got.parameters(), net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_weights_survive_gradient_clipping_and_adam():
    """The regression: with clipping at a norm the gradients exceed, loss weights were erased; lr scales are not."""
    runs = {w: _weighted(w, torch.optim.Adam, 1e-2, 1e-3)[0] for w in ("early", "uniform", "late")}
    flat = {w: torch.cat([p.detach().reshape(-1) for p in net.parameters()]) for w, net in runs.items()}
    base = torch.cat([p.detach().reshape(-1) for p in ToyNet().parameters()])
    moved = {w: float((v - base).norm()) for w, v in flat.items()}
    assert not torch.allclose(flat["early"], flat["uniform"]) and not torch.allclose(flat["late"], flat["uniform"])
    assert min(moved.values()) > 0


def test_accumulated_step_weights_weight_the_losses():
    from easytune_lab.finetune.policy import step_weights

    net, opt, _ = _weighted("early", RecordingLR, 0.1, 0.0, accumulate=True)
    assert opt.lrs == [0.1]                                   # one update at the schedule's lr
    ref = ToyNet()
    traj = ToyTrajectory(ref, 6)
    w = step_weights(6, "early")
    x, total = traj.initial_noise(None), None
    for i in range(6):
        x = x.detach()
        x_prev, x0_hat = traj.step(x, i, None, False)
        loss = -w[i] * reward(x0_hat, 0).mean()
        total = loss if total is None else total + loss
        x = x_prev
    grads = torch.autograd.grad(total, list(ref.parameters()))
    for p0, g, p in zip(ToyNet().parameters(), grads, net.parameters()):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * g, rtol=1e-12, atol=1e-12)


# --------------------------------------------------- gradients at the trajectory's start (LoopConfig.gradient_at)
def _frozen_run(gradient_at: str, num_steps: int = 6, lr: float = 0.05, k: int = 0):
    net = ToyNet()
    traj = ToyTrajectory(net, num_steps)
    cfg = PolicyConfig(train_steps="last", num_train_steps=k) if k else PolicyConfig()
    policy = make_policy("easytune", cfg)
    plans = policy.plan(num_steps, np.random.default_rng(0))
    params = list(net.parameters())
    opt = RecordingSGD(params, lr=lr)
    stats = run_trajectory(traj, policy, plans, reward, opt, params,
                           LoopConfig(grad_clip=0.0, gradient_at=gradient_at), generator=torch.Generator())
    return net, opt, stats


@pytest.mark.parametrize("k", [0, 3])
def test_frozen_trajectory_gradients_are_taken_at_the_start_and_the_updates_compound(k):
    """``gradient_at="start"`` (the authors' code): the trajectory is sampled and every per-step gradient taken at
    the parameters the trajectory started with, each equal to that step's gradient computed on its own there, while
    the SGD updates still add up on the live parameters, which are what the run holds at the end."""
    num_steps, lr = 6, 0.05
    net, opt, stats = _frozen_run("start", num_steps, lr, k)
    trained = list(range(num_steps - k, num_steps)) if k else list(range(num_steps))
    assert stats.optimizer_steps == len(trained) == len(opt.recorded)
    reference = ToyNet()                                  # the start parameters (same seed), never updated
    start = [p.detach().clone() for p in reference.parameters()]
    traj = ToyTrajectory(reference, num_steps)
    x = traj.initial_noise(None)
    for i in range(num_steps):
        x = x.detach()
        reference.zero_grad()
        x_prev, x0_hat = traj.step(x, i, None, False)
        if i in trained:
            (-reward(x0_hat, 0).mean()).backward()
            for got, p in zip(opt.recorded[trained.index(i)], reference.parameters()):
                torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12)
        x = x_prev
    for j, (p, p0) in enumerate(zip(net.parameters(), start)):   # θ_end = θ_start − lr·Σ_i g_i(θ_start)
        total = sum(step[j] for step in opt.recorded)
        torch.testing.assert_close(p.detach(), p0 - lr * total, rtol=1e-12, atol=1e-12)
    # live parameters (ours) take later gradients elsewhere: the two modes differ, so the test above can fail
    _, live_opt, _ = _frozen_run("live", num_steps, lr, k)
    assert not torch.allclose(live_opt.recorded[-1][0], opt.recorded[-1][0])
    torch.testing.assert_close(live_opt.recorded[0][0], opt.recorded[0][0])   # the first step is the same


def test_frozen_trajectory_keeps_one_buffer_per_run():
    from easytune_lab.finetune.loop import StartParameters

    net = ToyNet()
    params = list(net.parameters())
    frozen = StartParameters(params)
    buffers = {b.data_ptr() for b in frozen.buffers()} | {p.data_ptr() for p in params}
    policy = make_policy("easytune", PolicyConfig())
    opt = torch.optim.SGD(params, lr=0.1)
    for seed in range(3):   # three trajectories: the same two storages per tensor, no new copies
        run_trajectory(ToyTrajectory(net, 4, seed=seed), policy, policy.plan(4, np.random.default_rng(seed)), reward,
                       opt, params, LoopConfig(grad_clip=0.0, gradient_at="start"), start_parameters=frozen)
        assert frozen.live_in_params
        assert {b.data_ptr() for b in frozen.buffers()} | {p.data_ptr() for p in params} == buffers
    with pytest.raises(ValueError, match="gradient_at"):
        run_trajectory(ToyTrajectory(net, 4), policy, policy.plan(4, np.random.default_rng(0)), reward, opt, params,
                       LoopConfig(gradient_at="frozen"))


# --------------------------------------------------------------- the LR schedule's clock (FinetuneConfig.schedule_clock)
@pytest.mark.parametrize("method,updates", [("draft", 1), ("easytune", 10)])
@pytest.mark.parametrize("clock", ["updates", "trajectories"])
def test_schedule_clock_gives_the_documented_lr_sequence(method, updates, clock):
    """Warm-up 2 then cosine, 3 trajectories of T = 10: counted in optimiser steps, EasyTune's 10 updates per
    trajectory run the schedule 10× faster than DRaFT's one; counted in trajectories, both get the same lr per
    trajectory, every update of trajectory j at lr(j)."""
    import math

    from easytune_lab.finetune.train import finetune_config, make_scheduler

    iterations, warmup, base = 3, 2, 0.1
    cfg = finetune_config(method, "smoke", iterations=iterations, sample_steps=10, warmup=warmup, lr=base,
                          lr_schedule="cosine", schedule_clock=clock, k=10)
    net = ToyNet()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=base)
    scheduler, per_update = make_scheduler(cfg, opt)
    policy = make_policy(method, cfg.policy)
    seen = []   # the lr of every optimiser step
    opt.step = (lambda step: (lambda *a, **k: (seen.append(opt.param_groups[0]["lr"]), step(*a, **k))[1]))(opt.step)
    for j in range(iterations):
        run_trajectory(ToyTrajectory(net, 10, seed=j), policy, policy.plan(10, np.random.default_rng(j)), reward, opt,
                       params, LoopConfig(grad_clip=0.0), after_update=scheduler.step if per_update else None)
        if not per_update:
            scheduler.step()

    def lr(step, total):
        if step < warmup:
            return base * (step + 1) / warmup
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    if clock == "updates":
        total = iterations * updates
        expected = [lr(s, total) for s in range(total)]
    else:
        expected = [lr(j, iterations) for j in range(iterations) for _ in range(updates)]
    assert seen == pytest.approx(expected, rel=1e-12)
    if method == "easytune" and clock == "updates":
        assert seen[warmup] == pytest.approx(base)      # EasyTune leaves warm-up within its first trajectory
