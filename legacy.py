"""Loading and saving NVlabs network pickles.

``load_network_pkl(f)`` reads a StyleGAN2-ADA / StyleGAN3 snapshot (a pickled dict with G, D,
G_ema, training_set_kwargs, augment_pipe) *without executing code from the file*: a restricted
unpickler admits only the globals a network pickle needs, and every persistent network object is
rebuilt as an instance of this repository's own class from its pickled constructor arguments, then
checked against the pickled state (names, shapes and plain attributes must all agree; floats up to
rounding, since numpy 1.x and 2.x can differ in the last bit) before the pickled weights, buffers and
attribute values are adopted. ``allow_code=True`` instead runs the module source embedded in the pickle,
as NVlabs' own loader does; both give the same images. TF-era (G, D, Gs) tuples are converted:
StyleGAN2's below, ProGAN's by ``training/convert_progan.py`` (never running code, whatever allow_code says).
"""

import contextvars
import copy
import io
import os
import pickle
import re
import warnings

import click
import numpy as np
import torch

import dnnlib
from torch_utils import persistence, safe_pickle
from training import convert_progan

# ----------------------------------------------------------------------------


class NetworkLoadError(dnnlib.util.UserError):
    """A network pickle could not be loaded; the message is one line saying why and what to do."""

    def __init__(self, message):
        super().__init__(safe_pickle.one_line(message))  # Messages may quote names and values from the file.


def load_network_pkl(f, allow_code=False, force_fp16=False, _only=None):
    """Load a network snapshot from the open binary file ``f``.

    Returns a dict with keys ``G``, ``D``, ``G_ema``, ``training_set_kwargs`` and ``augment_pipe``
    (missing entries are None). With ``allow_code=False`` (the default) nothing in the file is
    executed; objects that cannot be rebuilt safely are refused, except the augmentation pipeline,
    which sampling does not need and which is dropped with a warning. A ``torch.save`` file is read as an
    NVAE checkpoint (training/nvae_checkpoint.py, also safe): G_ema is its decoder, the other entries None.
    """
    name = getattr(f, 'name', None) or 'the network pickle'
    from training import nvae_checkpoint
    if nvae_checkpoint.is_torch_checkpoint(f):  # A torch.save file: NVAE's checkpoint.pt.
        if force_fp16:
            raise NetworkLoadError(f'{name} is an NVAE checkpoint: --force-fp16 applies to StyleGAN networks only')
        return _load_nvae_checkpoint(f, name)
    token = _max_network_bytes.set(_network_bytes_budget(f))
    try:
        return _load_network_pkl(f, name, allow_code, force_fp16, _only)
    finally:
        _max_network_bytes.reset(token)


def _load_network_pkl(f, name, allow_code, force_fp16, only=None):
    data = _unpickle(f, name, allow_code)
    keys_found = sorted(map(str, data)) if isinstance(data, dict) else []

    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, _TFNetworkStub) for net in data):
        data = _convert_tf_pickle(data, name)
    if convert_progan.is_progan_pickle(data):
        try:
            data = convert_progan.convert_progan_pickle(data, name)
        except convert_progan.ConversionError as err:
            raise NetworkLoadError(str(err)) from None
        warnings.warn(f'{name}: the ProGAN critic (D_paper) is not converted; D is None', stacklevel=2)
    if not isinstance(data, dict):
        raise NetworkLoadError(f'{name} does not contain a network snapshot: expected a dict with G_ema '
                               f'(or a TF-era (G, D, Gs) tuple), found {type(data).__name__}')
    if not allow_code:
        data = _rebuild_snapshot(data, name, only)

    if data.get('G_ema') is None:
        found = ', '.join(keys_found) if keys_found else 'none'
        raise NetworkLoadError(f'{name} has no G_ema network (keys in the file: {found})')
    for key in ('G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'):
        data.setdefault(key, None)
    for key in ('G', 'D', 'G_ema'):
        if data[key] is not None and not isinstance(data[key], torch.nn.Module):
            raise NetworkLoadError(f'{name}: {key} is a {type(data[key]).__name__}, not a network')
    if not (data['training_set_kwargs'] is None or isinstance(data['training_set_kwargs'], dict)):
        raise NetworkLoadError(f'{name}: training_set_kwargs is a {type(data["training_set_kwargs"]).__name__}, '
                               'not a dict')
    if not (data['augment_pipe'] is None or isinstance(data['augment_pipe'], torch.nn.Module)):
        raise NetworkLoadError(f'{name}: augment_pipe is not a module')
    _check_roles(data, name)
    for key in ('G', 'D', 'G_ema'):
        if data[key] is not None:
            _check_network_tensors(data[key], f'{name}: {key}')

    if force_fp16:
        data = _force_fp16(data)
    return data


def load_network(network, allow_code=False, device=None, key='G_ema'):
    """Open ``network`` (a path or URL, via dnnlib.util.open_url) and return the module under ``key``.

    The module is in eval mode, without gradients, on ``device`` (default: where it was loaded). A folder or a
    ``.bin`` file is read as a BigGAN-deep checkpoint of the PyTorch port (``training/load_biggan.py``).
    """
    from training import load_biggan
    if load_biggan.is_checkpoint_path(network):
        try:
            return load_biggan.load_generator(network, device=device)
        except load_biggan.CheckpointError as err:
            raise NetworkLoadError(str(err)) from None
    try:
        with dnnlib.util.open_url(network, verbose=False) as f:
            # Only the network asked for (and G_ema, which every snapshot must have) is rebuilt: the others would
            # be built and verified for nothing.
            net = load_network_pkl(f, allow_code=allow_code, _only={key, 'G_ema'})[key]
    except FileNotFoundError:
        raise NetworkLoadError(f'network pickle not found: {network}') from None
    except IsADirectoryError:
        raise NetworkLoadError(f'{network} is a directory, not a network pickle') from None
    except OSError as err:
        raise NetworkLoadError(f'cannot read {network}: {err}') from None
    if net is None:
        raise NetworkLoadError(f'{network} has no {key} network')
    net = net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


def _load_nvae_checkpoint(f, name):
    """An NVAE checkpoint as a snapshot whose G_ema is the decoder (training.nvae_checkpoint; nothing runs)."""
    from training import nvae_checkpoint
    try:
        G, _info = nvae_checkpoint.load_nvae_checkpoint(f, name)
    except nvae_checkpoint.CheckpointError as err:
        raise NetworkLoadError(str(err)) from None
    return dict(G=None, D=None, G_ema=G, training_set_kwargs=None, augment_pipe=None)


def save_network_pkl(path, G=None, D=None, G_ema=None, training_set_kwargs=None, augment_pipe=None, extra=None):
    """Write a snapshot in NVlabs' layout (a plain pickle of a dict), atomically.

    Each network is deep-copied and stored in eval mode, without gradients, on the CPU, as NVlabs'
    training loop does; the pickle embeds the networks' module source, so NVlabs' loader reads it too.
    ``extra`` adds plain entries (tensors, arrays, numbers, strings, containers), e.g. the trainer's
    ``training_state``; NVlabs' code ignores keys it does not know.
    """
    data = dict(training_set_kwargs=copy.deepcopy(training_set_kwargs), **(extra or {}))
    for key, module in (('G', G), ('D', D), ('G_ema', G_ema), ('augment_pipe', augment_pipe)):
        if module is not None:
            assert persistence.is_persistent(module), f'{key} must be an instance of a persistent class'
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[key] = module
    with dnnlib.util.atomic_write(path) as f:
        pickle.dump(data, f, protocol=4)


