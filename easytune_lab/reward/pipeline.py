"""Reward runs end to end (what ``easytune reward train|spl|study`` call): train, refine, evaluate, write.

A run directory holds ``manifest.json``, ``weights.safetensors``, ``vocab.json`` and ``metrics.json``, and
``checkpoint/`` (:mod:`easytune_lab.training`'s format, written every ``checkpoint_every`` epochs), from which an
interrupted run resumes (``resume``) to the weights of an uninterrupted one.
:func:`study` is the quick-profile experiment behind ``results/quick/reward/``: plain reward vs SPL vs a no-SPL
control (same extra epochs) over several seeds, and plain vs noise-aware reward across noise levels.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import distributed as dist
from ..errors import UserError
from ..io import write_json
from ..runs import check_model_dir, check_run_out, dataset_identity, make_manifest, read_manifest, write_manifest
from ..runtime import check_profile, default_threads, parse_int_list, resolve_device, seed_everything
from ..stats import interval, verdict
from ..training import Checkpointing
from .retrieval import load_reward, save_reward
from .train import (SPL_MODES, evaluate_reward, load_splits, official_spl, profile_configs, refine_spl,
                    train_reward)


def _prepare(data: Path, out: Path, profile: str, device: str, seed: int, resume: bool = False):
    check_profile(profile)
    if not Path(data).is_dir():
        raise UserError(f"--data {data}: dataset directory not found")
    if not (Path(data) / "train.txt").is_file():
        raise UserError(f"--data {data}: no train.txt (not a HumanML3D-format directory)")
    check_run_out(out, resume)
    _, dev = dist.setup(device)
    torch.set_num_threads(default_threads())
    seed_everything(seed)
    return dev


def _feature_width(data: Path) -> int | None:
    """The feature width of a dataset (its Mean.npy), or None when it has none (the loader reports that)."""
    try:
        return int(np.load(Path(data) / "Mean.npy", mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, IndexError):
        return None


def _check_width(data: Path, reward, flag: str, run: Path) -> None:
    """The reward loaded from ``run`` (named by ``flag`` in the message) scores the data's feature width."""
    width = _feature_width(data)
    if width is not None and reward.cfg.feat_dim != width:
        raise UserError(f"--data {data}: {width}-d features (Mean.npy), but {flag} {run} scores {reward.cfg.feat_dim}-d motions")


def _check_sizes(data: Path, cfg, batch_size: int, train_idx, test_idx) -> None:
    """Up front, before any training: the batches and the retrieval protocol fit the data and the processes."""
    effective = min(batch_size, len(train_idx))
    if len(train_idx) < 2:
        raise UserError(f"--data {data}/train.txt: needs at least 2 usable motions, got {len(train_idx)}")
    if len(train_idx) < batch_size:
        raise UserError(f"--data {data}/train.txt: {len(train_idx)} usable motions, fewer than one batch of "
                        f"{batch_size} (the last incomplete batch is dropped)")
    if len(test_idx) < cfg.eval_batch:
        raise UserError(f"--data {data}/test.txt: {len(test_idx)} usable motions; the retrieval metrics need at "
                        f"least {cfg.eval_batch} (galleries of {cfg.eval_batch})")
    dist.check_divisible(effective, "batch size")


def _checkpoints(out: Path, data: Path, profile: str, seed: int, parents: dict, resume: bool,
                 stop_after: int | None, checkpoint_every: int) -> Checkpointing:
    """Checkpointing of a reward run: besides the training config, the profile, seed, dataset (by content) and
    parent run must be the same when it resumes."""
    return Checkpointing(out, checkpoint_every, resume, stop_after,
                         settings={"profile": profile, "seed": seed, "data_identity": dataset_identity(data),
                                   "parents": {k: str(Path(v).resolve()) for k, v in parents.items()}})


def _stopped(history: list, epochs: int, out: Path, log: Callable[[str], None], what: str) -> dict | None:
    """The metrics of a run stopped before its last epoch (``stop_after``), or None for a complete one."""
    if len(history) >= epochs:
        return None
    if dist.is_main():
        log(f"{what} stopped after {len(history)}/{epochs} epochs with a checkpoint (continue with --resume) "
            f"-> {out}")
    return {"complete": False, "epochs_done": len(history), "history": history}


