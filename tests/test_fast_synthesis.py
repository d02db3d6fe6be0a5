"""The CPU fast path of batched StyleGAN2 synthesis (sampling.synthesis._cpu_synthesis) and its ops.

The fast ops are checked in float64 against the literal references of test_ops.py (written from the documented
semantics); the fast path against NVlabs' per-seed synthesis of the same network under the parity rule (uint8
images within 1), on networks small enough to run in a second but with the shapes that matter: 64 px and 256 px,
every block size on both sides of the one-sample-at-a-time threshold.
"""

import numpy as np
import pytest
import torch
from test_ops import F4, _close, _rand_filter, _randn, ref_conv2d_resample, ref_upfirdn2d

from sampling import synthesis
from sampling.images import to_uint8
from torch_utils.ops import conv2d_resample, upfirdn2d
from training.networks_stylegan2 import Generator

CL = torch.channels_last
FILTERS = [F4, upfirdn2d.setup_filter([1, 2, 1]), upfirdn2d.setup_filter([1, 1]), None, _rand_filter(4, 3),
           upfirdn2d.setup_filter([1, 2, 3, 4, 4, 3, 2, 1])]  # The last one is separable (1-D).


@pytest.mark.parametrize('f', FILTERS)
def test_upsample2d_fast_matches_reference(f):
    x = _randn(2, 3, 5, 7)
    f = torch.ones([1, 1]) if f is None else f
    fw, fh = (f.shape[-1], f.shape[0])
    expected = ref_upfirdn2d(x, f, up=2, padding=[(fw + 1) // 2, (fw - 2) // 2, (fh + 1) // 2, (fh - 2) // 2], gain=4)
    _close(upfirdn2d.upsample2d_fast(x, f.double()), expected)


@pytest.mark.parametrize('padding', [[1, 1, 1, 1], [2, 0, 1, 3], [-1, 2, 0, 0]])
@pytest.mark.parametrize('flip_filter', [False, True])
def test_filter2d_padded_fast_matches_reference(padding, flip_filter):
    x, f, bias = _randn(2, 3, 6, 7), _rand_filter(3, 4), _randn(3, seed=1)
    expected = ref_upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=3) + bias.numpy()[:, None, None]
    for memory_format in (torch.contiguous_format, CL):
        out = upfirdn2d.filter2d_padded_fast(x.contiguous(memory_format=memory_format), f.double(), padding,
                                             gain=3, flip_filter=flip_filter, bias=bias)
        _close(out, expected)


@pytest.mark.parametrize('f', FILTERS[:3] + FILTERS[4:])
@pytest.mark.parametrize('flip_weight', [False, True])
@pytest.mark.parametrize('k, padding', [(3, 1), (3, 0), (5, 2), (2, 0)])
def test_conv2d_upsample_fast_matches_reference(f, flip_weight, k, padding):
    x, w, bias = _randn(2, 4, 5, 6), _randn(3, 4, k, k, seed=1), _randn(3, seed=2)
    expected = ref_conv2d_resample(x, w, f, up=2, padding=padding, flip_weight=flip_weight)
    expected = expected + bias.numpy()[:, None, None]
    out = conv2d_resample.conv2d_upsample_fast(x.contiguous(memory_format=CL), w, f.double(), up=2,
                                               padding=padding, flip_weight=flip_weight, bias=bias)
    assert out.is_contiguous(memory_format=CL)
    _close(out, expected)


def _generator(res, seed=0, **kwargs):
    """A StyleGAN2 at ``res`` px with few channels, non-zero biases and noise strengths."""
    torch.manual_seed(seed)
    kwargs = dict(dict(channel_base=16 * res, channel_max=32, mapping_kwargs=dict(num_layers=2)), **kwargs)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=3, **kwargs)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                param.add_(torch.randn_like(param) * 0.1)
    return G.eval().requires_grad_(False)


def _per_seed_and_fast(G, num=3, noise_mode='const'):
    ws = G.mapping(torch.from_numpy(np.random.RandomState(1).randn(num, G.z_dim)).float(), None)
    with torch.no_grad():
        per_seed = torch.cat([G.synthesis(ws[i:i + 1], noise_mode=noise_mode) for i in range(num)])
        fast = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode=noise_mode)
    return per_seed, fast


