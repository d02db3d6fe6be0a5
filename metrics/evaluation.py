"""The pieces of an evaluation run shared by calc_metrics.py and demo_samplers.py.

Parsing of metric and detector options, loading the network and the real data (with NVlabs'
dataset kwargs, whose repr names the statistics cache), and the label pool samplers draw from.
Bad input raises :class:`EvaluationError` with a one-line message.
"""

import os
import sys

import numpy as np

import dnnlib
from metrics import metric_main, metric_utils

# ----------------------------------------------------------------------------


class EvaluationError(dnnlib.util.UserError):
    """Bad input to an evaluation: the message is one line for the user (what is wrong, what to do)."""


def parse_metrics(text):
    names = [name.strip() for name in text.split(',') if name.strip()]
    if names == ['none']:
        return []
    if not names:
        raise EvaluationError('--metrics is empty; pass e.g. fid50k_full or none')
    for name in names:
        if not metric_main.is_valid_metric(name):
            raise EvaluationError(metric_main.unknown_metric_message(name))
    return names


def parse_detectors(text):
    """'X' (every role) or 'inception=X,vgg16=Y,attribute=Z' -> {role: url}."""
    if text is None:
        return {}
    roles = ('inception', 'vgg16', 'attribute')
    parts = [part.strip() for part in text.split(',')]
    if all(part.split('=', 1)[0] in roles and '=' in part for part in parts):
        pairs = [part.split('=', 1) for part in parts]
    else:
        pairs = [(role, text) for role in roles]
    try:
        return {role: metric_utils.resolve_detector(value) for role, value in pairs}
    except metric_utils.DetectorError as err:
        raise EvaluationError(f'--detector: {err}') from None


def load_fid_stats(path):
    from sampling.latents import FileFormatError, read_npz
    try:
        data = read_npz(path, what='FID statistics file (an .npz with mu and sigma)')
    except FileFormatError as err:
        raise EvaluationError(f'--fid-stats {err}') from None
    except OSError as err:
        raise EvaluationError(f'--fid-stats {path}: cannot read it ({err.strerror or err})') from None
    if 'mu' not in data or 'sigma' not in data:
        raise EvaluationError(f'--fid-stats {path}: expected arrays mu and sigma, found {", ".join(data)}')
    try:
        mu, sigma = data['mu'].astype(np.float64), data['sigma'].astype(np.float64)
    except (TypeError, ValueError):
        raise EvaluationError(f'--fid-stats {path}: mu and sigma must be numeric arrays') from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise EvaluationError(f'--fid-stats {path}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and '
                       f'{list(sigma.shape)}')
    return mu, sigma


def load_snapshot(network, device, allow_code):
    import legacy
    from training import load_biggan
    if load_biggan.is_checkpoint_path(network):  # A BigGAN checkpoint: a generator only, no training set recorded.
        try:
            return legacy.load_network(network, device=device), None
        except legacy.NetworkLoadError as err:
            raise EvaluationError(str(err)) from None
    try:
        with dnnlib.util.open_url(network, verbose=False) as f:
            data = legacy.load_network_pkl(f, allow_code=allow_code)
    except legacy.NetworkLoadError as err:
        raise EvaluationError(str(err)) from None
    except FileNotFoundError:
        raise EvaluationError(f'network pickle not found: {network}') from None
    except (OSError, ValueError) as err:
        raise EvaluationError(f'cannot read {network}: {str(err).splitlines()[0]}') from None
    G = data['G_ema'].eval().requires_grad_(False).to(device)
    return G, data.get('training_set_kwargs')


def dataset_kwargs(data, training_set_kwargs, G, mirror, network=None):
    """Dataset kwargs from --data, else from the snapshot's training_set_kwargs (as data: our class only).

    NVlabs' keys in NVlabs' order (class_name, path, then resolution, use_labels, xflip): the repr of these
    kwargs names the dataset statistics cache, so theirs and ours find each other's files.
    """
    from training.dataset import DATASET_CLASS_NAME, DatasetError, check_dataset_kwargs
    if data is not None:
        kwargs = dnnlib.EasyDict(class_name=DATASET_CLASS_NAME, path=data)
    elif training_set_kwargs is not None:
        try:
            kwargs = check_dataset_kwargs(training_set_kwargs, network or 'the network pickle')
        except DatasetError as err:
            raise EvaluationError(str(err)) from None
    else:
        return None
    kwargs.resolution = G.img_resolution
    kwargs.use_labels = (G.c_dim != 0)
    if mirror is not None:
        kwargs.xflip = mirror
    return kwargs


def open_dataset(dataset_kwargs, G, from_pickle):
    """Open the dataset (always training.dataset.ImageFolderDataset; nothing is imported by name)."""
    from training.dataset import DatasetError
    from training.dataset import open_dataset as open_image_folder
    if from_pickle and int(os.environ.get('RANK', '0')) == 0:
        print(f'note: no --data given: reading the training set recorded in the network pickle, '
              f'{dataset_kwargs.path}, as an image folder/zip', file=sys.stderr)
    try:
        dataset = open_image_folder(**dataset_kwargs)
    except DatasetError as err:
        hint = ' (the dataset recorded in the network pickle; pass --data)' if from_pickle else ''
        raise EvaluationError(f'{err}{hint}') from None
    if dataset.num_channels != G.img_channels:
        raise EvaluationError(f'the dataset has {dataset.num_channels}-channel images but the network makes '
                       f'{G.img_channels}-channel ones; use the dataset the network was trained on')
    return dataset


def label_pool(dataset, G, rank):
    if G.c_dim == 0 or dataset is None:
        return None
    if not dataset.has_labels or dataset.label_dim != G.c_dim:
        if rank == 0:
            print(f'note: the dataset has no {G.c_dim}-class labels; samplers draw classes uniformly', file=sys.stderr)
        return None
    return metric_utils.dataset_labels(dataset)