def _write_run(out: Path, kind: str, config, reward, metrics: dict, seed: int, device, parents=None) -> None:
    if not dist.is_main():                      # rank 0 writes; the others wait for it
        dist.barrier()
        return
    out.mkdir(parents=True, exist_ok=True)
    save_reward(reward, out)
    write_json(out / "metrics.json", metrics)
    write_manifest(out, make_manifest(kind, config, seed=seed, device=str(device), parents=parents,
                                      extra={"world_size": dist.world_size()}))
    dist.barrier()


def _evaluate(reward, test, test_idx, device, timesteps, eval_batch) -> dict | None:
    """Test-split retrieval metrics, measured on rank 0 only (None elsewhere)."""
    if not dist.is_main():
        return None
    if dist.world_size() == 1:
        return evaluate_reward(reward, test, test_idx, device, timesteps, eval_batch, seed=0)

    with torch.random.fork_rng(devices=[]):  # the global generator must advance alike on every rank
        return evaluate_reward(reward, test, test_idx, device, timesteps, eval_batch, seed=0)


def headline(retrieval: dict) -> str:
    clean = retrieval["t=0"]
    return (f"test t2m R@1 {clean['all']['t2m']['R@1']:.1f}% (all {clean['all']['n']}), "
            f"{clean['batch32']['t2m']['R@1']:.1f}% (batch 32); m2t R@1 {clean['all']['m2t']['R@1']:.1f}%")


def train_run(data: Path, out: Path, profile: str = "quick", seed: int = 0, device: str = "auto",
              noise_aware: bool = False, epochs: int | None = None, schedule: str | None = None,
              text_model: Path | None = None, init: Path | None = None,
              log: Callable[[str], None] = print, progress: bool = False, *, resume: bool = False,
              stop_after: int | None = None, checkpoint_every: int = 1) -> dict:
    """``easytune reward train``: returns the run's metrics (also in ``out/metrics.json``).

    ``init``: a reward run to start from instead of a fresh reward (:func:`.train.warm_start`): a plain run that the
    noise-aware R(x_t, t, c) starts from, or the run to continue for the profile's epochs. ``out/checkpoint/`` is
    written every ``checkpoint_every`` epochs; ``stop_after`` ends the run after that many epochs with a checkpoint,
    as an interruption would (``complete`` False, nothing else written); ``resume`` continues it from there with
    the same options.
    """
    data, out = Path(data), Path(out)
    dev = _prepare(data, out, profile, device, seed, resume)
    cfg, _ = profile_configs(profile, noise_aware=noise_aware)
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs: must be at least 1 (got {epochs})")
        cfg.epochs = epochs
    if schedule is not None:
        cfg.model = dataclasses.replace(cfg.model, schedule=schedule)
    if text_model is not None:
        if not Path(text_model).is_dir():
            raise UserError(f"--text-model {text_model}: local model directory not found (models are never downloaded)")
        check_model_dir(text_model, "--text-model")
        cfg.model = dataclasses.replace(cfg.model, text_model_path=str(Path(text_model).resolve()))
    start_from = None
    if init is not None:
        if text_model is not None:
            raise UserError("--init: the text side comes from the run started from; drop --text-model")
        start_from = load_reward(Path(init), dev, trainable=True)
        _check_width(data, start_from, "--init", init)
    train, test, train_idx, test_idx = load_splits(data, cfg.max_train_items, cfg.max_test_items, seed)
    _check_sizes(data, cfg, cfg.batch_size, train_idx, test_idx)
    checkpoints = _checkpoints(out, data, profile, seed, {"init": init} if init is not None else {}, resume,
                               stop_after, checkpoint_every)
    start = time.perf_counter()
    reward, history = train_reward(train, train_idx, cfg, dev, log=log, seed=seed, init=start_from, progress=progress,
                                   checkpoints=checkpoints)
    seconds = time.perf_counter() - start + _seconds_before(checkpoints)
    stopped = _stopped(history, cfg.epochs, out, log, "reward training")
    if stopped is not None:
        return stopped
    retrieval = _evaluate(reward, test, test_idx, dev, cfg.eval_timesteps, cfg.eval_batch)
    metrics = {"profile": profile, "noise_aware": cfg.model.noise_aware, "train_seconds": seconds,
               "train_items": len(train_idx), "test_items": len(test_idx), "history": history,
               "retrieval": retrieval}
    _write_run(out, "reward", {"profile": profile, "data": str(data.resolve()), "train": cfg, "model": cfg.model},
               reward, metrics, seed, dev, parents={"init": str(Path(init).resolve())} if init is not None else None)
    if retrieval is not None:
        log(f"reward trained in {seconds:.0f} s; {headline(retrieval)}; wrote {out}")
    return {**metrics, "complete": True}


