"""Safe loading of NVlabs NVAE checkpoints (``checkpoint.pt``) as :class:`training.networks_nvae.NVAEGenerator`.

An NVAE checkpoint is a ``torch.save`` dict with ``epoch, state_dict, optimizer, global_step, args,
arch_instance, scheduler, grad_scalar``; ``args`` is an ``argparse.Namespace``. It is read with
``torch_utils.safe_pickle`` (a bounded restricted unpickler of ``torch.save`` files), which runs nothing from
the file and admits only tensors and plain containers, with ``argparse.Namespace`` allow-listed as plain
data; storage offsets and sizes are checked against the storages. The decoder is rebuilt from ``args``
(and ``arch_instance``) on the meta device, then every state-dict entry is accounted for:

* the decoder's entries (``prior_ftr0``, ``dec_tower.*``, ``dec_sampler.*``, ``post_process.*``,
  ``image_conditional.*``) must be exactly ours, same shapes;
* ``<conv>.weight_normalized``: NVAE's convolutions built without weight normalisation register their
  weight a second time under this name; accepted (at a convolution whose ``weight`` we load) when its
  shape matches, and at a convolution without weight normalisation it must equal ``weight``. It is
  derived state and never loaded;
* the encoder's entries (``stem``, ``pre_process``, ``enc_tower``, ``enc0``, ``enc_sampler``,
  ``nf_cells``: the posterior, not needed to sample) are recognised and ignored;
* anything else is refused, as is a missing decoder entry.

Tensors are copied into freshly allocated parameters, so checkpoints whose parameters are views into
shared storages (NVAE's ``--fast_adamax`` stacks parameters) load the right slices and keep nothing else.
Every failure is one :class:`CheckpointError` line.
"""

import argparse

import torch

from dnnlib.util import UserError
from torch_utils import safe_pickle
from training import networks_nvae

CHECKPOINT_KEYS = frozenset(['epoch', 'state_dict', 'optimizer', 'global_step', 'args', 'arch_instance',
                             'scheduler', 'grad_scalar'])
DECODER_PREFIXES = ('dec_tower.', 'dec_sampler.', 'post_process.', 'image_conditional.')
ENCODER_PREFIXES = ('stem.', 'pre_process.', 'enc_tower.', 'enc0.', 'enc_sampler.', 'nf_cells.')
BERNOULLI_DATASETS = {'mnist': 32, 'omniglot': 32}  # dataset -> NVAE's input size (28 px padded by 2).

# NVAE args that shape the decoder (NVAE's names), with the type each must have.
_ARCH_ARGS = {
    'num_latent_scales': int, 'num_groups_per_scale': int, 'ada_groups': bool, 'num_latent_per_group': int,
    'num_channels_dec': int, 'num_preprocess_blocks': int, 'num_postprocess_blocks': int,
    'num_postprocess_cells': int, 'num_cell_per_cond_dec': int, 'use_se': bool,
}
_LIMITS = dict(num_latent_scales=8, num_groups_per_scale=64, num_latent_per_group=1024, num_channels_dec=4096,
               num_preprocess_blocks=8, num_postprocess_blocks=8, num_postprocess_cells=16, num_cell_per_cond_dec=16)

_ZIP_MAGIC = b'PK\x03\x04'
# The legacy (pre-1.6) torch.save format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'


class CheckpointError(ValueError, UserError):
    """An NVAE checkpoint could not be loaded; the message is one line saying why."""


def is_torch_checkpoint(f):
    """Whether the open binary file ``f`` holds a ``torch.save`` file (zip or legacy format); f is not consumed."""
    if not (hasattr(f, 'seekable') and f.seekable()):
        return False
    start = f.tell()
    head = f.read(len(_LEGACY_MAGIC))
    f.seek(start)
    return head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC


# What an NVAE checkpoint may name besides tensors and storages (safe_pickle.TORCH_GLOBALS, always admitted).
CHECKPOINT_GLOBALS = {('argparse', 'Namespace'): argparse.Namespace, **safe_pickle.BASIC_GLOBALS}


