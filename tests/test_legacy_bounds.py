"""legacy.load_network_pkl refuses network-level bombs within seconds, under a memory cap, with one line.

Each file is a tiny snapshot (or TF-era pickle) whose networks claim absurd sizes: constructor arguments
far out of range, legal arguments describing gigabytes the file cannot hold, tensors whose storage does
not back them, a meta-device storage, a Discriminator stored as G_ema.
"""

import collections
import copy
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT
from test_legacy import _make_nets, _pickle_edited, _snapshot
from test_legacy_tf import _tf_pickle, _tf_state
from test_safe_pickle import _address_space_cap, _Reduce, legacy_storage_bytes

import legacy
from training import networks_stylegan3

# ----------------------------------------------------------------------------
# Bomb builders.


def _edit_init_kwargs(change, target='G_ema'):
    def edit(path, meta):
        if path == target:
            kwargs = copy.deepcopy(meta['state']['_init_kwargs'])
            change(kwargs)
            meta['state']['_init_kwargs'] = kwargs
        return meta
    return edit


def _replace_param(target_path, param, make):
    def edit(path, meta):
        if path == target_path:
            params = dict(meta['state']['_parameters'])
            params[param] = make(params[param])
            meta['state']['_parameters'] = params
        return meta
    return edit


def _fake_tensor(shape, stride, values=16, location='cpu', declared=None):
    storage = _Reduce(torch.storage._load_from_bytes,
                      (legacy_storage_bytes(list(range(values)), location=location, declared=declared),))
    return _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, tuple(shape), tuple(stride), False,
                                                     collections.OrderedDict()))


def _sg2():
    G, D, G_ema = _make_nets('ada', 0)
    return _snapshot(dict(G=G, D=D, G_ema=G_ema))


def _sg3_bomb():
    G = networks_stylegan3.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=16, img_channels=1,
                                     channel_base=512, channel_max=8, mapping_kwargs=dict(num_layers=1)).eval()
    return _pickle_edited(_snapshot(dict(G_ema=G)), _edit_init_kwargs(
        lambda kw: kw.update(filter_size=20_000, use_radial_filters=True)))


def _tf_mapping_bomb():
    """A TF-era pickle whose mapping network would be 8 layers of 16384x16384 floats (8 GiB)."""
    kwargs = dict(latent_size=16384, dlatent_size=16384, mapping_fmaps=16384, mapping_layers=8, resolution=8,
                  fmap_base=64, fmap_max=8)
    mapping = _tf_state('G_mapping', 'training.networks_stylegan2.G_mapping', {}, [])
    synthesis = _tf_state('G_synthesis', 'training.networks_stylegan2.G_synthesis_stylegan2', {}, [])
    G = _tf_state('G', 'training.networks_stylegan2.G_main', kwargs, [], dict(mapping=mapping, synthesis=synthesis))
    D = _tf_state('D', 'training.networks_stylegan2.D_stylegan2', dict(resolution=8), [])
    return _tf_pickle(G, D, G)


def bombs():
    sg2 = _sg2()
    weight = 'G_ema.synthesis.b16.conv0'
    shape = tuple(sg2['G_ema'].synthesis.b16.conv0.weight.shape)
    return {
        'sg3-radial-filter-20000': (_sg3_bomb(), 'filter_size'),
        'mapping-num-layers-1e6': (_pickle_edited(sg2, _edit_init_kwargs(
            lambda kw: kw['mapping_kwargs'].update(num_layers=10**6))), 'num_layers'),
        'legal-but-gigabytes': (_pickle_edited(sg2, _edit_init_kwargs(
            lambda kw: kw.update(img_resolution=1024, synthesis_kwargs=dict(kw['synthesis_kwargs'], channel_max=16384,
                                                                             channel_base=1 << 22)))), 'MiB'),
        'stride-0-weight': (_pickle_edited(sg2, _replace_param(weight, 'weight', lambda old: _fake_tensor(
            shape, (0,) * len(shape)))), 'dense'),
        'tensor-past-storage': (_pickle_edited(sg2, _replace_param(weight, 'weight', lambda old: _fake_tensor(
            shape, torch.empty(shape).stride()))), 'storage holds'),
        'meta-storage': (_pickle_edited(sg2, _replace_param(weight, 'weight', lambda old: _fake_tensor(
            (16,), (1,), location='meta'))), 'device'),
        'storage-claims-terabytes': (_pickle_edited(sg2, _replace_param(weight, 'weight', lambda old: _fake_tensor(
            (16,), (1,), declared=1 << 38))), 'declares'),
        'discriminator-as-G_ema': (pickle_dumps(_snapshot(dict(G_ema=sg2['D']))), 'not a Generator'),
        'tf-mapping-8GiB': (_tf_mapping_bomb(), 'MiB'),
    }


