"""Training of the retrieval reward (InfoNCE), its noise-aware variant, and SPL refinement; evaluation.

One config dataclass per profile (``smoke`` tiny for tests/CI, ``quick`` a 2-core CPU in minutes, ``paper``
a GPU at TMR-like sizes). Training reads the dataset through :class:`easytune_lab.data.humanml.HumanMLDataset`
(``mode="train"``: a random caption and crop per access), evaluation through ``mode="eval"`` (deterministic).

The learning rate of step s is :func:`easytune_lab.training.lr_at` (linear warm-up, cosine to
:data:`MIN_LR_RATIO` of the base rate), through :class:`~easytune_lab.training.LRSchedule`. Given a
:class:`~easytune_lab.training.Checkpointing`, the loop (InfoNCE training and SPL refinement alike) writes
``RUN/checkpoint/`` in the shared format every ``every`` epochs: the weights, the optimiser, the scheduler, the RNG
states (torch's global generator draws the batch order, the crops and captions, the noise levels and the noise)
and the history; a run resumed from it ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .. import distributed as dist
from ..data.humanml import HumanMLDataset, MotionBatch, collate_motions
from ..data.text import plain_tokens
from ..errors import UserError
from ..runtime import check_finite_loss, progress_bar
from ..training import Checkpointing, LRSchedule, resume_checkpoint, save_checkpoint
from .metrics import batched_retrieval_metrics, retrieval_metrics
from .retrieval import CaptionTokenizer, FrozenTextModel, Reward, RewardModelConfig, identical_captions, info_nce, noise_motion
from .spl import mine_pairs, official_spl_loss, preference_kl, spl_loss


@dataclass
class RewardTrainConfig:
    """Retrieval-reward training (InfoNCE, optionally noise-aware) for one profile."""

    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 1.0
    dup_threshold: float = 0.95      # captions at least this similar are not negatives of each other
    t_max: int = 999                 # noise-aware: t ~ U(1, t_max) for noised samples
    p_clean: float = 0.25            # noise-aware: fraction of samples kept clean (t = 0)
    max_train_items: int = 0         # 0 = the whole train split
    max_test_items: int = 0          # 0 = the whole test split
    eval_timesteps: tuple[int, ...] = (0, 100, 250, 500, 750)
    eval_batch: int = 32             # gallery size of the batched retrieval protocol


@dataclass
class SPLConfig:
    """SPL refinement of a trained reward: L = L_InfoNCE + weight · L_SPL (see :mod:`.spl`)."""

    epochs: int = 4
    batch_size: int = 128            # the gallery the top-k is taken in
    lr: float = 1e-4
    k: int = 10
    weight: float = 1.0              # 0 = the control: the same extra epochs without SPL
    gallery: str = "train"           # "train": top-k among all train motions (re-embedded each epoch); "batch"
    dup_threshold: float = 0.98      # train gallery: a motion with a caption this close (cosine of the reward's
                                     # own text embeddings) to the query is a paraphrase match, not a wrong motion
    mode: str = "ours"               # "ours": pairs mined beyond the top-k (spl.mine_pairs, spl_loss);
                                     # "official": the authors' train_spm.py (spl.official_spl_loss): every
                                     # caption, in-batch gallery, [top-1, ground truth] logits, (½,½) / (0,1) targets
    threshold: float = 0.8           # official: a row cosine above this counts the caption as correct
    temperature: float = 0.1         # official: logits are cosine / τ / τ, as in the released code



SPL_MODES = ("ours", "official")


def official_spl(spl: SPLConfig) -> SPLConfig:
    """``spl`` switched to the authors' SPL (``train_spm.py`` fine-tuning and ``configs/spm_h3d.yaml`` of
    github.com/wengwanjiang/EasyTune): the loss :func:`.spl.official_spl_loss` with weight 0.01 on top of the
    retrieval loss, top-10 / cosine 0.8 correctness, τ = 0.1, in-batch gallery of 64 (the smoke profile's smaller
    batch there), AdamW lr 1e-5 (their fine-tuning lr). The number of epochs stays the profile's."""
    return dataclasses.replace(spl, mode="official", gallery="batch", batch_size=min(64, spl.batch_size), lr=1e-5,
                               k=10, weight=0.01,
                               threshold=0.8, temperature=0.1)


