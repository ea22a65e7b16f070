"""Training the text–motion matching evaluator (:mod:`easytune_lab.eval.evaluator`).

Loss (config ``loss``):

* ``"infonce"`` (default): symmetric InfoNCE over the batch with logits ``-|t_i - m_j| / tau`` — the negative
  Euclidean distance, so that training optimises exactly the ranking R-Precision measures. Pairs of different
  rows whose captions are identical are not used as negatives (template captions repeat in procedural data).
* ``"margin"``: T2M's contrastive margin loss (Guo et al. 2022): ``d(t_i, m_i)^2`` for positives plus
  ``max(0, margin - d(t_i, m_{i+s}))^2`` for the batch shifted by a random ``s`` in ``[1, B-1]`` (margin 10).

The evaluator has its own fixed seed (:data:`EVALUATOR_SEED`), different from the reward model's, so that the judge
is never the model being optimised. Validation retrieval (R-Precision top-1/2/3 and MM-Dist on the val split, groups
of 32) is measured after every epoch; the best epoch's weights are kept. The learning rate is constant
(:func:`easytune_lab.training.lr_at`'s ``constant`` schedule, no warm-up, through
:class:`~easytune_lab.training.LRSchedule`).

Every ``checkpoint_every`` epochs ``OUT/checkpoint/`` is written in the shared format (:mod:`easytune_lab.training`):
the weights, the best epoch's weights (``best.safetensors``), the optimiser, the scheduler, the RNG states (torch's
global generator, which draws the training crops and captions, the loader's shuffling generator, the margin loss's
shift generator) and the history. A run resumed from it ends with the weights of the uninterrupted run.

Under ``torchrun`` the encoders train in DistributedDataParallel: every rank draws the same global batch, encodes its
``batch_size / world`` rows, and the embeddings are all-gathered (with gradients), so the contrastive loss sees the
whole global batch. Rank 0 measures validation, keeps the best weights and writes the run; its wall-clock stop
decision is broadcast so that all ranks stop after the same epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..data.humanml import HumanMLDataset, MotionBatch, collate_motions
from ..errors import UserError
from ..io import write_json
from ..runs import WEIGHTS, dataset_identity, make_manifest, save_tensors, write_manifest
from ..runtime import check_finite_loss, check_profile, seed_everything
from ..runtime import progress_bar as tqdm
from ..training import Checkpoint, Checkpointing, LRSchedule, resume_checkpoint, save_checkpoint
from . import metrics as M
from .evaluator import (EVALUATOR_KIND, NORMALISATION_FILE, VOCABULARY_FILE, EvaluatorConfig,
                        TextMotionEvaluator, save_normalisation)

EVALUATOR_SEED = 2022  # the evaluator's own seed (the reward model and backbones use the run's --seed)
LR_SCHEDULE = "constant"  # lr_at's schedule of the evaluator: its lr throughout, no warm-up


@dataclass
class EvaluatorTrainConfig:
    """Everything that decides the trained evaluator (saved in its manifest)."""

    profile: str = "quick"
    model: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    loss: str = "infonce"  # "infonce" | "margin"
    temperature: float = 0.1  # InfoNCE tau on Euclidean distances
    margin: float = 10.0  # T2M negative margin
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    max_seconds: float | None = None  # wall-clock budget for the training loop (stops after the current epoch)
    grad_clip: float = 1.0
    max_text_len: int = 20


#: The training config of each profile: ``smoke`` (seconds), ``quick`` (<= 10 min, 2 CPU cores), ``paper`` (GPU,
#: T2M's sizes: conv 512, motion GRU 1024, text GRU 512, 512-d output).
PROFILES: dict[str, EvaluatorTrainConfig] = {
    "smoke": EvaluatorTrainConfig("smoke", EvaluatorConfig(movement_hidden=32, movement_latent=32, motion_hidden=48,
                                                           word_dim=32, text_hidden=48, dropout=0.0),
                                  batch_size=32, lr=3e-3, epochs=25, max_seconds=None),
    "quick": EvaluatorTrainConfig("quick", EvaluatorConfig(movement_hidden=128, movement_latent=128, motion_hidden=192,
                                                           word_dim=96, text_hidden=192, dropout=0.1),
                                  batch_size=64, lr=1e-3, epochs=40, max_seconds=480.0),
    "paper": EvaluatorTrainConfig("paper", EvaluatorConfig(), batch_size=32, lr=1e-4, epochs=300, max_seconds=None),
}


def profile_config(profile: str) -> EvaluatorTrainConfig:
    """A fresh copy of the profile's :data:`PROFILES` row."""
    check_profile(profile)
    return copy.deepcopy(PROFILES[profile])


