"""One trajectory: the single sampling path reproduces the sampler equations (samples and gradients, in the old
order of random draws), T = len(timesteps) for every sampler and entry point, the noise rule is injectable, and no
second denoising loop exists outside ``diffusion/trajectory.py``.

The reference below is written from the equations (DDPM eq. 6–7 posterior, DDIM eq. 12 with σ = 0, LCM's
consistency function and multistep re-noising) with its own loop and its own draws: x_T first, then the fresh
noise of each stochastic step right before that step, none after the last step.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import easytune_lab
from easytune_lab.diffusion.sampling import SAMPLERS, normal_noise
from easytune_lab.diffusion.schedule import NoiseSchedule, Timesteps
from easytune_lab.diffusion.trajectory import BackboneTrajectory, Trajectory, denoise, sample, sampler_timesteps
from easytune_lab.errors import UserError

SCHED = NoiseSchedule.create("cosine", 1000)
DIM, BATCH = 3, 4
TIMESTEPS = {("leading", 4): [750, 500, 250, 0], ("trailing", 4): [999, 749, 499, 249],
             ("leading", 5): [800, 600, 400, 200, 0], ("trailing", 5): [999, 799, 599, 399, 199]}
SPACING = {"ddpm": "leading", "ddim": "leading", "consistency": "trailing"}


class ToyNet(torch.nn.Module):
    """out = tanh(W x_t + (t/1000)·b + cond) in float64, read as x0 or ε."""

    def __init__(self, prediction: str = "x0"):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.prediction = prediction
        self.W = torch.nn.Parameter(0.4 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(0.3 * torch.randn(DIM, generator=g, dtype=torch.float64))
        self.calls = 0

    def forward(self, x_t, t, cond, drop_text=False):
        self.calls += 1
        s = t.to(x_t.dtype).view(-1, 1) / 1000.0
        return torch.tanh(x_t @ self.W.T + s * self.b + (0.0 if drop_text else cond))


COND = torch.linspace(-0.5, 0.5, BATCH * DIM, dtype=torch.float64).view(BATCH, DIM)


def _ab(t: int) -> float:
    return 1.0 if t < 0 else float(SCHED.alphas_cumprod[t])


def _x0_eps(net, x, t, cond, guidance):
    tt = torch.full((x.shape[0],), t, dtype=torch.long)
    out = net(x, tt, cond)
    if guidance != 1.0:
        uncond = net(x, tt, cond, drop_text=True)
        out = uncond + guidance * (out - uncond)                  # classifier-free guidance
    ab = _ab(t)
    if net.prediction == "x0":
        return out, (x - math.sqrt(ab) * out) / math.sqrt(1 - ab)
    return (x - math.sqrt(1 - ab) * out) / math.sqrt(ab), out


def reference_step(sampler, net, x, t, s, cond, guidance, z):
    """One reverse step t -> s written from the papers' equations."""
    x0, eps = _x0_eps(net, x, t, cond, guidance)
    ab_t, ab_s = _ab(t), _ab(s)
    if sampler == "ddim":                                            # DDIM eq. 12, σ = 0
        return math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps, x0
    if sampler == "ddpm":                                            # DDPM eq. 6-7 for a jump t -> s
        if s < 0:
            return x0, x0
        a = ab_t / ab_s
        mean = math.sqrt(ab_s) * (1 - a) / (1 - ab_t) * x0 + math.sqrt(a) * (1 - ab_s) / (1 - ab_t) * x
        return mean + math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - a)) * z, x0
    st = 10.0 * t                                                    # LCM: f = c_skip x + c_out x̂0, σ_d = 0.5
    f = 0.25 / (st ** 2 + 0.25) * x + st / math.sqrt(st ** 2 + 0.25) * x0
    if s < 0:
        return f, f
    return math.sqrt(ab_s) * f + math.sqrt(1 - ab_s) * z, f