def _seconds_before(checkpoints: Checkpointing) -> float:
    """The training seconds of the run before it was resumed (0 for a fresh start)."""
    return float(checkpoints.resumed["elapsed"]) if checkpoints.resumed is not None else 0.0


def spl_run(reward_dir: Path, data: Path, out: Path, profile: str = "quick", seed: int = 0, device: str = "auto",
            k: int | None = None, weight: float | None = None, epochs: int | None = None,
            log: Callable[[str], None] = print, progress: bool = False, mode: str = "ours", *,
            resume: bool = False, stop_after: int | None = None, checkpoint_every: int = 1) -> dict:
    """``easytune reward spl``: refine a reward run; ``weight=0`` is the no-SPL control (same extra epochs).
    ``mode``: ``ours`` (the profile's SPL) or ``official`` (the authors' loss and settings,
    :func:`~easytune_lab.reward.train.official_spl`); ``k``/``weight``/``epochs`` then override either.
    Checkpoints, ``stop_after`` and ``resume`` as in :func:`train_run`."""
    if mode not in SPL_MODES:
        raise UserError(f"spl mode: unknown mode '{mode}' (choose {', '.join(SPL_MODES)})")

    reward_dir, data, out = Path(reward_dir), Path(data), Path(out)
    dev = _prepare(data, out, profile, device, seed, resume)
    reward = load_reward(reward_dir, dev, trainable=True)
    _check_width(data, reward, "--reward", reward_dir)
    cfg, spl = profile_configs(profile, noise_aware=reward.cfg.noise_aware)
    cfg.model = reward.cfg
    if mode == "official":
        spl = official_spl(spl)
    if k is not None:
        if k < 1:
            raise UserError(f"--k: must be at least 1 (got {k})")
        spl.k = k
    if weight is not None:
        if weight < 0:
            raise UserError(f"--spl-weight: must be >= 0 (got {weight})")
        spl.weight = weight
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs: must be at least 1 (got {epochs})")
        spl.epochs = epochs
    train, test, train_idx, test_idx = load_splits(data, cfg.max_train_items, cfg.max_test_items, seed)
    _check_sizes(data, cfg, spl.batch_size, train_idx, test_idx)
    gallery = len(train_idx) if spl.gallery == "train" else min(spl.batch_size, len(train_idx))
    if spl.k >= gallery:  # a pair needs k wrong motions above the ground truth: none could ever be mined
        raise UserError(f"--k {spl.k}: the SPL gallery ({spl.gallery}) holds {gallery} motions, so no pair could "
                        f"be mined; k must be below {gallery}")
    before = _evaluate(reward, test, test_idx, dev, (0,), cfg.eval_batch)
    checkpoints = _checkpoints(out, data, profile, seed, {"reward": reward_dir}, resume, stop_after,
                               checkpoint_every)
    start = time.perf_counter()
    history = refine_spl(reward, train, train_idx, cfg, spl, dev, log=log, seed=seed, progress=progress,
                         checkpoints=checkpoints)
    seconds = time.perf_counter() - start + _seconds_before(checkpoints)
    stopped = _stopped(history, spl.epochs, out, log, "SPL")
    if stopped is not None:
        return stopped
    after = _evaluate(reward, test, test_idx, dev, cfg.eval_timesteps, cfg.eval_batch)
    metrics = {"profile": profile, "spl": dataclasses.asdict(spl), "train_seconds": seconds,
               "mined_pairs_per_epoch": [row["mined_pairs"] for row in history], "history": history,
               "before": before, "retrieval": after}
    _write_run(out, "reward-spl", {"profile": profile, "data": str(data.resolve()), "train": cfg,
                                   "model": cfg.model, "spl": spl},
               reward, metrics, seed, dev, parents={"reward": str(reward_dir.resolve())})
    if after is not None:
        log(f"SPL ({spl.epochs} epochs, weight {spl.weight}, k {spl.k}; mined pairs per epoch "
            f"{metrics['mined_pairs_per_epoch']}): before {headline(before)}; after {headline(after)}; wrote {out}")
    return {**metrics, "complete": True}


