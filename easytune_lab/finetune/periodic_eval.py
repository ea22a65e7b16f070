"""Evaluation during fine-tuning with the T2M evaluator and the oracle judge (paper Table 1's metrics along the
training curve, not only at its end).

At every evaluation of a run (before the first iteration, every ``eval_every`` iterations and after the last) the
live model generates one motion for each clip of a fixed subset of the test split (``eval_motions`` clips, drawn
once with a fixed seed; 0 = all), with the fine-tuning trajectory's sampler and T, as
:meth:`easytune_lab.pipeline.Workbench.evaluation` generates base and fine-tuned models. One replication of the
T2M protocol (:func:`easytune_lab.eval.protocol.evaluate`) scores them: R-Precision top-1/2/3 and MM-Dist (groups
of 32), FID against the subset's ground truth, Diversity, and, on procedural data with ``attributes.jsonl``, the
oracle's accuracy. With one replication there is no confidence interval; the numbers are for watching a run, the
replicated evaluation at the end (``easytune eval``) is for tables.

Generation draws its noise from its own seeded ``torch.Generator`` and the whole evaluation runs inside
``torch.random.fork_rng``, so the run's RNG streams (and therefore ``--resume``) are the same with or without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..eval.evaluator import load_evaluator
from ..eval.protocol import GroundTruth, ProtocolConfig, evaluate, generated_source, load_actions, oracle_function


class PeriodicEvaluator:
    """The evaluator run, the ground-truth subset and the oracle, loaded once per fine-tuning run."""

    def __init__(self, evaluator_run: str | Path, data: str | Path, device: torch.device, motions: int,
                 sampler: str, steps: int, seed: int = 0):
        self.evaluator_run, self.device, self.sampler, self.steps = Path(evaluator_run), device, sampler, steps
        self.ev = load_evaluator(self.evaluator_run, device)
        self.config = ProtocolConfig(split="test", replications=1, seed=seed, max_text_len=self.ev.config.max_text_len)
        self.gt = GroundTruth(data, "test", self.ev, max_text_len=self.config.max_text_len, max_clips=motions)
        self.actions = load_actions(data)
        self.oracle = oracle_function() if self.actions is not None else None

    @property
    def motions(self) -> int:
        return len(self.gt.motions)

    def __call__(self, generator) -> dict[str, float]:
        """T2M metrics (+ ``oracle_accuracy``) of ``generator`` (a :class:`MotionGenerator` on the live backbone)."""
        start = time.perf_counter()
        source = generated_source(lambda texts, lengths, seed: generator.generate(
            list(texts), [int(n) for n in lengths], seed=int(seed), sampler=self.sampler, steps=self.steps))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            summary = evaluate(self.ev, self.gt, source, self.config, actions=self.actions, oracle=self.oracle)
        values = {key: float(value) for key, value in summary["per_replication"][0].items()}
        values["eval_motions"] = self.motions
        values["eval_seconds"] = round(time.perf_counter() - start, 3)
        return values


def postfix(entry: dict) -> dict[str, str]:
    """The progress bar's view of an evaluation entry (empty without evaluator metrics)."""
    shown = {"r_precision_top1": ("top1", "{:.3f}"), "fid": ("fid", "{:.2f}"), "oracle_accuracy": ("oracle", "{:.3f}")}
    return {name: fmt.format(entry[key]) for key, (name, fmt) in shown.items() if key in entry}