def _model(**kw) -> RewardModelConfig:
    return RewardModelConfig(**kw)


PROFILES: dict[str, tuple[RewardTrainConfig, SPLConfig]] = {
    "smoke": (RewardTrainConfig(model=_model(d_model=32, n_layers=1, text_layers=1, n_heads=2, d_ff=64, embed_dim=32),
                                epochs=2, batch_size=16, warmup_steps=2, max_train_items=64, max_test_items=64,
                                eval_timesteps=(0, 500)),
              SPLConfig(epochs=1, batch_size=32, k=5)),
    "quick": (RewardTrainConfig(model=_model(d_model=128, n_layers=2, text_layers=2, n_heads=4, d_ff=256, embed_dim=128),
                                epochs=10, batch_size=64),
              SPLConfig(epochs=3, batch_size=128, k=10)),
    "paper": (RewardTrainConfig(model=_model(d_model=256, n_layers=4, text_layers=4, n_heads=4, d_ff=1024, embed_dim=256),
                                epochs=120, batch_size=128, lr=1e-4, warmup_steps=500),
              SPLConfig(epochs=20, batch_size=256, lr=5e-5, k=10)),
}


def profile_configs(profile: str, noise_aware: bool = False) -> tuple[RewardTrainConfig, SPLConfig]:
    """Fresh copies of the profile's configs (``noise_aware`` toggles R(x_t, t, c))."""
    train_cfg, spl_cfg = PROFILES[profile]
    train_cfg = dataclasses.replace(train_cfg, model=dataclasses.replace(train_cfg.model, noise_aware=noise_aware))
    return train_cfg, dataclasses.replace(spl_cfg)


# ----------------------------------------------------------------------------------------------- data

def load_splits(root, max_train: int = 0, max_test: int = 0, seed: int = 0):
    """(train dataset, test dataset, index lists) — the test split shares the train vocabulary."""
    train = HumanMLDataset(root, "train", mode="train")
    test = HumanMLDataset(root, "test", mode="eval", vocab=train.vocab, seed=seed)
    g = torch.Generator().manual_seed(seed)
    train_idx = torch.randperm(len(train), generator=g)[: max_train or len(train)].tolist()
    test_idx = list(range(len(test)))[: max_test or len(test)]
    return train, test, train_idx, test_idx


def tokenizer_for(dataset: HumanMLDataset, max_words: int) -> CaptionTokenizer:
    """Vocabulary of every caption of the (train) dataset, as the reward tokenises them."""
    return CaptionTokenizer.from_captions([c.text for clip in dataset.clips for c in clip.captions], max_words)


def _batches(dataset, indices: Sequence[int], batch_size: int, shuffle: bool, drop_last: bool,
             with_positions: bool = False):
    """Collated batches of ``dataset[indices[j]]``; optionally with the positions j of their items."""
    order = torch.randperm(len(indices)).tolist() if shuffle else list(range(len(indices)))
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for s in range(0, stop, batch_size):
        pos = order[s:s + batch_size]
        if pos:
            batch = collate_motions([dataset[indices[j]] for j in pos])
            yield (torch.tensor(pos), batch) if with_positions else batch


def caption_key(text: str) -> str:
    """A caption reduced to its lower-case words (what counts as 'the same caption')."""
    return " ".join(t.word for t in plain_tokens(text))


