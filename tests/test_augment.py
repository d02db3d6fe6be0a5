"""Tests for training/augment.py and its use by the loss."""

import numpy as np
import pytest
import torch

from training import augment
from training.loss import StyleGAN2Loss


def _images(n=64, c=2, h=16, w=12, seed=0):
    # Strictly positive pixels, so the zero fill is recognisable.
    return torch.rand([n, c, h, w], generator=torch.Generator().manual_seed(seed)) + 0.5


def _shifted(img, dy, dx):
    """Reference: ``img`` (C, H, W numpy) moved down by dy and right by dx, zeros shifted in."""
    out = np.zeros_like(img)
    H, W = img.shape[1:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = img[:, max(-dy, 0):H - max(dy, 0),
                                                                       max(-dx, 0):W - max(dx, 0)]
    return out


def test_parse_policy():
    assert augment.parse_policy(None) == ()
    assert augment.parse_policy('none') == ()
    assert augment.parse_policy('') == ()
    assert augment.parse_policy('translation') == ('translation',)
    assert augment.parse_policy(' cutout , translation') == ('cutout', 'translation')
    for bad in ('flip', 'translation,translation', 'translation,', 'color'):
        with pytest.raises(ValueError, match='comma-separated subset'):
            augment.parse_policy(bad)


def test_translation_is_a_whole_pixel_shift_within_range():
    x = _images()
    y = augment.translate(x, 3, generator=torch.Generator().manual_seed(0))
    ry = rx = 3
    seen = set()
    for img, out in zip(x.numpy(), y.numpy()):
        matches = [(dy, dx) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)
                   if np.array_equal(out, _shifted(img, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 20  # Each image draws its own offset.
    assert {dy for dy, _ in seen} == set(range(-ry, ry + 1))
    assert {dx for _, dx in seen} == set(range(-rx, rx + 1))
    assert augment.translate(x, 0) is x
    # The loss's policy shifts by up to an eighth of the image size: 4 empty rows at most at 32 px.
    torch.manual_seed(0)
    z = augment.augment(torch.ones(500, 1, 32, 32), ('translation',))
    assert int((z == 0).all(dim=3).sum(dim=2).max()) == 4


def test_cutout_fills_one_clipped_rectangle_per_image():
    x = _images(n=200)
    torch.manual_seed(1)
    y = augment.cutout(x, ratio=0.5, fill=-3.0)
    sizes = set()
    for img, out in zip(x.numpy(), y.numpy()):
        changed = (out != img).any(axis=0)
        rows, cols = np.nonzero(changed)
        assert len(rows) > 0
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert changed[r0:r1, c0:c1].all() and changed.sum() == (r1 - r0) * (c1 - c0)  # One rectangle.
        assert (out[:, changed] == -3.0).all() and np.array_equal(out[:, ~changed], img[:, ~changed])
        assert r1 - r0 <= 8 and c1 - c0 <= 6
        sizes.add((r1 - r0, c1 - c0))
    assert (8, 6) in sizes and len(sizes) > 5  # Whole rectangles inside, clipped ones at the borders.


def test_augment_is_seeded_and_differentiable():
    x = _images(n=4, h=8, w=8).double()
    policy = augment.parse_policy('translation,cutout')

    def run(inp):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return augment.augment(inp, policy)

    assert torch.equal(run(x), run(x))
    assert not torch.equal(run(x), x)
    assert torch.autograd.gradcheck(run, (x.clone().requires_grad_(True),))
    assert torch.autograd.gradgradcheck(run, (x.clone().requires_grad_(True),))


class _RecordingD(torch.nn.Module):
    """A discriminator that remembers its inputs: a fixed linear score of the pixels."""

    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
        self.inputs = []

    def forward(self, img, c, update_emas=False):
        self.inputs.append(img.detach().clone())
        return (img * self.weight).sum(dim=[1, 2, 3])[:, None]


@pytest.mark.parametrize('policy', [None, 'translation,cutout'])
def test_loss_shows_d_augmented_reals_and_takes_r1_through_it(policy):
    real = _images(n=8, c=1, h=8, w=8)  # Pixels >= 0.5: a 0 seen by D is the fill.
    D = _RecordingD(real.shape[1:])
    loss = StyleGAN2Loss(G=torch.nn.Linear(1, 1), D=D, r1_gamma=1, augment=policy)
    torch.manual_seed(0)
    stats = loss.accumulate_gradients('Dreg', real, torch.zeros(8, 0), None, None, gain=1, cur_nimg=0)
    seen = D.inputs[-1]
    assert torch.equal(seen, real) == (policy is None)
    # Each pixel D sees is the fill or one real pixel, and each real pixel lands at most once, so with
    # D(x) = sum(w * aug(x)) the R1 penalty ||d D / d x||^2 is the sum of w^2 over the pixels that carry a real one.
    expected = (D.weight.detach().square() * (seen != 0)).sum(dim=[1, 2, 3])
    torch.testing.assert_close(stats['Loss/r1_penalty'], expected)
    if policy is not None:
        assert (expected < D.weight.detach().square().sum()).all()
    assert D.weight.grad is not None and torch.isfinite(D.weight.grad).all()
