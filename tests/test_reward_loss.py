"""The Bradley-Terry + centering loss against values derived by hand."""

import math

import pytest
import torch

from perm.reward import bradley_terry_loss, pair_accuracy


def test_bt_loss_by_hand():
    """r+ = [2, 0], r- = [0, 0]: BT = (log(1+e^-2) + log 2)/2 = (0.126928 + 0.693147)/2 = 0.410038."""
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    assert bradley_terry_loss(rc, rr).item() == pytest.approx((math.log1p(math.exp(-2)) + math.log(2)) / 2, rel=1e-6)
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(0.410038, abs=1e-6)


def test_centering_term_by_hand():
    """alpha = 0.1, (r+ + r-)^2 = [4, 0] -> mean 2 -> adds 0.2 to the BT part."""
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    assert bradley_terry_loss(rc, rr, 0.1).item() == pytest.approx(0.410038 + 0.2, abs=1e-6)


def test_bt_is_shift_invariant_but_centering_is_not():
    rc, rr = torch.tensor([1.0, -0.5]), torch.tensor([0.3, 0.2])
    assert bradley_terry_loss(rc + 5, rr + 5).item() == pytest.approx(bradley_terry_loss(rc, rr).item(), rel=1e-6)
    assert bradley_terry_loss(rc + 5, rr + 5, 0.01).item() > bradley_terry_loss(rc, rr, 0.01).item()


def test_centering_gradient_pulls_toward_zero():
    """d/dr+ of alpha*(r+ + r-)^2 = 2*alpha*(r+ + r-) / B -> with r+ = r- = 3, B = 1, alpha = 0.5: 6 (plus BT's -0.5)."""
    rc = torch.tensor([3.0], requires_grad=True)
    rr = torch.tensor([3.0], requires_grad=True)
    bradley_terry_loss(rc, rr, 0.5).backward()
    assert rc.grad.item() == pytest.approx(-0.5 + 6.0)
    assert rr.grad.item() == pytest.approx(0.5 + 6.0)


def test_pair_accuracy_ties_count_half():
    import numpy as np

    acc, se = pair_accuracy(np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 0.0]))
    assert acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert se == pytest.approx(np.std([1, 0, 0.5, 1], ddof=1) / 2)