# ----------------------------------------------------------------------------
# Unpickling.


class _TFNetworkStub(dnnlib.EasyDict):
    """Stands in for dnnlib.tflib.network.Network: BUILD fills its __dict__ with the TF network state."""


def _is_name_dict(value):
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


class _PickledPersistent:
    """What safe mode makes of a persistent object: its meta dict, with no code run."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or not _is_name_dict(meta.get('state') or {}) or not all(
                _is_name_dict(value) for key, value in (meta.get('state') or {}).items()
                if key in ('_parameters', '_buffers', '_modules')):
            raise safe_pickle.DamagedPickleError('a persistent object has no meta dict with a state dict')
        self.class_name = meta.get('class_name')
        self.module_src = meta.get('module_src')
        self.version = meta.get('version')
        self.type = meta.get('type')
        self.state = meta.get('state') or {}

    def __repr__(self):
        return f'<pickled {self.class_name}>'


_SAFE_GLOBALS = {
    **safe_pickle.BASIC_GLOBALS,
    **safe_pickle.TORCH_GLOBALS,
    **safe_pickle.NUMPY_GLOBALS,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _PickledPersistent,
    ('dnnlib.tflib.network', 'Network'): _TFNetworkStub,
    ('tfutil', 'Network'): convert_progan.TFNetworkState,  # ProGAN's TF release: state only, never run.
}


class _CodeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ('dnnlib.tflib.network', 'Network'):
            return _TFNetworkStub
        if (module, name) == ('tfutil', 'Network'):  # ProGAN's TF release: converted, its source never run.
            return convert_progan.TFNetworkState
        if (module, name) == ('network', 'Network'):
            raise safe_pickle.RefusedGlobalError('network.Network')
        return super().find_class(_numpy_core_here(module), name)


def _numpy_core_here(module):
    """numpy 2 pickles name numpy._core, numpy 1 pickles numpy.core: use whichever this numpy has."""
    theirs, ours = ('numpy.core', 'numpy._core') if np.lib.NumpyVersion(np.__version__) >= '2.0.0' \
        else ('numpy._core', 'numpy.core')
    if module == theirs or module.startswith(theirs + '.'):
        return ours + module[len(theirs):]
    return module


def _check_pickle_header(f, name):
    """Every pickle of protocol 2 or later starts with the PROTO opcode; anything else is not a snapshot."""
    if not (hasattr(f, 'seekable') and f.seekable()):
        return
    start = f.tell()
    head = f.read(2)
    f.seek(start)
    if len(head) == 0:
        raise NetworkLoadError(f'{name} is truncated or empty: download it again')
    if head[:1] != pickle.PROTO or len(head) < 2 or head[1] < 2:
        raise NetworkLoadError(f'{name} is not a network pickle (it does not start with a pickle header); '
                               'check the path')


def _unpickle(f, name, allow_code):
    _check_pickle_header(f, name)
    try:
        if not allow_code:
            return safe_pickle.load(f, _SAFE_GLOBALS)
        return _CodeUnpickler(f).load()
    except safe_pickle.RefusedGlobalError as err:
        if err.global_name == 'network.Network':
            raise NetworkLoadError(f'refusing to load {name}: {convert_progan.THEANO_REFUSAL}') from None
        raise NetworkLoadError(f'refusing to load {name}: {err}; if you trust the file, pass --allow-pickle-code '
                               '(allow_code=True)') from None
    except safe_pickle.TruncatedPickleError as err:
        raise NetworkLoadError(f'{name} is truncated or damaged ({err}); download it again') from None
    except safe_pickle.PickleLimitError as err:
        raise NetworkLoadError(f'refusing to load {name}: {err}; the file is damaged or hostile') from None
    except safe_pickle.UnsafePickleError as err:
        raise NetworkLoadError(f'{name} is not a readable network pickle ({err})') from None
    except EOFError:
        raise NetworkLoadError(f'{name} is truncated or empty: download it again') from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if 'truncated' in message or 'ran out of input' in message.lower():
            raise NetworkLoadError(f'{name} is truncated: download it again') from None
        raise NetworkLoadError(f'{name} is not a readable network pickle ({message})') from None

# ----------------------------------------------------------------------------
# Safe rebuild of persistent objects as this repository's classes.

_SG2_CLASSES = frozenset(['FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer',
                          'SynthesisBlock', 'SynthesisNetwork', 'Generator', 'DiscriminatorBlock',
                          'MinibatchStdLayer', 'DiscriminatorEpilogue', 'Discriminator'])
_SG3_CLASSES = frozenset(['FullyConnectedLayer', 'MappingNetwork', 'SynthesisInput', 'SynthesisLayer',
                          'SynthesisNetwork', 'Generator'])
_BIGGAN_CLASSES = frozenset(['SNLinear', 'SNConv2d', 'ClassEmbedding', 'TruncatedBatchNorm', 'GenBlock', 'SelfAttention',
                             'LayerList', 'GeneratorTrunk', 'Generator'])  # Our training/networks_biggan.py.
_NVAE_CLASSES = frozenset(['Conv2D', 'BatchNorm', 'Linear', 'Activation', 'Chain', 'ConvBNSwish', 'InvertedResidual',
                           'SqueezeExcitation', 'Cell', 'DecCombinerCell', 'NVAEGenerator'])
_MODULE_ATTRS = frozenset(['training'])  # nn.Module bookkeeping that is not part of the architecture.


def _defined_classes(src):
    return frozenset(re.findall(r'^class\s+(\w+)', src or '', flags=re.MULTILINE))


def _source_kind(obj):
    """'sg2' or 'sg3' when the embedded module defines exactly the classes of a known NVlabs network file."""
    classes = _defined_classes(obj.module_src)
    if classes == _SG2_CLASSES:
        return 'sg2'
    if classes == _SG3_CLASSES:
        return 'sg3'
    if classes == convert_progan.NETWORK_CLASSES:
        return 'progan'
    if classes == _BIGGAN_CLASSES:
        return 'biggan'
    if classes == _NVAE_CLASSES:
        return 'nvae'
    return None


def _rebuild_snapshot(data, name, only=None):
    out = {}
    for key, value in data.items():
        if isinstance(value, _PickledPersistent):
            if only is not None and key not in only:
                value = None  # Not asked for: dropped unbuilt (nothing from it runs).
            elif key == 'augment_pipe':
                warnings.warn(f'{name}: dropped the augmentation pipeline ({value.class_name}); sampling does not '
                              'use it. Pass --allow-pickle-code (allow_code=True) to load it.', stacklevel=3)
                value = None
            else:
                value = _rebuild_network(value, name, key)
        else:
            _check_plain(value, f'{name}: {key}')
        out[key] = value
    return out


def _check_plain(value, where):
    """Refuse a persistent object hidden inside a plain value (it would stay an unverified stand-in)."""
    for item in safe_pickle.iter_unique(value):  # By identity: shared references are visited once.
        if isinstance(item, _PickledPersistent):
            raise NetworkLoadError(f'{where} contains a {item.class_name} object that safe loading cannot rebuild; '
                                   'pass --allow-pickle-code (allow_code=True) if you trust the file')


def _rebuild_network(obj, name, key):
    where = f'{name}: {key}'
    if obj.version != persistence._version or obj.type != 'class':
        raise NetworkLoadError(f'{where}: unsupported persistence format: this loader reads version '
                               f'{persistence._version} (type class), the file has version {obj.version!r} (type {obj.type!r})')
    kind = _source_kind(obj)
    rebuildable = {'sg2': ('Generator', 'Discriminator'), 'sg3': ('Generator',),
                   'progan': ('Generator',), 'biggan': ('Generator',), 'nvae': ('NVAEGenerator',)}.get(kind, ())
    if obj.class_name not in rebuildable:
        raise NetworkLoadError(f'{where} is a {obj.class_name} from a network file that safe loading does not '
                               'recognise; pass --allow-pickle-code (allow_code=True) if you trust the file')

    expected_class = _ROLE_CLASSES.get(key)
    if expected_class is not None and obj.class_name not in (expected_class, *_OTHER_GENERATORS.get(key, ())):
        raise NetworkLoadError(f'{where} is a {obj.class_name}, not a {expected_class}; the file is damaged or '
                               'its networks are swapped')

    state = obj.state
    init_args, init_kwargs = state.get('_init_args', ()), state.get('_init_kwargs', {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise NetworkLoadError(f'{where}: the pickled constructor arguments are not a tuple and a dict')
    init_args, init_kwargs = tuple(init_args), dict(init_kwargs)
    if kind == 'sg2':
        from training import networks_stylegan2 as module
        init_kwargs.setdefault('compat', _sg2_compat(obj))
    elif kind == 'progan':
        from training import networks_progan as module
    elif kind == 'sg3':
        from training import networks_stylegan3 as module
    elif kind == 'biggan':
        from training import networks_biggan as module
    else:
        from training import networks_nvae as module
    cls = getattr(module, obj.class_name)
    _check_network_arguments(cls, init_args, init_kwargs, where)
    try:
        # Built on the CPU without random initialisation, under an allocation budget set by the
        # file's own tensors: arguments from the file cannot make us allocate much more than the file holds.
        # (Building on the meta device would allocate nothing, but meta tensors run torch's Python reference
        # kernels, whose first call imports torch._dynamo: about a second of every script start.)
        with _BoundedConstruction(_pickled_bytes(obj), where):
            net = cls(*init_args, **init_kwargs)
    except NetworkLoadError:
        raise
    except Exception as err:  # noqa: BLE001 -- any failure means the arguments do not describe our network.
        raise NetworkLoadError(f'{where}: cannot rebuild {obj.class_name} from its pickled arguments '
                               f'({type(err).__name__}: {err})') from None
    _check_network_size(net, where)
    _verify_and_copy(net, obj, key, where)
    return net


# Random initialisers become torch.empty: their values are replaced by the pickled tensors, and untouched pages
# cost nothing.
_SIZED_FACTORIES = {torch.randn: torch.empty, torch.rand: torch.empty, torch.empty: torch.empty,
                    torch.zeros: torch.zeros, torch.ones: torch.ones, torch.full: torch.full}


def _pickled_bytes(obj):
    """Bytes of every tensor in a pickled persistent object and its submodules."""
    total = 0
    for module in _walk(obj):
        for kind in ('_parameters', '_buffers'):
            for tensor in dict(module.state.get(kind, {})).values():
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total


class _BoundedConstruction(torch.overrides.TorchFunctionMode):
    """Run a network constructor cheaply and within a memory budget.

    Random initialisers become torch.empty (their values are replaced by the pickled tensors anyway); every
    size-taking factory is checked against the budget before it allocates, and every other new tensor is
    counted after. Exceeding the budget raises NetworkLoadError.
    """

    def __init__(self, pickled_bytes, where):
        super().__init__()
        # The constructor holds each parameter once or twice (e.g. randn(...) / lr_multiplier) plus small buffers.
        self.budget = 4 * pickled_bytes + (64 << 20)
        self.used = 0
        self.where = where

    def _charge(self, nbytes):
        self.used += nbytes
        if self.used > self.budget:
            raise NetworkLoadError(f'{self.where}: its constructor arguments ask for more than '
                                   f'{self.budget >> 20} MiB, far more than the file\'s own tensors; refusing to '
                                   'load (pass --allow-pickle-code to run the pickle\'s own code)')

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        factory = _SIZED_FACTORIES.get(func)
        if factory is not None:
            kwargs.pop('generator', None)
            if func is torch.full:
                size, rest = args[0] if args else kwargs.pop('size'), args[1:]
            else:
                size, rest = (args[0] if len(args) == 1 and not isinstance(args[0], int) else args), ()
                if not args:
                    size = kwargs.pop('size')
            numel = int(np.prod([int(n) for n in size], dtype=np.float64)) if len(size) else 1
            dtype = kwargs.get('dtype') or torch.get_default_dtype()
            self._charge(numel * torch.empty((), dtype=dtype).element_size())
            return factory(size, *rest, **kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor) and not any(result is arg for arg in args):
            self._charge(result.numel() * result.element_size())
        return result


def _sg2_compat(obj):
    """Which NVlabs source a StyleGAN2 object came from: sg3's adds in_features to every FC layer."""
    for module in _walk(obj):
        if 'compat' in module.state:
            return module.state['compat']
        if module.class_name == 'FullyConnectedLayer':
            return 'sg3' if 'in_features' in module.state else 'ada'
    return 'sg3'


