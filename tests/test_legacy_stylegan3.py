"""StyleGAN3 pickles: save, safe load, code load, and generate.py's --translate / --rotate."""

import copy
import importlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

import dnnlib
import legacy
from sampling.images import load_png
from sampling.synthesis import make_transform
from training import networks_stylegan2, networks_stylegan3


def _generator(config, seed=0):
    torch.manual_seed(seed)
    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2))
    if config == 'r':
        kwargs.update(channel_base=1024, channel_max=64, conv_kernel=1, use_radial_filters=True)
    else:
        kwargs.update(channel_base=512, channel_max=32)
    G = networks_stylegan3.Generator(**kwargs).eval()
    with torch.no_grad():  # Trained-like magnitude EMAs and biases, so every path matters.
        for name, buf in G.named_buffers():
            if name.endswith('magnitude_ema'):
                buf.fill_(float(np.random.RandomState(len(name)).uniform(0.5, 2)))
        for name, param in G.named_parameters():
            if name.endswith('.bias'):
                param.add_(torch.randn_like(param) * 0.1)
    return G


@pytest.mark.parametrize('config', ['t', 'r'])
def test_stylegan3_save_and_load_both_modes(tmp_path, config):
    G = _generator(config)
    path = tmp_path / 'sg3.pkl'
    legacy.save_network_pkl(path, G=G, G_ema=G)
    with open(path, 'rb') as f:
        safe = legacy.load_network_pkl(f)['G_ema']
    with open(path, 'rb') as f:
        code = legacy.load_network_pkl(f, allow_code=True)['G_ema']
    assert type(safe) is networks_stylegan3.Generator
    assert type(code).__module__.startswith('_imported_module_') or type(code).__module__ == 'torch_utils.persistence'
    if config == 'r':
        assert safe.synthesis.L0_36_64.down_filter.ndim == 2  # radial filters survive the round trip
    z = torch.randn([3, 16], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, a, b = G(z, None), safe(z, None), code(z, None)
    assert torch.equal(ref, a) and torch.equal(ref, b)


def test_stylegan3_modified_filter_design_is_refused(tmp_path):
    G = _generator('t')
    G.synthesis.L2_36_32.padding = [0, 0, 0, 0]  # an attribute the pickled architecture depends on
    path = tmp_path / 'bad.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(G_ema=G), f)
    with open(path, 'rb') as f, pytest.raises(legacy.NetworkLoadError, match='padding'):
        legacy.load_network_pkl(f)


def test_generate_translate_rotate(tmp_path):
    G = _generator('t')
    path = tmp_path / 'sg3.pkl'
    legacy.save_network_pkl(path, G=G, G_ema=G)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'generate.py'), '--network', str(path),
                             '--seeds', '3', '--translate', '0.1,-0.2', '--rotate', '15', '--outdir', str(tmp_path),
                             '--device', 'cpu'], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    # NVlabs' gen_images: the inverse of [[cos, sin, tx], [-sin, cos, ty], [0, 0, 1]] goes into the input transform.
    angle = np.radians(15)
    m = np.array([[np.cos(angle), np.sin(angle), 0.1], [-np.sin(angle), np.cos(angle), -0.2], [0, 0, 1]])
    assert np.allclose(make_transform((0.1, -0.2), 15), m)
    G.synthesis.input.transform.copy_(torch.from_numpy(np.linalg.inv(m)))
    z = torch.from_numpy(np.random.RandomState(3).randn(1, 16))
    with torch.no_grad():
        img = G(z, None)
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
    got = load_png(tmp_path / 'seed0003.png')
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    G.synthesis.input.transform.copy_(torch.eye(3))
    with torch.no_grad():
        untransformed = G(z, None)
    # The transform really changed the image (a random network's output is low-contrast, so compare floats).
    assert (img - untransformed).abs().max() > 1e-3  # far above float rounding (~1e-7)

