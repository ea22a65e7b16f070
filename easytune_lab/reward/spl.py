"""Self-refinement Preference Learning (SPL): preference pairs mined by the reward's own retrieval errors.

For each caption c_i of a batch, the reward ranks the N motions of the batch (or a gallery) by R(x_j, c_i).
If the ground-truth motion x_i is among the top-k, the reward already retrieves it and the caption is
skipped. Otherwise the pair (x_w = x_i) ≻ (x_l = the best-scoring wrong motion) is formed and the reward is
trained to prefer the winner by minimising

    KL(Q ‖ P),  P = softmax(R(x_w, c), R(x_l, c)),  Q = (1, 0),

which, since Q log Q = 0, equals −log P_w = softplus(R_l − R_w) (a Bradley–Terry / DPO-style loss on the
reward margin). No extra annotation is needed: the data's own pairing is the preference.

Why skipped captions contribute exactly zero gradient: they are excluded from the sum — the loss is
``Σ_i m_i · KL_i / B`` with m_i = 0 for a caption whose ground truth is in the top-k, and rows with m_i = 0
are never indexed into the computation, so no term of theirs exists in the graph. This is *not* the same as
giving them a target Q = (½, ½): ∂KL((½,½) ‖ P)/∂R_w = P_w − ½, which is zero only when R_w = R_l and would
otherwise pull an already-correct ranking back toward a tie. Excluding them is the right reading of "no
preference is formed".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MinedPairs:
    """Which captions formed a pair, and their winner/loser motion indices."""

    rows: torch.Tensor      # (P,) caption indices whose ground truth is outside the top-k
    winners: torch.Tensor   # (P,) ground-truth motion indices
    losers: torch.Tensor    # (P,) best-scoring wrong motion indices

    def __len__(self) -> int:
        return int(self.rows.numel())


@torch.no_grad()
def mine_pairs(scores: torch.Tensor, targets: torch.Tensor | None = None, k: int = 10,
               ignore: torch.Tensor | None = None) -> MinedPairs:
    """Mine SPL pairs from a (N_text, N_motion) reward matrix.

    ``targets[i]`` is the index of caption i's ground-truth motion (default: i, the diagonal). A caption
    forms a pair iff its ground truth is not in the top-k by score, i.e. iff at least k wrong motions score
    strictly higher than it (ties are resolved in the ground truth's favour).
    The loser is the highest-scoring motion other than the ground truth. ``ignore`` (bool, same shape) marks
    motions that are neither ground truth nor wrong — e.g. other motions carrying the very same caption — and
    are left out of both the count and the choice of loser.
    """
    n_text, n_motion = scores.shape
    if targets is None:
        targets = torch.arange(n_text, device=scores.device)
    targets = targets.to(scores.device).long()
    if ignore is not None:
        ignore = ignore.to(scores.device).bool().scatter(1, targets[:, None], False)
        scores = scores.masked_fill(ignore, float("-inf"))
    gt = scores.gather(1, targets[:, None])
    higher = (scores > gt).sum(1)                       # wrong motions strictly above the ground truth
    mined = higher >= min(k, n_motion)
    wrong = scores.scatter(1, targets[:, None], float("-inf"))
    losers = wrong.argmax(1)
    rows = mined.nonzero(as_tuple=True)[0]
    return MinedPairs(rows=rows, winners=targets[rows], losers=losers[rows])


def spl_loss(scores: torch.Tensor, pairs: MinedPairs, normaliser: int | None = None) -> torch.Tensor:
    """Σ over mined pairs of KL((1,0) ‖ softmax(R_w, R_l)), divided by ``normaliser`` (default: N_text).

    ``scores`` must carry the graph (it is the reward matrix τ · E_T E_Mᵀ); skipped captions are not
    indexed, so their gradient is exactly zero (see the module docstring).
    """
    n = scores.shape[0] if normaliser is None else normaliser
    if len(pairs) == 0:
        return scores.sum() * 0.0
    r_w = scores[pairs.rows, pairs.winners]
    r_l = scores[pairs.rows, pairs.losers]
    return preference_kl(r_w, r_l).sum() / max(n, 1)


def preference_kl(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    """Per pair KL(Q ‖ softmax(R_w, R_l)) with Q = (1, 0); equals softplus(R_l − R_w)."""
    log_p = F.log_softmax(torch.stack([r_w, r_l], dim=-1), dim=-1)
    q = torch.tensor([1.0, 0.0], device=r_w.device, dtype=r_w.dtype)
    # KL(Q‖P) = Σ Q log Q − Σ Q log P, with 0·log 0 = 0
    return (torch.xlogy(q, q) - q * log_p).sum(-1)


#: SPL as the authors' ``train_spm.py`` (``compute_finetune_loss``) does it, for ``SPLConfig(mode="official")``.
OFFICIAL_K = 10
OFFICIAL_THRESHOLD = 0.8
OFFICIAL_TEMPERATURE = 0.1


@dataclass
class OfficialTargets:
    """Per caption of an in-batch (N, N) cosine matrix: the top-1 motion and whether the caption counts as correct."""

    top1: torch.Tensor      # (N,) index of the best-scoring motion (the ground truth itself when it ranks first)
    correct: torch.Tensor   # (N,) bool: ground truth in the top-k, or any cosine of the row above the threshold

    def __len__(self) -> int:   # captions that get the "prefer the ground truth" target (0, 1)
        return int((~self.correct).sum())


@torch.no_grad()
def official_targets(cosine: torch.Tensor, k: int = OFFICIAL_K, threshold: float = OFFICIAL_THRESHOLD
                     ) -> OfficialTargets:
    """Which captions of a square (texts, motions) cosine matrix the authors' SPL counts as correct (diagonal =
    ground truth): its ground truth is among the top ``k`` motions of the batch, or any cosine of its row (not
    only the ground truth's) exceeds ``threshold``."""
    n = cosine.shape[0]
    top = cosine.topk(min(k, cosine.shape[1]), dim=1).indices
    in_top = (top == torch.arange(n, device=cosine.device)[:, None]).any(1)
    return OfficialTargets(top1=top[:, 0], correct=in_top | (cosine > threshold).any(1))


def official_spl_loss(cosine: torch.Tensor, k: int = OFFICIAL_K, threshold: float = OFFICIAL_THRESHOLD,
                      temperature: float = OFFICIAL_TEMPERATURE) -> tuple[torch.Tensor, OfficialTargets]:
    """The authors' SPL loss on an in-batch cosine matrix ``cosine = Ê_T Ê_Mᵀ`` (carrying the graph).

    Per caption i, two logits ``[s(top-1 motion), s(ground truth)]`` and a target
    ``Q = (½, ½)`` when the caption counts as correct (:func:`official_targets`), ``Q = (0, 1)`` otherwise;
    the loss is the batch mean of KL(Q ‖ softmax(logits)). As in the released code the cosine is divided by the
    temperature twice (``sim / τ`` and then ``softmax(logits / τ)``), an effective scale of 1/τ² = 100 at τ = 0.1.

    Differences from :func:`spl_loss` (ours): every caption of the batch contributes (a correct one with the tie
    target), the gallery is the batch, and the "loser" is the top-1 motion, which is the ground truth itself when
    retrieval is right; then both logits are one number and the gradient is exactly zero. A correct caption whose
    ground truth ranks 2..k is pulled toward a tie with the top-1 motion, i.e. the ground truth is lifted: the
    near misses that :func:`mine_pairs` skips are exactly the captions this loss trains on.
    """
    targets = official_targets(cosine.detach(), k, threshold)
    n = cosine.shape[0]
    rows = torch.arange(n, device=cosine.device)
    logits = torch.stack([cosine[rows, targets.top1], cosine[rows, rows]], dim=1) / temperature / temperature
    q = torch.zeros(n, 2, dtype=cosine.dtype, device=cosine.device)
    q[targets.correct] = 0.5
    q[~targets.correct, 1] = 1.0
    log_p = F.log_softmax(logits, dim=1)
    kl = (torch.xlogy(q, q) - q * log_p).sum(1)
    return kl.mean(), targets
