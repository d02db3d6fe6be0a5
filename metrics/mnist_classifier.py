"""A small MNIST classifier: the offline feature network of the demo metrics, and the digit report.

No Inception or VGG16 weights can be downloaded everywhere this repository runs, so the metrics of
the shipped MNIST generator (FID, KID, precision / recall with ``calc_metrics.py --detector``) use
this network instead. ``pretrained/mnist_classifier.pt`` is its TorchScript export, made by
``python train_classifier.py --data datasets/mnist32.zip --out pretrained/mnist_classifier.pt --seed 0``.

The exported module follows the call convention of NVlabs' detectors: images are uint8 NCHW in
0..255 (float 0..255 also works), grayscale or with the gray repeated to 3 channels (the channels are
averaged), of any size (resized bilinearly to 32x32). It has three methods:

* ``forward(x)`` -> float32 [N, 128]: the penultimate activations, the feature space of FID / KID /
  precision-recall;
* ``probabilities(x)`` -> float32 [N, 10]: softmax class probabilities;
* ``logits(x)`` -> float32 [N, 10].

Numbers measured with it are comparable with each other, not with published (Inception) numbers.

:func:`digit_report` measures whether generated images look like digits: the fraction of images
whose top class probability reaches a threshold, and which classes appear. From the command line::

    python -m metrics.mnist_classifier --network pretrained/mnist32-stylegan2.pkl --num 1000 --seed 0
    python -m metrics.mnist_classifier --data datasets/mnist32.zip     # the real digits, for reference
"""

import contextlib
import json
import os
import sys
import warnings

import click
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sampling import cli

DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  'pretrained', 'mnist_classifier.pt')
NUM_CLASSES = 10

# ----------------------------------------------------------------------------
# The network.


def antialiased_resize_weights(in_size: int, out_size: int) -> torch.Tensor:
    """[out_size, in_size] float32 matrix of one axis of ``F.interpolate(mode='bilinear', antialias=True)``.

    A triangle filter centred on each output pixel, widened by the shrink factor when shrinking, weights
    normalised to sum to one (half-pixel centres, ``align_corners=False``). Written out as a matrix because
    scripting ``F.interpolate`` inlines every mode it knows, and recent torch knows modes whose operators
    older torch cannot load: the shipped TorchScript file must load on any torch from 2.1 on.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    positions = torch.arange(in_size, dtype=torch.float64) + 0.5
    weights = (1 - ((positions[None, :] - centres[:, None]) / support).abs()).clamp(min=0)
    return (weights / weights.sum(dim=1, keepdim=True)).to(torch.float32)


class MNISTClassifier(torch.nn.Module):
    """Three conv blocks (conv 3x3, ReLU, 2x2 max-pool) and two fully connected layers.

    Written to be compiled with ``torch.jit.script``; every method takes raw images (see the module
    docstring) and does its own preprocessing, so that callers need no knowledge of it.

    Parameters
    ----------
    feature_dim : int, default=128
        Width of the penultimate layer, the dimension of the features ``forward`` returns.
    channels : tuple of int, default=(16, 32, 32)
        Output channels of the three conv blocks.
    resolution : int, default=32
        Side the input is resized to; a multiple of 8.
    dropout : float, default=0.25
        Dropout before each fully connected layer (active only in training mode).
    """

    def __init__(self, feature_dim=128, channels=(16, 32, 32), resolution=32, dropout=0.25):
        super().__init__()
        assert resolution % 8 == 0 and len(channels) == 3
        self.resolution = int(resolution)
        self.feature_dim = int(feature_dim)
        layers = []
        in_channels = 1
        for out_channels in channels:
            layers += [torch.nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                       torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            in_channels = out_channels
        self.trunk = torch.nn.Sequential(*layers)
        self.feature_dropout = torch.nn.Dropout(dropout)
        self.fc_features = torch.nn.Linear(in_channels * (resolution // 8) ** 2, feature_dim)
        self.logits_dropout = torch.nn.Dropout(dropout)
        self.fc_logits = torch.nn.Linear(feature_dim, NUM_CLASSES)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images (uint8 or float 0..255, NCHW, C = 1 or 3, any size) -> float32 [N, 1, R, R] in [-1, 1]."""
        if x.dim() != 4:
            raise ValueError('expected NCHW images, got a tensor with ' + str(x.dim()) + ' dimensions')
        if x.shape[1] != 1 and x.shape[1] != 3:
            raise ValueError('expected 1 or 3 channels (NCHW), got ' + str(x.shape[1]))
        x = x.to(torch.float32)
        if x.shape[1] == 3:
            # Grayscale arrives repeated to 3 channels under NVlabs' convention; the mean undoes that.
            x = x.mean(dim=1, keepdim=True)
        if x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            # Antialiasing keeps large images (e.g. 256x256 digits) from aliasing when shrunk 8x.
            rows = antialiased_resize_weights(x.shape[2], self.resolution).to(x.device)
            cols = antialiased_resize_weights(x.shape[3], self.resolution).to(x.device)
            x = rows @ x @ cols.t()
        return x * (1 / 127.5) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, float32 [N, feature_dim]: the metrics' feature space."""
        x = self.trunk(self.prepare(x)).flatten(1)
        return F.relu(self.fc_features(self.feature_dropout(x)))

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, float32 [N, 10]."""
        return self.fc_logits(self.logits_dropout(self.forward(x)))

    @torch.jit.export
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities, float32 [N, 10]."""
        return torch.softmax(self.logits(x), dim=1)

