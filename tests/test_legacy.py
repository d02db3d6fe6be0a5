"""Tests for legacy.py: writing NVlabs-layout snapshots and loading them safely (no code from the file).

Safe mode must give the same networks as NVlabs' own way of loading (executing the embedded source,
``allow_code=True``), must never execute anything from the file, and must refuse, with one clear
line, anything it cannot rebuild exactly. Hostile pickles are made with tiny classes whose
``__reduce__`` returns the payload, or by re-pickling real networks with an edited meta dict.
"""

import builtins
import copy
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

import dnnlib
import legacy
from torch_utils import persistence
from training import networks_stylegan2 as networks

# ----------------------------------------------------------------------------
# Helpers.




def _perturb_(net, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # non-zero biases and noise strengths
    return net


def _make_nets(compat, c_dim):
    """Tiny G, D, G_ema: 16x16, fp16 block at 16 and conv_clamp 256 (so the ada CPU float16 path is used)."""
    syn = dict(channel_base=128, channel_max=16, num_fp16_res=1, conv_clamp=256)
    common = dict(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2))
    if compat == 'ada':
        G = networks.Generator(synthesis_kwargs=syn, **common)  # nested kwargs, as StyleGAN2-ADA
    else:
        G = networks.Generator(**syn, **common)                 # flat kwargs, as the stylegan3 repository
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                               compat=compat, **syn)
    G_ema = _perturb_(copy.deepcopy(G), seed=2).eval()
    return _perturb_(G, seed=0).eval(), _perturb_(D, seed=1).eval(), G_ema


def _inputs(G, n=3):
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(7))
    c = torch.nn.functional.one_hot(torch.arange(n) % G.c_dim, G.c_dim).float() if G.c_dim else None
    return z, c


def _gen(G, n=3):
    z, c = _inputs(G, n)
    with torch.no_grad():
        return G(z, c, truncation_psi=0.7, noise_mode='const')


def _disc(D, n=4):
    img = torch.randn([n, D.img_channels, D.img_resolution, D.img_resolution], generator=torch.Generator().manual_seed(8))
    c = torch.nn.functional.one_hot(torch.arange(n) % D.c_dim, D.c_dim).float() if D.c_dim else None
    with torch.no_grad():
        return D(img, c)


def _load(path, **kwargs):
    with open(path, 'rb') as f:
        return legacy.load_network_pkl(f, **kwargs)


def _load_bytes(data, **kwargs):
    return legacy.load_network_pkl(io.BytesIO(data), **kwargs)


def _snapshot(nets):
    data = dict(training_set_kwargs=None, G=None, D=None, G_ema=None, augment_pipe=None)
    data.update(nets)
    for value in data.values():
        if isinstance(value, torch.nn.Module):
            value.eval().requires_grad_(False)
    return data


class _MetaEditingPickler(pickle.Pickler):
    """Pickles each persistent object as NVlabs does, after passing its meta dict through ``edit(path, meta)``."""

    def __init__(self, file, paths, edit):
        super().__init__(file, protocol=4)
        self.paths = paths
        self.edit = edit

    def reducer_override(self, obj):
        if isinstance(obj, type) or not persistence.is_persistent(obj):
            return NotImplemented
        fn, args = obj.__reduce__()[:2]
        meta = dict(args[0])
        meta['state'] = dict(meta['state'])  # edits must not reach the live module
        meta = self.edit(self.paths.get(id(obj)), meta)
        return fn, (meta,)


def _pickle_edited(data, edit):
    paths = {}
    for key, net in data.items():
        if isinstance(net, torch.nn.Module):
            for name, module in net.named_modules():
                paths[id(module)] = f'{key}.{name}' if name else key
    buf = io.BytesIO()
    _MetaEditingPickler(buf, paths, edit).dump(data)
    return buf.getvalue()


def _assert_one_line(err):
    message = str(err)
    assert message and 'Traceback' not in message, message
    assert not any(ord(ch) < 32 for ch in message), repr(message)  # no line breaks, no terminal escapes


def _is_code_loaded(net):
    return type(net).__mro__[1].__module__.startswith('_imported_module_')


