"""SPL: pair mining against a brute-force rule, exact zero gradient of skipped captions, the KL value."""

import math

import pytest
import torch

from easytune_lab.reward.spl import mine_pairs, spl_loss


def brute_force_pairs(scores: torch.Tensor, k: int):
    """The rule written the slow way: sort each row, look for the ground truth among the first k."""
    rows, losers = [], []
    for i in range(scores.shape[0]):
        row = scores[i].tolist()
        # ties resolved in the ground truth's favour: it sorts before equal-scoring wrong motions
        order = sorted(range(len(row)), key=lambda j: (-row[j], 0 if j == i else 1))
        if i not in order[:k]:
            rows.append(i)
            losers.append(max((j for j in range(len(row)) if j != i), key=lambda j: row[j]))
    return rows, losers


@pytest.mark.parametrize("seed,n,k", [(0, 40, 10), (1, 64, 10), (2, 25, 3), (3, 12, 1)])
def test_mined_pairs_match_brute_force(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    # a partly informative score matrix so that both outcomes occur
    scores = torch.randn(n, n, generator=g) + 1.5 * torch.eye(n)
    scores[0, 5] = scores[0, 0]  # an exact tie with the ground truth
    pairs = mine_pairs(scores, k=k)
    rows, losers = brute_force_pairs(scores, k)
    assert pairs.rows.tolist() == rows
    assert pairs.losers.tolist() == losers
    assert pairs.winners.tolist() == rows
    assert 0 < len(rows) < n  # the test exercises both mined and skipped captions


def test_mining_with_explicit_targets_and_gallery():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3],
                           [0.8, 0.2, 0.7, 0.6]])
    pairs = mine_pairs(scores, targets=torch.tensor([2, 1]), k=1)
    # caption 0: ground truth motion 2 (0.5) is below motion 1 (0.9) -> pair (2 > 1)
    # caption 1: ground truth motion 1 (0.2) is last -> pair (1 > 0)
    assert pairs.rows.tolist() == [0, 1]
    assert pairs.winners.tolist() == [2, 1]
    assert pairs.losers.tolist() == [1, 0]
    assert len(mine_pairs(scores, targets=torch.tensor([2, 1]), k=4)) == 0


def test_skipped_captions_get_exactly_zero_gradient():
    g = torch.Generator().manual_seed(0)
    n = 30
    scores = (torch.randn(n, n, generator=g) + 2.0 * torch.eye(n)).requires_grad_(True)
    pairs = mine_pairs(scores.detach(), k=5)
    loss = spl_loss(scores, pairs)
    loss.backward()
    mined = set(pairs.rows.tolist())
    assert 0 < len(mined) < n
    for i in range(n):
        row_grad = scores.grad[i]
        if i in mined:
            nz = row_grad.nonzero().flatten().tolist()
            assert sorted(nz) == sorted({i, int(pairs.losers[pairs.rows.tolist().index(i)])})
            assert row_grad[i] < 0 < row_grad[nz[0] if nz[0] != i else nz[1]]
        else:
            assert torch.equal(row_grad, torch.zeros(n))