class TrainGallery:
    """All train motions as the SPL retrieval gallery: embeddings (refreshed per epoch) and caption owners."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.owners: dict[str, list[int]] = {}
        for j, i in enumerate(self.indices):
            for cap in dataset.clips[i].captions:
                self.owners.setdefault(caption_key(cap.text), []).append(j)
        self.embeddings: torch.Tensor | None = None
        self.caption_texts = [cap.text for i in self.indices for cap in dataset.clips[i].captions]
        self.caption_owner = torch.tensor([j for j, i in enumerate(self.indices) for _ in dataset.clips[i].captions])
        self.caption_embeddings: torch.Tensor | None = None

    @torch.no_grad()
    def refresh(self, reward: Reward, device, batch_size: int = 256) -> None:
        was_training = reward.training
        reward.eval()
        out = []
        for batch in _batches(self.dataset, self.indices, batch_size, shuffle=False, drop_last=False):
            batch = batch.to(device)
            t = torch.zeros(len(batch), dtype=torch.long, device=device)
            out.append(reward.embed_motion(batch.features, batch.mask, t=t))
        self.embeddings = torch.cat(out)
        self.caption_embeddings = torch.cat([reward.embed_text(self.caption_texts[s:s + batch_size])
                                             for s in range(0, len(self.caption_texts), batch_size)])
        reward.train(was_training)

    @torch.no_grad()
    def same_caption_mask(self, captions: Sequence[str], device, text_emb: torch.Tensor | None = None,
                          threshold: float = 1.0) -> torch.Tensor:
        """(B, N) True where gallery motion j carries caption b itself or, given the queries' text embeddings,
        a caption whose embedding has cosine >= ``threshold`` with it (a paraphrase): not a wrong motion."""
        mask = torch.zeros(len(captions), len(self.indices), dtype=torch.bool)
        for b, text in enumerate(captions):
            mask[b, self.owners.get(caption_key(text), [])] = True
        mask = mask.to(device)
        if text_emb is not None and self.caption_embeddings is not None and threshold < 1.0:
            rows, cols = (text_emb @ self.caption_embeddings.T >= threshold).nonzero(as_tuple=True)
            mask[rows, self.caption_owner.to(device)[cols]] = True
        return mask

    def motions(self, positions: torch.Tensor, device) -> MotionBatch:
        return collate_motions([self.dataset[self.indices[int(j)]] for j in positions]).to(device)


def _text_side(reward: Reward, batch: MotionBatch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(text embeddings, caption-similarity matrix used to filter near-duplicate negatives)."""
    if isinstance(reward.text_encoder, FrozenTextModel):
        feats = reward.text_encoder.sentence_embeddings(batch.captions, device)
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return reward.embed_text(batch.captions), feats @ feats.T
    ids = reward.text_ids(batch.captions)
    return reward.embed_text(ids=ids), identical_captions(ids)


def _timesteps(cfg: RewardTrainConfig, n: int, device) -> torch.Tensor | None:
    """t = 0 with probability ``p_clean``, else t ~ U{1..t_max} (noise-aware training only)."""
    if not cfg.model.noise_aware:
        return None
    t = torch.randint(1, cfg.t_max + 1, (n,))
    t[torch.rand(n) < cfg.p_clean] = 0
    return t.to(device)


MIN_LR_RATIO = 0.1  # the cosine decays to 10 % of the base rate


# ----------------------------------------------------------------------------------------------- loops

class _Embedder(torch.nn.Module):
    """``forward(x, mask, t, captions) -> (motion embeddings, text embeddings, logit scale)`` of a reward: the
    module DistributedDataParallel wraps, so that the gradients of the pass are all-reduced."""

    def __init__(self, reward: Reward):
        super().__init__()
        self.reward = reward

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t, captions: Sequence[str]):
        m = self.reward.embed_motion(x, mask, t=t)
        if isinstance(self.reward.text_encoder, FrozenTextModel):
            c = self.reward.embed_text(captions)
        else:
            c = self.reward.embed_text(ids=self.reward.text_ids(captions))
        return m, c, self.reward.logit_scale()


