"""Reading BigGAN-deep checkpoints of the ``pytorch-pretrained-biggan`` port, safely.

A checkpoint is a folder holding ``pytorch_model.bin`` (a plain ``torch.save(state_dict)``) and
``config.json``, or the pair given as the ``.bin`` path with its config beside it
(``config.json``, or ``NAME-config.json`` next to ``NAME-pytorch_model.bin`` as the port's
downloads are named). The port loads with ``strict=False``, so a wrong file silently leaves random
weights; here:

* the config must equal one of the published ones (128, 256, 512 px) field for field;
* the weights are read weights-only, by ``torch_utils.safe_pickle.load_torch_checkpoint`` (both
  ``torch.save`` formats, zip and the legacy one of PyTorch < 1.6): only tensors, storages and
  an OrderedDict are admitted, so no code from the file runs and a pickle posing as a ``.bin`` is
  refused; every storage must fit in the file before it is allocated, and the tensor layouts are
  checked (``torch.load``'s legacy-format reader creates each storage at its declared size first);
  a file much larger than the architecture needs is refused before it is read;
* every parameter and buffer must be present with its shape (602 tensors at 256 px), and nothing else.

Each refusal is a :class:`CheckpointError` with a one-line message. ``legacy.load_network``
dispatches folders and ``.bin`` paths here.
"""

import json
import os

import torch

from dnnlib.util import UserError
from torch_utils import safe_pickle
from training.networks_biggan import Generator, official_layers

WEIGHTS_NAME = 'pytorch_model.bin'
CONFIG_NAME = 'config.json'
_MAX_CONFIG_BYTES = 1 << 20


def _published_config(resolution):
    return dict(output_dim=resolution, z_dim=128, class_embed_dim=128, channel_width=128, num_classes=1000,
                layers=[list(layer) for layer in official_layers(resolution)], attention_layer_position=8,
                eps=1e-4, n_stats=51)


# The config.json of each published checkpoint (biggan-deep-128, -256, -512).
PUBLISHED_CONFIGS = {f'biggan-deep-{res}': _published_config(res) for res in (128, 256, 512)}


class CheckpointError(ValueError, UserError):
    """A BigGAN checkpoint was refused; the message is one line saying why."""