# ----------------------------------------------------------------------------
# Training helpers (used by train_classifier.py).


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
    from training import augment
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


def export_torchscript(model, path):
    """Compile ``model`` with torch.jit.script in eval mode, on the CPU, and write it atomically to ``path``."""
    from sampling.latents import atomic_write
    model = model.eval().requires_grad_(False).cpu()
    scripted = torch.jit.script(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _quiet_jit(), atomic_write(path) as f:
        torch.jit.save(scripted, f)
    return scripted


@contextlib.contextmanager
def _quiet_jit():
    # Recent torch flags torch.jit.save/load as deprecated; TorchScript is still the detectors' format.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit', category=DeprecationWarning)
        yield

# ----------------------------------------------------------------------------
# Using the shipped classifier.


def load_classifier(path=DEFAULT_CLASSIFIER, device='cpu'):
    """Load a TorchScript classifier (by default the shipped one) in eval mode, without gradients.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not a TorchScript file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'classifier not found: {path}; train one with train_classifier.py')
    try:
        with _quiet_jit():
            classifier = torch.jit.load(path, map_location=torch.device(device))
    except RuntimeError as err:
        first_line = (str(err).strip().splitlines() or [''])[0]
        raise ValueError(f'{path} is not a TorchScript classifier ({first_line})') from None
    for param in classifier.parameters():  # ScriptModules have no requires_grad_().
        param.requires_grad_(False)
    return classifier.eval()


@torch.no_grad()
def classify(images, classifier=None, batch_size=256, device=None):
    """Class probabilities of uint8 NCHW images (numpy or torch), float32 numpy [N, 10].

    ``classifier`` defaults to the shipped one (loaded on ``device``, default CPU).
    """
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValueError(f'expected uint8 images of shape [N, 1 or 3, H, W], got {list(shape)}')
    if classifier is None:
        classifier = load_classifier(device=device or 'cpu')
    if device is None:
        device = _module_device(classifier)
    probs = [classifier.probabilities(torch.as_tensor(np.asarray(images[i:i + batch_size])).to(device)).cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(probs).to(torch.float32).numpy() if probs else np.zeros([0, NUM_CLASSES], np.float32)


def summarize_probabilities(probs, threshold=0.9):
    """The digit report of class probabilities [N, K]; see :func:`digit_report` for the fields."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f'expected probabilities of shape [N, K] with N > 0, got {list(probs.shape)}')
    top = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    # Compared in the probabilities' own precision, so that a float32 0.9 reaches threshold=0.9.
    confident = top >= np.asarray(threshold, dtype=probs.dtype)
    histogram = np.bincount(predicted, minlength=probs.shape[1])
    return dict(
        num_images=int(probs.shape[0]),
        threshold=float(threshold),
        confident_fraction=float(confident.mean()),
        mean_top_probability=float(top.astype(np.float64).mean()),
        class_histogram=[int(v) for v in histogram],
        confident_class_histogram=[int(v) for v in np.bincount(predicted[confident], minlength=probs.shape[1])],
        all_classes_present=bool(np.all(histogram > 0)),
    )


def digit_report(G_or_images, classifier=None, threshold=0.9, num=1000, seed=0, truncation_psi=1,
                 noise_mode='const', batch_size=64, progress=None):
    """How much images look like digits, by the classifier's confidence.

    Parameters
    ----------
    G_or_images : torch.nn.Module or array-like
        A generator (anything with ``z_dim``, ``c_dim`` and NVlabs' ``G(z, c, truncation_psi,
        noise_mode)``), or uint8 images NCHW (numpy or torch). A generator is sampled at seeds
        ``seed .. seed + num - 1`` (``z = RandomState(s).randn(z_dim)``, NVlabs' generate.py), with
        the random labels of batch seed ``seed`` if it is conditional, and its output converted to
        uint8 as NVlabs does.
    classifier : module or None, default=None
        Anything with ``probabilities(uint8 NCHW) -> [N, K]``; default: the shipped classifier, on
        the generator's device.
    threshold : float, default=0.9
        Top class probability at which an image counts as a confident digit.
    num, seed, truncation_psi, noise_mode, batch_size
        Sampling of a generator (``batch_size`` also batches the classifier).
    progress : callable or None
        Called with the number of images after each generated batch.

    Returns
    -------
    report : dict
        ``num_images``, ``threshold``, ``confident_fraction`` (fraction with top probability >=
        threshold), ``mean_top_probability``, ``class_histogram`` (count of each most probable
        class, over all images), ``confident_class_histogram`` (the same over the confident
        images), ``all_classes_present`` (every class is the most probable one of some image), and
        for a conditional generator with as many classes as the classifier, ``label_agreement``: the
        fraction of images whose most probable class is the class they were generated for (class i
        taken to be digit i, as dataset_tool.py labels MNIST).
    """
    labels = None
    if isinstance(G_or_images, torch.nn.Module) and hasattr(G_or_images, 'z_dim'):
        G = G_or_images
        device = _module_device(G)
        if classifier is None:
            classifier = load_classifier(device=device)
        images, labels = _generate_uint8(G, num, seed, truncation_psi, noise_mode, batch_size, progress)
    else:
        images = G_or_images
        if classifier is None:
            classifier = load_classifier()
    probs = classify(images, classifier, batch_size=max(batch_size, 256))
    report = summarize_probabilities(probs, threshold)
    if labels is not None and labels.shape[1] == probs.shape[1]:
        agree = np.asarray(probs).argmax(axis=1) == labels.argmax(axis=1)
        report['label_agreement'] = float(agree.mean())
    return report


def _generate_uint8(G, num, seed, truncation_psi, noise_mode, batch_size, progress):
    from sampling.images import to_uint8
    from sampling.latents import random_labels, z_from_seeds
    from sampling.synthesis import synthesize
    z = z_from_seeds(range(seed, seed + num), G.z_dim)
    c = random_labels(seed, num, G.c_dim)
    batches = synthesize(G, z=z, c=c, truncation_psi=truncation_psi, noise_mode=noise_mode,
                         batch_size=batch_size, progress=progress)
    return np.concatenate([to_uint8(img).transpose(0, 3, 1, 2) for img in batches]), c


def _module_device(module):
    for tensor in module.parameters():
        return tensor.device
    return torch.device('cpu')

# ----------------------------------------------------------------------------
# Command line: python -m metrics.mnist_classifier ...


def _load_dataset_images(path):
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(path)
    return np.stack([dataset[i][0] for i in range(len(dataset))])


@click.command()
@click.option('--network', metavar='PKL', help='Generator pickle or URL [default: the embedded MNIST network]')
@click.option('--data', metavar='ZIP|DIR', help='Report on the images of a dataset instead of a generator')
@click.option('--num', type=click.IntRange(min=1), default=1000, show_default=True, help='Number of samples')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='First seed')
@click.option('--trunc', 'truncation_psi', type=cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--threshold', type=cli.FiniteFloat(0, 1), default=0.9, show_default=True,
              help='Top class probability of a confident digit')