def _caption_similarity(reward: Reward, captions: Sequence[str], device) -> torch.Tensor:
    """The caption-similarity matrix that keeps near-duplicate captions from being negatives."""
    if isinstance(reward.text_encoder, FrozenTextModel):
        feats = torch.nn.functional.normalize(reward.text_encoder.sentence_embeddings(captions, device), dim=-1)
        return feats @ feats.T
    return identical_captions(reward.text_ids(captions))


def _run_epochs(reward: Reward, train, train_idx, cfg: RewardTrainConfig, device, epochs: int, batch_size: int,
                lr: float, warmup: int, spl: SPLConfig | None, log: Callable[[str], None], seed: int = 0,
                progress: bool = True, checkpoints: Checkpointing | None = None) -> list[dict]:
    """Train for ``epochs``; under torchrun in DistributedDataParallel. ``progress``: a bar over the optimiser
    steps with an ETA (rank 0). ``checkpoints``: where and how often to checkpoint, whether to resume, where to
    stop (a history shorter than ``epochs``); None: no checkpoints.

    Every rank draws the same global batch and embeds its own ``batch_size / world`` rows; the embeddings are
    all-gathered (with gradients), so InfoNCE and SPL mining see the whole global batch as one process would, and
    averaging the ranks' gradients gives the combined batch's gradient. Noise levels and noise are drawn for the
    global batch and sliced; dropout gets a rank-specific seed.
    """
    params = [p for p in reward.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    embedder = dist.wrap_ddp(_Embedder(reward), torch.device(device))
    steps_per_epoch = max(1, len(train_idx) // batch_size)
    total = epochs * steps_per_epoch
    schedule = LRSchedule(opt, warmup, total, "cosine", MIN_LR_RATIO)
    history, step, done, elapsed = [], 0, 0, 0.0
    saved = None if checkpoints is None else {**checkpoints.settings, "train": cfg, "spl": spl}
    if checkpoints is not None and checkpoints.resume:
        ckpt = resume_checkpoint(checkpoints.run_dir, reward, config=saved, optimizer=opt, scheduler=schedule,
                                 required=("epoch", "step", "history", "elapsed"), params=lambda state: params,
                                 device=device)
        if ckpt is not None:
            history, step, done, elapsed = _resumed(ckpt)
            checkpoints.resumed = ckpt.state
    end = epochs if checkpoints is None else checkpoints.end(epochs)
    gallery = TrainGallery(train, train_idx) if spl is not None and spl.gallery == "train" else None
    bar = progress_bar(total=total, initial=step, desc="reward SPL" if spl is not None else "reward", unit="step",
                       disable=not (progress and dist.is_main()))
    lr_used = float(opt.param_groups[0]["lr"])
    for epoch in range(done, end):
        start = time.perf_counter()
        if gallery is not None:
            gallery.refresh(reward, device)
        reward.train()
        sums = {"loss": 0.0, "nce": 0.0, "spl": 0.0, "pairs": 0, "batches": 0}
        for positions, batch in _batches(train, train_idx, batch_size, shuffle=True, drop_last=True,
                                         with_positions=True):
            batch = batch.to(device)
            lo, hi = dist.shard_bounds(len(batch))
            local = batch if dist.world_size() == 1 else batch.rows(lo, hi)
            t = _timesteps(cfg, len(batch), device)
            t_local = None if t is None else t[lo:hi]
            if t is None:
                x = local.features
            else:
                noise = torch.randn_like(batch.features)
                x = noise_motion(local.features, t_local, reward.alphas_cumprod, noise[lo:hi])
            def dropout_rng(part: int, epoch=epoch, step=step):  # rank-specific dropout of this step's passes
                return dist.rank_rng(seed, epoch, step, part, device=device)

            with dropout_rng(0):
                m, c, scale = embedder(x, local.mask, t_local, local.captions)
            m, c = dist.all_gather_rows(m), dist.all_gather_rows(c)
            cap_sim = _caption_similarity(reward, batch.captions, device)
            nce = info_nce(m, c, scale, cap_sim, cfg.dup_threshold)
            loss = nce
            if spl is not None:
                s_loss, n_pairs = _spl_term(reward, batch, positions, m, c, scale, t, spl, gallery, device,
                                            (lo, hi), dropout_rng)
                if spl.weight > 0:                               # weight 0: the control only counts pairs
                    loss = loss + spl.weight * s_loss
                sums["spl"] += float(s_loss.detach())
                sums["pairs"] += n_pairs
            check_finite_loss(loss, "reward train" if spl is None else "reward spl", step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr_used = float(opt.param_groups[0]["lr"])             # lr_at(step): the rate of this step
            opt.step()
            schedule.step()
            step += 1
            bar.update(1)
            sums["loss"] += float(loss.detach())
            sums["nce"] += float(nce.detach())
            sums["batches"] += 1
        if dist.world_size() > 1:  # the SPL term is per rank: log the mean over ranks
            keys = ("loss", "spl")
            mean = dist.all_reduce_mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device))
            sums.update({k: float(v) for k, v in zip(keys, mean.tolist())})
        nb = max(1, sums["batches"])
        row = {"epoch": epoch + 1, "loss": sums["loss"] / nb, "infonce": sums["nce"] / nb,
               "logit_scale": float(reward.logit_scale().detach()), "seconds": time.perf_counter() - start,
               "lr": lr_used}
        if spl is not None:
            row.update({"spl_loss": sums["spl"] / nb, "mined_pairs": sums["pairs"],
                        "texts_seen": sums["batches"] * batch_size})
        history.append(row)
        bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.4g}")
        if dist.is_main() and bar.disable:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        elapsed += row["seconds"]
        done = epoch + 1
        if checkpoints is not None and dist.is_main() and checkpoints.due(done, epochs):
            save_checkpoint(checkpoints.run_dir, reward.state_dict(), opt,
                            {"epoch": done, "step": step, "history": history, "elapsed": elapsed},
                            scheduler=schedule, config=saved)
    bar.close()
    reward.eval()
    return history