def reference_run(sampler, net, ts, cond, guidance, generator, shape=(BATCH, DIM), dtype=torch.float64,
                  record=None):
    x = torch.randn(shape, generator=generator, dtype=dtype)
    x0 = None
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        z = torch.randn(shape, generator=generator, dtype=dtype) if sampler != "ddim" and s >= 0 else None
        if record is not None:
            record.append((x, z))
        x, x0 = reference_step(sampler, net, x, t, s, cond, guidance, z)
    return x, x0


def _toy_trajectory(sampler, net, steps=4, guidance=2.0, **kw):
    return Trajectory(net, SCHED, steps, sampler, COND, guidance, shape=(BATCH, DIM), dtype=torch.float64, **kw)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_one_path_reproduces_the_sampler_equations(sampler, prediction):
    net = ToyNet(prediction)
    ts = TIMESTEPS[(SPACING[sampler], 4)]
    want, want_x0 = reference_run(sampler, net, ts, COND, 2.0, torch.Generator().manual_seed(7))
    traj = _toy_trajectory(sampler, net)
    assert list(traj.timesteps) == ts
    got, got_x0 = traj.run(torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_x0, want_x0, rtol=0, atol=1e-12)
    # sample(): the functional entry, with x_T given, continues the same generator
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    out = sample(net, (BATCH, DIM), SCHED, 4, COND, sampler, guidance=2.0, generator=g, x_T=x_T)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert not torch.equal(got, reference_run(sampler, net, ts, COND, 2.0, torch.Generator().manual_seed(8))[0])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_one_path_reproduces_gradients_through_the_chain(sampler):
    net = ToyNet()
    ts = TIMESTEPS[(SPACING[sampler], 5)]
    x, _ = reference_run(sampler, net, ts, COND, 1.5, torch.Generator().manual_seed(3))
    want = torch.autograd.grad(x.pow(2).sum(), [net.W, net.b])
    x, _ = _toy_trajectory(sampler, net, steps=5, guidance=1.5).run(torch.Generator().manual_seed(3))
    got = torch.autograd.grad(x.pow(2).sum(), [net.W, net.b])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        assert float(w.abs().sum()) > 0


def _reward(x, t):
    return -(x - 0.3).pow(2).sum(-1)