def _assert_parity(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == torch.float32 and actual.is_contiguous()
    assert not torch.equal(actual, expected)  # Really a path of its own ...
    assert np.abs(to_uint8(actual).astype(int) - to_uint8(expected).astype(int)).max() <= 1  # ... within parity.
    assert float((actual - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


@pytest.mark.parametrize('res, block_bytes', [(64, 4 * 16 * 64 * 64), (64, 1), (64, 1 << 40), (256, 4 * 32 * 128 * 128)])
def test_fast_path_matches_per_seed_synthesis(monkeypatch, res, block_bytes):
    # The 64 px block alone, every block, no block one sample at a time; at 256 px the last two blocks.
    monkeypatch.setattr(synthesis, '_CPU_BLOCK_BYTES', block_bytes)
    _assert_parity(*_per_seed_and_fast(_generator(res)))


@pytest.mark.parametrize('kwargs', [dict(architecture='orig'), dict(conv_clamp=0.3), dict(activation='relu'),
                                    dict(activation='swish'), dict(resample_filter=[1, 2, 1]),
                                    dict(num_fp16_res=2)])  # StyleGAN3-repository networks: float32 on the CPU.
@pytest.mark.parametrize('block_bytes', [1, 1 << 40])
def test_fast_path_variants_match_per_seed_synthesis(monkeypatch, kwargs, block_bytes):
    # conv_clamp=0.3 clamps most activations: the clamp runs after the activation gain, as in NVlabs.
    monkeypatch.setattr(synthesis, '_CPU_BLOCK_BYTES', block_bytes)
    G = _generator(16, **kwargs)
    per_seed, fast = _per_seed_and_fast(G)
    _assert_parity(fast, per_seed)
    if 'conv_clamp' in kwargs:  # The clamp really acts.
        assert float((per_seed - _per_seed_and_fast(_generator(16))[0]).abs().max()) > 0.1


@pytest.mark.parametrize('block_bytes', [1, 1 << 40])
def test_fast_path_noise_modes(monkeypatch, block_bytes):
    monkeypatch.setattr(synthesis, '_CPU_BLOCK_BYTES', block_bytes)
    G = _generator(16)
    _assert_parity(*_per_seed_and_fast(G, noise_mode='none'))
    ws = G.mapping(torch.randn(3, G.z_dim), None)
    torch.manual_seed(5)
    first = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='random')
    torch.manual_seed(5)
    again = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='random')
    const = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='const')
    assert torch.equal(first, again) and first.shape == const.shape
    assert float((first - const).abs().max()) > 1e-3  # Random noise reaches the image.


@pytest.mark.parametrize('kwargs', [dict(architecture='resnet'), dict(num_fp16_res=2, compat='ada')])
def test_networks_the_fast_path_does_not_cover_run_block_by_block(kwargs):
    G = _generator(16, **kwargs)
    assert not all(synthesis._fast_block(getattr(G.synthesis, f'b{res}')) for res in G.synthesis.block_resolutions)
    ws = G.mapping(torch.randn(3, G.z_dim), None)
    with torch.no_grad():
        expected = synthesis._cpu_block_synthesis(G.synthesis, ws, noise_mode='const')
    assert torch.equal(synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='const'), expected)


def test_fast_path_follows_weights_changed_in_place():
    # The fast path keeps each layer's weight in its own layout between batches: a changed weight must show.
    G = _generator(16)
    _assert_parity(*_per_seed_and_fast(G))
    with torch.no_grad():
        G.synthesis.b16.conv1.weight.mul_(-1)
        G.synthesis.b8.conv0.weight.copy_(torch.randn_like(G.synthesis.b8.conv0.weight))
    _assert_parity(*_per_seed_and_fast(G))


def test_samples_run_on_threads_of_their_own_with_the_same_result(monkeypatch):
    # With every block one sample at a time each operation runs on one thread, whichever thread runs the sample.
    monkeypatch.setattr(synthesis, '_CPU_BLOCK_BYTES', 1)
    G = _generator(16)
    ws = G.mapping(torch.randn(5, G.z_dim), None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='const')
        torch.set_num_threads(3)
        torch.manual_seed(2)
        shared = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='random')
        torch.manual_seed(2)
        together = synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='const')
        assert torch.get_num_threads() == 3  # restored after the per-sample threads set 1
        torch.set_num_threads(1)
        torch.manual_seed(2)
        assert torch.equal(synthesis._cpu_synthesis(G.synthesis, ws, noise_mode='random'), shared)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)