@pytest.fixture
def fresh_caches(monkeypatch):
    """Make code mode exec the embedded source, as in a process that never imported the networks."""
    monkeypatch.setattr(persistence, '_module_to_src_dict', {})
    monkeypatch.setattr(persistence, '_src_to_module_dict', {})


_SG2_CLASS_NAMES = ['FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer',
                    'SynthesisBlock', 'SynthesisNetwork', 'Generator', 'DiscriminatorBlock', 'MinibatchStdLayer',
                    'DiscriminatorEpilogue', 'Discriminator']

# ----------------------------------------------------------------------------
# Saving.


def test_save_layout(tmp_path):
    G, D, G_ema = _make_nets('ada', 0)
    G.train().requires_grad_(True)
    tsk = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='x.zip', use_labels=False,
                          max_size=10, xflip=False, resolution=16)
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema, training_set_kwargs=tsk)

    with open(path, 'rb') as f:
        raw = pickle.load(f)  # our own file: NVlabs' plain unpickling
    assert list(raw) == ['training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe']
    assert raw['training_set_kwargs'] == tsk and raw['augment_pipe'] is None
    for key in ('G', 'D', 'G_ema'):
        net = raw[key]
        assert persistence.is_persistent(net)
        assert all(not m.training for m in net.modules()), key
        assert all(not p.requires_grad for p in net.parameters()), key
        assert all(t.device.type == 'cpu' for t in list(net.parameters()) + list(net.buffers())), key
    assert torch.equal(_gen(raw['G_ema']), _gen(G_ema))
    # The caller's networks are copied, not changed.
    assert G.training and all(p.requires_grad for p in G.parameters())


def test_save_is_atomic(tmp_path):
    G, D, G_ema = _make_nets('ada', 0)
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, G_ema=G_ema)
    assert sorted(os.listdir(tmp_path)) == ['snap.pkl']
    before = path.read_bytes()

    unpicklable = dict(hook=lambda: None)  # deep-copies fine, fails in pickle.dump
    with pytest.raises((pickle.PicklingError, AttributeError)):
        legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema, training_set_kwargs=unpicklable)
    assert sorted(os.listdir(tmp_path)) == ['snap.pkl']
    assert path.read_bytes() == before  # the previous snapshot is untouched

    other = tmp_path / 'new.pkl'
    with pytest.raises((pickle.PicklingError, AttributeError)):
        legacy.save_network_pkl(other, G_ema=G_ema, training_set_kwargs=unpicklable)
    assert sorted(os.listdir(tmp_path)) == ['snap.pkl']

# ----------------------------------------------------------------------------
# Safe mode and code mode.


@pytest.mark.parametrize('c_dim', [0, 4])
@pytest.mark.parametrize('compat', ['ada', 'sg3'])
def test_safe_and_code_modes_agree(tmp_path, fresh_caches, compat, c_dim):
    G, D, G_ema = _make_nets(compat, c_dim)
    path = tmp_path / 'snap.pkl'
    tsk = dict(class_name='training.dataset.ImageFolderDataset', resolution=16)
    legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema, training_set_kwargs=tsk)

    safe = _load(path)
    code = _load(path, allow_code=True)
    for data in (safe, code):
        assert set(data) >= {'G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'}
        assert data['training_set_kwargs'] == tsk and data['augment_pipe'] is None
    assert type(safe['G_ema']) is networks.Generator and type(safe['D']) is networks.Discriminator
    assert all(type(m).__module__ == networks.__name__ or type(m).__mro__[1].__module__ == networks.__name__
               for m in safe['G_ema'].modules())
    assert _is_code_loaded(code['G_ema']) and _is_code_loaded(code['D'])

    expected = _gen(G_ema)
    assert torch.equal(_gen(safe['G_ema']), expected)
    assert torch.equal(_gen(code['G_ema']), expected)
    assert torch.equal(_gen(safe['G']), _gen(code['G']))
    assert torch.equal(_disc(safe['D']), _disc(code['D']))
    assert torch.equal(_disc(safe['D']), _disc(D))
    for key in ('G', 'D', 'G_ema'):
        # Safe mode may record which NVlabs source the network follows; nothing else may differ.
        safe_kwargs, code_kwargs = dict(safe[key].init_kwargs), dict(code[key].init_kwargs)
        assert safe_kwargs.pop('compat', compat) == compat
        assert code_kwargs.pop('compat', compat) == compat
        assert safe_kwargs == code_kwargs
        assert not safe[key].training and not any(p.requires_grad for p in safe[key].parameters())
        ours, theirs = safe[key].state_dict(), code[key].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_protocol_3_snapshot_loads_safely(tmp_path):
    """Python 3.7 (StyleGAN2-ADA's) pickles with protocol 3, which stores each module's set as builtins.set."""
    G, D, G_ema = _make_nets('ada', 0)
    data = dict(training_set_kwargs=None, G=G, D=D, G_ema=G_ema, augment_pipe=None)
    raw = pickle.dumps({k: (copy.deepcopy(v).eval().requires_grad_(False) if v is not None and k != 'training_set_kwargs'
                            else v) for k, v in data.items()}, protocol=3)
    assert b'builtins' in raw and b'set' in raw
    path = tmp_path / 'py37.pkl'
    path.write_bytes(raw)
    safe = _load(path)
    assert torch.equal(_gen(safe['G_ema']), _gen(G_ema))