@click.option('--classifier', metavar='PT', default=DEFAULT_CLASSIFIER, show_default=True,
              help='TorchScript classifier')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--device', default='auto', show_default=True, help='auto, cpu, cuda or cuda:N')
@click.option('--allow-pickle-code', is_flag=True, help='Run the code embedded in the network pickle')
def main(network, data, num, seed, truncation_psi, noise_mode, threshold, classifier, batch_size, device,
         allow_pickle_code):
    """Print a JSON report of how much generated (or dataset) images look like MNIST digits.

    \b
    python -m metrics.mnist_classifier --network pretrained/mnist32-stylegan2.pkl --num 1000 --seed 0
    python -m metrics.mnist_classifier --data datasets/mnist32.zip
    """
    from sampling.cli import load_generator, network_or_default, resolve_device
    from training.dataset import DatasetError
    if data is not None and network is not None:
        raise click.UsageError('pass either --network or --data, not both')
    device = resolve_device(device)
    try:
        net = load_classifier(classifier, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if data is not None:
        try:
            images = _load_dataset_images(data)
        except DatasetError as err:
            raise click.ClickException(str(err)) from None
        report = digit_report(images, net, threshold=threshold, batch_size=batch_size)
    else:
        G = load_generator(network_or_default(network), device, allow_code=allow_pickle_code)
        with tqdm(total=num, unit='img', desc='Generating', file=sys.stderr) as bar:
            report = digit_report(G, net, threshold=threshold, num=num, seed=seed, truncation_psi=truncation_psi,
                                  noise_mode=noise_mode, batch_size=batch_size, progress=bar.update)
    click.echo(json.dumps(report))


if __name__ == '__main__':
    main()