# ------------------------------------------------------------------------------------------------------ losses


def same_caption_mask(captions: list[str]) -> torch.Tensor:
    """(B, B) bool: True where rows i != j carry the identical caption (not valid negatives)."""
    keys = {}
    codes = torch.tensor([keys.setdefault(c.strip().lower(), len(keys)) for c in captions])
    same = codes[:, None] == codes[None, :]
    same.fill_diagonal_(False)
    return same


def infonce_loss(text: torch.Tensor, motion: torch.Tensor, temperature: float,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE with logits ``-|t_i - m_j| / tau``; ``exclude[i, j]`` removes pair (i, j) as a negative."""
    diff = text[:, None, :] - motion[None, :, :]
    dist = torch.sqrt((diff * diff).sum(-1) + 1e-8)
    logits = -dist / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude.to(logits.device), float("-inf"))
    labels = torch.arange(len(text), device=text.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def margin_loss(text: torch.Tensor, motion: torch.Tensor, margin: float, shift: int,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
    """T2M contrastive loss: positives pulled together (``d^2``), the batch shifted by ``shift`` pushed past
    ``margin`` (``max(0, margin - d)^2``); shifted pairs with ``exclude`` set are skipped."""
    pos = F.pairwise_distance(text, motion).pow(2).mean()
    idx = (torch.arange(len(text)) + shift) % len(text)
    d_neg = F.pairwise_distance(text, motion[idx.to(motion.device)])
    neg_terms = torch.clamp(margin - d_neg, min=0.0).pow(2)
    if exclude is not None:
        keep = ~exclude[torch.arange(len(text)), idx].to(neg_terms.device)
        neg = (neg_terms * keep).sum() / keep.sum().clamp(min=1)
    else:
        neg = neg_terms.mean()
    return pos + neg


# ------------------------------------------------------------------------------------------------------ training


def encode_batch(model: TextMotionEvaluator, batch: MotionBatch, device: torch.device):
    text = model.encode_text(batch.token_ids.to(device), batch.pos_one_hot.to(device), batch.sent_lens)
    motion = model.encode_motion(batch.features.to(device), batch.lengths)
    return text, motion


class _BatchEncoder(torch.nn.Module):
    """``forward(batch) -> (text, motion)`` embeddings: the module DistributedDataParallel wraps."""

    def __init__(self, model: TextMotionEvaluator, device: torch.device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, batch: MotionBatch):
        return encode_batch(self.model, batch, self.device)


def _private_rng():
    """Under several processes, rank 0's validation must not advance torch's global generator (a DataLoader draws
    its base seed from it), which draws the training items' crops and captions alike on every rank."""
    if dist.world_size() == 1:
        return contextlib.nullcontext()
    return torch.random.fork_rng(devices=[])


def check_world(config: EvaluatorTrainConfig, train_items: int, data_root) -> None:
    """Under several processes every batch must be full and split evenly (validated before training)."""
    if dist.world_size() > 1:
        dist.check_divisible(config.batch_size, "batch size")
        if train_items < config.batch_size:
            raise UserError(f"{data_root}/train.txt: {train_items} usable clips, fewer than one batch of "
                            f"{config.batch_size}")


@torch.no_grad()
def embed_dataset(model: TextMotionEvaluator, dataset: HumanMLDataset, device: torch.device,
                  batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(text, motion) embeddings of every item of a dataset in order (use ``mode="eval"`` for determinism)."""
    was_training = model.training
    model.eval()
    texts, motions = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_motions)
    for batch in loader:
        t, m = encode_batch(model, batch, device)
        texts.append(t.float().cpu().numpy())
        motions.append(m.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(texts), np.concatenate(motions)


def retrieval_scores(text: np.ndarray, motion: np.ndarray, seed: int = 0) -> dict:
    """R-Precision top-1/2/3 and MM-Dist on (text, motion) rows, shuffled once with ``seed`` (the T2M eval
    loader shuffles) in groups of 32 (or all rows when fewer than 32), with the chance levels."""
    n = len(text)
    group = min(M.R_PRECISION_GROUP, n)
    order = np.random.default_rng(seed).permutation(n)
    top = M.r_precision(text[order], motion[order], top_k=3, group_size=group)
    return {
        "rows": int(n), "group_size": int(group),
        "r_precision_top1": float(top[0]), "r_precision_top2": float(top[1]), "r_precision_top3": float(top[2]),
        "chance_top1": 1.0 / group, "chance_top3": min(3, group) / group,
        "mm_dist": M.matching_score(text[order], motion[order], group_size=group),
    }


def train_evaluator(data_root: str | Path, config: EvaluatorTrainConfig, out_dir: str | Path,
                    seed: int = EVALUATOR_SEED, device: torch.device | str = "cpu", progress: bool = True, *,
                    resume: bool = False, stop_after: int | None = None, checkpoint_every: int = 1) -> dict:
    """Train on ``DATA/train.txt``, select on ``DATA/val.txt``, write the run directory; returns metrics.json
    (with ``complete``).

    ``OUT/checkpoint/`` is written every ``checkpoint_every`` epochs; ``stop_after`` ends the run after that many
    epochs with a checkpoint, as an interruption would (nothing else is written; ``complete`` is False);
    ``resume`` continues from ``OUT/checkpoint`` (from the start when there is none yet) with the same config, seed
    and data, to the weights of an uninterrupted run.
    """
    if config.loss not in ("infonce", "margin"):
        raise UserError(f"loss: unknown loss '{config.loss}' (choose infonce or margin)")
    device = torch.device(device)
    out_dir = Path(out_dir)
    plan = Checkpointing(out_dir, checkpoint_every, resume, stop_after,
                         settings={"seed": seed, "data_identity": dataset_identity(data_root)})
    seed_everything(seed)
    train = HumanMLDataset(data_root, "train", mode="train", max_text_len=config.max_text_len, seed=seed)
    val = HumanMLDataset(data_root, "val", mode="eval", max_text_len=config.max_text_len, vocab=train.vocab,
                         seed=seed)
    if val.spec.dim != config.model.feature_dim:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, feature_dim=val.spec.dim))
    if len(train) < 2:
        raise UserError(f"{data_root}/train.txt: needs at least 2 usable clips, got {len(train)}")
    if len(val) < 2:
        raise UserError(f"{data_root}/val.txt: needs at least 2 usable clips, got {len(val)}")

    check_world(config, len(train), data_root)
    model = TextMotionEvaluator(config.model, len(train.vocab)).to(device)
    encoder = dist.wrap_ddp(_BatchEncoder(model, device), device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=len(train) > config.batch_size,
                        collate_fn=collate_motions, generator=gen)
    shift_rng = np.random.default_rng(seed)
    schedule = LRSchedule(opt, 0, config.epochs * len(loader), LR_SCHEDULE)
    saved = {**plan.settings, "train": config}          # the checkpoint's config, the same on resume
    rngs = {"generators": {"loader": gen}, "numpy_generators": {"shift": shift_rng}}

    history, best, best_state, done, elapsed = [], None, None, 0, 0.0
    if plan.resume:
        ckpt = resume_checkpoint(out_dir, model, config=saved, optimizer=opt, scheduler=schedule,
                                 required=("epoch", "history", "best", "elapsed"), extra_weights=("best",),
                                 params=lambda state: list(model.parameters()), device=device, **rngs)
        if ckpt is not None:
            history, best, best_state, done, elapsed = _resumed(ckpt)
            plan.resumed = ckpt.state
    start = time.perf_counter() - elapsed
    end, out_of_time = plan.end(config.epochs), False
    bar = tqdm(range(done, end), total=config.epochs, initial=done, desc="evaluator", unit="epoch",
               disable=not (progress and dist.is_main()))
    for epoch in bar:
        model.train()
        losses = []
        for step, batch in enumerate(loader):
            lo, hi = dist.shard_bounds(len(batch))
            local = batch if dist.world_size() == 1 else batch.rows(lo, hi)
            with dist.rank_rng(seed, epoch, step, device=device):   # rank-specific dropout
                text, motion = encoder(local)
            text, motion = dist.all_gather_rows(text), dist.all_gather_rows(motion)
            exclude = same_caption_mask(batch.captions)
            if config.loss == "infonce":
                loss = infonce_loss(text, motion, config.temperature, exclude)
            else:
                loss = margin_loss(text, motion, config.margin, int(shift_rng.integers(1, len(text))), exclude)
            check_finite_loss(loss, "evaluator train", epoch + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            schedule.step()
            losses.append(float(loss.detach()))
        elapsed = time.perf_counter() - start
        if dist.is_main():                                        # validation and selection on rank 0
            with _private_rng():
                scores = retrieval_scores(*embed_dataset(model, val, device), seed=seed)
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(elapsed, 2),
                            "lr": float(opt.param_groups[0]["lr"]),
                            **{k: scores[k] for k in ("r_precision_top1", "r_precision_top3", "mm_dist")}})
            key = scores["r_precision_top1"] + scores["r_precision_top2"] + scores["r_precision_top3"]
            if best is None or key > best[0]:
                best = (key, epoch + 1, scores)
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_top1=f"{scores['r_precision_top1']:.3f}")
        done = epoch + 1
        if dist.is_main() and plan.due(done, config.epochs):
            save_checkpoint(out_dir, model.state_dict(), opt,
                            {"epoch": done, "history": history, "elapsed": elapsed,
                             "best": {"key": best[0], "epoch": best[1], "scores": best[2]}},
                            scheduler=schedule, config=saved, extra_weights={"best": best_state}, **rngs)
        out_of_time = config.max_seconds is not None and elapsed > config.max_seconds
        if dist.broadcast_flag(out_of_time, device):              # rank 0's clock decides for every rank
            out_of_time = True
            break
    bar.close()
    train_seconds = time.perf_counter() - start
    if done < config.epochs and not out_of_time:                  # stopped: the checkpoint is the run so far
        return {"complete": False, "epochs_run": done, "train_seconds": round(train_seconds, 2)}
    if not dist.is_main():                                        # rank 0 writes; the others wait for it
        dist.barrier()
        return {"complete": True, "epochs_run": done, "train_seconds": round(train_seconds, 2)}

    out_dir.mkdir(parents=True, exist_ok=True)
    model.load_state_dict(best_state)
    save_tensors(out_dir / WEIGHTS, best_state, metadata={"kind": EVALUATOR_KIND})
    train.vocab.save(out_dir / VOCABULARY_FILE)
    save_normalisation(out_dir / NORMALISATION_FILE, train.mean, train.std)
    metrics = {
        "val": best[2], "best_epoch": best[1], "epochs_run": len(history), "train_seconds": round(train_seconds, 2),
        "train_clips": len(train), "val_clips": len(val), "vocab_size": len(train.vocab),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "threads": torch.get_num_threads(), "history": history,
    }
    write_json(out_dir / "metrics.json", metrics)
    manifest = make_manifest(EVALUATOR_KIND, config, seed=seed, device=str(device),
                             extra={"data": {"root": str(Path(data_root).resolve()), "skeleton": train.skeleton},
                                    "world_size": dist.world_size()})
    write_manifest(out_dir, manifest)
    dist.barrier()
    return {**metrics, "complete": True}


def _resumed(ckpt: Checkpoint) -> tuple[list, tuple, dict, int, float]:
    """(history, best (key, epoch, scores), best weights, epochs done, seconds) of a loaded checkpoint."""
    state, best = ckpt.state, ckpt.state["best"]
    if not isinstance(best, dict) or any(k not in best for k in ("key", "epoch", "scores")) \
            or not isinstance(state["history"], list) or not isinstance(state["epoch"], int):
        raise UserError(f"{ckpt.path / 'state.json'}: damaged checkpoint state (epoch, history or best epoch); "
                        f"remove {ckpt.path} to resume from the start")
    weights = {k: v.detach().cpu().clone() for k, v in ckpt.weights["best"].items()}
    return list(state["history"]), (best["key"], best["epoch"], best["scores"]), weights, state["epoch"], \
        float(state["elapsed"])