def _mean_sd(values: Sequence[float]) -> dict:
    """Mean, sd, range and the 95 % t interval over seeds (:func:`easytune_lab.stats.interval`; its verdict on 0)."""
    values = [float(v) for v in values]
    ci = interval(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values, "ci95": ci["ci95"],
            "verdict_vs_zero": verdict(ci)}


def _r1(retrieval: dict, t: int = 0, protocol: str = "all", direction: str = "t2m") -> float:
    return retrieval[f"t={t}"][protocol][direction]["R@1"]


def study(data: Path, runs_dir: Path, results_dir: Path, profile: str = "quick", seeds: Sequence[int] = (0, 1, 2),
          noise_seeds: Sequence[int] = (0,), device: str = "auto", log: Callable[[str], None] = print) -> dict:
    """The reward experiments: per seed a plain reward, SPL on it and the no-SPL control; noise-aware rewards.

    Run directories go to ``runs_dir/{plain,spl,control,noise-aware,continued}-s<seed>``: the noise-aware reward
    starts from the plain one, and ``continued`` (the plain reward trained on for the same extra epochs on clean
    motions only) is its control. :func:`summarise` then writes the summaries to ``results_dir``.
    """
    runs_dir = Path(runs_dir)
    for seed in list(dict.fromkeys([*seeds, *noise_seeds])):      # interleaved: every seed finishes whole
        if seed in seeds:
            base = runs_dir / f"plain-s{seed}"
            train_run(data, base, profile, seed, device, log=log)
            spl_run(base, data, runs_dir / f"spl-s{seed}", profile, seed, device, log=log)
            spl_run(base, data, runs_dir / f"control-s{seed}", profile, seed, device, weight=0.0, log=log)
            spl_run(base, data, runs_dir / f"spl-official-s{seed}", profile, seed, device, mode="official", log=log)
        if seed in noise_seeds:                 # both start from the plain run and train the same extra epochs
            base = runs_dir / f"plain-s{seed}"
            if not base.is_dir():
                train_run(data, base, profile, seed, device, log=log)
            train_run(data, runs_dir / f"noise-aware-s{seed}", profile, seed, device, noise_aware=True, init=base,
                      log=log)
            train_run(data, runs_dir / f"continued-s{seed}", profile, seed, device, init=base, log=log)
    return summarise(runs_dir, results_dir)


def _read_runs(runs_dir: Path, prefix: str) -> dict[int, dict]:
    out = {}
    for path in sorted(runs_dir.glob(f"{prefix}-s*/metrics.json")):
        out[int(path.parent.name.rsplit("-s", 1)[1])] = json.loads(path.read_text())
    return out


def _schedule_of(run_dir: Path) -> str:
    return read_manifest(run_dir)["config"]["model"]["schedule"]