def _persistent_children(item):
    modules = item.state.get('_modules', {}) if isinstance(item.state, dict) else {}
    return [child for child in modules.values() if isinstance(child, _PickledPersistent)] \
        if isinstance(modules, dict) else []


def _walk(obj):
    """Every persistent object under ``obj``, each once (a pickle may share submodules exponentially)."""
    return safe_pickle.iter_unique(obj, children=_persistent_children)


def _plain_attrs(state):
    return {key: value for key, value in state.items() if not key.startswith('_') and key not in _MODULE_ATTRS}


def _verify_and_copy(net, obj, path, where):
    """Check that ``net`` has exactly the pickled architecture, then adopt the pickled tensors as its own.

    Parameters and buffers (including buffers __init__ derives, such as StyleGAN3's filters) are data: only
    their names, shapes and dtypes are checked. Plain attributes must equal ours (floats within rounding,
    see _values_equal), and the module then carries the pickled values, exactly as code mode would.
    """
    def fail(message):
        raise NetworkLoadError(f'{where}: the pickled network differs from ours at {path}: {message}; '
                               'refusing to load (pass --allow-pickle-code to run the pickle\'s own code)')

    if not isinstance(obj, _PickledPersistent):
        fail(f'expected a persistent {type(net).__name__}, found {type(obj).__name__}')
    if type(net).__name__ != obj.class_name:
        fail(f'class {obj.class_name}, ours is {type(net).__name__}')
    state = obj.state

    for kind in ('_parameters', '_buffers'):
        ours, theirs = getattr(net, kind), dict(state.get(kind, {}))
        if set(ours) != set(theirs):
            fail(f'{kind[1:]} {sorted(theirs)}, ours are {sorted(ours)}')
        for key, tensor in ours.items():
            pickled = theirs[key]
            if (tensor is None) != (pickled is None):
                fail(f'{kind[1:-1]} {key} is {"None" if pickled is None else "set"} in the pickle')
            if tensor is None:
                continue
            if not isinstance(pickled, torch.Tensor) or tuple(pickled.shape) != tuple(tensor.shape):
                fail(f'{kind[1:-1]} {key} has shape {tuple(getattr(pickled, "shape", ()))}, ours {tuple(tensor.shape)}')
            if pickled.dtype != tensor.dtype:
                fail(f'{kind[1:-1]} {key} has dtype {pickled.dtype}, ours {tensor.dtype}')
            if kind == '_parameters':
                ours[key] = torch.nn.Parameter(pickled.detach(), requires_grad=pickled.requires_grad)
            else:
                ours[key] = pickled.detach()

    ours_attrs, theirs_attrs = _plain_attrs(net.__dict__), _plain_attrs(state)
    if 'compat' not in theirs_attrs:
        ours_attrs.pop('compat', None)  # Our bookkeeping of which NVlabs source to follow.
    if set(ours_attrs) != set(theirs_attrs):
        extra, missing = sorted(set(theirs_attrs) - set(ours_attrs)), sorted(set(ours_attrs) - set(theirs_attrs))
        fail(f'attributes {extra} are not ours' if extra else f'attributes {missing} are missing')
    for key, value in ours_attrs.items():
        if not _values_equal(value, theirs_attrs[key]):
            fail(f'attribute {key} = {theirs_attrs[key]!r}, ours {value!r}')
    # Within rounding is the same architecture; the module keeps the pickled values, as unpickling with
    # allow_code=True does, so both modes compute the same on any numpy (filters already came from the file).
    net.__dict__.update(theirs_attrs)

    theirs_modules = dict(state.get('_modules', {}))
    if set(net._modules) != set(theirs_modules):
        fail(f'submodules {sorted(theirs_modules)}, ours are {sorted(net._modules)}')
    for key, child in net._modules.items():
        if child is None or theirs_modules[key] is None:
            if (child is None) != (theirs_modules[key] is None):
                fail(f'submodule {key} is missing on one side')
            continue
        _verify_and_copy(child, theirs_modules[key], f'{path}.{key}', where)
    net.training = bool(state.get('training', False))


