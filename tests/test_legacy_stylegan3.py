"""StyleGAN3 pickles: save, safe load, code load, and generate.py's --translate / --rotate."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

import legacy
from sampling.images import load_png
from sampling.synthesis import make_transform
from training import networks_stylegan3


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
