"""Training the MNIST classifier of metrics/mnist_classifier.py: data split, outlier images, the training loop.

Used by train_classifier.py (how pretrained/mnist_classifier.pt was made); the metrics only load and run the
exported network, so this code sits beside the script, not in metrics/.
"""

import numpy as np
import torch
import torch.nn.functional as F

from metrics.mnist_classifier import MNISTClassifier
from training import augment


def split_train_val(num_items, num_val, seed):
    """Seeded split of ``range(num_items)``: (train indices, validation indices), each sorted.

    The validation set is the first ``num_val`` items of ``np.random.RandomState(seed).permutation``.
    """
    if not 0 < num_val < num_items:
        raise ValueError(f'the validation set must have between 1 and {num_items - 1} items, got {num_val}')
    order = np.random.RandomState(seed).permutation(num_items)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


OUTLIER_KINDS = ('noise', 'blobs', 'pixel_shuffle', 'patch_shuffle', 'overlay', 'blank')


def make_outliers(digits, labels, generator=None):
    """Non-digit images made from a batch of digits, one per digit, of a random kind each.

    Training the classifier to answer these with uniform probabilities ("outlier exposure",
    Hendrycks et al., ICLR 2019) is what keeps its confidence low on images that are not digits:
    without it, uniform noise gets a top class probability above 0.9.

    Kinds (:data:`OUTLIER_KINDS`): uniform noise; smooth random blobs with sharp edges; the digit's
    pixels randomly permuted; the digit's 8x8 patches randomly permuted; the digit overlaid with a
    digit of another class (where the batch has none, noise instead); a constant image.

    Parameters
    ----------
    digits : float32 tensor [N, 1, H, W] in 0..255, H and W multiples of 8
    labels : int tensor [N]
    generator : torch.Generator or None

    Returns
    -------
    outliers : float32 tensor [N, 1, H, W] in 0..255
    """
    n, _c, h, w = digits.shape
    device = digits.device

    def rand(*shape):
        return torch.rand(shape, generator=generator).to(device)

    noise = rand(n, 1, h, w) * 255
    blobs = F.interpolate(rand(n, 1, h // 4, w // 4), size=[h, w], mode='bilinear', align_corners=False)
    blobs = ((blobs - 0.3 - 0.4 * rand(n, 1, 1, 1)) * 2000).clamp(0, 255)
    flat = digits.flatten(1)
    pixel_shuffle = flat.gather(1, rand(n, h * w).argsort(dim=1)).reshape(digits.shape)
    patches = digits.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)
    order = rand(n, patches.shape[1]).argsort(dim=1)
    patches = patches.gather(1, order[:, :, None].expand(-1, -1, 64))
    patch_shuffle = patches.reshape(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(digits.shape)
    partner = torch.roll(torch.arange(n, device=device), 1)
    overlay = torch.maximum(digits, digits[partner])
    overlay = torch.where((labels.to(device) != labels.to(device)[partner])[:, None, None, None], overlay, noise)
    blank = rand(n, 1, 1, 1).expand(n, 1, h, w) * 255

    candidates = torch.stack([noise, blobs, pixel_shuffle, patch_shuffle, overlay, blank])
    kind = torch.randint(0, len(OUTLIER_KINDS), [n], generator=generator).to(device)
    return candidates[kind, torch.arange(n, device=device)]


def balanced_subset(labels, indices, per_class):
    """The first ``per_class`` entries of ``indices`` (in their order) of each class of ``labels[indices]``, sorted."""
    labels = np.asarray(labels)
    chosen = [idx for cls in np.unique(labels[indices]) for idx in [i for i in indices if labels[i] == cls][:per_class]]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def train_classifier(images, labels, val_images=None, val_labels=None, epochs=20, batch_size=64, lr=1e-3,
                     max_shift=2, outlier_weight=0.2, seed=0, device='cpu', model_kwargs=None, progress=None):
    """Train an :class:`MNISTClassifier` with Adam, a cosine learning-rate decay, random shifts and outliers.

    The loss is the cross-entropy on the digits plus ``outlier_weight`` times the cross-entropy
    between the uniform distribution and the predictions on half a batch of :func:`make_outliers`.

    Parameters
    ----------
    images : uint8 array-like [N, C, H, W]
    labels : int array-like [N]
        Classes 0..9.
    val_images, val_labels : optional
        Measured after every epoch.
    epochs, batch_size, lr
        Optimisation; ``lr`` decays to 0 along a cosine over all epochs.
    max_shift : int, default=2
        Augmentation: each training image is translated by up to this many pixels.
    outlier_weight : float, default=0.2
        Weight of the outlier term; 0 trains on digits alone.
    seed : int, default=0
        Seeds the initialisation, the batch order and the augmentation.
    model_kwargs : dict or None
        Passed to :class:`MNISTClassifier`.
    progress : callable or None
        Called after each epoch with (epoch, mean training loss, validation accuracy or None).

    Returns
    -------
    model : MNISTClassifier
        In eval mode, on ``device``.
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``val_accuracy`` (None without validation data).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MNISTClassifier(**(model_kwargs or {})).to(device)
    images = torch.as_tensor(np.asarray(images)).to(torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            x = augment.translate(images[batch], max_shift, generator=generator).to(device)
            y = labels[batch].to(device)
            if outlier_weight > 0:
                half = (len(batch) + 1) // 2
                x = torch.cat([x, make_outliers(x[:half], y[:half], generator)])
            logits = model.logits(x)
            loss = F.cross_entropy(logits[:len(batch)], y)
            if outlier_weight > 0:
                loss = loss - outlier_weight * F.log_softmax(logits[len(batch):], dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(batch)
        model.eval()
        val_accuracy = None
        if val_images is not None:
            val_accuracy = accuracy(model, torch.as_tensor(np.asarray(val_images)).to(device), val_labels)
        history.append(dict(epoch=epoch + 1, loss=total_loss / len(images), val_accuracy=val_accuracy))
        if progress is not None:
            progress(epoch + 1, history[-1]['loss'], val_accuracy)
    return model.eval(), history


@torch.no_grad()
def accuracy(classifier, images, labels, batch_size=500):
    """Fraction of ``images`` (uint8 NCHW) whose most probable class is ``labels`` (int)."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    predictions = torch.cat([classifier.logits(torch.as_tensor(images[i:i + batch_size])).argmax(dim=1).cpu()
                             for i in range(0, len(images), batch_size)])
    return float((predictions == labels).to(torch.float64).mean())