# Floats recomputed in __init__ (StyleGAN3's cutoffs, widths, gains) differ by an ulp between numpy 1.x, which
# wrote every published pickle, and numpy 2.x; a real change of architecture is many orders of magnitude larger.
_FLOAT_RTOL = 1e-9


def _number_kind(dtype):
    """'b' (bool), 'i' (any integer), 'f' (real float) or None: what must agree between ours and the pickle's."""
    kind = np.dtype(dtype).kind
    return {'b': 'b', 'i': 'i', 'u': 'i', 'f': 'f'}.get(kind)


def _as_number(x):
    """A 0-d numpy array for Python and numpy numbers (bool, int, float), else None."""
    if isinstance(x, (bool, int, float, np.bool_, np.integer, np.floating)):
        return np.asarray(x)
    return None


def _floats_close(a, b):
    """Equal up to rounding: rtol 1e-9 for float64, a few ulps of the coarser type when either is float32/16."""
    eps = max(np.finfo(a.dtype).eps, np.finfo(b.dtype).eps)
    rtol = max(_FLOAT_RTOL, 4 * eps) if eps > np.finfo(np.float64).eps else _FLOAT_RTOL
    a, b = a.astype(np.float64), b.astype(np.float64)
    return bool(np.all(np.isclose(a, b, rtol=rtol, atol=0, equal_nan=True)))


def _values_equal(a, b):
    """Same value for the architecture: exact for structure, ints, strings; floats within rounding.

    Numbers compare by kind (bool, integer, float) and value, so a Python float and a numpy float64 (or a
    numpy 1.x and 2.x scalar) with the same value agree; an int never equals a float, nor a scalar an array.
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        kind = _number_kind(a.dtype)
        if kind is None or kind != _number_kind(b.dtype):
            return False
        return _floats_close(a, b) if kind == 'f' else bool(np.array_equal(a, b))
    number_a, number_b = _as_number(a), _as_number(b)
    if number_a is not None or number_b is not None:
        if number_a is None or number_b is None:
            return False
        kind = _number_kind(number_a.dtype)
        if kind != _number_kind(number_b.dtype):
            return False
        return _floats_close(number_a, number_b) if kind == 'f' else bool(number_a == number_b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b and type(a) is type(b)
    return False

# ----------------------------------------------------------------------------
# Bounds on what a file may make us build: argument ranges, network size, tensor layout, roles.

_max_network_bytes = contextvars.ContextVar('legacy_max_network_bytes', default=None)
_NETWORK_BYTES_SLACK = 1 << 20  # Buffers derived at construction (e.g. resampling filters) are not in the file.


def _network_bytes_budget(f):
    """A network's parameters and buffers all come from the file, so together they cannot exceed its size."""
    try:
        if isinstance(f, io.BytesIO):
            return len(f.getbuffer()) + _NETWORK_BYTES_SLACK
        return os.fstat(f.fileno()).st_size + _NETWORK_BYTES_SLACK
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


_I, _F = safe_pickle.Int, safe_pickle.Float


class _NVAEArch:
    """NVAE's decoder cell table: None, or {cell type: [1..8 'mconv_e*k*g*' op names]} for its four cell types."""

    def check(self, value):
        from training import networks_nvae
        if value is None:
            return True
        return (isinstance(value, dict) and set(value) == set(networks_nvae.DECODER_CELL_TYPES)
                and all(isinstance(ops, (list, tuple)) and 1 <= len(ops) <= 8
                        and all(self._sane(networks_nvae.parse_mbconv_op(op)) for op in ops) for ops in value.values()))

    @staticmethod
    def _sane(op):  # expansion, kernel, groups
        return op is not None and 1 <= op[0] <= 16 and 1 <= op[1] <= 15 and 0 <= op[2] <= 4096