def test_nvlabs_fixture_through_a_snapshot(fixtures_dir, tmp_path):
    with np.load(os.path.join(fixtures_dir, 'sg2ada_tiny_state.npz')) as ref:
        ref = {key: ref[key] for key in ref.files}
    G = networks.Generator(**json.loads(str(ref['init_kwargs'])))
    G.load_state_dict({k[len('state/'):]: torch.from_numpy(v) for k, v in ref.items() if k.startswith('state/')})
    path = tmp_path / 'fixture.pkl'
    legacy.save_network_pkl(path, G_ema=G)
    loaded = legacy.load_network(str(path))
    assert type(loaded) is networks.Generator
    z = torch.from_numpy(ref['ref/z']).double()
    with torch.no_grad():
        img = torch.cat([loaded(z[i:i + 1], None, noise_mode='const') for i in range(len(z))])
    assert float((img - torch.from_numpy(ref['ref/img_psi1'])).abs().max()) <= 1e-4


def _strip_compat(path, meta):
    """Make a state look like NVlabs': no 'compat' bookkeeping in attributes or constructor arguments."""
    meta['state'].pop('compat', None)
    kwargs = dict(meta['state'].get('_init_kwargs', {}))
    kwargs.pop('compat', None)
    meta['state']['_init_kwargs'] = kwargs
    return meta


@pytest.mark.parametrize('compat', ['ada', 'sg3'])
def test_nvlabs_like_state_loads_safely(compat):
    G, D, G_ema = _make_nets(compat, 4)
    data = _pickle_edited(_snapshot(dict(G=G, D=D, G_ema=G_ema)), _strip_compat)
    loaded = _load_bytes(data)
    assert torch.equal(_gen(loaded['G_ema']), _gen(G_ema))
    assert torch.equal(_disc(loaded['D']), _disc(D))
    # Tools rebuild networks from init_kwargs (e.g. to change options): that must give the same network.
    for key, run in (('G_ema', _gen), ('D', _disc)):
        net = loaded[key]
        rebuilt = type(net)(*net.init_args, **net.init_kwargs).eval()
        rebuilt.load_state_dict(net.state_dict(), strict=True)
        assert torch.equal(run(rebuilt), run(net)), key


def test_stub_source_is_never_executed(tmp_path):
    marker = tmp_path / 'MARKER'
    stub = f'open({str(marker)!r}, "w").close()\n\n' + ''.join(f'class {name}:\n    pass\n\n'
                                                             for name in _SG2_CLASS_NAMES)
    G, D, G_ema = _make_nets('ada', 4)

    def swap_source(path, meta):
        meta['module_src'] = stub
        return meta

    data = _pickle_edited(_snapshot(dict(G=G, D=D, G_ema=G_ema)), swap_source)
    assert data.count(stub.encode()) == 1 and b'class Generator(torch.nn.Module)' not in data
    loaded = _load_bytes(data)
    assert not marker.exists()
    assert type(loaded['G_ema']) is networks.Generator
    assert torch.equal(_gen(loaded['G_ema']), _gen(G_ema))
    assert torch.equal(_disc(loaded['D']), _disc(D))
    exec(stub, {})  # the premise: running the embedded source would have left the marker
    assert marker.exists()

