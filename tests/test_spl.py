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
