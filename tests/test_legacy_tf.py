"""legacy.py on TF-era StyleGAN2 pickles (dnnlib.tflib Network states), made in the test.

The TF pickles are written from our own tiny networks with the *inverse* of the documented
conversion (our tensors -> TF variable names and layouts), spelled out here independently of
legacy.py. Converting them back must give the same images and discriminator outputs.
"""

import contextlib
import copy
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

import dnnlib
import legacy
from training.networks_stylegan2 import Discriminator, Generator

# ----------------------------------------------------------------------------
# Writing TF-layout pickles.


class Network:
    """Pickles like TF's dnnlib.tflib.network.Network: its state is the dict __getstate__ returns."""

    def __init__(self, state):
        self._state = state

    def __getstate__(self):
        return self._state


Network.__module__ = 'dnnlib.tflib.network'


@contextlib.contextmanager
def _tflib_registered():
    """Make dnnlib.tflib.network.Network resolvable for pickle.dumps, and undo it afterwards."""
    names = ('dnnlib.tflib', 'dnnlib.tflib.network')
    saved = {name: sys.modules.get(name) for name in names}
    package, module = types.ModuleType(names[0]), types.ModuleType(names[1])
    module.Network = Network
    package.network = module
    sys.modules.update({names[0]: package, names[1]: module})
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _to_network(state):
    state = dict(state, components=dnnlib.EasyDict({k: _to_network(v) for k, v in state['components'].items()}))
    return Network(state)


def _tf_pickle(G_state, D_state, Gs_state):
    with _tflib_registered():
        return pickle.dumps((_to_network(G_state), _to_network(D_state), _to_network(Gs_state)), protocol=4)


def _tf_state(name, func_name, kwargs, variables, components=None, version=4):
    return dict(version=version, name=name, static_kwargs=dict(kwargs), components=dict(components or {}),
                build_module_src='# TensorFlow source, never run by the converter\n', build_func_name=func_name,
                variables=[(var_name, np.array(value.detach().numpy(), dtype=np.float32))
                           for var_name, value in variables])


def _tf_dense(prefix, fc):
    return [(f'{prefix}/weight', fc.weight.t()), (f'{prefix}/bias', fc.bias)]


def _tf_conv(prefix, layer, flip=False):
    weight = layer.weight.flip([2, 3]) if flip else layer.weight  # TF's transposed conv correlates.
    out = [(f'{prefix}/weight', weight.permute(2, 3, 1, 0))]  # [O, I, kh, kw] -> [kh, kw, I, O]
    return out + ([(f'{prefix}/bias', layer.bias)] if layer.bias is not None else [])


def _tf_modulated(prefix, layer, flip=False):
    out = _tf_conv(prefix, layer, flip)
    out += [(f'{prefix}/mod_weight', layer.affine.weight.t()), (f'{prefix}/mod_bias', layer.affine.bias - 1)]
    if hasattr(layer, 'noise_strength'):
        out.append((f'{prefix}/noise_strength', layer.noise_strength))
    return out


# Build functions as each TF repository names them (what tells the flavours apart).
_FUNCS = dict(
    sg2=dict(G='G_main', mapping='G_mapping', synthesis='G_synthesis_stylegan2', D='D_stylegan2'),
    ada=dict(G='G_main', mapping='G_mapping', synthesis='G_synthesis', D='D_main'),
)