# ----------------------------------------------------------------------------
# Hostile payloads.


class _Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    return {
        'os.system': _Payload(os.system, (f'touch {marker}',)),
        'subprocess.call': _Payload(subprocess.call, (['touch', str(marker)],)),
        'builtins.eval': _Payload(builtins.eval, (f'open({str(marker)!r}, "w").close()',)),
        'builtins.exec': _Payload(builtins.exec, (f'open({str(marker)!r}, "w").close()',)),
    }


@pytest.mark.parametrize('where', ['top', 'G_ema', 'nested'])
@pytest.mark.parametrize('kind', ['os.system', 'subprocess.call', 'builtins.eval', 'builtins.exec'])
def test_code_payload_is_refused(tmp_path, kind, where):
    marker = tmp_path / 'MARKER'
    payload = _payloads(marker)[kind]
    G_ema = _make_nets('ada', 0)[2]
    obj = {'top': payload,
           'G_ema': _snapshot(dict(G_ema=payload)),
           'nested': _snapshot(dict(G_ema=G_ema, training_set_kwargs=dict(path=[payload])))}[where]
    data = pickle.dumps(obj, protocol=4)
    with pytest.raises(legacy.NetworkLoadError) as info:
        _load_bytes(data)
    assert not marker.exists()
    _assert_one_line(info.value)
    qualified = f'{payload.fn.__module__}.{payload.fn.__name__}'  # what pickle records, e.g. posix.system
    assert qualified in str(info.value)
    assert 'allow' in str(info.value)  # says how to opt in for a trusted file


def test_code_payload_premise(tmp_path):
    marker = tmp_path / 'MARKER'
    pickle.loads(pickle.dumps(_payloads(marker)['builtins.exec']))  # plain pickle would run it
    assert marker.exists()


def test_payload_inside_a_tensor_storage_is_refused(tmp_path):
    marker = tmp_path / 'MARKER'
    inner = pickle.dumps(_Payload(builtins.exec, (f'open({str(marker)!r}, "w").close()',)), protocol=2)
    outer = _snapshot(dict(G_ema=_Payload(torch.storage._load_from_bytes, (inner,))))
    with pytest.raises(legacy.NetworkLoadError) as info:
        _load_bytes(pickle.dumps(outer, protocol=4))
    assert not marker.exists()
    _assert_one_line(info.value)
    assert 'allow' in str(info.value)  # a refusal like any other: says how to opt in for a trusted file


def test_persistent_object_hidden_in_plain_data_is_refused():
    G, D, G_ema = _make_nets('ada', 0)
    data = pickle.dumps(_snapshot(dict(G_ema=G_ema, training_set_kwargs=dict(extra=[D]))), protocol=4)
    with pytest.raises(legacy.NetworkLoadError) as info:
        _load_bytes(data)
    _assert_one_line(info.value)
    assert 'training_set_kwargs' in str(info.value)

# ----------------------------------------------------------------------------
# Architectures that differ from ours.


def _edit_at(target, change):
    def edit(path, meta):
        if path == target:
            change(meta)
        return meta
    return edit


def _set_param(name, value):
    def change(meta):
        meta['state']['_parameters'] = dict(meta['state']['_parameters'], **{name: value})
    return change


def _drop_buffer(name):
    def change(meta):
        buffers = dict(meta['state']['_buffers'])
        del buffers[name]
        meta['state']['_buffers'] = buffers
    return change


def _set_attr(name, value):
    def change(meta):
        meta['state'][name] = value
    return change


def _set_class(name):
    def change(meta):
        meta['class_name'] = name
    return change


