"""One trajectory: timesteps computed once, one noise rule and the one denoising loop.

Every reverse process of the workbench (generation and evaluation, fine-tuning, the memory/speed benches, the
analyses) is a :class:`Trajectory` run through :func:`denoise`:

* a step count T becomes timesteps in one place, :func:`sampler_timesteps`, which returns a
  :class:`~easytune_lab.diffusion.schedule.Timesteps`; from then on the sampler takes the timesteps, not a count
  (k-diffusion's convention), so T = ``len(timesteps)`` = ``trajectory.num_steps``;
* noise (x_T, the stochastic samplers' fresh z, DRaFT-LV's re-noising) is drawn by one injectable rule,
  ``noise(shape, generator, device=, dtype=, rows=)``, by default
  :func:`~easytune_lab.diffusion.sampling.normal_noise`, in a fixed order: x_T first, then step i's z right before
  step i (no z after the last step, none for DDIM), so a seed fixes the whole trajectory;
* the reverse steps are the pure, equation-citing functions of :mod:`~easytune_lab.diffusion.sampling` (DDPM,
  DDIM, LCM consistency steps), called with the pair (t_i, t_{i+1}) of the timesteps;
* :func:`denoise` is the only loop over the steps. A caller changes what happens at a step with ``step`` (e.g. the
  fine-tuning loop's grad/detach/checkpoint choices) and reads or stops the trajectory with ``callback``, called
  with a :class:`StepRecord` after every step (the k-diffusion callback).

:class:`BackboneTrajectory` is a trajectory for a batch of captions on a
:class:`~easytune_lab.diffusion.backbone.Backbone` (its condition, sample shape, parameter dtype and decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from .backbone import Backbone, Condition
from .sampling import DEFAULT_SPACING, STOCHASTIC, Predictor, as_predictor, get_sampler, normal_noise
from .schedule import NoiseSchedule, Timesteps

#: ``noise(shape, generator, *, device, dtype, rows) -> ε``: how a trajectory draws its noise.
NoiseRule = Callable[..., torch.Tensor]
#: ``hook(i, t, x_t, x_prev, x0_hat)``: called after reverse step ``i`` (0 = noisiest) at timestep ``t``.
Hook = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def sampler_timesteps(schedule: NoiseSchedule, steps: int | Timesteps, sampler: str,
                      spacing: str | None = None) -> Timesteps:
    """The timesteps of ``sampler`` with ``steps`` reverse steps on ``schedule`` (given timesteps pass through).

    ``spacing`` defaults to the sampler's (leading for DDPM/DDIM, trailing for few-step consistency sampling, see
    :func:`~easytune_lab.diffusion.schedule.inference_timesteps`). This is the one place a count becomes timesteps.
    """
    get_sampler(sampler)
    if isinstance(steps, Timesteps):
        return steps
    return Timesteps.spaced(schedule.num_train_steps, steps, spacing or DEFAULT_SPACING[sampler])


class InputDetachedPredictor(Predictor):
    """A predictor whose network sees sg(x_t) while the sampler's update keeps x_t (DRTune's detached input):
    x̂0/ε̂ conversions and the update ``x_{t-1} = a·x_t + b·(network output)`` still carry ∂/∂x_t."""

    def raw(self, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0) -> torch.Tensor:
        return super().raw(x_t.detach(), t, cond, guidance)


class Steps(Protocol):
    """What :func:`denoise` and the fine-tuning loop need from a trajectory (:class:`Trajectory` has it all)."""

    num_steps: int

    def initial_noise(self, generator: torch.Generator | None) -> torch.Tensor: ...

    def draw_noise(self, i: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None: ...

    def step(self, x_t: torch.Tensor, i: int, noise: torch.Tensor | None, detach_input: bool
             ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def noise_level(self, i: int) -> int: ...

    def renoise(self, x0: torch.Tensor, i: int, generator: torch.Generator | None) -> torch.Tensor: ...


@dataclass
class StepRecord:
    """Reverse step ``i``: its input x_t, output x_prev, predicted clean sample x̂0 and the noise it used."""

    i: int
    x_t: torch.Tensor
    x_prev: torch.Tensor
    x0_hat: torch.Tensor
    noise: torch.Tensor | None


StepFn = Callable[[torch.Tensor, int, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[StepRecord], "bool | None"]


def denoise(trajectory: Steps, x: torch.Tensor, generator: torch.Generator | None = None, *,
            step: StepFn | None = None, callback: Callback | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the reverse steps i = 0, 1, ..., T-1 of ``trajectory`` from ``x`` (= x_T); return (x_0, last x̂0).

    Before step i its noise is drawn (``trajectory.draw_noise(i, x, generator)``); ``step(x, i, noise)`` replaces
    the plain ``trajectory.step(x, i, noise, False)``; ``callback(record)`` runs after every step and ends the
    trajectory early by returning True (then the returned sample is that step's output). Gradients are not
    switched on or off here.
    """
    x0_hat = None
    for i in range(trajectory.num_steps):
        noise = trajectory.draw_noise(i, x, generator)
        x_prev, x0_hat = step(x, i, noise) if step is not None else trajectory.step(x, i, noise, False)
        stop = callback(StepRecord(i, x, x_prev, x0_hat, noise)) if callback is not None else False
        x = x_prev
        if stop:
            break
    return x, x0_hat