@pytest.mark.parametrize("method", ["easytune", "draft"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_finetuning_loop_takes_the_reference_gradients(method, sampler):
    """run_trajectory (through the one loop) with SGD lr = 1 and one accumulated update moves θ by exactly the
    gradient of the reference: Σ_i ∇θ R(x̂0_θ(sg(x_{t_i}))) for EasyTune, ∇θ R(x_0) through the chain for DRaFT-T."""
    from easytune_lab.finetune.loop import LoopConfig, run_trajectory
    from easytune_lab.finetune.policy import PolicyConfig, make_policy

    ts = TIMESTEPS[(SPACING[sampler], 5)]
    net = ToyNet()
    params = [net.W, net.b]
    record: list = []
    if method == "draft":
        _, x0 = reference_run(sampler, net, ts, COND, 1.0, torch.Generator().manual_seed(5))
        want = torch.autograd.grad(_reward(x0, 0).mean(), params)
    else:
        with torch.no_grad():
            reference_run(sampler, net, ts, COND, 1.0, torch.Generator().manual_seed(5), record=record)
        total = 0.0
        for i, (x, z) in enumerate(record):
            s = ts[i + 1] if i + 1 < len(ts) else -1
            _, x0 = reference_step(sampler, net, x.detach(), ts[i], s, COND, 1.0, z)
            total = total + _reward(x0, 0).mean()
        want = torch.autograd.grad(total, params)

    before = [p.detach().clone() for p in params]
    policy = make_policy(method, PolicyConfig(k=len(ts)))
    plans = policy.plan(len(ts), np.random.default_rng(0))
    traj = _toy_trajectory(sampler, net, steps=5, guidance=1.0)
    stats = run_trajectory(traj, policy, plans, _reward, torch.optim.SGD(params, lr=1.0), params,
                           LoopConfig(grad_clip=0.0), generator=torch.Generator().manual_seed(5), accumulate=True)
    assert stats.optimizer_steps == 1
    assert stats.graph_calls == list(range(len(ts)))
    for p, b, w in zip(params, before, want):
        torch.testing.assert_close(p.detach() - b, w, rtol=1e-9, atol=1e-12)
        assert float(w.abs().sum()) > 0


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_T_is_the_length_of_the_timesteps_for_every_sampler(sampler):
    for steps in (1, 3, 10, 1000):
        net = ToyNet()
        traj = _toy_trajectory(sampler, net, steps=steps, guidance=1.0)
        seen = []
        traj.run(torch.Generator().manual_seed(0), hook=lambda i, t, *_: seen.append((i, t)))
        assert traj.num_steps == len(traj.timesteps) == steps == len(traj.pairs)
        assert seen == list(enumerate(traj.timesteps)) and net.calls == steps
        assert traj.pairs[-1][1] == -1
    # a sampler takes the timesteps themselves: T = len(timesteps), whatever their spacing
    given = Timesteps((900, 400, 7))
    net = ToyNet()
    seen = []
    out = sample(net, (BATCH, DIM), SCHED, given, COND, sampler, generator=torch.Generator().manual_seed(1),
                 x_T=torch.zeros(BATCH, DIM, dtype=torch.float64), hook=lambda i, t, *_: seen.append(t))
    assert seen == [900, 400, 7] and net.calls == 3 and out.shape == (BATCH, DIM)
    assert sampler_timesteps(SCHED, given, sampler) is given
    assert list(sampler_timesteps(SCHED, 4, sampler)) == TIMESTEPS[(SPACING[sampler], 4)]


def test_timesteps_refuse_a_bad_sequence_and_unknown_samplers():
    for bad in ((), (3, 3), (1, 5), (2, -1)):
        with pytest.raises(UserError, match="timesteps"):
            Timesteps(bad)
    with pytest.raises(UserError, match="unknown sampler"):
        sampler_timesteps(SCHED, 4, "euler")
    with pytest.raises(UserError, match="must be in"):
        sampler_timesteps(SCHED, 0, "ddim")


def test_the_noise_rule_is_injectable_and_draws_in_step_order():
    calls = []

    def rule(shape, generator, *, device=None, dtype=None, rows=(0, 1)):
        calls.append(tuple(shape))
        return torch.full(tuple(shape), 0.1 * len(calls), dtype=dtype)

    net = ToyNet()
    traj = _toy_trajectory("ddpm", net, steps=4, guidance=1.0, noise=rule)
    x, _ = traj.run(None)
    assert calls == [(BATCH, DIM)] * 4                          # x_T, then steps 0..2 (none after the last)
    zs = [torch.full((BATCH, DIM), 0.1 * k, dtype=torch.float64) for k in (2, 3, 4)] + [None]
    want = torch.full((BATCH, DIM), 0.1, dtype=torch.float64)
    ts = TIMESTEPS[("leading", 4)]
    for i, t in enumerate(ts):
        want, _ = reference_step("ddpm", net, want, t, ts[i + 1] if i + 1 < 4 else -1, COND, 1.0, zs[i])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-12)
    traj.renoise(x, 3, None)
    assert len(calls) == 5                                      # re-noising (DRaFT-LV) draws by the same rule
    calls.clear()
    _toy_trajectory("ddim", ToyNet(), steps=4, noise=rule).run(None)
    assert calls == [(BATCH, DIM)]                              # deterministic DDIM draws x_T only


def test_sharded_rows_see_one_process_noise():
    whole = normal_noise((4, 3), torch.Generator().manual_seed(2), dtype=torch.float64)
    halves = [normal_noise((2, 3), torch.Generator().manual_seed(2), dtype=torch.float64, rows=(r, 2))
              for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_denoise_stops_when_the_callback_says_so():
    traj = _toy_trajectory("ddim", ToyNet(), steps=5, guidance=1.0)
    x_T = traj.initial_noise(torch.Generator().manual_seed(0))
    seen = []
    x, _ = denoise(traj, x_T, callback=lambda r: seen.append(r.i) or r.i == 2)
    assert seen == [0, 1, 2]
    want = x_T
    for i in range(3):
        want, _ = traj.step(want, i, None)
    assert torch.equal(x, want)


# ------------------------------------------------------------------------------------ real backbones, end to end
CAPTIONS = ["a person walks forward", "someone jumps twice"]


def _mdm():
    from easytune_lab.diffusion.denoiser import MDMBackbone, mdm_profile
    from easytune_lab.diffusion.text_encoder import build_text_vocabulary

    torch.manual_seed(0)
    return MDMBackbone(mdm_profile("smoke", 12).model, build_text_vocabulary(CAPTIONS)).eval()


@pytest.mark.usefixtures("float32_default")
@pytest.mark.parametrize("sampler", ["ddpm", "consistency"])
def test_generation_and_finetuning_share_the_trajectory_on_a_backbone(sampler):
    """``easytune sample``'s path (MotionGenerator.sample_normalised) and the fine-tuning trajectory run the same
    timesteps with the same noise as the reference, on a smoke MDM."""
    from easytune_lab.diffusion.generate import MotionGenerator

    model = _mdm()
    ts = TIMESTEPS[(SPACING[sampler], 5)]
    with torch.no_grad():
        traj = BackboneTrajectory(model, CAPTIONS, [8, 4], sampler, 5, 2.5)
        want, _ = reference_run(sampler, model.net, ts, traj.cond, 2.5, torch.Generator().manual_seed(3),
                                shape=traj.shape, dtype=torch.float32)
        got, _ = traj.run(torch.Generator().manual_seed(3))
        config = SimpleNamespace(model=SimpleNamespace(max_frames=196, diffusion=SimpleNamespace(
            sampler=sampler, sample_steps=5, guidance=2.5)))
        gen = MotionGenerator(model, config, np.zeros(12), np.ones(12), torch.device("cpu"), Path("."))
        seen = []
        generated = gen.sample_normalised(CAPTIONS, [8, 4], seed=3, hook=lambda i, t, *_: seen.append(t))
    assert traj.num_steps == len(traj.timesteps) == 5 and list(traj.timesteps) == ts == seen
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(generated, model.decode(got, traj.cond))


# ---------------------------------------------------------------------- no second denoising loop in the package
PACKAGE = Path(easytune_lab.__file__).resolve().parent
LOOP_HOME = Path("diffusion") / "trajectory.py"
TIMESTEP_NAMES = {"timesteps", "pairs", "timestep_pairs", "inference_timesteps", "num_steps"}


def _names(node: ast.AST) -> set[str]:
    return ({n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)})


def _callee_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _is_step(name: str | None) -> bool:
    return name is not None and (name in ("step", "step_fn") or name.endswith("_step"))


def _step_calls(node: ast.AST):
    """Calls of a reverse step, a trajectory's ``step(x_t, i, noise, ...)`` or a sampler's
    ``ddim_step(model, x_t, t, t_prev, ...)`` (directly or through ``checkpoint(step, ...)``), with their positional
    arguments. ``optimizer.step()`` has no such arguments."""
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        args = call.args
        if not _is_step(_callee_name(call.func)) and args and _is_step(_callee_name(args[0])):
            args = args[1:]
        elif not _is_step(_callee_name(call.func)):
            continue
        if len(args) >= 3:
            yield call, args


def _chained(loop: ast.AST) -> bool:
    """Does the loop feed a step's output back into a step (x_t -> x_prev -> x_t ...)?"""
    outputs: set[str] = set()
    assigns = [n for n in ast.walk(loop) if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None]
    for a in assigns:
        if any(True for _ in _step_calls(a.value)):
            targets = a.targets if isinstance(a, ast.Assign) else [a.target]
            outputs |= set().union(*(_names(t) for t in targets))
    changed = True
    while changed:   # aliases: x = x_prev
        changed = False
        for a in assigns:
            targets = a.targets if isinstance(a, ast.Assign) else [a.target]
            if isinstance(a.value, ast.Name) and a.value.id in outputs:
                new = set().union(*(_names(t) for t in targets)) - outputs
                if new:
                    outputs |= new
                    changed = True
    return any(isinstance(a, ast.Name) and a.id in outputs for _, args in _step_calls(loop) for a in args)


def denoising_loops(source: str) -> list[int]:
    """Line numbers of loops that run reverse steps over the timesteps, or chain a step's output into a step."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.For, ast.AsyncFor)):
            over_steps = bool(_names(node.iter) & TIMESTEP_NAMES) and any(True for _ in _step_calls(node))
            if over_steps or _chained(node):
                found.append(node.lineno)
        elif isinstance(node, ast.While) and _chained(node):
            found.append(node.lineno)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            if any(_names(g.iter) & TIMESTEP_NAMES for g in node.generators) and any(True for _ in _step_calls(node)):
                found.append(node.lineno)
    return sorted(found)


OLD_COPIES = {
    "sample": """
for i, (t, t_prev) in enumerate(timestep_pairs(ts)):
    noise = _randn_like(x, generator) if sampler in STOCHASTIC and t_prev >= 0 else None
    x_prev, x0_hat = step(predictor, x, t, t_prev, cond, guidance, noise=noise)
    x = x_prev
""",
    "bench": """
for i in range(traj.num_steps):
    x, _ = traj.step(x, i, traj.draw_noise(i, x, None), False)
""",
    "policy loop": """
for i, plan in enumerate(plans):
    noise = trajectory.draw_noise(i, x, generator)
    with torch.set_grad_enabled(plan.grad):
        if plan.checkpoint:
            x_prev, x0_hat = checkpoint(trajectory.step, x, i, noise, False, use_reentrant=False)
        else:
            x_prev, x0_hat = trajectory.step(x, i, noise, False)
    x = x_prev
""",
    "while": """
while i < n:
    x, x0 = ddim_step(model, x, t, s, cond)
    i += 1
""",
    "replay": """
out = [trajectory.step(inputs[i], i, noises[i], False) for i in range(trajectory.num_steps)]
""",
}
NOT_LOOPS = """
for i in range(cfg.steps):
    loss = model.loss(batch)
    optimizer.step()
for _ in range(lv):
    x_t = trajectory.renoise(x0, last, generator)
    _, x0_hat = trajectory.step(x_t, last, None, False)
plans = [StepPlan() for _ in range(num_steps)]
for i, (x_t, noise) in enumerate(zip(inputs, noises)):
    x_prev, x0_hat = trajectory.step(x_t, i, noise, False)
"""


@pytest.mark.parametrize("name", sorted(OLD_COPIES))
def test_the_loop_detector_finds_copies_of_the_denoising_loop(name):
    assert denoising_loops(OLD_COPIES[name])


def test_the_loop_detector_leaves_other_loops_alone():
    assert denoising_loops(NOT_LOOPS) == []


def test_no_second_denoising_loop_outside_the_trajectory_module():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        lines = denoising_loops(path.read_text(encoding="utf-8"))
        if lines:
            found[str(rel)] = lines
    assert set(found) == {str(LOOP_HOME)}, f"denoising loops outside {LOOP_HOME}: {found}"
    assert len(found[str(LOOP_HOME)]) == 1      # denoise() itself


def test_no_denoising_loop_in_the_notebooks():
    notebooks = sorted((PACKAGE.parent / "notebooks").glob("*.ipynb"))
    if not notebooks:
        pytest.skip("no notebooks next to the package (an installed copy)")
    import json

    found = []
    for nb in notebooks:
        for k, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            if denoising_loops(source):
                found.append(f"{nb.name} cell {k}")
    assert not found, f"notebook cells with their own denoising loop: {found}"