def is_checkpoint_path(path):
    """Whether ``path`` names what this module reads: a local folder or a ``.bin`` file."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = os.fspath(path)
    return '://' not in path and (os.path.isdir(path) or path.endswith('.bin'))


def checkpoint_files(path):
    """(weights path, config path) of the checkpoint at ``path`` (a folder or the ``.bin`` file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        weights, config = os.path.join(path, WEIGHTS_NAME), os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(weights):
            raise CheckpointError(f'{path} is a folder without {WEIGHTS_NAME}: pass a network pickle, or a BigGAN '
                                  f'checkpoint folder ({WEIGHTS_NAME} and {CONFIG_NAME})')
    else:
        weights = path
        if not os.path.isfile(weights):
            raise CheckpointError(f'checkpoint not found: {weights}')
        folder, name = os.path.split(weights)
        candidates = [os.path.join(folder, CONFIG_NAME)]
        if name.endswith(WEIGHTS_NAME) and name != WEIGHTS_NAME:
            candidates.insert(0, os.path.join(folder, name[:-len(WEIGHTS_NAME)] + CONFIG_NAME))
        config = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    if not os.path.isfile(config):
        raise CheckpointError(f'{weights} has no {os.path.basename(config)} beside it; the architecture is read from it')
    return weights, config


def _normalised(config):
    out = dict(config)
    if isinstance(out.get('layers'), (list, tuple)):
        out['layers'] = [list(layer) if isinstance(layer, (list, tuple)) else layer for layer in out['layers']]
    return out


def read_config(path, known_configs=None):
    """The dict in ``config.json`` at ``path``, checked to be one of ``known_configs`` (default: the published ones)."""
    known_configs = PUBLISHED_CONFIGS if known_configs is None else known_configs
    try:
        if os.path.getsize(path) > _MAX_CONFIG_BYTES:
            raise CheckpointError(f'{path} is larger than a BigGAN config ({os.path.getsize(path)} bytes)')
        with open(path, 'rb') as f:
            config = json.loads(f.read().decode('utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f'cannot read {path} as JSON: {str(err).splitlines()[0]}') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{path} holds a JSON {type(config).__name__}, not a BigGAN config object')
    config = _normalised(config)
    for known in known_configs.values():
        if config == _normalised(known):
            return config
    same_size = [(name, _normalised(known)) for name, known in known_configs.items()
                 if known.get('output_dim') == config.get('output_dim')]
    if not same_size:
        sizes = ', '.join(str(known['output_dim']) for known in known_configs.values())
        raise CheckpointError(f'{path}: output_dim {config.get("output_dim")!r} is not that of a known BigGAN-deep '
                              f'checkpoint ({sizes})')
    name, known = same_size[0]
    for key in sorted(set(known) | set(config)):
        if key not in config:
            raise CheckpointError(f'{path} has no {key!r}; the {name} config has {key} = {known[key]!r}')
        if key not in known:
            raise CheckpointError(f'{path} has {key!r}, which the {name} config does not have')
        if config[key] != known[key]:
            raise CheckpointError(f'{path} differs from the {name} config: {key} = {config[key]!r}, '
                                  f'expected {known[key]!r}')
    raise AssertionError('unreachable: the configs are equal')


def generator_kwargs(config):
    """Generator arguments for a checked config (the port sizes the class embedding by z_dim)."""
    return dict(z_dim=config['z_dim'], c_dim=config['num_classes'], img_resolution=config['output_dim'],
                img_channels=3, channel_width=config['channel_width'], layers=[tuple(l) for l in config['layers']],
                attention_layer_position=config['attention_layer_position'], n_stats=config['n_stats'],
                eps=config['eps'])


def _first(names, limit=3):
    names = sorted(names)
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def read_state_dict(path, expected):
    """Load the tensors at ``path`` with weights_only=True and check them against ``expected`` {name: tensor}."""
    expected_bytes = sum(t.numel() * 4 for t in expected.values())
    size = os.path.getsize(path)
    if size > expected_bytes * 1.05 + (1 << 20):
        raise CheckpointError(f'{path} is {size} bytes, more than this architecture\'s {expected_bytes} bytes of '
                              'float32 tensors: not this checkpoint')
    try:
        state = safe_pickle.load_torch_checkpoint(path, safe_pickle.BASIC_GLOBALS)
    except safe_pickle.RefusedGlobalError as err:
        raise CheckpointError(f'{path} is not a plain tensor checkpoint (weights only): {err}; refusing it') from None
    except safe_pickle.UnsafePickleError as err:
        raise CheckpointError(f'cannot read {path} as a PyTorch checkpoint: {err}') from None
    except OSError as err:
        raise CheckpointError(f'cannot read {path}: {safe_pickle.one_line(err)}') from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f'{path} does not hold a state dict (names -> tensors); found {type(state).__name__}')
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing:
        raise CheckpointError(f'{path} lacks {len(missing)} of the {len(expected)} tensors of this architecture '
                              f'({_first(missing)}): not a complete checkpoint')
    if unexpected:
        raise CheckpointError(f'{path} has {len(unexpected)} tensors this architecture does not have '
                              f'({_first(unexpected)})')
    for name, ref in expected.items():
        tensor = state[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointError(f'{path}: {name} has shape {list(tensor.shape)}, the architecture in the config '
                                  f'needs {list(ref.shape)}')
        if not tensor.is_floating_point():
            raise CheckpointError(f'{path}: {name} is {tensor.dtype}, expected floating point')
    return {name: tensor.to(torch.float32) for name, tensor in state.items()}


def load_generator(path, device=None, known_configs=None):
    """The checked :class:`Generator` of the checkpoint at ``path``, in eval mode, without gradients."""
    weights, config_path = checkpoint_files(path)
    config = read_config(config_path, known_configs)
    kwargs = generator_kwargs(config)
    with torch.device('meta'):  # Shapes only: nothing is allocated before the file is checked.
        G = Generator(**kwargs)
    state = read_state_dict(weights, G.state_dict())
    G.load_state_dict(state, strict=True, assign=True)
    G = G.eval().requires_grad_(False)
    return G.to(device) if device is not None else G
