"""Safe conversion of ProGAN's TF 1.x release pickles to ``training.networks_progan.Generator``.

A release file (e.g. ``karras2018iclr-celebahq-1024x1024.pkl``) is a pickled tuple ``(G, D, Gs)`` of
``tfutil.Network`` objects restored through ``__setstate__`` from a dict ``{version: 2, name,
static_kwargs, build_module_src, build_func_name, variables}``, ``variables`` being ``(local_name,
ndarray)`` pairs. TF's loader ``exec``s ``build_module_src``; we never do. The unpickler (``legacy.py``)
maps the ``tfutil.Network`` global to :class:`TFNetworkState`, which only keeps the state dict; this
module reads the build function's arguments, builds our generator, and fills every tensor from the
variable of the same name after checking its shape. Anything it does not understand is refused with
one line. Theano-era pickles (class ``network.Network``) are refused at unpickling time (``THEANO_REFUSAL``).

The discriminator (``D_paper``, a WGAN-GP critic) is not converted: sampling does not use it.

Layouts: TF dense weights are [in, out], conv weights [kh, kw, in, out] (HWIO), the fused up-conv
weight ``Conv0_up/weight`` is [kh, kw, out, in]. Ours are [out, in] and [out, in, kh, kw].
"""

import pickle
import re

import numpy as np
import torch

from dnnlib.util import UserError
from training import networks_progan

# Top-level classes of networks_progan.py: how legacy.py recognises our own ProGAN pickles' source.
NETWORK_CLASSES = frozenset(['EqualizedDense', 'EqualizedConv2d', 'InputBlock', 'UpBlock', 'Generator'])

_STATE_KEYS = frozenset(['version', 'name', 'static_kwargs', 'build_module_src', 'build_func_name', 'variables'])
_STATE_VERSION = 2

# G_paper's arguments that we read: name -> (accepted Python types, our Generator's keyword or None).
_G_KWARGS = {
    'num_channels':         ((int,), 'img_channels'),
    'resolution':           ((int,), 'img_resolution'),
    'label_size':           ((int,), 'c_dim'),
    'latent_size':          ((int, type(None)), 'z_dim'),
    'fmap_base':            ((int,), 'fmap_base'),
    'fmap_decay':           ((int, float), 'fmap_decay'),
    'fmap_max':             ((int,), 'fmap_max'),
    'normalize_latents':    ((bool,), 'normalize_latents'),
    'use_wscale':           ((bool,), 'use_wscale'),
    'use_pixelnorm':        ((bool,), 'use_pixelnorm'),
    'pixelnorm_epsilon':    ((int, float), 'pixelnorm_epsilon'),
    'use_leakyrelu':        ((bool,), 'use_leakyrelu'),
    'fused_scale':          ((bool,), 'fused_scale'),
}
# Arguments that only shape the TF graph, with the values that leave the images unchanged.
_G_GRAPH_KWARGS = {
    'structure':            (None, 'linear', 'recursive'),  # Two graph layouts of the same function.
    'is_template_graph':    (False, True),
    'dtype':                ('float32',),
}


class ConversionError(ValueError, UserError):
    """A ProGAN pickle cannot be converted; the message is one line saying why."""