_MISMATCHES = {
    'extra parameter': ('G_ema.synthesis.b8.conv1', _set_param('extra_gain', torch.nn.Parameter(torch.ones([3]))),
                        ['extra_gain']),
    'wrong shape': ('G_ema.synthesis.b8.conv1', _set_param('weight', torch.nn.Parameter(torch.zeros([16, 16, 1, 1]))),
                    ['weight', '(16, 16, 1, 1)']),
    'missing buffer': ('G_ema.synthesis.b16.conv0', _drop_buffer('noise_const'), ['noise_const']),
    'conv_clamp': ('G_ema.synthesis.b8.conv1', _set_attr('conv_clamp', 64), ['conv_clamp', '64']),
    'architecture': ('G_ema.synthesis.b16', _set_attr('architecture', 'resnet'), ['architecture', 'resnet']),
    'new attribute': ('G_ema.mapping', _set_attr('truncation_mode', 'fancy'), ['truncation_mode']),
    'D attribute': ('D.b16', _set_attr('architecture', 'skip'), ['architecture']),
    'unknown subclass': ('G_ema.synthesis.b8.conv1', _set_class('SynthesisLayerV2'), ['SynthesisLayerV2']),
    'unknown top class': ('G_ema', _set_class('GeneratorV2'), ['GeneratorV2']),
}


@pytest.mark.parametrize('case', list(_MISMATCHES))
def test_modified_architecture_is_refused(case):
    target, change, words = _MISMATCHES[case]
    G, D, G_ema = _make_nets('ada', 0)
    data = _pickle_edited(_snapshot(dict(G=G, D=D, G_ema=G_ema)), _edit_at(target, change))
    with pytest.raises(legacy.NetworkLoadError) as info:
        _load_bytes(data)
    _assert_one_line(info.value)
    message = str(info.value)
    # The message names where the difference is and what it is.
    location = target.split('.', 1)[1] if '.' in target else target
    assert location in message, message
    for word in words:
        assert word in message, message


def test_unedited_reference_pickle_loads():
    # The control for the mismatch tests: the same pickling path with no edit loads fine.
    G, D, G_ema = _make_nets('ada', 0)
    loaded = _load_bytes(_pickle_edited(_snapshot(dict(G=G, D=D, G_ema=G_ema)), lambda path, meta: meta))
    assert torch.equal(_gen(loaded['G_ema']), _gen(G_ema))

# ----------------------------------------------------------------------------
# Augmentation pipelines from sources safe mode does not know.

_AUGMENT_SRC = '''
import torch
from torch_utils import persistence


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self, xflip=1, p=0.25):
        super().__init__()
        self.register_buffer('p', torch.tensor(float(p)))

    def forward(self, x):
        return x
'''


def test_unknown_augment_pipe_is_dropped_with_a_warning(tmp_path, monkeypatch):
    name = f'_augment_{uuid.uuid4().hex}'
    (tmp_path / f'{name}.py').write_text(_AUGMENT_SRC, encoding='utf-8')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        pipe = importlib.import_module(name).AugmentPipe(xflip=1, p=0.5)
    finally:
        sys.modules.pop(name, None)
    G, D, G_ema = _make_nets('ada', 0)
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema, augment_pipe=pipe)

    with pytest.warns(UserWarning, match='AugmentPipe'):
        safe = _load(path)
    assert safe['augment_pipe'] is None
    assert torch.equal(_gen(safe['G_ema']), _gen(G_ema))

    code = _load(path, allow_code=True)
    assert type(code['augment_pipe']).__name__ == 'AugmentPipe' and float(code['augment_pipe'].p) == 0.5

# ----------------------------------------------------------------------------
# Bad input.


_BAD_INPUTS = ['empty', 'text', 'html', 'truncated', 'list', 'no G_ema', 'G_ema not a network']