def _resumed(ckpt) -> tuple[list, int, int, float]:
    """(history, optimiser steps done, epochs done, seconds) of a loaded checkpoint."""
    state = ckpt.state
    if not isinstance(state["history"], list) or not all(isinstance(state[k], int) for k in ("epoch", "step")):
        raise UserError(f"{ckpt.path / 'state.json'}: damaged checkpoint state (epoch, step or history); remove "
                        f"{ckpt.path} to resume from the start")
    return list(state["history"]), state["step"], state["epoch"], float(state["elapsed"])


def _spl_term(reward: Reward, batch: MotionBatch, positions: torch.Tensor, m: torch.Tensor, c: torch.Tensor,
              scale: torch.Tensor, t, spl: SPLConfig, gallery: TrainGallery | None, device,
              rows: tuple[int, int] | None = None, dropout_rng: Callable | None = None):
    """(SPL loss of this rank's rows ``rows`` of the global batch, number of pairs mined in the whole batch).

    ``m``/``c`` are the global batch's embeddings. Pairs are mined for the whole batch on every rank (the losers'
    items and noise are drawn alike everywhere); each rank's loss covers the captions of its rows, divided by
    its number of rows. The loss is 0 with no graph work when the weight is 0.
    """
    lo, hi = rows if rows is not None else (0, len(batch))
    if spl.mode == "official":                                   # the authors' loss: every caption of the batch
        if (lo, hi) != (0, len(batch)):
            raise UserError("spl mode official: not available under torchrun (the released loss is per batch)")
        loss, targets = official_spl_loss(c @ m.T, k=spl.k, threshold=spl.threshold, temperature=spl.temperature)
        return (loss if spl.weight > 0 else loss.detach() * 0), len(targets)
    if gallery is None:                                          # in-batch gallery
        scores = scale * c @ m.T                                 # (texts, motions) reward matrix
        pairs = mine_pairs(scores.detach(), k=spl.k)
        if spl.weight == 0:
            return scores.sum().detach() * 0, len(pairs)
        if (lo, hi) == (0, len(batch)):
            return spl_loss(scores, pairs), len(pairs)
        keep = (pairs.rows >= lo) & (pairs.rows < hi)
        if not bool(keep.any()):
            return scores.sum() * 0.0, len(pairs)
        r_w, r_l = scores[pairs.rows[keep], pairs.winners[keep]], scores[pairs.rows[keep], pairs.losers[keep]]
        return preference_kl(r_w, r_l).sum() / (hi - lo), len(pairs)
    with torch.no_grad():
        scores = scale * c @ gallery.embeddings.T                # (texts, all train motions)
        ignore = gallery.same_caption_mask(batch.captions, device, c, spl.dup_threshold)
        pairs = mine_pairs(scores, targets=positions.to(device), k=spl.k, ignore=ignore)
    if len(pairs) == 0 or spl.weight == 0:
        return m.sum().detach() * 0, len(pairs)
    losers = gallery.motions(pairs.losers, device)
    t_rows = None if t is None else t[pairs.rows]
    noise = None if t_rows is None else torch.randn_like(losers.features)
    keep = ((pairs.rows >= lo) & (pairs.rows < hi)).nonzero(as_tuple=True)[0]
    if len(keep) == 0:
        return m.sum() * 0.0, len(pairs)
    x_l = losers.features[keep]
    if t_rows is not None:
        x_l = noise_motion(x_l, t_rows[keep], reward.alphas_cumprod, noise[keep])
    with (dropout_rng(1) if dropout_rng is not None else contextlib.nullcontext()):
        m_l = reward.embed_motion(x_l, losers.mask[keep], t=None if t_rows is None else t_rows[keep])
    r_rows = pairs.rows[keep]
    c_rows = c[r_rows]
    r_w = scale * (c_rows * m[r_rows]).sum(-1)                   # batch row i is its own ground truth
    r_l = scale * (c_rows * m_l).sum(-1)
    return preference_kl(r_w, r_l).sum() / (hi - lo), len(pairs)