class TFNetworkState:
    """Stands in for ProGAN's ``tfutil.Network`` while unpickling: keeps the state dict, runs nothing."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f'a tfutil.Network state is a {type(state).__name__}, not a dict')
        self.state = state

    def __repr__(self):
        return f'<tfutil.Network state {self.__dict__.get("state", {}).get("name")!r}>'


# What legacy.py says when a file names the Theano-era class network.Network (refused like any unknown global).
THEANO_REFUSAL = ('it is a Theano-era ProGAN pickle (network.Network); only the TF release (tfutil.Network, e.g. '
                  'karras2018iclr-celebahq-1024x1024.pkl) can be converted')


def is_progan_pickle(data):
    """Whether unpickled ``data`` is the (G, D, Gs) tuple of a ProGAN TF release."""
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetworkState) for net in data)


def convert_progan_pickle(data, name):
    """Snapshot dict (G, D, G_ema, training_set_kwargs, augment_pipe) of our networks from a (G, D, Gs) tuple.

    Raises :class:`ConversionError` for anything that is not a ProGAN G_paper we can rebuild exactly.
    """
    tf_G, tf_D, tf_Gs = data
    _network_state(tf_D, f'{name}: D')  # Validated like the generators, then dropped.
    return dict(G=convert_generator(tf_G, f'{name}: G'), D=None, G_ema=convert_generator(tf_Gs, f'{name}: Gs'),
                training_set_kwargs=None, augment_pipe=None)


def convert_generator(tf_net, where):
    """Our ``networks_progan.Generator`` (eval mode, no gradients) with the weights of one G_paper state."""
    state = _network_state(tf_net, where)
    func_name = state['build_func_name'].rsplit('.', 1)[-1]
    if func_name != 'G_paper':
        raise ConversionError(f'{where} is built by {func_name}; only ProGAN generators (G_paper) can be converted')
    tf_vars = _variables(state, where)
    kwargs = _generator_kwargs(state['static_kwargs'], tf_vars, where)
    try:
        with torch.device('meta'):  # Nothing is allocated until every variable has been checked.
            G = networks_progan.Generator(**kwargs)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConversionError(f'{where}: cannot build a ProGAN generator from {kwargs} ({message})') from None

    sources = tf_variable_layout(G)
    for param_name, (tf_name, _layout, expected) in sources.items():
        if tf_name not in tf_vars:
            raise ConversionError(f'{where}: TF variable {tf_name} is missing (it holds our {param_name}); the pickle '
                                  'is damaged or its variables do not match its network arguments')
        if tf_vars[tf_name].shape != expected:
            raise ConversionError(f'{where}: TF variable {tf_name} has shape {tf_vars[tf_name].shape}, expected '
                                  f'{expected} from the network arguments; the pickle is damaged or inconsistent')
    if not np.isfinite(tf_vars['lod']):
        raise ConversionError(f'{where}: TF variable lod is {tf_vars["lod"]}, not a level of detail; the pickle is '
                              'damaged')
    unused = sorted(set(tf_vars) - {tf_name for tf_name, _layout, _shape in sources.values()})
    if unused:
        shown = ', '.join(unused[:5]) + (f' and {len(unused) - 5} more' if len(unused) > 5 else '')
        raise ConversionError(f'{where}: TF variable(s) {shown} have no counterpart in the ProGAN generator its '
                              'arguments describe; refusing a partial conversion')

    G = G.to_empty(device='cpu')
    with torch.no_grad():
        for param_name, tensor in [*G.named_parameters(), *G.named_buffers()]:
            tf_name, layout, _shape = sources[param_name]
            value = _TF_TO_OURS[layout](tf_vars[tf_name])
            tensor.copy_(torch.from_numpy(np.array(value, dtype=np.float32, order='C')))
    return G.eval().requires_grad_(False)


def tf_variable_layout(G):
    """``{our tensor name: (TF variable name, layout, TF shape)}`` for every parameter and buffer of ``G``."""
    out = {}
    for param_name, tensor in [*G.named_parameters(), *G.named_buffers()]:
        tf_name, layout = _tf_source(param_name, G)
        out[param_name] = tf_name, layout, _TF_SHAPES[layout](tuple(tensor.shape))
    return out

# ----------------------------------------------------------------------------


def _network_state(tf_net, where):
    state = tf_net.__dict__.get('state')
    if not isinstance(state, dict):
        raise ConversionError(f'{where}: the tfutil.Network has no state; the pickle is damaged')
    keys = set(state)
    if keys != _STATE_KEYS:
        missing, extra = sorted(_STATE_KEYS - keys), sorted(map(str, keys - _STATE_KEYS))
        raise ConversionError(f'{where}: the tfutil.Network state ' + (f'lacks {missing}' if missing else
                              f'has unknown entries {extra}') + '; this converter reads the ProGAN release format')
    version = state['version']
    if type(version) is not int or version != _STATE_VERSION:
        raise ConversionError(f'{where}: tfutil.Network state version {version!r}; this converter reads version '
                              f'{_STATE_VERSION} (the ProGAN TF release)')
    for key, kind in (('static_kwargs', dict), ('build_func_name', str), ('variables', (list, tuple))):
        if not isinstance(state[key], kind):
            raise ConversionError(f'{where}: the tfutil.Network {key} is a {type(state[key]).__name__}; the pickle '
                                  'is damaged')
    return state


def _variables(state, where):
    out = {}
    for item in state['variables']:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ConversionError(f'{where}: the TF variables are not (name, array) pairs; the pickle is damaged')
        var_name, value = item
        if not isinstance(value, (np.ndarray, np.generic)) or np.asarray(value).dtype.kind != 'f':
            kind = f'{type(value).__name__} of {value.dtype}' if hasattr(value, 'dtype') else type(value).__name__
            raise ConversionError(f'{where}: TF variable {var_name} is not a float array but a {kind}')
        if var_name in out:
            raise ConversionError(f'{where}: TF variable {var_name} appears twice')
        out[var_name] = np.asarray(value)
    return out


def _generator_kwargs(static_kwargs, tf_vars, where):
    """Our Generator's arguments from G_paper's static_kwargs (with G_paper's defaults) and the variables."""
    unknown = sorted(map(str, set(static_kwargs) - set(_G_KWARGS) - set(_G_GRAPH_KWARGS)))
    if unknown:
        raise ConversionError(f'{where}: unknown G_paper argument(s) {", ".join(unknown)}; this converter does not '
                              'guess what they mean')
    for key, allowed in _G_GRAPH_KWARGS.items():
        if key in static_kwargs and not any(_same(static_kwargs[key], value) for value in allowed):
            raise ConversionError(f'{where}: G_paper argument {key}={static_kwargs[key]!r} is not supported '
                                  f'(supported: {", ".join(map(repr, allowed))})')
    kwargs = {}
    for key, (types, ours) in _G_KWARGS.items():
        if key not in static_kwargs:
            continue
        value = static_kwargs[key]
        value = value.item() if isinstance(value, np.generic) else value
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ConversionError(f'{where}: G_paper argument {key}={value!r} has type {type(value).__name__}, '
                                  f'expected {types[0].__name__}')
        kwargs[ours] = value

    # G_paper's defaults; resolution and channels, which its caller always passes, follow the variables.
    if kwargs.get('z_dim') is None:
        kwargs['z_dim'] = networks_progan.feature_maps(0, kwargs.get('fmap_base', 8192),
                                                       kwargs.get('fmap_decay', 1.0), kwargs.get('fmap_max', 512))
    kwargs.setdefault('c_dim', 0)
    kwargs.setdefault('fused_scale', True)
    levels = [int(match[1]) for match in map(re.compile(r'ToRGB_lod(\d+)/weight').fullmatch, tf_vars) if match]
    if 'img_resolution' not in kwargs:
        if not levels:
            raise ConversionError(f'{where}: no resolution argument and no ToRGB_lod variables; not a ProGAN generator')
        kwargs['img_resolution'] = 4 * 2 ** max(levels)
    if 'img_channels' not in kwargs:
        rgb = tf_vars.get('ToRGB_lod0/weight')
        if rgb is None or rgb.ndim != 4:
            raise ConversionError(f'{where}: no num_channels argument and no ToRGB_lod0/weight variable; not a ProGAN '
                                  'generator')
        kwargs['img_channels'] = int(rgb.shape[-1])
    for key in ('z_dim', 'img_resolution', 'img_channels', 'fmap_base', 'fmap_max'):
        if key in kwargs and not 0 < kwargs[key] <= 1 << 16:
            raise ConversionError(f'{where}: G_paper argument for {key} = {kwargs[key]} is out of range')
    if not 0 <= kwargs['c_dim'] <= 1 << 16:
        raise ConversionError(f'{where}: label_size = {kwargs["c_dim"]} is out of range')
    for key, high in (('fmap_decay', 16), ('pixelnorm_epsilon', 1)):
        if key in kwargs and not 0 <= kwargs[key] <= high:  # Also refuses NaN.
            raise ConversionError(f'{where}: G_paper argument {key} = {kwargs[key]} is out of range [0, {high}]')
    return kwargs


def _same(a, b):
    return type(a) is type(b) and a == b


def _tf_source(param_name, G):
    """(TF variable name, layout) of our tensor ``param_name``; every tensor of our Generator has one."""
    if param_name == 'lod':
        return 'lod', 'scalar'
    block, layer, param = param_name.split('.')
    res = int(block[1:])
    if layer == 'torgb':
        scope = f'ToRGB_lod{G.resolution_log2 - int(np.log2(res))}'
    elif layer == 'dense':
        scope = '4x4/Dense'
    elif layer == 'conv':
        scope = '4x4/Conv'
    elif layer == 'conv0' and getattr(G, block).conv0.up == 'fused':
        scope = f'{res}x{res}/Conv0_up'
    else:
        scope = f'{res}x{res}/{layer.capitalize()}'
    if param == 'bias':
        return f'{scope}/bias', 'same'
    return f'{scope}/weight', ('dense' if layer == 'dense' else 'conv_up' if scope.endswith('_up') else 'conv')


# Our shape -> the TF shape; TF array -> ours.
_TF_SHAPES = {
    'same':     lambda s: s,
    'scalar':   lambda s: (),
    'dense':    lambda s: (s[1], s[0]),
    'conv':     lambda s: (s[2], s[3], s[1], s[0]),
    'conv_up':  lambda s: (s[2], s[3], s[0], s[1]),
}
_TF_TO_OURS = {
    'same':     lambda x: x,
    'scalar':   lambda x: x,
    'dense':    lambda x: x.T,
    'conv':     lambda x: x.transpose(3, 2, 0, 1),
    'conv_up':  lambda x: x.transpose(2, 3, 0, 1),
}
