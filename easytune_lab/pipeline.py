"""A cache of trained runs keyed by configuration, shared by the notebooks and ``easytune reproduce``.

:func:`workbench` returns a :class:`Workbench` whose stages are built lazily, once::

    wb = workbench("smoke", seed=0)
    wb.data                      # HumanML3D-format dataset directory (procedural, or the user's)
    wb.evaluator                 # T2M-style evaluator run
    wb.backbone("mdm")           # pretrained backbone run (mdm | mld | lcm; lcm distils the mld run)
    wb.reward(spl=True)          # retrieval reward run (noise_aware=True: R(x_t, t, c); spl: refined by SPL)
    wb.finetune("easytune")      # fine-tuned backbone run
    wb.evaluation(run)           # T2M metrics (+ oracle accuracy) of a backbone run, as a dict

Every stage is a run directory ``CACHE/runs/<stage>-<hash12>`` where the hash is
:func:`easytune_lab.runs.config_hash` of everything that decides the result: the stage's options, profile,
seed, resolved device type, the dataset's identity and the hashes of the runs it builds on. A run is reused only
when its ``manifest.json`` says ``"status": "complete"``; a build writes into a hidden temporary sibling
(``.<name>.tmp-<pid>``) and is renamed into place at the end, so an interrupted build leaves no run behind (a
temporary directory at most, removed by the next build of that key once its process is gone). A build holds the
run's build lock (:func:`easytune_lab.runs.build_lock`): when two processes ask for the same key at once (two
notebooks of ``easytune reproduce --jobs 2``), the second waits and then reuses the first one's run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .diffusion.generate import load_generator
from .diffusion.registry import backbone_spec
from .diffusion.train import pretrain, pretrain_config
from .diffusion.training_data import load_training_data
from .errors import UserError
from .eval.evaluator import load_evaluator
from .eval.evaluator_train import EVALUATOR_SEED, profile_config, train_evaluator
from .eval.protocol import (PROTOCOLS, GroundTruth, ProtocolConfig, evaluate, generated_source, load_actions,
                            oracle_function)
from .finetune.presets import preset as find_preset
from .finetune.train import finetune_config, run_finetune, validate
from .io import write_json
from .motion.synth import generate_dataset
from .reward.pipeline import spl_run, train_run
from .reward.train import SPL_MODES, official_spl, profile_configs
from .runs import (MANIFEST, build_lock, config_hash, config_to_dict, make_manifest, project_root, read_manifest,
                   write_manifest, write_tensorboard)
from .runtime import check_profile, resolve_device
from .viz.plots import run_label

# Size of the procedural dataset per profile. 15 % of it is the test split (see motion.synth.split_ids), and the
# T2M protocol needs at least one R-Precision group of 32 test rows: 300 motions -> 45 test motions.
PROCEDURAL_MOTIONS = {"smoke": 300, "quick": 4000, "paper": 4000}
DATA_SEED = 0          # the procedural dataset is the same for every training seed
EVAL_REPLICATIONS = {"smoke": 2, "quick": 1, "paper": 20}   # T2M uses 20; quick: one pass over the test split
#: The rewards a fine-tuning run can train with, as :meth:`Workbench.reward` options.
FINETUNE_REWARDS = {"plain": dict(), "spl": dict(spl=True), "spl-official": dict(spl=True, spl_mode="official"),
                "noise-aware": dict(noise_aware=True)}
#: The runs that most claim notebooks share, each named ``stage[:option]`` (:meth:`Workbench.stage`), in an order
#: that lets two workers build them side by side (every stage after the one it starts from). ``easytune reproduce
#: --jobs N`` builds them first, N at a time, before the notebooks run N at a time.
SHARED_STAGES = ("backbone:mdm", "backbone:mld", "evaluator", "reward:plain", "backbone:lcm", "reward:spl",
                 "reward:noise-aware", "reward:spl-official")


def is_complete(run_dir: Path) -> bool:
    """True when ``run_dir/manifest.json`` exists and says ``status: complete``."""
    try:
        return json.loads((Path(run_dir) / MANIFEST).read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def dataset_identity(root: Path) -> dict:
    """What identifies a dataset directory: its generator record, or a digest of its split lists and file sizes."""
    root = Path(root)
    info = root / "dataset.json"
    if info.is_file():
        record = json.loads(info.read_text())
        return {"kind": "procedural", "generator": {k: record.get(k) for k in
                                                    ("generator_version", "version", "seed", "num_motions")
                                                    if k in record},
                "digest": hashlib.sha256(info.read_bytes()).hexdigest()[:16]}
    digest = hashlib.sha256()
    for name in ("train.txt", "val.txt", "test.txt", "Mean.npy", "Std.npy"):
        path = root / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    vecs = root / "new_joint_vecs"
    if vecs.is_dir():
        for path in sorted(vecs.iterdir()):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return {"kind": "directory", "path": str(root.resolve()), "digest": digest.hexdigest()[:16]}


@dataclass
class Workbench:
    """Lazily built, cached stages for one (profile, seed, device, dataset). See the module docstring."""

    profile: str = "smoke"
    seed: int = 0
    device: str = "auto"
    cache: Path = Path(".cache")
    user_data: Path | None = None
    progress: bool = False
    log: Callable[[str], None] = print
    built: list[str] = field(default_factory=list)      # run dirs built (not reused) by this object
    _data: Path | None = None

    def __post_init__(self) -> None:
        check_profile(self.profile)
        self.cache = Path(self.cache)
        self.torch_device = resolve_device(self.device)
        if self.user_data is not None:
            self.user_data = Path(self.user_data)
            if not (self.user_data / "train.txt").is_file():
                raise UserError(f"--data {self.user_data}: no train.txt (not a HumanML3D-format directory)")

    # ------------------------------------------------------------------------------------------------ plumbing
    def _key(self, stage: str, **options) -> dict:
        return {"stage": stage, "profile": self.profile, "seed": self.seed, "device": self.torch_device.type,
                "data": dataset_identity(self.data), **options}

    def run_dir(self, stage: str, key: dict) -> Path:
        return self.cache / "runs" / f"{stage}-{config_hash(key)}"

    def _build(self, stage: str, key: dict, build: Callable[[Path], None]) -> Path:
        """Return the complete run for ``key``; otherwise build it into a temporary directory and rename it."""
        final = self.run_dir(stage, key)
        if is_complete(final):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with build_lock(final, self.log):
            if is_complete(final):          # built by another process while this one waited for the lock
                self.log(f"[cache] reusing {final.name}, built meanwhile by another process")
                return final
            return self._build_locked(stage, key, final, build)

    def _build_locked(self, stage: str, key: dict, final: Path, build: Callable[[Path], None]) -> Path:
        for stale in final.parent.glob(f".{final.name}.tmp-*"):   # left by a build whose process has died
            if not _pid_alive(stale.name.rsplit("-", 1)[1]):
                shutil.rmtree(stale, ignore_errors=True)
        if final.exists():                  # a run that never completed
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        threads = torch.get_num_threads()
        start = time.perf_counter()
        self.log(f"[cache] building {final.name} ({stage}, profile {self.profile})")
        try:
            build(tmp)
            manifest = read_manifest(tmp)
            manifest["status"] = "complete"
            manifest["cache_key"] = config_to_dict(key)
            manifest["cache_seconds"] = time.perf_counter() - start
            write_manifest(tmp, manifest)
            write_tensorboard(tmp)          # training curves, when the tensorboard package is installed
            try:
                os.replace(tmp, final)
            except OSError:
                if not is_complete(final):  # else another process finished the same run first: keep theirs
                    raise
        finally:
            torch.set_num_threads(threads)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.built.append(str(final))
        self.log(f"[cache] built {final} in {time.perf_counter() - start:.1f} s")
        return final

    # ------------------------------------------------------------------------------------------------ stages
    @property
    def data(self) -> Path:
        """The dataset directory: the user's, or the profile's procedural dataset (generated once)."""
        if self._data is None:
            if self.user_data is not None:
                self._data = self.user_data
            else:
                n = PROCEDURAL_MOTIONS[self.profile]
                root = self.cache / "data" / f"procedural-n{n}-seed{DATA_SEED}"
                if not (root / "dataset.json").is_file():
                    with build_lock(root, self.log):
                        if not (root / "dataset.json").is_file():   # else generated meanwhile by another process
                            if root.exists():
                                shutil.rmtree(root)
                            self.log(f"[cache] generating {n} procedural motions into {root}")
                            generate_dataset(root, num_motions=n, seed=DATA_SEED, progress=self.progress)
                self._data = root
        return self._data

    @property
    def evaluator(self) -> Path:
        """The T2M-style evaluator (its own fixed seed, as T2M's evaluator is shared by every model)."""
        config = profile_config(self.profile)
        key = self._key("evaluator", config=config, evaluator_seed=EVALUATOR_SEED)
        key["seed"] = None                       # independent of the workbench seed

        def build(out: Path) -> None:
            train_evaluator(self.data, config, out, seed=EVALUATOR_SEED, device=self.torch_device,
                            progress=self.progress)
            _mark_manifest(out)

        return self._build("evaluator", key, build)

    def backbone(self, kind: str = "mdm") -> Path:
        """A pretrained backbone run of a registered backbone (:mod:`easytune_lab.diffusion.registry`): ``mdm``
        (motion space), ``mld`` (latent), ``lcm`` (distilled from its teacher backbone's run, ``mld``)."""
        spec = backbone_spec(kind)
        teacher = self.backbone(spec.teacher) if spec.teacher else None
        parents = {"teacher": teacher.name} if teacher else {}
        feature_dim = int(np.load(self.data / "Mean.npy", mmap_mode="r").shape[0])
        # the resolved config is part of the key: changing a profile retrains instead of reusing a stale run
        key = self._key("backbone", backbone=kind, parents=parents,
                        config=pretrain_config(kind, self.profile, feature_dim, seed=self.seed))

        def build(out: Path) -> None:
            data = load_training_data(self.data, self.seed)
            config = pretrain_config(kind, self.profile, feature_dim, seed=self.seed,
                                     teacher=str(teacher) if teacher else None)
            init = spec.setup(config, data) if spec.setup is not None else None
            pretrain(config, data, out, device=self.torch_device, progress=self.progress,
                     parents={"teacher": str(teacher)} if teacher else {}, init=init)

        return self._build(f"backbone-{kind}", key, build)

    def reward(self, noise_aware: bool = False, spl: bool = False, spl_mode: str = "ours") -> Path:
        """A retrieval reward run (paper Sec. 3.3); ``spl`` refines the plain one with SPL (Sec. 3.4), ``spl_mode``
        ``ours`` or ``official`` (the authors' loss and settings, :func:`easytune_lab.reward.train.official_spl`).

        ``noise_aware``: R(x_t, t, c), started from the plain reward run and trained on for the profile's epochs on
        noised and clean motions (:func:`easytune_lab.reward.train.warm_start`)."""
        if spl_mode not in SPL_MODES:
            raise UserError(f"spl_mode: unknown mode '{spl_mode}' (choose {', '.join(SPL_MODES)})")
        spl_cfg = profile_configs(self.profile, noise_aware=noise_aware)[1]
        if spl_mode == "official":
            spl_cfg = official_spl(spl_cfg)
        quiet = self.log if self.progress else (lambda _msg: None)
        if spl:
            parent = self.reward(noise_aware=noise_aware, spl=False)
            key = self._key("reward-spl", noise_aware=noise_aware, parents={"reward": parent.name}, config=spl_cfg)

            def build(out: Path) -> None:
                spl_run(parent, self.data, out, self.profile, self.seed, str(self.torch_device), log=quiet,
                        progress=self.progress, mode=spl_mode)
                _mark_manifest(out)

            return self._build("reward-spl", key, build)
        key = self.reward_key(noise_aware)
        init = self.reward() if noise_aware else None   # R(x_t, t, c) starts from the trained R(x, c)
        if init is not None:
            key["parents"] = {"init": init.name}

        def build(out: Path) -> None:
            train_run(self.data, out, self.profile, self.seed, str(self.torch_device), noise_aware=noise_aware,
                      init=init, log=quiet, progress=self.progress)
            _mark_manifest(out)

        return self._build("reward-noise-aware" if noise_aware else "reward", key, build)

    def reward_key(self, noise_aware: bool = False) -> dict:
        """The cache key of the plain (not SPL-refined) reward run: options plus the profile's resolved config."""
        return self._key("reward", noise_aware=noise_aware, config=profile_configs(self.profile, noise_aware)[0])

    def finetune_config(self, method: str, backbone: str | None = None, **overrides):
        """The :class:`~easytune_lab.finetune.train.FinetuneConfig` that :meth:`finetune` trains ``backbone`` with
        (its lr the one tuned on that backbone where there is one)."""
        cfg = finetune_config(method, self.profile, backbone=backbone, **{"seed": self.seed, **overrides})
        if cfg.policy.train_steps == "weighted" and cfg.policy.weighting == "uniform":
            # uniform step weights are all exactly 1 (StepPlan.lr_scale = 1.0): the same training as every step
            # unweighted, so the same cached run instead of a second, identical one (notebooks 04 and 06)
            cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, train_steps="all"))
        return cfg

    def finetune(self, method: str, backbone: str = "mdm", reward: str | None = None, **overrides) -> Path:
        """A fine-tuned backbone run (``reward``: ``plain`` | ``spl`` | ``spl-official`` | ``noise-aware``; default:
        the ``preset``'s reward if one is given, else ``spl``); ``overrides`` go to
        :func:`~easytune_lab.finetune.train.finetune_config` (``preset`` and known fields of the config, its policy
        and its loop)."""
        if reward is None:
            reward = find_preset(overrides["preset"]).reward if overrides.get("preset") else "spl"
        if reward not in FINETUNE_REWARDS:
            raise UserError(f"reward: unknown reward '{reward}' (choose {', '.join(FINETUNE_REWARDS)})")
        cfg = self.finetune_config(method, backbone=backbone, **dict(overrides))
        validate(cfg)
        base, reward_run = self.backbone(backbone), self.reward(**FINETUNE_REWARDS[reward])
        # the resolved config is the key (not how it was asked for): equal configs share one run
        key = self._key("finetune", config=cfg, parents={"base": base.name, "reward": reward_run.name})
        if cfg.policy.train_steps == "weighted":   # step weights now scale each update (StepPlan.lr_scale);
            key["step_weights_scale"] = "lr"         # runs cached when they weighted the losses are not reused

        def build(out: Path) -> None:
            run_finetune(cfg, base, reward_run, self.data, out, self.torch_device, progress=self.progress)

        return self._build(f"finetune-{method}", key, build)

    def stage(self, name: str) -> Path:
        """The run of a stage named as in :data:`SHARED_STAGES`: ``evaluator``, ``backbone:KIND`` or
        ``reward:KIND`` (a key of :data:`FINETUNE_REWARDS`)."""
        kind, _, option = name.partition(":")
        if kind == "evaluator" and not option:
            return self.evaluator
        if kind == "backbone" and option:
            return self.backbone(option)
        if kind == "reward" and option in FINETUNE_REWARDS:
            return self.reward(**FINETUNE_REWARDS[option])
        raise UserError(f"stage: unknown stage '{name}' (evaluator, backbone:KIND or reward:"
                        f"{'|'.join(FINETUNE_REWARDS)})")

    def sampling(self, model: Path | str) -> tuple[str, int]:
        """The (sampler, sample_steps) a run is evaluated with: a fine-tuned run's own trajectory; for a base
        backbone the trajectory its fine-tuning uses (DDIM with the profile's T; a backbone with a native sampler,
        e.g. LCM: its own sampler and steps), so base and fine-tuned models are compared under the same sampler."""
        manifest = read_manifest(model, kind="backbone")
        if manifest.get("finetune"):
            return manifest["finetune"]["sampler"], int(manifest["finetune"]["sample_steps"])
        if backbone_spec(manifest["config"]["backbone"]).native_sampler:
            diffusion = manifest["config"]["model"]["diffusion"]
            return diffusion["sampler"], int(diffusion["sample_steps"])
        cfg = self.finetune_config("easytune")
        return cfg.sampler, cfg.sample_steps

    def evaluation(self, model: Path | str, replications: int | None = None, protocol: str | None = None) -> dict:
        """T2M metrics of a backbone run (or ``gt``) on the test split, cached as an ``eval`` run; generated with
        :meth:`sampling`; ``protocol`` ``t2m`` (default) or ``legacy`` (:mod:`easytune_lab.eval.protocol`)."""
        reps = replications or EVAL_REPLICATIONS[self.profile]
        evaluator = self.evaluator
        model_id = "gt" if str(model) == "gt" else Path(model).name
        sampler, steps = (None, None) if model_id == "gt" else self.sampling(model)
        protocol = protocol or PROTOCOLS[0]
        key = self._key("eval", model=model_id, evaluator=evaluator.name, replications=reps, sampler=sampler,
                        steps=steps, protocol=protocol)

        def build(out: Path) -> None:
            ev = load_evaluator(evaluator, self.torch_device)
            config = ProtocolConfig(replications=reps, seed=self.seed, max_text_len=ev.config.max_text_len,
                                    protocol=protocol)
            gt = GroundTruth(self.data, "test", ev, max_text_len=config.max_text_len)
            if model_id == "gt":
                source = gt.source()
            else:
                gen = load_generator(model, self.torch_device)
                source = generated_source(lambda texts, lengths, seed: gen.generate(
                    list(texts), [int(n) for n in lengths], seed=int(seed), sampler=sampler, steps=steps))
            actions = load_actions(self.data)
            summary = evaluate(ev, gt, source, config, actions=actions,
                               oracle=oracle_function() if actions is not None else None, progress=self.progress)
            out.mkdir(parents=True)
            write_json(out / "metrics.json", summary)
            manifest = make_manifest("eval", config, seed=self.seed, device=str(self.torch_device),
                                     parents={"evaluator": str(evaluator), "model": str(model)},
                                     extra={"sampler": sampler, "steps": steps})
            write_manifest(out, manifest)

        run = self._build("eval", key, build)
        return json.loads((run / "metrics.json").read_text())


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _mark_manifest(out: Path) -> None:
    """Some stages write no manifest status; the cache adds ``complete`` itself after a build returns."""
    if not (Path(out) / MANIFEST).is_file():
        raise UserError(f"{out}: the stage wrote no {MANIFEST}")