def pickle_dumps(obj):
    import pickle
    return pickle.dumps(obj, protocol=4)

# ----------------------------------------------------------------------------


_CHILD = textwrap.dedent('''
    import json, resource, sys, time, warnings
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    warnings.simplefilter('ignore')
    import legacy
    results = {}
    for path in sys.argv[2:]:
        start = time.monotonic()
        try:
            with open(path, 'rb') as f:
                legacy.load_network_pkl(f)
            outcome = 'loaded'
        except legacy.NetworkLoadError as err:
            outcome = 'refused: ' + str(err)
        except MemoryError:
            outcome = 'MemoryError'
        results[path] = [outcome, time.monotonic() - start]
    print(json.dumps(results))
''')


def test_network_bombs_refused_fast_under_a_memory_cap(tmp_path):
    cases = bombs()
    paths = {}
    for name, (data, _words) in cases.items():
        assert len(data) < 1 << 20, name  # every file is small
        path = tmp_path / f'{name}.pkl'
        path.write_bytes(data)
        paths[name] = str(path)
    child = subprocess.run([sys.executable, '-c', _CHILD, str(_address_space_cap()), *paths.values()],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for name, (_data, words) in cases.items():
        outcome, seconds = results[paths[name]]
        assert outcome.startswith('refused: '), (name, outcome)
        message = outcome[len('refused: '):]
        assert words in message and f'{name}.pkl' in message and '\n' not in message, (name, message)
        assert seconds < 10, (name, seconds)


def test_discriminator_as_G_ema_is_refused_with_code_too():
    _G, D, _G_ema = _make_nets('ada', 0)
    with pytest.raises(legacy.NetworkLoadError, match='not a generator'):
        legacy.load_network_pkl(io.BytesIO(pickle_dumps(_snapshot(dict(G_ema=D)))), allow_code=True)


def test_unknown_or_mistyped_argument_is_refused():
    sg2 = _sg2()
    for change, words in [(lambda kw: kw.update(evil='x'), 'unknown network argument'),
                          (lambda kw: kw.update(z_dim=16.5), 'z_dim'),
                          (lambda kw: kw['mapping_kwargs'].update(lr_multiplier=float('nan')), 'lr_multiplier'),
                          (lambda kw: kw.update(img_resolution=True), 'img_resolution')]:
        with pytest.raises(legacy.NetworkLoadError, match=words):
            legacy.load_network_pkl(io.BytesIO(_pickle_edited(sg2, _edit_init_kwargs(change))))


def test_dense_permuted_layouts_still_load():
    # channels_last weights are dense in another dimension order: admitted (and equal after loading).
    G, D, G_ema = _make_nets('ada', 0)
    conv = G_ema.synthesis.b16.conv0
    conv.weight = torch.nn.Parameter(conv.weight.detach().to(memory_format=torch.channels_last))
    data = legacy.load_network_pkl(io.BytesIO(pickle_dumps(_snapshot(dict(G_ema=G_ema)))))
    assert torch.equal(data['G_ema'].synthesis.b16.conv0.weight, conv.weight)
    assert np.isfinite(data['G_ema'].synthesis.b16.conv0.weight.numpy()).all()