def summarise(runs_dir: Path, results_dir: Path) -> dict:
    """Summaries of the finished runs of a :func:`study` (seeds with a complete set only).

    Writes ``results_dir/spl.json`` (test text→motion R@1 before / after SPL / after the no-SPL control, mean
    and spread over seeds), ``results_dir/noise_aware.json`` (R@1 at each noise level, plain vs noise-aware,
    batch-of-32 and whole test split) and ``results_dir/runs.json`` (every run's metrics file).
    """
    runs_dir, results_dir = Path(runs_dir), Path(results_dir)
    plain, spl, control, aware = (_read_runs(runs_dir, p) for p in ("plain", "spl", "control", "noise-aware"))
    seeds = sorted(set(plain) & set(spl) & set(control))
    noise_seeds = sorted(aware)
    if not seeds or not noise_seeds:
        raise UserError(f"{runs_dir}: no complete plain/spl/control seed or no noise-aware run to summarise")
    profile = plain[seeds[0]]["profile"]
    spl_summary = {"profile": profile, "seeds": seeds, "metric": "test-split text->motion R@1 (%)"}
    for protocol in ("all", "batch32"):
        spl_summary[protocol] = {
            "before": _mean_sd([_r1(spl[s]["before"], protocol=protocol) for s in seeds]),
            "after_spl": _mean_sd([_r1(spl[s]["retrieval"], protocol=protocol) for s in seeds]),
            "after_control_no_spl": _mean_sd([_r1(control[s]["retrieval"], protocol=protocol) for s in seeds]),
            "spl_minus_before": _mean_sd([_r1(spl[s]["retrieval"], protocol=protocol)
                                          - _r1(spl[s]["before"], protocol=protocol) for s in seeds]),
            "spl_minus_control": _mean_sd([_r1(spl[s]["retrieval"], protocol=protocol)
                                           - _r1(control[s]["retrieval"], protocol=protocol) for s in seeds]),
        }
    official = _read_runs(runs_dir, "spl-official")              # the authors' SPL (official_spl)
    if seeds and all(seed in official for seed in seeds):
        spl_summary["official_spl"] = {
            protocol: {"after": _mean_sd([_r1(official[s]["retrieval"], protocol=protocol) for s in seeds]),
                       "minus_control": _mean_sd([_r1(official[s]["retrieval"], protocol=protocol)
                                                  - _r1(control[s]["retrieval"], protocol=protocol) for s in seeds]),
                       "minus_ours": _mean_sd([_r1(official[s]["retrieval"], protocol=protocol)
                                               - _r1(spl[s]["retrieval"], protocol=protocol) for s in seeds])}
            for protocol in ("all", "batch32")}
        spl_summary["official_spl"]["config"] = official[seeds[0]]["spl"]
        spl_summary["official_spl"]["incorrect_captions_per_epoch"] = {
            str(s): official[s]["mined_pairs_per_epoch"] for s in seeds}
    exact = _read_runs(runs_dir, "spl-exact")                    # ablation: only identical captions ignored
    if seeds and all(seed in exact for seed in seeds):
        spl_summary["ablation_spl_identical_captions_only"] = {
            protocol: {"after": _mean_sd([_r1(exact[s]["retrieval"], protocol=protocol) for s in seeds]),
                       "minus_control": _mean_sd([_r1(exact[s]["retrieval"], protocol=protocol)
                                                  - _r1(control[s]["retrieval"], protocol=protocol) for s in seeds]),
                       "mined_pairs_per_epoch": {str(s): exact[s]["mined_pairs_per_epoch"] for s in seeds}}
            for protocol in ("all", "batch32")}
    spl_summary["m2t_all"] = {
        "before": _mean_sd([_r1(spl[s]["before"], direction="m2t") for s in seeds]),
        "after_spl": _mean_sd([_r1(spl[s]["retrieval"], direction="m2t") for s in seeds]),
        "after_control_no_spl": _mean_sd([_r1(control[s]["retrieval"], direction="m2t") for s in seeds])}
    spl_summary["mined_pairs_per_epoch"] = {str(s): spl[s]["mined_pairs_per_epoch"] for s in seeds}
    spl_summary["spl_config"] = spl[seeds[0]]["spl"]
    spl_summary["seconds"] = {"train_plain": [plain[s]["train_seconds"] for s in seeds],
                              "spl": [spl[s]["train_seconds"] for s in seeds],
                              "control": [control[s]["train_seconds"] for s in seeds]}

    timesteps = [int(k.split("=")[1]) for k in plain[seeds[0]]["retrieval"]]
    noise_summary = {"profile": profile, "plain_seeds": seeds, "noise_aware_seeds": noise_seeds,
                     "metric": "test-split text->motion R@1 (%) on motions noised to level t (fixed noise)",
                     "schedule": _schedule_of(runs_dir / f"noise-aware-s{noise_seeds[0]}"), "timesteps": timesteps}
    continued = _read_runs(runs_dir, "continued")
    for protocol in ("batch32", "all"):
        noise_summary[protocol] = {
            f"t={t}": {"plain": _mean_sd([_r1(plain[s]["retrieval"], t, protocol) for s in seeds]),
                       "noise_aware": _mean_sd([_r1(aware[s]["retrieval"], t, protocol) for s in noise_seeds]),
                       **({"plain_continued": _mean_sd([_r1(continued[s]["retrieval"], t, protocol)
                                                        for s in noise_seeds])}
                          if all(s in continued for s in noise_seeds) else {})}
            for t in timesteps}
    noise_summary["seconds"] = {"train_plain": [plain[s]["train_seconds"] for s in seeds],
                                "train_noise_aware": [aware[s]["train_seconds"] for s in noise_seeds],
                                "train_continued": [continued[s]["train_seconds"] for s in noise_seeds
                                                    if s in continued]}

    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / "spl.json", spl_summary)
    write_json(results_dir / "noise_aware.json", noise_summary)
    write_json(results_dir / "runs.json", {"plain": plain, "spl": spl, "control": control, "noise_aware": aware,
                                           "continued": continued, "spl_identical_captions_only": exact,
                                           "spl_official": official})
    return {"spl": spl_summary, "noise_aware": noise_summary}