def test_kl_value_is_softplus_of_the_margin():
    scores = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.5, 2.5], [0.0, 0.0, 4.0]], requires_grad=True)
    pairs = mine_pairs(scores.detach(), k=1)
    assert pairs.rows.tolist() == [0, 1]
    loss = spl_loss(scores, pairs, normaliser=1)
    expected = math.log1p(math.exp(3.0 - 1.0)) + math.log1p(math.exp(2.5 - 0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the half-half target would NOT give zero gradient: d KL((.5,.5)||P) / dR_w = P_w - 0.5 != 0
    r = torch.tensor([2.0, 0.0], requires_grad=True)
    logp = torch.log_softmax(r, 0)
    (-(0.5 * logp).sum()).backward()
    assert abs(r.grad[0].item()) > 0.1


def test_no_pairs_gives_zero_loss_with_graph():
    scores = (10 * torch.eye(8)).requires_grad_(True)
    pairs = mine_pairs(scores.detach(), k=1)
    assert len(pairs) == 0
    loss = spl_loss(scores, pairs)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(scores.grad, torch.zeros(8, 8))


def test_ignored_motions_are_neither_winners_nor_losers():
    g = torch.Generator().manual_seed(5)
    n_text, n_motion, k = 20, 50, 4
    scores = torch.randn(n_text, n_motion, generator=g)
    targets = torch.randint(n_motion, (n_text,), generator=g)
    ignore = torch.rand(n_text, n_motion, generator=g) < 0.3
    pairs = mine_pairs(scores, targets=targets, k=k, ignore=ignore)
    rows, losers = [], []
    for i in range(n_text):
        gt = int(targets[i])
        wrong = [j for j in range(n_motion) if j != gt and not ignore[i, j]]
        if sum(1 for j in wrong if scores[i, j] > scores[i, gt]) >= k:
            rows.append(i)
            losers.append(max(wrong, key=lambda j: scores[i, j].item()))
    assert pairs.rows.tolist() == rows and pairs.losers.tolist() == losers
    assert pairs.winners.tolist() == targets[rows].tolist()
    assert not ignore[pairs.rows, pairs.losers].any()
    assert 0 < len(rows) < n_text


# ------------------------------------------------------------------ the authors' SPL (SPLConfig mode "official")
def _cosines(order_of_gt: list[int], n: int = 12, seed: int = 0) -> torch.Tensor:
    """A (n, n) float64 cosine matrix below 0.8 whose caption i ranks its ground truth at ``order_of_gt[i]``
    (1 = first), ties impossible."""
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, n, generator=g, dtype=torch.float64) * 0.5
    for i, rank in enumerate(order_of_gt):
        others = sorted((cos[i, j].item() for j in range(n) if j != i), reverse=True)
        above = others[rank - 2] if rank >= 2 else 0.6
        below = others[rank - 1] if rank - 1 < len(others) else -0.1
        cos[i, i] = (above + below) / 2 if rank >= 2 else 0.7
    return cos.requires_grad_(True)


def test_official_spl_targets_and_the_loss_formula():
    from easytune_lab.reward.spl import official_spl_loss

    ranks = [1, 2, 5, 10, 11, 12, 1, 3, 12, 4, 1, 7]
    cos = _cosines(ranks)
    loss, targets = official_spl_loss(cos, k=10, threshold=0.8, temperature=0.1)
    assert targets.correct.tolist() == [r <= 10 for r in ranks]
    assert len(targets) == sum(r > 10 for r in ranks)
    # independent computation, caption by caption, with the double temperature of the released code
    total = 0.0
    for i, r in enumerate(ranks):
        top1 = int(cos[i].argmax())
        assert int(targets.top1[i]) == top1 and (top1 == i) == (r == 1)
        a, b = float(cos[i, top1].detach()) / 0.01, float(cos[i, i].detach()) / 0.01
        log_pa = a - math.log(math.exp(a - max(a, b)) + math.exp(b - max(a, b))) - max(a, b)
        log_pb = b - math.log(math.exp(a - max(a, b)) + math.exp(b - max(a, b))) - max(a, b)
        total += (0.5 * math.log(0.5) * 2 - 0.5 * (log_pa + log_pb)) if r <= 10 else -log_pb
    assert loss.item() == pytest.approx(total / len(ranks), rel=1e-10)


def test_official_spl_gradient_zero_at_rank_one_and_lifts_near_misses():
    from easytune_lab.reward.spl import official_spl_loss

    ranks = [1, 3, 12, 1, 2, 11, 1, 1, 1, 1, 1, 1]
    cos = _cosines(ranks)
    loss, _ = official_spl_loss(cos)
    (grad,) = torch.autograd.grad(loss, cos)
    diag = grad.diagonal()
    assert diag[0] == 0 and diag[3] == 0 and grad[0].abs().sum() == 0    # right at rank 1: no gradient at all
    assert diag[1] < 0 and diag[4] < 0      # near misses (rank 2-10): descending the loss raises the ground truth
    assert diag[2] < 0 and diag[5] < 0      # misses (rank > 10): the ground truth is preferred
    # ours skips the near misses: mine_pairs forms pairs only for ranks beyond k
    assert mine_pairs(cos.detach(), k=10).rows.tolist() == [2, 5]


def test_official_spl_any_high_cosine_counts_as_correct():
    from easytune_lab.reward.spl import official_targets

    cos = _cosines([12] * 12).detach()
    assert not official_targets(cos).correct[0]
    cos[0, 5] = 0.85                        # another motion above 0.8: the caption counts as correct
    assert official_targets(cos).correct[0]