def workbench(profile: str = "smoke", seed: int = 0, device: str = "auto", cache: str | Path = ".cache",
              data: str | Path | None = None, progress: bool = False) -> Workbench:
    """The cached stages for ``profile``/``seed``/``device`` on the procedural dataset or the user's ``data``."""
    return Workbench(profile=profile, seed=seed, device=device, cache=Path(cache),
                     user_data=Path(data) if data is not None else None, progress=progress)


def project_path(path: str | Path) -> Path:
    """``path`` if absolute, else relative to :func:`~easytune_lab.runs.project_root` (notebooks run with their
    own folder as working directory, and resolve ``.cache``/``results`` from the project root)."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def results_dir(profile: str, root: str | Path = "results") -> Path:
    """Where a profile's results go: ``ROOT/<profile>`` (``results/quick``, ``results/smoke``, ...), so that no profile
    can overwrite another's."""
    return Path(root) / check_profile(profile)


def notebook_workbench(profile: str, *, seed: int = 0, device: str = "auto", cache: str | Path = ".cache",
                       data: str | Path = "", out_dir: str = "results/{profile}/notebook",
                       progress: bool = True) -> tuple[Workbench, Path]:
    """The setup cell of every claim notebook: the workbench and the output folder.

    ``out_dir`` may name the profile as ``{profile}`` (the notebooks' default is ``results/{profile}/<notebook>``);
    relative paths are resolved from the project root (:func:`project_path`). At the smoke profile (CI shares two
    cores between everyone) torch runs on one thread. ``progress``: training stages show tqdm bars with an ETA."""
    check_profile(profile)
    if profile == "smoke":
        os.environ.setdefault("EASYTUNE_THREADS", "1")
        torch.set_num_threads(1)
    wb = workbench(profile, seed=seed, device=device, cache=project_path(cache),
                   data=project_path(data) if data else None, progress=progress)
    try:
        out = project_path(str(out_dir).format(profile=profile, seed=seed))
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"out_dir: '{out_dir}' is not a path template with {{profile}} / {{seed}} ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    print(f"data {wb.data} | device {wb.torch_device} | profile {profile}, seed {seed} | results -> {out}")
    return wb, out


class NotebookSetup(NamedTuple):
    """What a claim notebook's setup cell binds: the workbench, the output folder and the label of its figures."""

    wb: Workbench
    out: Path
    figure_label: str


def notebook_setup(name: str, profile: str, *, seed: int = 0, device: str = "auto", cache: str | Path = ".cache",
                   data: str | Path = "", out_dir: str | None = None, progress: bool = True) -> NotebookSetup:
    """The setup cell of every claim notebook, after ``from easytune_lab.notebook import *``::

        wb, out, figure_label = notebook_setup("02_chain_coefficients", profile, seed=seed, device=device,
                                               cache=cache, data=data, out_dir=out_dir)

    :func:`notebook_workbench` for the parameters cell's values (``out_dir`` defaults to
    ``results/{profile}/<name>``), and the label every figure of notebook ``name`` carries
    (:func:`easytune_lab.viz.plots.run_label`: profile, seed and notebook)."""
    wb, out = notebook_workbench(profile, seed=seed, device=device, cache=cache, data=data,
                                 out_dir=f"results/{{profile}}/{name}" if out_dir is None else out_dir,
                                 progress=progress)
    return NotebookSetup(wb, out, run_label(profile, seed, name))
