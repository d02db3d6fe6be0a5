"""Pickling of network objects together with the source code of their module (format version 6).

A class decorated with :func:`persistent_class` pickles its instances as a call to
:func:`_reconstruct_persistent_obj` with a meta dict holding the full source text of the class's
module, the class name and the instance state. Unpickling executes that source in a fresh module,
so a snapshot keeps working after the code that wrote it has changed. This is the format of
NVlabs' network pickles; see docs/nvlabs-compat.md section 1 in the shared documentation.

Executing embedded source runs code from the file: ``legacy.load_network_pkl`` only does so when the
user opts in, and otherwise rebuilds known classes without ``exec``.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

_version = 6                # Format version written into every meta dict; readers refuse others.
_decorators = set()         # Every class produced by persistent_class().
_import_hooks = []          # Callables that may rewrite a meta dict before its source is executed.
_module_to_src_dict = dict()
_src_to_module_dict = dict()


def persistent_class(orig_class):
    """Class decorator: instances remember their constructor arguments and pickle with their module source.

    The returned subclass keeps the original ``__name__``. Its instances expose ``init_args`` and
    ``init_kwargs`` (deep copies of the constructor arguments), which is how tools rebuild a network
    with other options.
    """
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class

    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
            assert orig_class.__name__ in orig_module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    _decorators.add(Decorator)
    return Decorator


def is_persistent(obj):
    """True for a persistent class and for instances of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook):
    """Register ``hook(meta) -> meta``, called on every persistent object before its source runs."""
    assert callable(hook)
    _import_hooks.append(hook)


def _reconstruct_persistent_obj(meta):
    """Unpickle hook: execute the embedded module source and restore the object's state. Runs code."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None

    if meta.version != _version:  # A ValueError, not an assert: loaders report it as a bad file, in one line.
        raise ValueError(f'unsupported persistence format: this code reads version {_version}, the file has '
                         f'version {meta.version!r}')
    module = _src_to_module(meta.module_src)

    assert meta.type == 'class'
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)

    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module):
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src):
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        # Register before exec so that persistent_class() inside the source finds it without inspect.
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__)  # noqa: S102 -- the caller has opted in to running pickled code.
    return module


def _check_pickleable(obj):
    """Raise early, at construction, if the constructor arguments could not be pickled later."""
    def recurse(obj):
        if isinstance(obj, (list, tuple, set)):
            return [recurse(x) for x in obj]
        if isinstance(obj, dict):
            return [[recurse(x), recurse(y)] for x, y in obj.items()]
        if isinstance(obj, (str, int, float, bool, bytes, bytearray, type(None))):
            return None  # Python primitive types are pickleable.
        if f'{type(obj).__module__}.{type(obj).__name__}' in ('numpy.ndarray', 'torch.Tensor',
                                                               'torch.nn.parameter.Parameter'):
            return None  # Arrays and tensors are pickleable.
        if is_persistent(obj):
            return None  # Persistent objects pickle themselves.
        return obj
    with io.BytesIO() as f:
        pickle.dump(recurse(obj), f)