def build_reward(train: HumanMLDataset, cfg: RewardTrainConfig) -> Reward:
    model_cfg = cfg.model
    tokenizer = None
    if not model_cfg.text_model_path:
        tokenizer = tokenizer_for(train, model_cfg.max_words)
        model_cfg = dataclasses.replace(model_cfg, vocab_size=len(tokenizer))
    model_cfg = dataclasses.replace(model_cfg, feat_dim=int(train.frames.shape[-1]))
    cfg.model = model_cfg
    return Reward(model_cfg, tokenizer)


def warm_start(start: Reward, cfg: RewardTrainConfig) -> Reward:
    """A copy of the trained reward ``start`` to train further, noise-aware when ``cfg.model.noise_aware``.

    Every weight is copied. A noise-aware reward R(x_t, t, c) started from a plain R(x, c) gets a timestep MLP whose
    output layer starts at zero, so before training R(x_t, t, c) = R(x_t, c) for every t and the InfoNCE epochs on
    noised motions only learn what the noise level changes. ``cfg.model`` becomes ``start``'s model config (its
    vocabulary and sizes) with ``noise_aware`` and ``schedule`` taken from ``cfg``.
    """
    noise_aware = cfg.model.noise_aware
    if start.cfg.noise_aware and not noise_aware:
        raise UserError("--init: the reward to start from is noise-aware; continue it with --noise-aware")
    if start.cfg.noise_aware and noise_aware and start.cfg.schedule != cfg.model.schedule:
        raise UserError(f"--init: the reward to start from was trained on the {start.cfg.schedule} schedule, "
                        f"not {cfg.model.schedule}")
    cfg.model = dataclasses.replace(start.cfg, noise_aware=noise_aware, schedule=cfg.model.schedule)
    reward = Reward(cfg.model, start.tokenizer)
    missing, unexpected = reward.load_state_dict(start.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("motion_encoder.time_mlp.") for k in missing), (missing, unexpected)
    if missing:                                       # plain -> noise-aware: the time embedding starts at zero
        out_layer = reward.motion_encoder.time_mlp[-1]
        torch.nn.init.zeros_(out_layer.weight)
        torch.nn.init.zeros_(out_layer.bias)
    return reward


