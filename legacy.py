"""Loading and saving NVlabs network pickles.

``load_network_pkl(f)`` reads a StyleGAN2-ADA / StyleGAN3 snapshot (a pickled dict with G, D,
G_ema, training_set_kwargs, augment_pipe) *without executing code from the file*: a restricted
unpickler admits only the globals a network pickle needs, and every persistent network object is
rebuilt as an instance of this repository's own class from its pickled constructor arguments, then
checked against the pickled state (names, shapes and plain attributes must all agree) before the
weights are copied in. ``allow_code=True`` instead runs the module source embedded in the pickle,
as NVlabs' own loader does; both give the same images.
"""

import copy
import io
import os
import pickle
import re
import tempfile
import warnings

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

# ----------------------------------------------------------------------------


class NetworkLoadError(Exception):
    """A network pickle could not be loaded; the message is one line saying why and what to do."""


def load_network_pkl(f, allow_code=False, force_fp16=False):
    """Load a network snapshot from the open binary file ``f``.

    Returns a dict with keys ``G``, ``D``, ``G_ema``, ``training_set_kwargs`` and ``augment_pipe``
    (missing entries are None). With ``allow_code=False`` (the default) nothing in the file is
    executed; objects that cannot be rebuilt safely are refused, except the augmentation pipeline,
    which sampling does not need and which is dropped with a warning.
    """
    name = getattr(f, 'name', None) or 'the network pickle'
    data = _unpickle(f, name, allow_code)

    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, _TFNetworkStub) for net in data):
        data = _convert_tf_pickle(data, name)
    if not isinstance(data, dict):
        raise NetworkLoadError(f'{name} does not contain a network snapshot: expected a dict with G_ema '
                               f'(or a TF-era (G, D, Gs) tuple), found {type(data).__name__}')
    if not allow_code:
        data = _rebuild_snapshot(data, name)

    for key in ('G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'):
        data.setdefault(key, None)
    if data['G_ema'] is None:
        raise NetworkLoadError(f'{name} has no G_ema network; keys found: {", ".join(sorted(map(str, data)))}')
    for key in ('G', 'D', 'G_ema'):
        if data[key] is not None and not isinstance(data[key], torch.nn.Module):
            raise NetworkLoadError(f'{name}: {key} is a {type(data[key]).__name__}, not a network')
    if not (data['training_set_kwargs'] is None or isinstance(data['training_set_kwargs'], dict)):
        raise NetworkLoadError(f'{name}: training_set_kwargs is a {type(data["training_set_kwargs"]).__name__}, '
                               'not a dict')
    if not (data['augment_pipe'] is None or isinstance(data['augment_pipe'], torch.nn.Module)):
        raise NetworkLoadError(f'{name}: augment_pipe is not a module')

    if force_fp16:
        data = _force_fp16(data)
    return data


def load_network(network, allow_code=False, device=None, key='G_ema'):
    """Open ``network`` (a path or URL, via dnnlib.util.open_url) and return the module under ``key``.

    The module is in eval mode, without gradients, on ``device`` (default: where it was loaded).
    """
    try:
        with dnnlib.util.open_url(network, verbose=False) as f:
            net = load_network_pkl(f, allow_code=allow_code)[key]
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


def save_network_pkl(path, G=None, D=None, G_ema=None, training_set_kwargs=None, augment_pipe=None):
    """Write a snapshot in NVlabs' layout (a plain pickle of a dict), atomically.

    Each network is deep-copied and stored in eval mode, without gradients, on the CPU, as NVlabs'
    training loop does; the pickle embeds the networks' module source, so NVlabs' loader reads it too.
    """
    data = dict(training_set_kwargs=copy.deepcopy(training_set_kwargs))
    for key, module in (('G', G), ('D', D), ('G_ema', G_ema), ('augment_pipe', augment_pipe)):
        if module is not None:
            assert persistence.is_persistent(module), f'{key} must be an instance of a persistent class'
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[key] = module
    _atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))


def _atomic_write(path, write_fn):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

# ----------------------------------------------------------------------------
# Unpickling.


class _TFNetworkStub(dnnlib.EasyDict):
    """Stands in for dnnlib.tflib.network.Network: BUILD fills its __dict__ with the TF network state."""


class _PickledPersistent:
    """What safe mode makes of a persistent object: its meta dict, with no code run."""

    def __init__(self, meta):
        self.class_name = meta.get('class_name')
        self.module_src = meta.get('module_src')
        self.version = meta.get('version')
        self.type = meta.get('type')
        self.state = meta.get('state') or {}

    def __repr__(self):
        return f'<pickled {self.class_name}>'


def _load_storage_from_bytes(b):
    # torch's own _load_from_bytes runs an unrestricted torch.load; the nested storage needs none of that.
    return torch.load(io.BytesIO(b), weights_only=True)


try:
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray


_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): lambda: __import__('collections').OrderedDict,
    ('dnnlib.util', 'EasyDict'): lambda: dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): lambda: dnnlib.EasyDict,
    ('torch._utils', '_rebuild_tensor_v2'): lambda: torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): lambda: torch._utils._rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): lambda: torch._utils._rebuild_parameter_with_state,
    ('torch.storage', '_load_from_bytes'): lambda: _load_storage_from_bytes,
    ('dnnlib.tflib.network', 'Network'): lambda: _TFNetworkStub,
}
for _np_module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    _SAFE_GLOBALS[(_np_module, 'scalar')] = lambda: _np_multiarray.scalar
    _SAFE_GLOBALS[(_np_module, '_reconstruct')] = lambda: _np_multiarray._reconstruct