# ----------------------------------------------------------------------------
# Pickles written on another numpy: NVlabs computed every published StyleGAN3's cutoffs and widths under
# numpy 1.x, whose float64 `**` can differ from numpy 2.x's by an ulp. tests/data/nvlabs/
# sg3_pickled_attributes.json holds the values NVlabs' code pickled under numpy 1.26.4.


def _fixture_value(entry):
    """The attribute as the numpy-1 machine pickled it, with its type."""
    if 'float64_hex' in entry:
        value = float.fromhex(entry['float64_hex'])
        return np.float64(value) if entry['type'] == 'numpy.float64' else value
    return entry['value']


def _type_name(value):
    return f'{type(value).__module__}.{type(value).__name__}'


def _as_written_by(G, attributes):
    """G with the given attributes, and every filter designed from them, as NVlabs' __init__ would have."""
    modules = dict(G.named_modules())
    for key, value in attributes.items():
        path, attr = key.rsplit('.', 1)
        setattr(modules[path], attr, value)
    with torch.no_grad():
        for layer in G.synthesis.modules():
            if isinstance(layer, networks_stylegan3.SynthesisLayer):
                for name, taps, cutoff, half_width, radial in (
                        ('up_filter', layer.up_taps, layer.in_cutoff, layer.in_half_width, False),
                        ('down_filter', layer.down_taps, layer.out_cutoff, layer.out_half_width, layer.down_radial)):
                    f = networks_stylegan3.design_lowpass_filter(numtaps=taps, cutoff=cutoff, width=half_width * 2,
                                                                 fs=layer.tmp_sampling_rate, radial=radial)
                    setattr(layer, name, f)
    return G


def _numpy1_dump(obj, f, protocol=4):
    """pickle.dump as a numpy-1.x machine writes it: numpy scalars reference numpy.core, not numpy._core.

    The protocol-4 stream is re-emitted opcode by opcode with that one string changed; its FRAME opcodes
    (optional in the format) are dropped because their lengths would no longer hold.
    """
    data = pickle.dumps(obj, protocol=protocol)
    out, ops, renamed = [], list(pickletools.genops(data)), 0
    for (op, arg, pos), (_next_op, _next_arg, end) in zip(ops, ops[1:] + [(None, None, len(data))]):
        if op.name == 'FRAME':
            continue
        if op.name == 'SHORT_BINUNICODE' and arg == 'numpy._core.multiarray':
            text = b'numpy.core.multiarray'
            out.append(op.code.encode('latin-1') + bytes([len(text)]) + text)
            renamed += 1
            continue
        out.append(data[pos:end])
    assert renamed > 0
    f.write(b''.join(out))


def _save_as_numpy1(path, monkeypatch, **nets):
    with monkeypatch.context() as patch:
        patch.setattr(legacy, 'pickle', types.SimpleNamespace(dump=_numpy1_dump))
        legacy.save_network_pkl(path, **nets)
    assert b'numpy.core.multiarray' in path.read_bytes() and b'numpy._core' not in path.read_bytes()


def _both_modes(path):
    with open(path, 'rb') as f:
        safe = legacy.load_network_pkl(f)['G_ema']
    with open(path, 'rb') as f:
        code = legacy.load_network_pkl(f, allow_code=True)['G_ema']
    return safe, code


@pytest.fixture(scope='module')
def pickled_attributes():
    with open(os.path.join(REPO_ROOT, 'tests', 'data', 'nvlabs', 'sg3_pickled_attributes.json'), encoding='utf-8') as f:
        return json.load(f)


def _fixture_generator(spec):
    G = networks_stylegan3.Generator(**spec['init_kwargs']).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('.bias'):
                param.add_(torch.randn_like(param) * 0.1)
    return G


def _one_ulp_off(value):
    if isinstance(value, (float, np.floating)) and value != 0:
        return type(value)(np.nextafter(value, np.inf))
    return value