def _tf_generator_state(G, kwargs, flavour='sg2'):
    mapping = [var for i in range(G.mapping.num_layers) for var in _tf_dense(f'Dense{i}', getattr(G.mapping, f'fc{i}'))]
    if G.c_dim > 0:
        mapping += _tf_dense('LabelEmbed', G.mapping.embed)

    synthesis, noise = [], []
    for res in G.synthesis.block_resolutions:
        block, scope = getattr(G.synthesis, f'b{res}'), f'{res}x{res}'
        if res == 4:
            synthesis.append((f'{scope}/Const/const', block.const[None]))
            convs = [('Conv', block.conv1, False)]
        else:
            convs = [('Conv0_up', block.conv0, True), ('Conv1', block.conv1, False)]
        for tf_name, layer, flip in convs:
            synthesis += _tf_modulated(f'{scope}/{tf_name}', layer, flip)
            if hasattr(layer, 'noise_const'):  # TF numbers the noise inputs in layer order.
                noise.append((f'noise{len(noise)}', layer.noise_const[None, None]))
        if hasattr(block, 'torgb'):
            synthesis += _tf_modulated(f'{scope}/ToRGB', block.torgb)
        if hasattr(block, 'skip'):
            synthesis += _tf_conv(f'{scope}/Skip', block.skip, flip=True)

    funcs = _FUNCS[flavour]
    components = dict(
        mapping=_tf_state('G_mapping', f'training.networks.{funcs["mapping"]}',
                          dict(kwargs, dlatent_broadcast=G.num_ws), mapping),
        synthesis=_tf_state('G_synthesis', f'training.networks.{funcs["synthesis"]}', kwargs, noise + synthesis),
    )
    return _tf_state('G', f'training.networks.{funcs["G"]}', kwargs, [('dlatent_avg', G.mapping.w_avg)], components)


def _tf_discriminator_state(D, kwargs, flavour='sg2'):
    variables = []
    for res in D.block_resolutions:
        block = getattr(D, f'b{res}')
        for ours, theirs in (('fromrgb', 'FromRGB'), ('conv0', 'Conv0'), ('conv1', 'Conv1_down'), ('skip', 'Skip')):
            if hasattr(block, ours):
                variables += _tf_conv(f'{res}x{res}/{theirs}', getattr(block, ours))
    if hasattr(D.b4, 'fromrgb'):
        variables += _tf_conv('4x4/FromRGB', D.b4.fromrgb)
    variables += _tf_conv('4x4/Conv', D.b4.conv) + _tf_dense('4x4/Dense0', D.b4.fc) + _tf_dense('Output', D.b4.out)
    if D.c_dim > 0:
        variables += _tf_dense('LabelEmbed', D.mapping.embed)
        variables += [var for i in range(D.mapping.num_layers)
                      for var in _tf_dense(f'Mapping{i}', getattr(D.mapping, f'fc{i}'))]
    return _tf_state('D', f'training.networks.{_FUNCS[flavour]["D"]}', kwargs, variables)

# ----------------------------------------------------------------------------
# Tiny reference networks and the TF arguments that describe them.