class Trajectory:
    """A reverse process ready to run: a predictor, its timesteps, a sampler step, a condition and a noise rule.

    ``shape``, ``device`` and ``dtype`` are those of x_T; ``rows = (rank, world)`` makes every draw the global
    batch's and keeps this rank's rows (data-parallel fine-tuning); ``noise`` replaces the noise rule.
    """

    def __init__(self, model: Any, schedule: NoiseSchedule, timesteps: int | Timesteps, sampler: str, cond: Any,
                 guidance: float = 1.0, *, shape: Sequence[int], spacing: str | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 rows: tuple[int, int] = (0, 1), noise: NoiseRule = normal_noise):
        self.sampler = sampler
        self.step_fn = get_sampler(sampler)
        self.timesteps = sampler_timesteps(schedule, timesteps, sampler, spacing)
        self.pairs = self.timesteps.pairs
        self.num_steps = len(self.timesteps)
        self.predictor = as_predictor(model, schedule)
        self.detached = InputDetachedPredictor(self.predictor.net, schedule, self.predictor.prediction)
        self.schedule = schedule
        self.cond = cond
        self.guidance = guidance
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.rows = rows
        self.rank, self.world = rows
        self.noise = noise

    def initial_noise(self, generator: torch.Generator | None) -> torch.Tensor:
        """x_T ~ N(0, I) (on the generator's device when ``device`` is unset)."""
        device = self.device or (generator.device if generator is not None else torch.device("cpu"))
        return self.noise(self.shape, generator, device=device, dtype=self.dtype, rows=self.rows)

    def draw_noise(self, i: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Step i's fresh z for a stochastic sampler (none after the last step, none for DDIM)."""
        if self.sampler not in STOCHASTIC or self.pairs[i][1] < 0:
            return None
        return self.noise(x.shape, generator, device=x.device, dtype=x.dtype, rows=self.rows)

    def step(self, x_t: torch.Tensor, i: int, noise: torch.Tensor | None, detach_input: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse step i, t_i -> t_{i+1}: ``(x_prev, x̂0)``; ``detach_input`` feeds the network sg(x_t)."""
        t, t_prev = self.pairs[i]
        model = self.detached if detach_input else self.predictor
        return self.step_fn(model, x_t, t, t_prev, self.cond, self.guidance, noise=noise)

    def noise_level(self, i: int) -> int:
        """Noise level of the output of step i (its t_prev; -1 = clean)."""
        return self.pairs[i][1]

    def renoise(self, x0: torch.Tensor, i: int, generator: torch.Generator | None) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε at step i's input level t_i (DDPM eq. 4; DRaFT-LV)."""
        t = self.pairs[i][0]
        eps = self.noise(x0.shape, generator, device=x0.device, dtype=x0.dtype, rows=self.rows)
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.schedule.add_noise(x0, eps, tt)

    def run(self, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, *,
            hook: Hook | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw x_T (unless given) and run every step (:func:`denoise`); return (x_0, last x̂0)."""
        x = self.initial_noise(generator) if x_T is None else x_T
        callback = None
        if hook is not None:
            def callback(r: StepRecord) -> None:
                hook(r.i, self.timesteps[r.i], r.x_t, r.x_prev, r.x0_hat)
        return denoise(self, x, generator, callback=callback)


class BackboneTrajectory(Trajectory):
    """One batch of captions sampled on a backbone with ``sampler`` over ``num_steps`` steps (a count or
    :class:`~easytune_lab.diffusion.schedule.Timesteps`).

    Data-parallel fine-tuning passes this rank's rows of a global batch with ``max_len`` (the global batch's
    longest length, so every rank pads alike) and ``rows = (rank, world)``: noise is then drawn for the global
    batch from the shared generator and sliced (:class:`~easytune_lab.distributed.ShardedRandom`), so the ranks
    together see exactly the noise of one process on the combined batch.
    """

    def __init__(self, backbone: Backbone, texts: Sequence[str], lengths: Sequence[int], sampler: str,
                 num_steps: int | Timesteps, guidance: float, spacing: str | None = None, *,
                 max_len: int | None = None, rows: tuple[int, int] = (0, 1), noise: NoiseRule = normal_noise):
        self.backbone = backbone
        self.texts = list(texts)
        self.lengths = [int(n) for n in lengths]
        timesteps = sampler_timesteps(backbone.schedule, num_steps, sampler, spacing)
        cond: Condition = backbone.condition(self.texts, self.lengths, max_len)
        param = next(backbone.parameters())
        super().__init__(backbone.predictor(), backbone.schedule, timesteps, sampler, cond, guidance,
                         shape=backbone.sample_shape(cond), device=param.device, dtype=param.dtype, rows=rows,
                         noise=noise)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled space -> normalised features with padded frames zeroed."""
        feats = self.backbone.decode(x, self.cond)
        return feats * self.cond.mask[..., None].to(feats.dtype)


def sample(model: Any, shape: tuple[int, ...], schedule: NoiseSchedule, steps: int | Timesteps, cond: Any,
           sampler: str = "ddim", guidance: float = 1.0, hook: Hook | None = None,
           generator: torch.Generator | None = None, device: torch.device | str | None = None,
           x_T: torch.Tensor | None = None, spacing: str | None = None) -> torch.Tensor:
    """Run ``steps`` reverse steps (a count or the timesteps) from x_T ~ N(0, I) and return the final sample.

    ``hook(i, t, x_t, x_prev, x0_hat)`` is called after every step ``i`` (0 = noisiest). Noise for stochastic
    samplers is drawn from ``generator`` in step order, so a seed fixes the whole trajectory. Gradients are
    not switched off here: wrap the call in ``torch.no_grad()`` for plain generation.
    """
    trajectory = Trajectory(model, schedule, steps, sampler, cond, guidance, shape=shape, spacing=spacing,
                            device=device)
    return trajectory.run(generator, x_T, hook=hook)[0]