def train_reward(train, train_idx, cfg: RewardTrainConfig, device, log: Callable[[str], None] = print,
                 seed: int = 0, init: Reward | None = None, progress: bool = True,
                 checkpoints: Checkpointing | None = None):
    """Train a reward with InfoNCE (noise-aware if ``cfg.model.noise_aware``); returns (reward, history).

    ``init``: a trained reward to start from (:func:`warm_start`); else a fresh one. ``checkpoints``: see
    :func:`_run_epochs` (a run stopped early has fewer than ``cfg.epochs`` rows of history).
    """
    reward = (warm_start(init, cfg) if init is not None else build_reward(train, cfg)).to(device)
    history = _run_epochs(reward, train, train_idx, cfg, device, cfg.epochs, cfg.batch_size, cfg.lr,
                          cfg.warmup_steps, None, log, seed=seed, progress=progress, checkpoints=checkpoints)
    return reward, history


def refine_spl(reward: Reward, train, train_idx, cfg: RewardTrainConfig, spl: SPLConfig, device,
               log: Callable[[str], None] = print, seed: int = 0, progress: bool = True,
               checkpoints: Checkpointing | None = None) -> list[dict]:
    """Continue training with L_InfoNCE + weight · L_SPL; the history logs mined pairs per epoch."""
    return _run_epochs(reward, train, train_idx, cfg, device, spl.epochs, spl.batch_size, spl.lr,
                       warmup=0, spl=spl, log=log, seed=seed, progress=progress, checkpoints=checkpoints)


# ----------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def embed_split(reward: Reward, dataset, indices: Sequence[int], device, t: int = 0, noise_seed: int = 0,
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(motion embeddings, text embeddings) of a split; motions noised to level ``t`` (fixed noise seed)."""
    reward.eval()
    g = torch.Generator().manual_seed(noise_seed)
    ms, cs = [], []
    for batch in _batches(dataset, indices, batch_size, shuffle=False, drop_last=False):
        batch = batch.to(device)
        x = batch.features
        tt = torch.full((len(batch),), int(t), dtype=torch.long, device=device)
        if t > 0:
            noise = torch.randn(x.shape, generator=g).to(device)
            x = noise_motion(x, tt, reward.alphas_cumprod, noise) * batch.mask[..., None]
        ms.append(reward.embed_motion(x, batch.mask, t=tt).cpu())
        cs.append(_text_side(reward, batch, device)[0].cpu())
    return torch.cat(ms), torch.cat(cs)


def evaluate_reward(reward: Reward, dataset, indices: Sequence[int], device, timesteps: Sequence[int] = (0,),
                    batch: int = 32, seed: int = 0) -> dict:
    """Retrieval metrics at each noise level: ``{"t=0": {"all": {...}, "batch32": {...}}, ...}``."""
    out = {}
    for t in timesteps:
        m, c = embed_split(reward, dataset, indices, device, t=t, noise_seed=seed)
        out[f"t={t}"] = {"all": retrieval_metrics(m, c),
                         f"batch{batch}": batched_retrieval_metrics(m, c, batch_size=batch, seed=seed)}
    return out
