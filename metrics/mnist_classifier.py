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
# Export and loading.


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


@click.command(cls=cli.Command)
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
    if data is not None and network is not None:
        raise click.UsageError('pass either --network or --data, not both')
    device = resolve_device(device)
    try:
        net = load_classifier(classifier, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if data is not None:
        images = _load_dataset_images(data)  # A DatasetError is printed by cli.Command.
        report = digit_report(images, net, threshold=threshold, batch_size=batch_size)
    else:
        G = load_generator(network_or_default(network), device, allow_code=allow_pickle_code)
        with tqdm(total=num, unit='img', desc='Generating', file=sys.stderr) as bar:
            report = digit_report(G, net, threshold=threshold, num=num, seed=seed, truncation_psi=truncation_psi,
                                  noise_mode=noise_mode, batch_size=batch_size, progress=bar.update)
    click.echo(json.dumps(report))


if __name__ == '__main__':
    main()