_ACTIVATIONS = safe_pickle.OneOf(('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish'))
# Generous bounds: the largest published networks use 1024 px, 512-1024 channels, 8 mapping layers, 14
# synthesis layers and filters of 6 taps; anything far beyond is a damaged or hostile file.
_NETWORK_ARGUMENT_RULES = {
    'z_dim': _I(0, 16384), 'c_dim': _I(0, 100_000), 'w_dim': _I(1, 16384), 'num_ws': _I(1, 256, none=True),
    'img_resolution': _I(4, 8192), 'img_channels': _I(1, 16),
    'mapping_kwargs': safe_pickle.NESTED, 'synthesis_kwargs': safe_pickle.NESTED,
    'block_kwargs': safe_pickle.NESTED, 'epilogue_kwargs': safe_pickle.NESTED, 'layer_kwargs': safe_pickle.NESTED,
    'num_layers': _I(0, 64), 'embed_features': _I(1, 16384, none=True), 'layer_features': _I(1, 16384, none=True),
    'activation': _ACTIVATIONS, 'lr_multiplier': _F(1e-6, 1e3), 'w_avg_beta': _F(0, 1, none=True),
    'channel_base': _I(1, 1 << 22), 'channel_max': _I(1, 16384), 'num_fp16_res': _I(0, 16),
    'conv_clamp': _F(0, 1e6, none=True), 'architecture': safe_pickle.OneOf(('orig', 'skip', 'resnet')),
    'resample_filter': safe_pickle.Numbers(16), 'use_noise': safe_pickle.BOOL,
    'fp16_channels_last': safe_pickle.BOOL, 'channels_last': safe_pickle.BOOL, 'kernel_size': _I(1, 15),
    'fused_modconv_default': safe_pickle.OneOf((True, False, 'inference_only')),
    'compat': safe_pickle.OneOf(('ada', 'sg3')), 'cmap_dim': _I(1, 16384, none=True), 'freeze_layers': _I(0, 64),
    'mbstd_group_size': _I(1, 1024, none=True), 'mbstd_num_channels': _I(0, 64),
    # StyleGAN3 synthesis and layers.
    'num_critical': _I(0, 64), 'first_cutoff': _F(1e-3, 1e4), 'first_stopband': _F(1e-3, 1e4),
    'last_stopband_rel': _F(1e-3, 100), 'margin_size': _I(0, 1024), 'output_scale': _F(-1e6, 1e6),
    'conv_kernel': _I(1, 15), 'filter_size': _I(1, 64), 'lrelu_upsampling': _I(1, 16),
    'use_radial_filters': safe_pickle.BOOL, 'magnitude_ema_beta': _F(0, 1),
    # ProGAN.
    'fmap_base': _I(1, 1 << 22), 'fmap_decay': _F(0, 16), 'fmap_max': _I(1, 16384),
    'normalize_latents': safe_pickle.BOOL, 'use_wscale': safe_pickle.BOOL, 'use_pixelnorm': safe_pickle.BOOL,
    'use_leakyrelu': safe_pickle.BOOL, 'fused_scale': safe_pickle.BOOL, 'pixelnorm_epsilon': _F(0, 1),
    # BigGAN-deep (training/networks_biggan.py).
    'channel_width': _I(1, 4096), 'attention_layer_position': _I(0, 64), 'class_embed_dim': _I(1, 16384, none=True),
    'n_stats': _I(2, 1001), 'eps': _F(1e-12, 1), 'stats_blend': safe_pickle.OneOf(('port', 'linear')),
    'layers': None,  # Set below: a list of (upsample, in_mult, out_mult).
    # NVAE's decoder (training/networks_nvae.py).
    'num_latent_scales': _I(1, 8), 'num_groups_per_scale': _I(1, 64), 'ada_groups': safe_pickle.BOOL,
    'min_groups_per_scale': _I(1, 64), 'num_latent_per_group': _I(1, 1024), 'num_channels_dec': _I(1, 4096),
    'num_preprocess_blocks': _I(1, 8), 'num_postprocess_blocks': _I(1, 8), 'num_postprocess_cells': _I(1, 16),
    'num_cell_per_cond_dec': _I(1, 16), 'use_se': safe_pickle.BOOL, 'input_size': _I(4, 8192),
    'crop': _I(1, 8192, none=True), 'arch': _NVAEArch(),
}


class _BigGANLayers:
    """BigGAN's ``layers``: None, or at most 64 (upsample, in_mult, out_mult) triples of a bool and two multipliers."""

    def check(self, value):
        if value is None:
            return True
        return (isinstance(value, (list, tuple)) and len(value) <= 64
                and all(isinstance(layer, (list, tuple)) and len(layer) == 3 and safe_pickle.BOOL.check(layer[0])
                        and _I(1, 64).check(layer[1]) and _I(1, 64).check(layer[2]) for layer in value))


_NETWORK_ARGUMENT_RULES['layers'] = _BigGANLayers()