def _bad_input(kind):
    if kind == 'truncated':
        good = pickle.dumps(_snapshot(dict(G_ema=_make_nets('ada', 0)[2])), protocol=4)
        return good[:len(good) // 2]
    return {
        'empty': b'',
        'text': b'This is not a pickle.\nJust some text.\n',
        'html': b'<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n',
        'list': pickle.dumps([1, 2, 3], protocol=4),
        'no G_ema': pickle.dumps(dict(G=None, D=None, training_set_kwargs=None), protocol=4),
        'G_ema not a network': pickle.dumps(dict(G_ema='generator'), protocol=4),
    }[kind]


@pytest.mark.parametrize('allow_code', [False, True])
@pytest.mark.parametrize('kind', _BAD_INPUTS)
def test_bad_input(tmp_path, kind, allow_code):
    path = tmp_path / f'bad_input_{_BAD_INPUTS.index(kind)}.pkl'
    path.write_bytes(_bad_input(kind))
    with pytest.raises(legacy.NetworkLoadError) as info:
        _load(path, allow_code=allow_code)
    _assert_one_line(info.value)
    message = str(info.value)
    assert path.name in message, message
    if kind in ('text', 'html'):
        assert 'truncated' not in message, message  # a text file is not a cut-short pickle
    if kind == 'truncated':
        assert 'truncated' in message, message
    if kind == 'no G_ema':
        # Only the keys that are in the file are reported as found.
        reported = message.replace(str(path), '<path>')  # pytest's temp folder name contains the test id
        assert reported.count('G_ema') == 1 and 'augment_pipe' not in reported, message
    with pytest.raises(legacy.NetworkLoadError) as info:
        legacy.load_network(str(path), allow_code=allow_code)
    _assert_one_line(info.value)


def test_force_fp16(tmp_path):
    # Seeded: the float16 error bound below holds for these weights, not for whatever the global generator holds
    # after other tests.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G, D, G_ema = _make_nets('ada', 0)
        G_ema = networks.Generator(**dict(G_ema.init_kwargs, synthesis_kwargs=dict(channel_base=128, channel_max=16)))
    G_ema = _perturb_(G_ema, seed=3).eval()
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema)
    for allow_code in (False, True):
        data = _load(path, allow_code=allow_code, force_fp16=True)
        net = data['G_ema']
        # 4 fp16 resolutions at R = 16 means every block from 8 up (b4 never is), and conv_clamp 256.
        assert [net.synthesis.b4.use_fp16, net.synthesis.b8.use_fp16, net.synthesis.b16.use_fp16] \
            == [False, True, True]
        assert net.synthesis.b16.conv1.conv_clamp == 256
        assert not net.training
        out, ref = _gen(net), _gen(G_ema)
        assert 0 < float((out - ref).abs().max()) < 1e-2  # float16 on CPU (ada), same weights


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / 'nowhere' / 'network.pkl'
    with pytest.raises(legacy.NetworkLoadError) as info:
        legacy.load_network(str(missing))
    _assert_one_line(info.value)
    assert str(missing) in str(info.value)
    with pytest.raises(legacy.NetworkLoadError) as info:
        legacy.load_network(str(tmp_path))
    _assert_one_line(info.value)


def test_load_network(tmp_path):
    G, D, G_ema = _make_nets('sg3', 4)
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, G=G, D=D, G_ema=G_ema)
    net = legacy.load_network(str(path), device='cpu')
    assert type(net) is networks.Generator and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert torch.equal(_gen(net), _gen(G_ema))
    disc = legacy.load_network(str(path), key='D')
    assert torch.equal(_disc(disc), _disc(D))


def test_huge_constructor_arguments_are_refused_before_allocating():
    G, D, G_ema = _make_nets('sg3', 0)

    def inflate(path, meta):
        if path == 'G_ema':
            kwargs = dict(meta['state']['_init_kwargs'])
            kwargs['w_dim'] = 1 << 14  # Within the argument ranges, but 16384 x 16384 mapping layers: 1 GiB each.
            meta['state']['_init_kwargs'] = kwargs
        return meta

    data = _pickle_edited(_snapshot(dict(G_ema=G_ema)), inflate)
    with pytest.raises(legacy.NetworkLoadError, match='MiB') as err:
        _load_bytes(data)
    _assert_one_line(err.value)


def test_safe_loading_does_not_import_torch_dynamo():
    # Building on the meta device ran torch's Python reference kernels, whose first use imports torch._dynamo
    # (about a second of every script start).
    code = ('import sys, legacy\nfrom sampling import cli\nlegacy.load_network(cli.DEFAULT_NETWORK)\n'
            'print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))')
    out = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]', out