def read_checkpoint(f, name='the checkpoint'):
    """Read a ``torch.save`` file (zip or legacy format) with torch_utils.safe_pickle: nothing in it runs.

    Only tensors, plain values, OrderedDict and argparse.Namespace (as plain data: its attributes are set,
    nothing is called) are admitted, within safe_pickle's bounds on time and memory.
    """
    try:
        return safe_pickle.load_torch_checkpoint(f, CHECKPOINT_GLOBALS)
    except safe_pickle.TruncatedPickleError:
        raise CheckpointError(f'{name} is truncated: download it again') from None
    except (safe_pickle.RefusedGlobalError, safe_pickle.PickleLimitError) as err:
        raise CheckpointError(f'refusing to load {name}: {err} (an NVAE checkpoint holds only tensors, plain '
                              'values and argparse.Namespace)') from None
    except safe_pickle.UnsafePickleError as err:
        if 'zip archive' in str(err):  # A cut zip loses its central directory first.
            raise CheckpointError(f'{name} is truncated or damaged ({err}): download it again') from None
        raise CheckpointError(f'{name} is not a readable PyTorch checkpoint ({err})') from None
    except (OSError, EOFError) as err:
        raise CheckpointError(f'cannot read {name}: {err}') from None


def load_nvae_checkpoint(f, name='the checkpoint', crop=None):
    """Read an NVAE checkpoint from the open binary file ``f``; return ``(G, info)``.

    ``G`` is an :class:`~training.networks_nvae.NVAEGenerator` on the CPU, in eval mode, without gradients,
    with the checkpoint's batch-norm statistics (run :func:`~training.networks_nvae.readjust_bn` before
    sampling, as NVAE does). ``info`` holds ``epoch``, ``global_step`` and ``args`` (a dict).
    """
    data = read_checkpoint(f, name)
    return build_generator(data, name, crop=crop)


def build_generator(data, name='the checkpoint', crop=None):
    """The generator of a checkpoint dict already read by :func:`read_checkpoint`; see :func:`load_nvae_checkpoint`."""
    if not isinstance(data, dict):
        raise CheckpointError(f'{name} is not an NVAE checkpoint: it holds a {type(data).__name__}, not a dict')
    unknown = sorted(map(str, set(data) - CHECKPOINT_KEYS))
    if unknown:
        raise CheckpointError(f'{name} is not an NVAE checkpoint: unexpected top-level key(s) {", ".join(unknown)}')
    for key in ('state_dict', 'args'):
        if key not in data:
            raise CheckpointError(f'{name} is not an NVAE checkpoint: it has no {key!r}')
    args = data['args']
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(f'{name}: args is a {type(args).__name__}, not an argparse.Namespace')
    state = data['state_dict']
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f'{name}: state_dict is not a dict of named tensors')

    kwargs = generator_kwargs(args, data.get('arch_instance'), name)
    try:
        with torch.device('meta'):
            G = networks_nvae.NVAEGenerator(**kwargs, crop=crop)
    except ValueError as err:
        raise CheckpointError(f'{name}: the architecture in args is not one this loader models ({err})') from None
    tensors = _match_state(G, state, name)

    G = G.to_empty(device='cpu')
    with torch.no_grad():
        for key, target in G.state_dict(keep_vars=True).items():
            # copy_ reads the tensor through its own offset and strides, whatever storage it is a view of.
            target.copy_(tensors[key].to(target.dtype))
        G.bn_readjust_temperature.fill_(float('nan'))
    G = G.eval().requires_grad_(False)

    info = dict(epoch=_plain(data.get('epoch')), global_step=_plain(data.get('global_step')),
                args={k: _plain(v) for k, v in sorted(vars(args).items())})
    return G, info


def _plain(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None), list, tuple, dict)) else repr(value)