def _perturb(net, seed):
    """Non-trivial values everywhere a wrong conversion could hide (zero biases, zero noise strengths, ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith(('bias', 'noise_strength', 'w_avg')):
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.3)
    return net.eval().requires_grad_(False)


def _case(conditional):
    """(TF G kwargs, TF D kwargs, G, Gs, D): our networks built with the arguments the TF kwargs mean."""
    c_dim = 4 if conditional else 0
    g_arch = 'resnet' if conditional else 'skip'
    d_arch = 'skip' if conditional else 'resnet'
    g_tf = dict(latent_size=16, dlatent_size=16, label_size=c_dim, resolution=16, num_channels=3, fmap_base=128,
                fmap_max=32, mapping_layers=2, truncation_psi=0.5, style_mixing_prob=0.9)
    d_tf = dict(label_size=c_dim, resolution=16, num_channels=3, fmap_base=128, fmap_max=32)
    if conditional:
        g_tf.update(architecture='resnet', mapping_fmaps=24, label_fmaps=8)
        d_tf.update(architecture='skip', mapping_layers=2, mapping_fmaps=8, mbstd_group_size=2)

    def make_G(seed):
        torch.manual_seed(seed)
        G = Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                      mapping_kwargs=dict(num_layers=2, layer_features=24 if conditional else None,
                                          embed_features=8 if conditional else None, lr_multiplier=0.01,
                                          w_avg_beta=0.995),
                      synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture=g_arch, num_fp16_res=0,
                                            conv_clamp=None),
                      compat='ada')
        return _perturb(G, seed)

    torch.manual_seed(3)
    D = Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, architecture=d_arch, channel_base=256,
                      channel_max=32, num_fp16_res=0, conv_clamp=None, cmap_dim=8 if conditional else None,
                      mapping_kwargs=dict(num_layers=2, embed_features=8, layer_features=8, lr_multiplier=0.1),
                      epilogue_kwargs=dict(mbstd_group_size=2 if conditional else None), compat='ada')
    return g_tf, d_tf, make_G(1), make_G(2), _perturb(D, 4)


def _ada_case(conditional):
    """As _case, for NVlabs' TF StyleGAN2-ADA: float16 blocks, conv_clamp, its mapping arguments, and no
    architecture argument (the defaults: G 'skip', D 'resnet'), as its train.py passes them."""
    c_dim = 4 if conditional else 0
    g_tf = dict(latent_size=16, dlatent_size=16, label_size=c_dim, resolution=16, num_channels=3, fmap_base=128,
                fmap_max=32, mapping_layers=2, mapping_lrmul=0.02, num_fp16_res=1, conv_clamp=256)
    d_tf = dict(label_size=c_dim, resolution=16, num_channels=3, fmap_base=128, fmap_max=32, num_fp16_res=1,
                conv_clamp=256, mbstd_group_size=2)
    if conditional:
        d_tf.update(mapping_layers=1)

    def make_G(seed):
        torch.manual_seed(seed)
        G = Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                      mapping_kwargs=dict(num_layers=2, lr_multiplier=0.02, w_avg_beta=0.995),
                      synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture='skip', num_fp16_res=1,
                                            conv_clamp=256),
                      compat='ada')
        return _perturb(G, seed)

    torch.manual_seed(5)
    D = Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, architecture='resnet', channel_base=256,
                      channel_max=32, num_fp16_res=1, conv_clamp=256,
                      mapping_kwargs=dict(num_layers=1 if conditional else 0, lr_multiplier=0.1),
                      epilogue_kwargs=dict(mbstd_group_size=2), compat='ada')
    return g_tf, d_tf, make_G(6), make_G(7), _perturb(D, 8)


def _states(case, flavour='sg2'):
    g_tf, d_tf, G, Gs, D = case
    return (_tf_generator_state(G, g_tf, flavour), _tf_discriminator_state(D, d_tf, flavour),
            _tf_generator_state(Gs, g_tf, flavour))


@pytest.fixture(scope='module', params=[False, True], ids=['uncond', 'cond'])
def case(request):
    return _case(request.param)


def _inputs(c_dim, n=6):  # 6: the minibatch-std group size (whole batch, 2) matters.
    gen = torch.Generator().manual_seed(123)
    z = torch.randn([n, 16], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % max(c_dim, 1), max(c_dim, 1)).float()[:, :c_dim]
    img = torch.randn([n, 3, 16, 16], generator=gen)
    return z, c, img


def _images(G, z, c):
    with torch.no_grad():  # Truncation brings in w_avg; 'const' noise the converted noise inputs.
        return G(z, c, truncation_psi=0.7, noise_mode='const')


def _assert_same_networks(data, case, keys=('G', 'G_ema', 'D')):
    _g_tf, _d_tf, G, Gs, D = case
    z, c, img = _inputs(G.c_dim)
    for key, ref in (('G', G), ('G_ema', Gs)):
        if key in keys:
            assert isinstance(data[key], Generator)
            torch.testing.assert_close(_images(data[key], z, c), _images(ref, z, c), atol=1e-5, rtol=0)
    if 'D' in keys:
        assert isinstance(data['D'], Discriminator)
        with torch.no_grad():
            torch.testing.assert_close(data['D'](img, c), D(img, c), atol=1e-5, rtol=0)

# ----------------------------------------------------------------------------


def test_tf_pickle_converts_to_same_networks(case, tmp_path):
    data = legacy.load_network_pkl(io.BytesIO(_tf_pickle(*_states(case))))
    assert data['training_set_kwargs'] is None and data['augment_pipe'] is None
    _assert_same_networks(data, case)
    assert data['G_ema'].mapping.compat == 'ada'
    # Every tensor was filled from the pickle: the buffers and parameters equal the reference ones.
    _g_tf, _d_tf, _G, Gs, _D = case
    ours, ref = data['G_ema'].state_dict(), Gs.state_dict()
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key

    # The converted networks are ordinary persistent networks: saved and safely reloaded, they still match.
    path = tmp_path / 'converted.pkl'
    legacy.save_network_pkl(path, G=data['G'], D=data['D'], G_ema=data['G_ema'])
    with open(path, 'rb') as f:
        _assert_same_networks(legacy.load_network_pkl(f), case, keys=('G_ema', 'D'))


@pytest.mark.parametrize('conditional', [False, True], ids=['uncond', 'cond'])
def test_stylegan2_ada_tf_pickle_converts(conditional):
    case = _ada_case(conditional)
    G_state, D_state, Gs_state = _states(case, 'ada')
    names = [name for name, _value in Gs_state['components']['mapping']['variables']]
    assert ('LabelEmbed/weight' in names) == conditional and not any('lod' in name for name in names)
    assert any(name.startswith('Mapping0/') for name, _value in D_state['variables']) == conditional
    data = legacy.load_network_pkl(io.BytesIO(_tf_pickle(G_state, D_state, Gs_state)))
    _assert_same_networks(data, case)
    G, D = data['G_ema'], data['D']
    assert G.synthesis.b16.architecture == 'skip' and D.b16.architecture == 'resnet'  # defaults when absent
    assert [G.synthesis.b16.use_fp16, G.synthesis.b8.use_fp16] == [True, False]
    assert G.synthesis.b16.conv1.conv_clamp == 256 and D.b16.conv1.conv_clamp == 256 and D.b16.use_fp16
    assert G.mapping.fc1.weight_gain == pytest.approx(0.02 / np.sqrt(16))  # mapping_lrmul read


@pytest.mark.parametrize('funcs, flavour', [
    (dict(G='G_style', D='D_basic'), 'StyleGAN1'),
    (dict(D='D_basic'), 'StyleGAN1'),
    (dict(G='G_paper', D='D_paper'), 'ProGAN'),
    (dict(synthesis='G_fancy'), 'unknown TF network (build function G_fancy)'),
])
def test_other_tf_flavours_are_refused(funcs, flavour):
    G_state, D_state, Gs_state = copy.deepcopy(_states(_ada_case(conditional=False), 'ada'))
    for state in (G_state, Gs_state):
        state['build_func_name'] = f'training.networks.{funcs.get("G", "G_main")}'
        state['components']['synthesis']['build_func_name'] = funcs.get('synthesis', 'G_synthesis')
    D_state['build_func_name'] = funcs.get('D', 'D_main')
    with pytest.raises(legacy.NetworkLoadError) as info:
        legacy.load_network_pkl(io.BytesIO(_tf_pickle(G_state, D_state, Gs_state)))
    message = str(info.value)
    assert flavour in message and 'StyleGAN2-ADA' in message and '\n' not in message, message


def _run_convert(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'legacy.py'), *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_convert_command_writes_pytorch_pickle(tmp_path):
    case = _case(conditional=False)
    source, dest = tmp_path / 'tf.pkl', tmp_path / 'out' / 'pt.pkl'
    source.write_bytes(_tf_pickle(*_states(case)))
    result = _run_convert('--source', source, '--dest', dest)
    assert result.returncode == 0, result.stderr
    with open(dest, 'rb') as f:
        _assert_same_networks(legacy.load_network_pkl(f), case, keys=('G_ema', 'D'))
    assert not [p for p in os.listdir(dest.parent) if p != 'pt.pkl']  # No temporary files left behind.

    # A PyTorch pickle is re-saved; --force-fp16 rebuilds it with float16 blocks.
    again = tmp_path / 'fp16.pkl'
    result = _run_convert('--source', dest, '--dest', again, '--force-fp16')
    assert result.returncode == 0, result.stderr
    with open(again, 'rb') as f:
        G = legacy.load_network_pkl(f)['G_ema']
    assert [G.synthesis.b16.use_fp16, G.synthesis.b8.use_fp16, G.synthesis.b4.use_fp16] == [True, True, False]
    assert G.synthesis.b16.conv1.conv_clamp == 256
    ref = case[3]
    for name, tensor in ref.state_dict().items():
        assert torch.equal(G.state_dict()[name], tensor), name

    # --g-ema-only keeps the generator alone: a smaller file with the same G_ema.
    small = tmp_path / 'g_ema.pkl'
    result = _run_convert('--source', dest, '--dest', small, '--g-ema-only')
    assert result.returncode == 0, result.stderr
    with open(small, 'rb') as f:
        data = legacy.load_network_pkl(f)
    assert data['G'] is None and data['D'] is None and data['G_ema'] is not None
    assert small.stat().st_size < dest.stat().st_size / 2
    _assert_same_networks(data, case, keys=('G_ema',))


def test_convert_command_errors_are_one_line(tmp_path):
    result = _run_convert('--source', tmp_path / 'missing.pkl', '--dest', tmp_path / 'out.pkl')
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr and 'missing.pkl' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    G_state, D_state, Gs_state = _states(_case(conditional=False))
    Gs_state['version'] = 3
    source = tmp_path / 'old.pkl'
    source.write_bytes(_tf_pickle(G_state, D_state, Gs_state))
    result = _run_convert('--source', source, '--dest', tmp_path / 'out.pkl')
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr and 'version 3' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out.pkl').exists()

# ----------------------------------------------------------------------------
# Malformed or unsupported TF pickles are refused with one line naming the problem.


def _drop_variable(state, name):
    before = len(state['variables'])
    state['variables'] = [(n, v) for n, v in state['variables'] if n != name]
    assert len(state['variables']) == before - 1


def _replace_variable(state, name, value):
    state['variables'] = [(n, value if n == name else v) for n, v in state['variables']]


def _add_lod_variable(states):
    states[2]['components']['synthesis']['variables'].append(('ToRGB_lod0/weight', np.zeros([1, 1, 32, 3], np.float32)))


def _malform(kind):
    """Returns (TF states with one defect, text the error must contain)."""
    states = list(copy.deepcopy(_states(_case(conditional=False))))
    G, D, Gs = states
    if kind == 'missing':
        _drop_variable(Gs['components']['synthesis'], '8x8/Conv1/weight')
        return states, ['synthesis/8x8/Conv1/weight', 'missing']
    if kind == 'missing_d':
        _drop_variable(D, '16x16/Skip/weight')
        return states, ['16x16/Skip/weight', 'missing']
    if kind == 'shape':
        _replace_variable(G['components']['mapping'], 'Dense1/weight', np.zeros([16, 17], np.float32))
        return states, ['mapping/Dense1/weight', '(16, 17)', '(16, 16)']
    if kind == 'version':
        Gs['version'] = 3
        return states, ['version 3']
    if kind == 'kwarg':
        D['static_kwargs']['fancy_option'] = 7
        return states, ['fancy_option']
    if kind == 'unused':
        Gs['components']['synthesis']['variables'].append(('32x32/Conv1/weight', np.zeros([3, 3, 16, 16], np.float32)))
        return states, ['synthesis/32x32/Conv1/weight']
    if kind == 'stylegan1_func':
        G['build_func_name'] = 'G_style'
        return states, ['StyleGAN1', 'G_style']
    if kind == 'stylegan1_lod':
        _add_lod_variable(states)
        return states, ['StyleGAN1/ProGAN', 'ToRGB_lod0']
    if kind == 'no_synthesis':
        del Gs['components']['synthesis']
        return states, ['StyleGAN1/ProGAN']
    raise AssertionError(kind)


@pytest.mark.parametrize('kind', ['missing', 'missing_d', 'shape', 'version', 'kwarg', 'unused', 'stylegan1_func',
                                  'stylegan1_lod', 'no_synthesis'])
def test_malformed_tf_pickles_are_refused(kind):
    states, expected = _malform(kind)
    with pytest.raises(legacy.NetworkLoadError) as info:
        legacy.load_network_pkl(io.BytesIO(_tf_pickle(*states)))
    message = str(info.value)
    assert '\n' not in message
    for text in expected:
        assert text in message, message


def test_tflib_stand_in_is_removed():
    _tf_pickle(*_states(_case(conditional=False)))
    assert 'dnnlib.tflib.network' not in sys.modules and 'dnnlib.tflib' not in sys.modules