@pytest.mark.parametrize('variant', ['numpy1_values', 'every_float_one_ulp_up'])
@pytest.mark.parametrize('config', ['sg3_tiny', 'sg3r_tiny'])
def test_pickle_from_another_numpy_loads_in_both_modes(pickled_attributes, tmp_path, monkeypatch, config, variant):
    spec = pickled_attributes[config]
    written = {key: _fixture_value(entry) for key, entry in spec['attributes'].items()}
    if variant == 'every_float_one_ulp_up':  # Off by an ulp from ours whatever numpy this test runs on.
        written = {key: _one_ulp_off(value) for key, value in written.items()}
    G = _as_written_by(_fixture_generator(spec), written)
    ours = dict(_fixture_generator(spec).named_modules())
    differing = [key for key, value in written.items()
                 if value != getattr(ours[key.rsplit('.', 1)[0]], key.rsplit('.', 1)[1])]
    if variant == 'every_float_one_ulp_up':
        assert len(differing) == sum(isinstance(v, (float, np.floating)) and v != 0 for v in written.values()) > 50
    path = tmp_path / 'sg3.pkl'
    _save_as_numpy1(path, monkeypatch, G_ema=G)

    safe, code = _both_modes(path)
    assert type(safe) is networks_stylegan3.Generator
    for net in (safe, code):  # Both carry exactly what was pickled, type included.
        modules = dict(net.named_modules())
        for key, value in written.items():
            path_, attr = key.rsplit('.', 1)
            got = getattr(modules[path_], attr)
            assert _type_name(got) == _type_name(value) and got == value, (key, got, value)
        for name, tensor in G.state_dict().items():
            assert torch.equal(net.state_dict()[name], tensor), name
    z = torch.from_numpy(np.random.RandomState(0).randn(2, G.z_dim))
    with torch.no_grad():
        ref, a, b = G(z, None, noise_mode='const'), safe(z, None, noise_mode='const'), code(z, None, noise_mode='const')
    assert torch.equal(a, b) and torch.equal(a, ref)


@pytest.mark.parametrize('key', ['synthesis.L8_52_32.out_cutoff', 'synthesis.L3_36_64.in_half_width',
                                 'mapping.fc0.weight_gain', 'synthesis.input.bandwidth'])
def test_attribute_changed_by_one_percent_is_refused(pickled_attributes, tmp_path, monkeypatch, key):
    spec = pickled_attributes['sg3_tiny']
    written = {k: _fixture_value(entry) for k, entry in spec['attributes'].items()}
    written[key] = written[key] * 1.01
    path = tmp_path / 'changed.pkl'
    _save_as_numpy1(path, monkeypatch, G_ema=_as_written_by(_fixture_generator(spec), written))
    attr = key.rsplit('.', 1)[1]
    with open(path, 'rb') as f, pytest.raises(legacy.NetworkLoadError, match=f'attribute {attr} '):
        legacy.load_network_pkl(f)


@pytest.mark.parametrize('ours, theirs, same', [
    (np.float64(7.999999999999999), np.float64(8.0), True),     # numpy 2 vs numpy 1 rounding
    (7.999999999999999, np.float64(8.0), True),                 # Python float vs numpy scalar
    (np.float32(0.1), np.float64(np.float32(0.1)), True),       # same value, wider type
    (np.float32(0.1), np.float64(0.1), True),                   # within float32 rounding
    (8.0, 8.08, False),                                         # 1 % off
    (8.0, 8.0 * (1 + 1e-7), False),                             # far above rounding
    (8, 8.0, False),                                            # int is not float
    (True, 1, False),                                           # bool is not int
    (np.int64(16), 16, True),
    (np.float64(2.0), np.array([2.0]), False),                  # scalar is not an array
    (np.array([36, 36]), np.array([36, 36], dtype=np.int32), True),
    (np.array([2.0, 4.0]), np.array([2.0, 4.0 + 4e-15]), True),
    (np.array([2.0, 4.0]), np.array([2.0, 4.04]), False),
    (np.array([2.0, 4.0]), np.array([2, 4]), False),            # float array is not int array
    ([1.0, np.float64(2.0)], (1.0, 2.0 + 4e-16), True),
    (None, 0.0, False),
])
def test_value_comparison(ours, theirs, same):
    assert legacy._values_equal(ours, theirs) is same
    assert legacy._values_equal(theirs, ours) is same