def generator_kwargs(args, arch_instance=None, name='the checkpoint'):
    """NVAEGenerator arguments from a checkpoint's ``args`` (and its ``arch_instance`` dict), checked."""
    def fail(message):
        raise CheckpointError(f'{name}: {message}')

    dataset = getattr(args, 'dataset', None)
    if dataset not in BERNOULLI_DATASETS:
        fail(f'args.dataset is {dataset!r}; only NVAE checkpoints with a Bernoulli decoder '
             f'({", ".join(sorted(BERNOULLI_DATASETS))}) are supported')
    kwargs = {}
    for key, kind in _ARCH_ARGS.items():
        if not hasattr(args, key):
            fail(f'args has no {key}: not an NVAE checkpoint, or one from a version this loader does not know')
        value = getattr(args, key)
        if kind is bool and isinstance(value, bool):
            kwargs[key] = value
        elif kind is int and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _LIMITS[key]:
            kwargs[key] = value
        else:
            fail(f'args.{key} = {value!r} is not a valid value')
    min_groups = getattr(args, 'min_groups_per_scale', 1)
    if not (isinstance(min_groups, int) and not isinstance(min_groups, bool) and min_groups >= 1):
        fail(f'args.min_groups_per_scale = {min_groups!r} is not a valid value')
    kwargs['min_groups_per_scale'] = min_groups
    if kwargs['num_latent_scales'] == 1 and kwargs['num_groups_per_scale'] == 1:
        fail('a single latent group (NVAE\'s "vanilla VAE") is not supported')

    arch_name = getattr(args, 'arch_instance', None)
    if isinstance(arch_instance, dict):
        arch = {}
        for cell_type in networks_nvae.DECODER_CELL_TYPES:
            ops = arch_instance.get(cell_type)
            if not (isinstance(ops, (list, tuple)) and ops and all(isinstance(op, str) for op in ops)):
                fail(f'arch_instance[{cell_type!r}] is {ops!r}, not a list of op names')
            arch[cell_type] = list(ops)
    elif arch_name == 'res_mbconv':
        arch = dict(networks_nvae.RES_MBCONV_DECODER)
    else:
        fail(f'no arch_instance cell table in the checkpoint and args.arch_instance is {arch_name!r}; '
             "only 'res_mbconv' is known by name")
    for cell_type, ops in arch.items():
        bad = [op for op in ops if networks_nvae.parse_mbconv_op(op) is None]
        if bad:
            fail(f'decoder cells {cell_type!r} use op {bad[0]!r}; this loader models mconv_e*k*g* ops only')
    kwargs['arch'] = arch
    kwargs['input_size'] = BERNOULLI_DATASETS[dataset]
    kwargs['img_channels'] = 1
    return kwargs


def _match_state(G, state, name):
    """Account for every entry of ``state`` against ``G`` (on the meta device); return ours -> tensor."""
    def fail(message):
        raise CheckpointError(f'{name}: {message}; refusing to load')

    ours = G.state_dict(keep_vars=True)
    convs = {path for path, module in G.named_modules() if isinstance(module, networks_nvae.Conv2D)}
    plain_convs = {path for path in convs if not G.get_submodule(path).weight_norm}
    found = {}
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            fail(f'state_dict entry {key} is a {type(value).__name__}, not a tensor')
        if key in ours:
            target = ours[key]
            if tuple(value.shape) != tuple(target.shape):
                fail(f'{key} has shape {tuple(value.shape)}, the architecture in args gives {tuple(target.shape)}')
            expect_float = target.dtype.is_floating_point
            if expect_float != value.dtype.is_floating_point or value.dtype.is_complex:
                fail(f'{key} has dtype {value.dtype}, expected a {"floating" if expect_float else "integer"} tensor')
            found[key] = value
            continue
        module, _, leaf = key.rpartition('.')
        if leaf == 'weight_normalized' and module in convs:
            weight = state.get(f'{module}.weight')
            if not isinstance(weight, torch.Tensor) or value.shape != weight.shape:
                fail(f'{key} does not match {module}.weight')
            if module in plain_convs and not torch.equal(value, weight):
                fail(f'{key} differs from {module}.weight (NVAE stores the same tensor twice there)')
            continue
        if key == 'prior_ftr0' or key.startswith(DECODER_PREFIXES):
            fail(f'decoder entry {key} does not exist in the architecture that args describe')
        fail(f'unexpected state_dict entry {key}')
    missing = [key for key in ours if key not in found]
    if missing:
        fail(f'{len(missing)} decoder entr{"y is" if len(missing) == 1 else "ies are"} missing (first: {missing[0]})')
    return found