for _np_module in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray'):
    _SAFE_GLOBALS[(_np_module, 'ndarray')] = lambda: np.ndarray
    _SAFE_GLOBALS[(_np_module, 'dtype')] = lambda: np.dtype
for _np_dtype in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType', 'UInt8DType'):
    _SAFE_GLOBALS[('numpy.dtypes', _np_dtype)] = (lambda n: lambda: getattr(np.dtypes, n))(_np_dtype)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return _PickledPersistent
        factory = _SAFE_GLOBALS.get((module, name))
        if factory is None:
            raise _RefusedGlobal(f'{module}.{name}')
        return factory()


class _CodeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ('dnnlib.tflib.network', 'Network'):
            return _TFNetworkStub
        return super().find_class(module, name)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _unpickle(f, name, allow_code):
    unpickler = _CodeUnpickler(f) if allow_code else _SafeUnpickler(f)
    try:
        return unpickler.load()
    except _RefusedGlobal as err:
        raise NetworkLoadError(f'refusing to load {name}: it references {err}, which safe loading does not allow; '
                               'if you trust the file, pass --allow-pickle-code (allow_code=True)') from None
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
    return None


def _rebuild_snapshot(data, name):
    out = {}
    for key, value in data.items():
        if isinstance(value, _PickledPersistent):
            if key == 'augment_pipe':
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
    if isinstance(value, _PickledPersistent):
        raise NetworkLoadError(f'{where} contains a {value.class_name} object that safe loading cannot rebuild; '
                               'pass --allow-pickle-code (allow_code=True) if you trust the file')
    if isinstance(value, dict):
        for item in value.values():
            _check_plain(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)


def _rebuild_network(obj, name, key):
    where = f'{name}: {key}'
    if obj.version != persistence._version or obj.type != 'class':
        raise NetworkLoadError(f'{where}: unsupported persistence format (version {obj.version!r}); '
                               'this loader reads version 6')
    kind = _source_kind(obj)
    rebuildable = {'sg2': ('Generator', 'Discriminator'), 'sg3': ('Generator',)}.get(kind, ())
    if obj.class_name not in rebuildable:
        raise NetworkLoadError(f'{where} is a {obj.class_name} from a network file that safe loading does not '
                               'recognise; pass --allow-pickle-code (allow_code=True) if you trust the file')

    state = obj.state
    init_args = tuple(state.get('_init_args', ()))
    init_kwargs = dict(state.get('_init_kwargs', {}))
    if kind == 'sg2':
        from training import networks_stylegan2 as module
        init_kwargs.setdefault('compat', _sg2_compat(obj))
    else:
        from training import networks_stylegan3 as module
    cls = getattr(module, obj.class_name)
    try:
        net = cls(*init_args, **init_kwargs)
    except Exception as err:  # noqa: BLE001 -- any failure means the arguments do not describe our network.
        raise NetworkLoadError(f'{where}: cannot rebuild {obj.class_name} from its pickled arguments '
                               f'({type(err).__name__}: {err})') from None
    _verify_and_copy(net, obj, key, where)
    return net


def _sg2_compat(obj):
    """Which NVlabs source a StyleGAN2 object came from: sg3's adds in_features to every FC layer."""
    for module in _walk(obj):
        if 'compat' in module.state:
            return module.state['compat']
        if module.class_name == 'FullyConnectedLayer':
            return 'sg3' if 'in_features' in module.state else 'ada'
    return 'sg3'


def _walk(obj):
    yield obj
    for child in obj.state.get('_modules', {}).values():
        if isinstance(child, _PickledPersistent):
            yield from _walk(child)


def _plain_attrs(state):
    return {key: value for key, value in state.items() if not key.startswith('_') and key not in _MODULE_ATTRS}


@torch.no_grad()
def _verify_and_copy(net, obj, path, where):
    """Check that ``net`` has exactly the pickled architecture, then load the pickled tensors into it."""
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
            if not pickled.is_floating_point():
                fail(f'{kind[1:-1]} {key} has dtype {pickled.dtype}')
            tensor.copy_(pickled)
            if kind == '_parameters':
                tensor.requires_grad_(pickled.requires_grad)

    ours_attrs, theirs_attrs = _plain_attrs(net.__dict__), _plain_attrs(state)
    if 'compat' not in theirs_attrs:
        ours_attrs.pop('compat', None)  # Our bookkeeping of which NVlabs source to follow.
    if set(ours_attrs) != set(theirs_attrs):
        extra, missing = sorted(set(theirs_attrs) - set(ours_attrs)), sorted(set(ours_attrs) - set(theirs_attrs))
        fail(f'attributes {extra} are not ours' if extra else f'attributes {missing} are missing')
    for key, value in ours_attrs.items():
        if not _values_equal(value, theirs_attrs[key]):
            fail(f'attribute {key} = {theirs_attrs[key]!r}, ours {value!r}')

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


def _values_equal(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.all(np.asarray(a) == np.asarray(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b and type(a) is type(b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False

# ----------------------------------------------------------------------------


def _force_fp16(data):
    """Rebuild each network with float16 blocks (num_fp16_res=4, conv_clamp=256), as NVlabs' --force-fp16."""
    for key in ('G', 'D', 'G_ema'):
        old = data[key]
        if old is None or not hasattr(old, 'init_kwargs'):
            continue
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


def _convert_tf_pickle(data, name):
    raise NetworkLoadError(f'{name} is a TF-era (TensorFlow 1.x) pickle; converting those is not supported yet')