def _check_network_arguments(cls, init_args, init_kwargs, where):
    """Refuse absurd constructor arguments (e.g. 10^6 layers, a 20,000-tap filter) before building anything."""
    import inspect
    orig_init = next(klass.__init__ for klass in cls.__mro__ if not persistence.is_persistent(klass))
    try:
        bound = inspect.signature(orig_init).bind(None, *init_args, **init_kwargs)
    except TypeError as err:
        raise NetworkLoadError(f'{where}: the pickled arguments do not fit our {cls.__name__} ({err})') from None
    arguments = {}
    for param_name, value in list(bound.arguments.items())[1:]:  # [0] is self.
        kind = inspect.signature(orig_init).parameters[param_name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise NetworkLoadError(f'{where}: our {cls.__name__} takes no further positional arguments')
        else:
            arguments[param_name] = value
    try:
        safe_pickle.check_arguments(arguments, _NETWORK_ARGUMENT_RULES, where)
    except safe_pickle.ArgumentRangeError as err:
        raise NetworkLoadError(str(err)) from None


def _check_network_size(net, where):
    """Refuse a network (built on the meta device, or on the CPU under ``_BoundedConstruction``) whose parameters
    and buffers exceed what the file can hold."""
    limit = _max_network_bytes.get()
    if limit is None:
        return
    total = safe_pickle.module_bytes(net)
    if total > limit:
        raise NetworkLoadError(f'{where}: its arguments describe a network of {total / 2**20:,.1f} MiB, more than '
                               f'the whole file ({(limit - _NETWORK_BYTES_SLACK) / 2**20:,.1f} MiB) could hold; the '
                               'file is damaged or hostile')


_ROLE_CLASSES = {'G': 'Generator', 'G_ema': 'Generator', 'D': 'Discriminator'}
_OTHER_GENERATORS = {'G': ('NVAEGenerator',), 'G_ema': ('NVAEGenerator',)}  # Generators of other names.
# The common generator face (sampling/synthesis.py); W and a mapping are StyleGAN's only (not ProGAN's, BigGAN's,
# NVAE's).
_GENERATOR_ATTRS = ('z_dim', 'c_dim', 'img_resolution', 'img_channels')


def _check_roles(data, name):
    """G and G_ema must be generators (what sampling calls), in either mode; a swapped D fails here, not later."""
    for key in ('G', 'G_ema'):
        net = data[key]
        if net is not None and not all(hasattr(net, attr) for attr in _GENERATOR_ATTRS):
            raise NetworkLoadError(f'{name}: {key} is a {type(net).__name__}, not a generator (it lacks '
                                   f'{", ".join(a for a in _GENERATOR_ATTRS if not hasattr(net, a))})')


def _check_network_tensors(net, where):
    """Every parameter and buffer: a dense CPU/CUDA tensor of a dtype networks use, inside its storage."""
    for tensor_name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        what = f'{where}: tensor {tensor_name}'
        if tensor.device.type not in ('cpu', 'cuda'):
            raise NetworkLoadError(f'{what} is on device {tensor.device.type}; the file holds no data for it')
        if tensor.dtype not in safe_pickle.TENSOR_DTYPES:
            raise NetworkLoadError(f'{what} has dtype {tensor.dtype}, which no network of ours uses')
        storage = tensor.untyped_storage()
        try:
            safe_pickle.check_tensor_layout(storage.nbytes() // tensor.element_size(), tensor.storage_offset(),
                                            tuple(tensor.shape), tuple(tensor.stride()), what)
        except safe_pickle.UnsafePickleError as err:
            raise NetworkLoadError(f'{err}; the file is damaged or hostile') from None

# ----------------------------------------------------------------------------


def _force_fp16(data):
    """Rebuild each network with float16 blocks (num_fp16_res=4, conv_clamp=256), as NVlabs' --force-fp16."""
    for key in ('G', 'D', 'G_ema'):
        old = data[key]
        if old is None or not hasattr(old, 'init_kwargs'):
            continue
        if _defined_classes(getattr(old, '_orig_module_src', '')) == convert_progan.NETWORK_CLASSES:
            raise NetworkLoadError('--force-fp16 applies to StyleGAN networks only; ProGAN runs in float32')
        kwargs = copy.deepcopy(old.init_kwargs)
        fp16 = dict(num_fp16_res=4, conv_clamp=256)
        if key != 'D' and 'synthesis_kwargs' in kwargs:
            kwargs['synthesis_kwargs'] = dict(kwargs['synthesis_kwargs'] or {}, **fp16)
        else:
            kwargs.update(fp16)
        new = type(old)(*old.init_args, **kwargs).eval().requires_grad_(False)
        from torch_utils import misc
        misc.copy_params_and_buffers(old, new, require_all=True)
        data[key] = new
    return data

# ----------------------------------------------------------------------------


# TF-era (TensorFlow 1.x) StyleGAN2 and StyleGAN2-ADA pickles: a (G, D, Gs) tuple of dnnlib.tflib Network states.
#
# Each state holds `version`, `static_kwargs` (the network's constructor arguments), `components`
# (nested states, e.g. mapping and synthesis) and `variables` (name, ndarray) pairs. We rebuild our
# StyleGAN2 networks (compat='ada') from the arguments and fill every parameter and buffer from
# the variables; nothing from TensorFlow is imported and no code in the pickle runs.

_TF_MIN_VERSION = 4  # The tflib Network state version of StyleGAN2 and later.

# Arguments that only affect training or the TF graph, never the weights or the images we compute.
_TF_IGNORED_KWARGS = frozenset(['truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure',
                                'conditioning', 'fused_modconv'])

# TF flavours by their build functions. StyleGAN2 (NVlabs' stylegan2 repository) and StyleGAN2-ADA (its TF
# repository) convert alike; their variables share names and layouts. StyleGAN1 shares G_mapping and
# G_synthesis with StyleGAN2-ADA, so it is told apart by its G (G_style) and D (D_basic); ProGAN by
# G_paper/D_paper (its pickles name another Network class, tfutil.Network, and do not reach this code).
_TF_CONVERTIBLE_FUNCS = {
    'G':         {'G_main'},
    'mapping':   {'G_mapping'},
    'synthesis': {'G_synthesis_stylegan2', 'G_synthesis'},  # StyleGAN2, StyleGAN2-ADA
    'D':         {'D_stylegan2', 'D_main'},                 # StyleGAN2, StyleGAN2-ADA
}
_TF_UNSUPPORTED_FUNCS = {
    'G_style': 'StyleGAN1', 'D_basic': 'StyleGAN1', 'G_paper': 'ProGAN', 'D_paper': 'ProGAN',
    'G_synthesis_stylegan_revised': 'StyleGAN2 config A (StyleGAN1-like)',
    'D_stylegan': 'StyleGAN2 config A (StyleGAN1-like)',
}

# How a TF variable becomes one of our tensors: (TF shape from our shape, TF array -> our array).
# TF stores dense weights [in, out] and conv weights [kh, kw, in, out]. Our upsampling layers use
# a true convolution where TF's transposed convolution correlates, hence the spatial flip.
_TF_LAYOUTS = {
    'same':      (lambda s: s, lambda x: x),
    'fc':        (lambda s: (s[1], s[0]), lambda x: x.T),
    'conv':      (lambda s: (s[2], s[3], s[1], s[0]), lambda x: x.transpose(3, 2, 0, 1)),
    'conv_flip': (lambda s: (s[2], s[3], s[1], s[0]), lambda x: x[::-1, ::-1].transpose(3, 2, 0, 1)),
    'mod_bias':  (lambda s: s, lambda x: x + 1),  # TF adds the style offset 1 at run time; ours is in the bias.
    'const':     (lambda s: (1, *s), lambda x: x[0]),
    'noise':     (lambda s: (1, 1, *s), lambda x: x[0, 0]),
}


def _convert_tf_pickle(data, name):
    """Convert a TF-era (G, D, Gs) tuple into a snapshot dict of this repository's networks."""
    tf_G, tf_D, tf_Gs = data
    return dict(
        training_set_kwargs = None,
        G                   = _convert_tf_generator(tf_G, f'{name}: G'),
        D                   = _convert_tf_discriminator(tf_D, f'{name}: D'),
        G_ema               = _convert_tf_generator(tf_Gs, f'{name}: Gs'),
        augment_pipe        = None,
    )


def _convert_tf_generator(tf_G, where):
    _check_tf_network(tf_G, where, need_synthesis=True)
    kwarg = _TFKwargs(tf_G, where)
    kwargs = dict(
        z_dim               = kwarg('latent_size', 512),
        c_dim               = kwarg('label_size', 0),
        w_dim               = kwarg('dlatent_size', 512),
        img_resolution      = kwarg('resolution', 1024),
        img_channels        = kwarg('num_channels', 3),
        mapping_kwargs      = dict(
            num_layers      = kwarg('mapping_layers', 8),
            embed_features  = kwarg('label_fmaps', None),
            layer_features  = kwarg('mapping_fmaps', None),
            activation      = kwarg('mapping_nonlinearity', 'lrelu'),
            lr_multiplier   = kwarg('mapping_lrmul', 0.01),
            w_avg_beta      = kwarg('w_avg_beta', 0.995, none=1),
        ),
        synthesis_kwargs    = dict(
            channel_base    = kwarg('fmap_base', 16384) * 2,  # TF halves the channels one stage earlier.
            channel_max     = kwarg('fmap_max', 512),
            num_fp16_res    = kwarg('num_fp16_res', 0),
            conv_clamp      = kwarg('conv_clamp', None),
            architecture    = kwarg('architecture', 'skip'),
            resample_filter = kwarg('resample_kernel', [1, 3, 3, 1]),
            use_noise       = kwarg('use_noise', True),
            activation      = kwarg('nonlinearity', 'lrelu'),
        ),
        compat              = 'ada',
    )
    kwarg.check_all_known()
    from training import networks_stylegan2
    variables = _collect_tf_variables(tf_G, where)
    G = _build_from_tf_kwargs(networks_stylegan2.Generator, kwargs, where, variables)
    _load_tf_variables(G, variables, _tf_generator_source, where)
    return G


def _convert_tf_discriminator(tf_D, where):
    _check_tf_network(tf_D, where, need_synthesis=False)
    kwarg = _TFKwargs(tf_D, where)
    activation = kwarg('nonlinearity', 'lrelu')
    mapping_fmaps = kwarg('mapping_fmaps', None)
    kwargs = dict(
        c_dim               = kwarg('label_size', 0),
        img_resolution      = kwarg('resolution', 1024),
        img_channels        = kwarg('num_channels', 3),
        architecture        = kwarg('architecture', 'resnet'),
        channel_base        = kwarg('fmap_base', 16384) * 2,
        channel_max         = kwarg('fmap_max', 512),
        num_fp16_res        = kwarg('num_fp16_res', 0),
        conv_clamp          = kwarg('conv_clamp', None),
        cmap_dim            = mapping_fmaps,
        block_kwargs        = dict(
            activation      = activation,
            resample_filter = kwarg('resample_kernel', [1, 3, 3, 1]),
            freeze_layers   = kwarg('freeze_layers', 0),
        ),
        mapping_kwargs      = dict(
            num_layers      = kwarg('mapping_layers', 0),
            embed_features  = mapping_fmaps,
            layer_features  = mapping_fmaps,
            activation      = activation,
            lr_multiplier   = kwarg('mapping_lrmul', 0.1),
        ),
        epilogue_kwargs     = dict(
            mbstd_group_size    = kwarg('mbstd_group_size', None),
            mbstd_num_channels  = kwarg('mbstd_num_features', 1),
            activation          = activation,
        ),
        compat              = 'ada',
    )
    kwarg.check_all_known()
    from training import networks_stylegan2
    variables = _collect_tf_variables(tf_D, where)
    D = _build_from_tf_kwargs(networks_stylegan2.Discriminator, kwargs, where, variables)
    _load_tf_variables(D, variables, _tf_discriminator_source, where)
    return D


def _tf_state(tf_net):
    return tf_net.__dict__  # _TFNetworkStub keeps the unpickled state as plain attributes.


def _tf_subnetworks(tf_net):
    yield tf_net
    components = _tf_state(tf_net).get('components') or {}
    if isinstance(components, dict):
        for component in components.values():
            if isinstance(component, _TFNetworkStub):
                yield from _tf_subnetworks(component)


def _check_tf_network(tf_net, where, need_synthesis):
    """Refuse TF networks that are not StyleGAN2 or StyleGAN2-ADA before reading their arguments."""
    supported = 'only TF StyleGAN2 and StyleGAN2-ADA pickles can be converted'
    role_of = {id(tf_net): 'G' if need_synthesis else 'D'}
    for comp_name, component in dict(_tf_state(tf_net).get('components') or {}).items():
        role_of[id(component)] = str(comp_name)
    for net in _tf_subnetworks(tf_net):
        func_name = str(_tf_state(net).get('build_func_name') or '').rsplit('.', 1)[-1]
        if func_name in _TF_UNSUPPORTED_FUNCS:
            raise NetworkLoadError(f'{where}: {_TF_UNSUPPORTED_FUNCS[func_name]} TF pickles are not supported '
                                   f'(found {func_name}); {supported}')
        allowed = _TF_CONVERTIBLE_FUNCS.get(role_of.get(id(net)), set())
        if func_name and func_name not in allowed:
            raise NetworkLoadError(f'{where}: unknown TF network (build function {func_name}); {supported}')
        for var_name, _value in _tf_variable_pairs(net, where):
            if re.search(r'_lod\d*(/|$)', var_name):  # Progressive-growing ToRGB/FromRGB per level of detail.
                raise NetworkLoadError(f'{where}: progressive-growing (StyleGAN1/ProGAN) TF pickles are not '
                                       f'supported (found variable {var_name}); {supported}')
    components = _tf_state(tf_net).get('components') or {}
    if need_synthesis and 'synthesis' not in components:
        raise NetworkLoadError(f'{where}: the TF generator has no synthesis network, so it is not StyleGAN2 '
                               f'(StyleGAN1/ProGAN?); {supported}')

    version = _tf_state(tf_net).get('version')
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
        raise NetworkLoadError(f'{where}: the TF network has no valid version ({version!r}); the pickle is damaged '
                               'or not a TF StyleGAN2 pickle')
    if version < _TF_MIN_VERSION:
        raise NetworkLoadError(f'{where}: TF network version {version} is too old; only StyleGAN2 pickles '
                               f'(TF network version >= {_TF_MIN_VERSION}) can be converted')


class _TFKwargs:
    """Reads a TF network's static_kwargs by TF name with defaults, and refuses the ones it never read."""

    def __init__(self, tf_net, where):
        kwargs = _tf_state(tf_net).get('static_kwargs') or {}
        if not isinstance(kwargs, dict):
            raise NetworkLoadError(f'{where}: the TF network arguments are a {type(kwargs).__name__}, not a dict')
        self.kwargs = dict(kwargs)
        self.known = set(_TF_IGNORED_KWARGS)
        self.where = where

    def __call__(self, tf_name, default, none=None):
        self.known.add(tf_name)
        value = self.kwargs.get(tf_name, default)
        if value is None and none is not None:
            return none
        return value.item() if isinstance(value, np.generic) else value

    def check_all_known(self):
        unknown = sorted(set(self.kwargs) - self.known)
        if unknown:
            listed = ', '.join(f'{key}={self.kwargs[key]!r}' for key in unknown)
            raise NetworkLoadError(f'{self.where}: unknown TF network argument(s) {listed}; this converter reads '
                                   'TF StyleGAN2 arguments only and does not guess what others mean')


def _build_from_tf_kwargs(cls, kwargs, where, variables):
    """Build ``cls(**kwargs)`` once, within a budget set by the TF variables' bytes (the network they fill)."""
    _check_network_arguments(cls, (), kwargs, where)
    try:
        with _BoundedConstruction(sum(value.nbytes for value in variables.values()), where):
            net = cls(**kwargs)
        _check_network_size(net, where)
    except NetworkLoadError:
        raise
    except Exception as err:  # noqa: BLE001 -- any failure means the TF arguments describe no network of ours.
        message = str(err).splitlines()[0] if str(err) else ''
        raise NetworkLoadError(f'{where}: cannot build a StyleGAN2 {cls.__name__} from the TF network arguments '
                               f'({type(err).__name__}: {message})') from None
    return net.eval().requires_grad_(False)


def _tf_variable_pairs(tf_net, where):
    variables = _tf_state(tf_net).get('variables') or []
    try:
        pairs = [(str(var_name), value) for var_name, value in variables]
    except (TypeError, ValueError):
        raise NetworkLoadError(f'{where}: the TF network variables are not (name, value) pairs; the pickle is '
                               'damaged or not a TF StyleGAN2 pickle') from None
    return pairs


def _collect_tf_variables(tf_net, where, prefix=''):
    """All variables of a TF network and its components, named 'component/.../variable'."""
    out = {}
    for var_name, value in _tf_variable_pairs(tf_net, where):
        if not (isinstance(value, np.ndarray) or isinstance(value, np.generic)) or np.asarray(value).dtype.kind != 'f':
            raise NetworkLoadError(f'{where}: TF variable {prefix + var_name} is a {type(value).__name__}, '
                                   'not a float array')
        out[prefix + var_name] = np.asarray(value)
    components = _tf_state(tf_net).get('components') or {}
    for comp_name, component in dict(components).items():
        if not isinstance(component, _TFNetworkStub):
            raise NetworkLoadError(f'{where}: TF component {prefix + str(comp_name)} is a '
                                   f'{type(component).__name__}, not a TF network')
        for var_name, value in _collect_tf_variables(component, where, f'{prefix}{comp_name}/').items():
            if var_name in out:
                raise NetworkLoadError(f'{where}: TF variable {var_name} appears twice')
            out[var_name] = value
    return out


@torch.no_grad()
def _load_tf_variables(net, tf_vars, source_fn, where):
    """Fill every parameter and buffer of ``net`` from its TF variable, each exactly once, all checked."""
    used = set()
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        if name.rsplit('.', 1)[-1] == 'resample_filter':
            continue  # Derived from resample_kernel at construction; TF keeps no variable for it.
        source = source_fn(name)
        if source is None:
            raise NetworkLoadError(f'{where}: our {name} has no TF counterpart; this converter does not support '
                                   'the network arguments in the pickle')
        tf_name, layout = source
        if tf_name not in tf_vars:
            raise NetworkLoadError(f'{where}: TF variable {tf_name} is missing (it holds our {name}); the pickle '
                                   'is damaged or its variables do not match its network arguments')
        tf_shape, convert = _TF_LAYOUTS[layout]
        value = tf_vars[tf_name]
        expected = tuple(tf_shape(tuple(tensor.shape)))
        if value.shape != expected:
            raise NetworkLoadError(f'{where}: TF variable {tf_name} has shape {value.shape}, expected {expected} '
                                   f'from the network arguments; the pickle is damaged or inconsistent')
        tensor.copy_(torch.from_numpy(np.array(convert(value), dtype=np.float32, order='C')))
        used.add(tf_name)

    # A variable we did not use means the TF network computes something ours does not.
    unused = sorted(var_name for var_name in set(tf_vars) - used if var_name.rsplit('/', 1)[-1] != 'lod')
    if unused:
        shown = ', '.join(unused[:5]) + (f' and {len(unused) - 5} more' if len(unused) > 5 else '')
        raise NetworkLoadError(f'{where}: TF variable(s) {shown} have no counterpart in the StyleGAN2 network its '
                               'arguments describe; refusing a partial conversion')


def _tf_generator_source(name):
    """(TF variable name, layout) that holds our generator tensor ``name``, or None."""
    if name == 'mapping.w_avg':
        return 'dlatent_avg', 'same'
    match = re.fullmatch(r'mapping\.(embed|fc(\d+))\.(weight|bias)', name)
    if match:
        layer = 'LabelEmbed' if match[1] == 'embed' else f'Dense{match[2]}'
        return f'mapping/{layer}/{match[3]}', ('fc' if match[3] == 'weight' else 'same')
    if name == 'synthesis.b4.const':
        return 'synthesis/4x4/Const/const', 'const'
    match = re.fullmatch(r'synthesis\.b(\d+)\.(conv0|conv1|torgb|skip)\.(.+)', name)
    if not match:
        return None
    res, layer, param = int(match[1]), match[2], match[3]
    if param == 'noise_const':
        # TF numbers its noise inputs over all conv layers: b4.conv1, b8.conv0, b8.conv1, b16.conv0, ...
        index = 2 * int(np.log2(res)) - (5 if layer == 'conv0' else 4)
        return f'synthesis/noise{index}', 'noise'
    tf_layer = dict(conv0='Conv0_up', conv1=('Conv' if res == 4 else 'Conv1'), torgb='ToRGB', skip='Skip')[layer]
    weight_layout = 'conv_flip' if layer in ('conv0', 'skip') else 'conv'
    tf_param = {
        'weight':           ('weight', weight_layout),
        'bias':             ('bias', 'same'),
        'noise_strength':   ('noise_strength', 'same'),
        'affine.weight':    ('mod_weight', 'fc'),
        'affine.bias':      ('mod_bias', 'mod_bias'),
    }.get(param)
    if tf_param is None:
        return None
    return f'synthesis/{res}x{res}/{tf_layer}/{tf_param[0]}', tf_param[1]


def _tf_discriminator_source(name):
    """(TF variable name, layout) that holds our discriminator tensor ``name``, or None."""
    match = re.fullmatch(r'mapping\.(embed|fc(\d+))\.(weight|bias)', name)
    if match:
        layer = 'LabelEmbed' if match[1] == 'embed' else f'Mapping{match[2]}'
        return f'{layer}/{match[3]}', ('fc' if match[3] == 'weight' else 'same')
    match = re.fullmatch(r'b(\d+)\.(fromrgb|conv0|conv1|skip|conv|fc|out)\.(weight|bias)', name)
    if not match:
        return None
    res, layer, param = int(match[1]), match[2], match[3]
    if layer == 'out':
        tf_layer = 'Output'
    else:
        tf_layer = dict(fromrgb='FromRGB', conv0='Conv0', conv1='Conv1_down', skip='Skip', conv='Conv',
                        fc='Dense0')[layer]
        tf_layer = f'{res}x{res}/{tf_layer}'
    if param == 'bias':
        return f'{tf_layer}/bias', 'same'
    return f'{tf_layer}/weight', ('fc' if layer in ('fc', 'out') else 'conv')

# ----------------------------------------------------------------------------
# Command line: python legacy.py --source in.pkl --dest out.pkl


def _apply_threads(ctx, param, value):
    from torch_utils.threads import set_threads
    set_threads(value)


@click.command()
@click.option('--threads', type=click.IntRange(min=1), expose_value=False, callback=_apply_threads,
              help='CPU threads for torch and BLAS  [default: one per idle core, from the load average]')
@click.option('--source', help='Network pickle to convert (TF-era StyleGAN2 or ProGAN, StyleGAN2-ADA, StyleGAN3): '
              'path or URL; or a BigGAN-deep checkpoint of the PyTorch port (folder or .bin)',
              required=True, metavar='PATH')
@click.option('--dest', help='Where to write the converted pickle', required=True, metavar='PATH')
@click.option('--force-fp16', help='Rebuild with float16 blocks (num_fp16_res=4, conv_clamp=256)', is_flag=True)
@click.option('--g-ema-only', help='Keep only G_ema (and training_set_kwargs): a smaller file for sampling',
              is_flag=True)
@click.option('--allow-pickle-code', help='Run code embedded in the source pickle (only for files you trust)',
              is_flag=True)
def convert_network_pickle(source, dest, force_fp16, g_ema_only, allow_pickle_code):
    """Convert a network pickle to this repository's PyTorch format (readable by NVlabs' PyTorch code too).

    \b
    Example:
    python legacy.py --source=stylegan2-ffhq-config-f.pkl --dest=stylegan2-ffhq-config-f-pt.pkl
    python legacy.py --source=network-snapshot-000100.pkl --dest=generator.pkl --g-ema-only
    python legacy.py --source=biggan-deep-256 --dest=biggan-deep-256.pkl
    """
    from training import load_biggan
    try:
        if load_biggan.is_checkpoint_path(source):  # The BigGAN port's folder or .bin: its generator only.
            if force_fp16:
                raise click.UsageError('--force-fp16 rebuilds StyleGAN blocks; it does not apply to BigGAN')
            data = dict(G=None, D=None, augment_pipe=None, training_set_kwargs=None, G_ema=load_network(source))
        else:
            with dnnlib.util.open_url(source, verbose=False) as f:
                data = load_network_pkl(f, allow_code=allow_pickle_code, force_fp16=force_fp16)
    except NetworkLoadError as err:
        raise click.ClickException(str(err)) from None
    except FileNotFoundError:
        raise click.ClickException(f'network pickle not found: {source}') from None
    except OSError as err:
        raise click.ClickException(f'cannot read {source}: {err}') from None
    if g_ema_only:
        data.update(G=None, D=None, augment_pipe=None)
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        if data[key] is not None and not persistence.is_persistent(data[key]):
            raise click.ClickException(f'{source}: {key} is a {type(data[key]).__name__} that cannot be saved in the '
                                       'NVlabs pickle format')
    try:
        save_network_pkl(dest, **{key: data[key] for key in ('G', 'D', 'G_ema', 'training_set_kwargs',
                                                              'augment_pipe')})
    except OSError as err:
        raise click.ClickException(f'cannot write {dest}: {err}') from None
    click.echo(f'Saved {dest}')


if __name__ == '__main__':
    convert_network_pickle()  # pylint: disable=no-value-for-parameter
