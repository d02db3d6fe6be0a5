"""Tests of classifier_training/mnist.py, the training helpers of train_classifier.py."""

import numpy as np
import pytest
import torch

from classifier_training import mnist as mnist_training


def test_split_train_val():
    train, val = mnist_training.split_train_val(100, 10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    again_train, again_val = mnist_training.split_train_val(100, 10, seed=3)
    assert np.array_equal(again_val, val) and np.array_equal(again_train, train)
    assert not np.array_equal(mnist_training.split_train_val(100, 10, seed=4)[1], val)
    with pytest.raises(ValueError):
        mnist_training.split_train_val(10, 10, seed=0)


def test_make_outliers():
    rng = np.random.RandomState(0)
    digits = torch.from_numpy((rng.rand(300, 1, 16, 24) > 0.8).astype(np.float32) * 255)
    labels = torch.from_numpy(rng.randint(0, 10, size=300))
    outliers = mnist_training.make_outliers(digits, labels, torch.Generator().manual_seed(0))
    assert outliers.shape == digits.shape and outliers.dtype == torch.float32
    assert outliers.min() >= 0 and outliers.max() <= 255
    assert not any(torch.equal(outliers[i], digits[i]) for i in range(len(digits)))
    again = mnist_training.make_outliers(digits, labels, torch.Generator().manual_seed(0))
    assert torch.equal(outliers, again)
    # Permutations of the digit's own pixels keep its histogram: some outliers must be such.
    same_pixels = [torch.equal(outliers[i].flatten().sort().values, digits[i].flatten().sort().values)
                   for i in range(len(digits))]
    assert 0 < sum(same_pixels) < len(digits)
    # Constant images are among them too.
    assert any(bool((outliers[i] == outliers[i].flatten()[0]).all()) for i in range(len(digits)))


def test_balanced_subset():
    labels = np.array([0, 1, 0, 1, 2, 0, 2, 1])
    assert mnist_training.balanced_subset(labels, [7, 0, 2, 5, 3, 4], per_class=2).tolist() == [0, 2, 3, 4, 7]