def parse_timesteps(text: str, flag: str = "--timesteps") -> list[int]:
    """``"0,500,900"`` -> ``[0, 500, 900]``; every level in [0, 999] (the training schedule's indices), repeats
    dropped."""
    return list(dict.fromkeys(parse_int_list(text, flag, 0, 999, what="noise level")))


def eval_run(reward_dir: Path, data: Path, timesteps: Sequence[int], device: str = "auto") -> dict:
    """Test-split retrieval of a finished reward run at each noise level in ``timesteps`` (its own split seed and
    test-item limit; fixed noise), ``{"t=<t>": {"all": ..., "batch<B>": ...}}`` as in the run's metrics."""
    reward_dir, data = Path(reward_dir), Path(data)
    if not (reward_dir / "manifest.json").is_file():
        raise UserError(f"--reward {reward_dir}: not a reward run (no manifest.json)")
    if not (data / "test.txt").is_file():
        raise UserError(f"--data {data}: no test.txt (not a HumanML3D-format directory)")
    manifest = read_manifest(reward_dir)
    train_cfg = manifest["config"].get("train", {})
    dev = resolve_device(device)
    reward = load_reward(reward_dir, dev)
    _check_width(data, reward, "--reward", reward_dir)
    _, test, _, test_idx = load_splits(data, 0, int(train_cfg.get("max_test_items", 0)), int(manifest["seed"]))
    return evaluate_reward(reward, test, test_idx, dev, timesteps, int(train_cfg.get("eval_batch", 32)), seed=0)


def noise_sweep(runs_dir: Path, data: Path, timesteps: Sequence[int], out: Path, device: str = "auto",
                log: Callable[[str], None] = print) -> dict:
    """Text→motion R@1 against noise level for the plain, noise-aware and plain-continued runs of a :func:`study`
    (every seed found), mean and spread over seeds, whole test split and batches; written to ``out`` (JSON)."""
    runs_dir = Path(runs_dir)
    groups = {"plain": "plain", "noise_aware": "noise-aware", "plain_continued": "continued"}
    found = {key: sorted(runs_dir.glob(f"{prefix}-s*/metrics.json")) for key, prefix in groups.items()}
    if not found["plain"] or not found["noise_aware"]:
        raise UserError(f"--runs {runs_dir}: no finished plain-s*/noise-aware-s* runs of `easytune reward study`")
    retrieval: dict[str, dict[int, dict]] = {}
    for key, paths in found.items():
        retrieval[key] = {}
        for path in paths:
            seed = int(path.parent.name.rsplit("-s", 1)[1])
            log(f"[sweep] {path.parent.name}: t = {', '.join(map(str, timesteps))}")
            retrieval[key][seed] = eval_run(path.parent, data, timesteps, device)
    protocols = [p for p in next(iter(retrieval["plain"].values()))[f"t={timesteps[0]}"]]
    summary = {"metric": "test-split text->motion R@1 (%) on motions noised to level t (fixed noise)",
               "schedule": _schedule_of(found["noise_aware"][0].parent), "timesteps": list(timesteps),
               "seeds": {key: sorted(runs) for key, runs in retrieval.items()}}
    for protocol in protocols:
        summary[protocol] = {f"t={t}": {key: _mean_sd([_r1(r, t, protocol) for r in runs.values()])
                                        for key, runs in retrieval.items() if runs}
                             for t in timesteps}
    write_json(out, summary)
    return summary