# ----------------------------------------------------------------------------
# A whole snapshot as NVlabs' stylegan3 train.py writes it: conditional G with float16 layers and conv_clamp,
# StyleGAN2 D, an adaptive augmentation pipeline, and training_set_kwargs, in sg3's key order.

_AUGMENT_PIPE_SRC = '''
import numpy as np
import torch
from torch_utils import persistence


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125, scale=0, rotate=0, aniso=0, xfrac=0,
                 scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125, brightness=0, contrast=0, lumaflip=0,
                 hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1):
        super().__init__()
        self.register_buffer('p', torch.ones([]))
        self.xflip, self.rotate90, self.xint = float(xflip), float(rotate90), float(xint)
        self.xint_max = float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.scale_std, self.rotate_max, self.aniso_std = float(scale_std), float(rotate_max), float(aniso_std)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std, self.xfrac_std = float(hue_max), float(saturation_std), float(xfrac_std)
        wavelet = np.array([0.1, 0.5, 0.9, 0.5, 0.1])
        self.register_buffer('Hz_geom', torch.as_tensor(np.concatenate([wavelet, wavelet[::-1]]), dtype=torch.float32))
        self.register_buffer('Hz_fbank', torch.ones([4, 10]))

    def forward(self, images, debug_percentile=None):
        return images
'''


def test_conditional_fp16_snapshot_as_train_py_writes_it(tmp_path, monkeypatch):
    name = f'_augment_pipe_{uuid.uuid4().hex}'
    (tmp_path / f'{name}.py').write_text(_AUGMENT_PIPE_SRC, encoding='utf-8')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        pipe = importlib.import_module(name).AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1,
                                                         xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1,
                                                         saturation=1)
    finally:
        sys.modules.pop(name, None)
    with torch.no_grad():
        pipe.p.fill_(0.23)  # The adaptive probability ADA reached.

    torch.manual_seed(0)
    G_kwargs = dnnlib.EasyDict(z_dim=16, c_dim=3, w_dim=16, img_resolution=32, img_channels=3, channel_base=512,
                               channel_max=32, num_fp16_res=1, conv_clamp=256, magnitude_ema_beta=0.5 ** (32 / 5e5),
                               mapping_kwargs=dnnlib.EasyDict(num_layers=2))
    G = networks_stylegan3.Generator(**G_kwargs).train().requires_grad_(False)
    D = networks_stylegan2.Discriminator(c_dim=3, img_resolution=32, img_channels=3, channel_base=512, channel_max=32,
                                         num_fp16_res=1, conv_clamp=256, compat='sg3',
                                         mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(
                                             mbstd_group_size=4)).train().requires_grad_(False)
    G_ema = _generator_like(G, seed=1)
    assert any(layer.use_fp16 for layer in G.synthesis.modules() if hasattr(layer, 'use_fp16'))
    assert not all(layer.use_fp16 for layer in G.synthesis.modules() if hasattr(layer, 'use_fp16'))
    training_set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path='~/datasets/afhq-32x32.zip',
                               use_labels=True, max_size=15803, xflip=False, resolution=32, random_seed=0)
    snapshot = dict(G=G, D=D, G_ema=G_ema, augment_pipe=pipe, training_set_kwargs=dict(training_set_kwargs))
    for key, value in snapshot.items():  # What train.py's training loop does before pickling.
        if isinstance(value, torch.nn.Module):
            snapshot[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    path = tmp_path / 'network-snapshot-000123.pkl'
    with open(path, 'wb') as f:
        _numpy1_dump(snapshot, f)

    with open(path, 'rb') as f, pytest.warns(UserWarning, match='AugmentPipe'):
        safe = legacy.load_network_pkl(f)
    with open(path, 'rb') as f:
        code = legacy.load_network_pkl(f, allow_code=True)
    assert safe['augment_pipe'] is None
    assert type(code['augment_pipe']).__name__ == 'AugmentPipe' and float(code['augment_pipe'].p) == pytest.approx(0.23)
    assert safe['training_set_kwargs'] == code['training_set_kwargs'] == training_set_kwargs
    assert type(safe['G_ema']) is networks_stylegan3.Generator and type(safe['D']) is networks_stylegan2.Discriminator

    z = torch.from_numpy(np.random.RandomState(5).randn(4, 16))
    c = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).float()
    img = torch.from_numpy(np.random.RandomState(6).randn(4, 3, 32, 32)).float()
    with torch.no_grad():
        for key in ('G', 'G_ema'):
            ref = snapshot[key](z, c, truncation_psi=0.7, noise_mode='const')
            assert torch.equal(safe[key](z, c, truncation_psi=0.7, noise_mode='const'), ref)
            assert torch.equal(code[key](z, c, truncation_psi=0.7, noise_mode='const'), ref)
        assert torch.equal(safe['D'](img, c), snapshot['D'](img, c))
        assert torch.equal(code['D'](img, c), snapshot['D'](img, c))


def _generator_like(G, seed):
    G_ema = copy.deepcopy(G).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*G_ema.named_parameters(), *G_ema.named_buffers()]:
            if name.endswith(('bias', 'magnitude_ema', 'w_avg')):
                tensor.add_(torch.rand(tensor.shape, generator=gen) * 0.2)
    return G_ema


def test_code_mode_finds_numpy_scalars_under_either_module_name():
    # numpy 1.x pickles name numpy.core.multiarray, numpy 2.x numpy._core.multiarray; code mode imports whichever
    # this numpy has (the safe unpickler accepts both names anyway).
    here = 'numpy._core' if np.lib.NumpyVersion(np.__version__) >= '2.0.0' else 'numpy.core'
    for written in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        assert legacy._numpy_core_here(written) == f'{here}.multiarray'
    assert legacy._numpy_core_here('numpy') == 'numpy' and legacy._numpy_core_here('numpy.corefoo') == 'numpy.corefoo'
    f = io.BytesIO()
    _numpy1_dump(dict(cutoff=np.float64(8.0)), f)
    f.seek(0)
    value = legacy._CodeUnpickler(f).load()['cutoff']
    assert type(value) is np.float64 and value == 8.0


def test_filters_come_from_the_pickle(pickled_attributes, tmp_path, monkeypatch):
    # Filters are designed in __init__ from the cutoffs; another numpy/scipy may round them differently. Like
    # NVlabs' loader (which never runs __init__), safe mode keeps the pickled filters, not a fresh design.
    spec = pickled_attributes['sg3_tiny']
    G = _fixture_generator(spec)
    with torch.no_grad():
        for layer in (G.synthesis.L8_52_32, G.synthesis.L9_52_27):
            layer.down_filter.mul_(1 + 2 ** -20)
            layer.up_filter.mul_(1 - 2 ** -20)
    path = tmp_path / 'filters.pkl'
    _save_as_numpy1(path, monkeypatch, G_ema=G)
    safe, code = _both_modes(path)
    fresh = _fixture_generator(spec)
    assert not torch.equal(safe.synthesis.L8_52_32.down_filter, fresh.synthesis.L8_52_32.down_filter)
    for net in (safe, code):
        for name, tensor in G.state_dict().items():
            assert torch.equal(net.state_dict()[name], tensor), name
    z = torch.from_numpy(np.random.RandomState(1).randn(2, G.z_dim))
    with torch.no_grad():
        assert torch.equal(safe(z, None), code(z, None)) and torch.equal(safe(z, None), G(z, None))
