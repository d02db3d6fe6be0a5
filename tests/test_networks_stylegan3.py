"""Tests for training/networks_stylegan3.py against NVlabs' own outputs (tests/data/nvlabs/sg3_tiny_state.npz).

The fixture holds the state_dict of a tiny StyleGAN3-T generator built by NVlabs' code and its
outputs for seeds 0..7 (see tests/data/nvlabs/README.md). Layer tables for the 1024 px configs
come from docs/stylegan-architecture.md (C.7), which was taken from NVlabs-built networks.
"""

import copy
import json
import os
import pickle

import numpy as np
import pytest
import scipy.special
import torch

from training import networks_stylegan3 as n3

WS_ATOL = 1e-5
IMG_ATOL = 1e-4

# ----------------------------------------------------------------------------
# Fixture network and its per-seed outputs (computed once: CPU forwards are the slow part).

@pytest.fixture(scope='module')
def fixture(fixtures_dir):
    data = np.load(os.path.join(fixtures_dir, 'sg3_tiny_state.npz'))
    assert str(data['class_name']) == 'Generator'
    arrays = {k: data[k] for k in data.files}
    arrays['init_kwargs'] = json.loads(str(data['init_kwargs']))
    arrays['state'] = {k[len('state/'):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith('state/')}
    return arrays


@pytest.fixture(scope='module')
def G(fixture):
    net = n3.Generator(**fixture['init_kwargs']).eval().requires_grad_(False)
    net.load_state_dict(fixture['state'], strict=True)
    return net


def _z(seed, z_dim):
    # generate.py's convention: a float64 [1, z_dim] row per seed.
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim))


def _to_uint8(img):
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope='module')
def per_seed(G, fixture):
    """Batch-1 outputs with a float64 z, exactly as generate.py computes them."""
    out = {'img_psi1': {}, 'img_psi07': {}, 'img_psi1_from_ws': {}}
    for seed in fixture['ref/seeds'].tolist():
        out['img_psi1'][seed] = G(_z(seed, G.z_dim), None, truncation_psi=1, noise_mode='const')[0]
        out['img_psi07'][seed] = G(_z(seed, G.z_dim), None, truncation_psi=0.7, noise_mode='const')[0]
        ws = torch.from_numpy(fixture['ref/ws_psi1'][seed:seed + 1])
        out['img_psi1_from_ws'][seed] = G.synthesis(ws, noise_mode='const')[0]
    return out

# ----------------------------------------------------------------------------
# Structure.

def test_fixture_state_names_shapes_and_order(fixture):
    net = n3.Generator(**fixture['init_kwargs'])
    fresh = net.state_dict()
    assert list(fresh.keys()) == list(fixture['state'].keys())
    for name, ref in fixture['state'].items():
        assert tuple(fresh[name].shape) == tuple(ref.shape), name
        assert fresh[name].dtype == torch.float32, name
    assert len(fresh) == 114
    assert sum(p.numel() for p in net.parameters()) == 314529
    assert net.num_ws == net.mapping.num_ws == net.synthesis.num_ws == 16


def test_fresh_filters_match_nvlabs_design(fixture):
    # Filters are designed at construction; NVlabs' buffers are the reference for the whole schedule.
    net = n3.Generator(**fixture['init_kwargs'])
    fresh = net.state_dict()
    names = [k for k in fixture['state'] if k.endswith('_filter')]
    assert len(names) == 28 # 14 layers x (up, down); ToRGB has none.
    for name in names:
        torch.testing.assert_close(fresh[name], fixture['state'][name], atol=1e-7, rtol=0, msg=name)
    for name in net.synthesis.layer_names:
        assert torch.equal(fresh[f'synthesis.{name}.magnitude_ema'], torch.ones([]))
    assert torch.equal(fresh['synthesis.input.transform'], torch.eye(3))


def test_fresh_stored_attributes_match_fixture_layout(fixture):
    # Sizes, channels and sampling rates are encoded in NVlabs' layer names and filter lengths.
    net = n3.Generator(**fixture['init_kwargs'])
    syn = net.synthesis
    names = sorted({k.split('.')[1] for k in fixture['state'] if k.startswith('synthesis.L')}, key=lambda s: int(s[1:].split('_')[0]))
    assert syn.layer_names == names
    assert (syn.num_layers, syn.num_critical, syn.margin_size, syn.output_scale, syn.num_fp16_res) == (14, 2, 10, 0.25, 4)
    inp = syn.input
    assert isinstance(inp.size, np.ndarray) and inp.size.dtype == np.int64 and inp.size.tolist() == [36, 36]
    assert (inp.channels, inp.sampling_rate, inp.bandwidth) == (64, 16, 2)
    assert isinstance(inp.bandwidth, np.float64)

    prev_size, prev_ch = 36, 64
    for idx, name in enumerate(names):
        layer = getattr(syn, name)
        _, size, ch = name.split('_')
        size, ch = int(size), int(ch)
        is_last = (idx == len(names) - 1)
        assert isinstance(layer.in_size, np.ndarray) and layer.in_size.dtype == np.int64 and layer.in_size.shape == (2,)
        assert layer.in_size.tolist() == [prev_size] * 2 and layer.out_size.tolist() == [size] * 2
        assert (layer.in_channels, layer.out_channels) == (prev_ch, ch)
        assert layer.is_torgb == is_last and layer.is_critically_sampled == (idx >= 12)
        assert isinstance(layer.use_fp16, np.bool_) and layer.use_fp16 # rate * 2**4 > 32 everywhere
        for attr in ['in_cutoff', 'out_cutoff', 'in_half_width', 'out_half_width']:
            assert isinstance(getattr(layer, attr), np.float64), attr
        # The margin is 10 px per side except in the last two layers, where size = resolution = rate.
        out_rate = 32 if idx >= len(names) - 2 else size - 20
        assert (layer.out_sampling_rate, type(layer.out_sampling_rate)) == (out_rate, int)
        up_len = fixture['state'][f'synthesis.{name}.up_filter'].shape[0] if not is_last else 1
        down_len = fixture['state'][f'synthesis.{name}.down_filter'].shape[0] if not is_last else 1
        assert (layer.up_taps, layer.down_taps) == (up_len, down_len)
        assert layer.conv_kernel == fixture['state'][f'synthesis.{name}.weight'].shape[-1]
        assert layer.magnitude_ema_beta == fixture['init_kwargs']['magnitude_ema_beta']
        assert layer.conv_clamp == 256
        # Padding must make the full conv + up-FIR + down-FIR produce exactly out_size (filtered_lrelu's size rule).
        grown = prev_size + layer.conv_kernel - 1
        px0, px1, py0, py1 = layer.padding
        assert (grown * layer.up_factor + px0 + px1 - (up_len - 1) - (down_len - 1) + layer.down_factor - 1) // layer.down_factor == size
        assert px0 == py0 and px1 == py1
        prev_size, prev_ch = size, ch
    assert net.mapping.embed is None and net.mapping.w_avg_beta == 0.998


# (name, up, down, padding) from the 1024 px SG3-T reference table.
_T1024 = [
    ('L0_36_512', 2, 2, [9, 8, 9, 8]), ('L1_36_512', 2, 2, [9, 8, 9, 8]), ('L2_52_512', 4, 2, [-6, -9, -6, -9]),
    ('L3_52_512', 2, 2, None), ('L4_84_512', 4, 2, None), ('L5_148_512', 4, 2, None), ('L6_148_512', 2, 2, None),
    ('L7_276_323', 4, 2, None), ('L8_276_203', 2, 2, None), ('L9_532_128', 4, 2, None), ('L10_1044_81', 4, 2, None),
    ('L11_1044_51', 2, 2, None), ('L12_1044_32', 2, 2, None), ('L13_1024_32', 2, 2, [-11, -12, -11, -12]),
    ('L14_1024_3', 1, 1, [0, 0, 0, 0]),
]
_R1024 = ['L0_36_1024', 'L1_36_1024', 'L2_52_1024', 'L3_52_1024', 'L4_84_1024', 'L5_148_1024', 'L6_148_1024',
    'L7_276_645', 'L8_276_406', 'L9_532_256', 'L10_1044_161', 'L11_1044_102', 'L12_1044_64', 'L13_1024_64', 'L14_1024_3']


def test_1024_config_t_layer_table():
    syn = n3.SynthesisNetwork(w_dim=512, img_resolution=1024, img_channels=3)
    assert syn.layer_names == [row[0] for row in _T1024]
    assert syn.num_ws == 16
    for idx, (name, up, down, padding) in enumerate(_T1024):
        layer = getattr(syn, name)
        assert (layer.up_factor, layer.down_factor) == (up, down), name
        assert (layer.up_taps, layer.down_taps) == ((6 * up, 6 * down) if up > 1 else (1, 1)), name
        if padding is not None:
            assert layer.padding == padding, name
        assert bool(layer.use_fp16) == (idx >= 5), name # fp16 from L5 (s = 128).
        assert layer.is_critically_sampled == (idx >= 12), name
        if idx < 14:
            assert layer.down_filter.shape == (12,) and layer.up_filter.ndim == 1
    assert syn.L14_1024_3.up_filter is None and syn.L14_1024_3.down_filter is None
    assert syn.L5_148_512.in_sampling_rate == 64 and syn.L5_148_512.tmp_sampling_rate == 256


def test_1024_config_r_layer_table():
    syn = n3.SynthesisNetwork(w_dim=512, img_resolution=1024, img_channels=3,
        channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True)
    assert syn.layer_names == _R1024
    for idx, name in enumerate(_R1024[:-1]):
        layer = getattr(syn, name)
        assert layer.weight.shape[-2:] == (1, 1)
        assert layer.down_radial == (idx < 12)
        assert tuple(layer.down_filter.shape) == ((12, 12) if idx < 12 else (12,)), name
        assert layer.padding == ([11, 10, 11, 10] if layer.up_factor == 2 else [-2, -5, -2, -5]) or idx == 13, name
    assert syn.L13_1024_64.padding == [-9, -10, -9, -10]

# ----------------------------------------------------------------------------
# Numerics against NVlabs' outputs.

def test_seeds_to_z_convention(fixture):
    for seed in fixture['ref/seeds'].tolist():
        z = _z(seed, 32)
        assert z.dtype == torch.float64
        np.testing.assert_array_equal(z.float().numpy()[0], fixture['ref/z'][seed])


@pytest.mark.parametrize('key,psi,cutoff', [('ws_psi1', 1, None), ('ws_psi07', 0.7, None), ('ws_psi05_cutoff2', 0.5, 2)])
def test_mapping_matches_nvlabs(G, fixture, key, psi, cutoff):
    ref = torch.from_numpy(fixture[f'ref/{key}'])
    for seed in fixture['ref/seeds'].tolist():
        ws = G.mapping(_z(seed, G.z_dim), None, truncation_psi=psi, truncation_cutoff=cutoff)
        assert ws.dtype == torch.float32
        torch.testing.assert_close(ws[0], ref[seed], atol=WS_ATOL, rtol=0)
    z = torch.from_numpy(np.concatenate([_z(seed, G.z_dim).numpy() for seed in fixture['ref/seeds'].tolist()]))
    torch.testing.assert_close(G.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff), ref, atol=WS_ATOL, rtol=0)
    torch.testing.assert_close(G.mapping.w_avg, torch.from_numpy(fixture['ref/w_avg']), atol=0, rtol=0)


def test_truncation_cutoff_leaves_later_ws_untouched(G, fixture):
    z = _z(3, G.z_dim)
    ws = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    full = G.mapping(z, None)
    assert torch.equal(ws[:, 2:], full[:, 2:])
    expected = G.mapping.w_avg.double() + 0.5 * (full[:, :2].double() - G.mapping.w_avg.double())
    torch.testing.assert_close(ws[:, :2].double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('key', ['img_psi1', 'img_psi07', 'img_psi1_from_ws'])
def test_images_per_seed_match_nvlabs(per_seed, fixture, key):
    ref = torch.from_numpy(fixture[f'ref/{key}'])
    assert per_seed[key]
    for seed, img in per_seed[key].items():
        assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
        torch.testing.assert_close(img, ref[seed], atol=IMG_ATOL, rtol=0)
    if key != 'img_psi1_from_ws':
        ref8 = fixture[f'ref/img_uint8_{key[4:]}']
        for seed, img in per_seed[key].items():
            diff = np.abs(_to_uint8(img[None])[0].astype(np.int16) - ref8[seed].astype(np.int16))
            assert diff.max() <= 1


def test_images_batched_match_nvlabs(G, fixture):
    # All 8 seeds at psi 1 (NVlabs' ws) and psi 0.7 (our ws) in one batch of 16.
    seeds = fixture['ref/seeds'].tolist()
    z = torch.from_numpy(np.concatenate([_z(seed, G.z_dim).numpy() for seed in seeds]))
    ws = torch.cat([torch.from_numpy(fixture['ref/ws_psi1']), G.mapping(z, None, truncation_psi=0.7)])
    img = G.synthesis(ws, noise_mode='const')
    img_psi1, img_psi07 = img[:8], img[8:]
    torch.testing.assert_close(img_psi1, torch.from_numpy(fixture['ref/img_psi1_from_ws']), atol=IMG_ATOL, rtol=0)
    torch.testing.assert_close(img_psi1, torch.from_numpy(fixture['ref/img_psi1']), atol=IMG_ATOL, rtol=0)
    torch.testing.assert_close(img_psi07, torch.from_numpy(fixture['ref/img_psi07']), atol=IMG_ATOL, rtol=0)
    for key, out in [('img_uint8_psi1', img_psi1), ('img_uint8_psi07', img_psi07)]:
        assert np.abs(_to_uint8(out).astype(np.int16) - fixture[f'ref/{key}'].astype(np.int16)).max() <= 1

# ----------------------------------------------------------------------------
# Input transform and pickling.

def test_input_transform_translates_image(G, per_seed):
    # gen_images.py writes inverse(make_transform(translate, angle)); translating by 2/32 (2 output
    # pixels) to the right must move the content 2 px right, up to the alias-free approximation.
    base = per_seed['img_psi1'][0][None]
    net = copy.deepcopy(G)
    m = np.array([[1, 0, 2 / 32], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    net.synthesis.input.transform.copy_(torch.from_numpy(np.linalg.inv(m)))
    img = net(_z(0, G.z_dim), None, noise_mode='const')
    inner = (slice(None), slice(None), slice(4, 28), slice(4, 28))
    err_unshifted = (img - base)[inner].abs().mean()
    err_shifted = (img - torch.roll(base, shifts=2, dims=3))[inner].abs().mean()
    err_wrong_way = (img - torch.roll(base, shifts=-2, dims=3))[inner].abs().mean()
    assert err_unshifted > 1e-3
    assert err_shifted < 0.1 * err_unshifted and err_shifted < 0.1 * err_wrong_way


def test_plain_pickle_round_trip(G, per_seed):
    from torch_utils import persistence
    assert persistence.is_persistent(G)
    assert dict(G.init_kwargs)['channel_base'] == 512
    net = pickle.loads(pickle.dumps(G))
    assert type(net).__name__ == 'Generator'
    assert net.state_dict().keys() == G.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), G.state_dict().values()))
    layer = getattr(net.synthesis, net.synthesis.layer_names[5])
    assert layer.in_size.dtype == np.int64 and isinstance(layer.use_fp16, np.bool_) and layer.padding == [-6, -9, -6, -9]
    img = net(_z(0, G.z_dim), None, noise_mode='const')
    assert torch.equal(img[0], per_seed['img_psi1'][0])

# ----------------------------------------------------------------------------
# Construction, EMAs and kwargs on small networks.

def _small_generator(**kwargs):
    kwargs = dict(dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128,
        channel_max=16, num_layers=4, mapping_kwargs=dict(num_layers=1)), **kwargs)
    return n3.Generator(**kwargs).eval().requires_grad_(False)


def test_r_config_constructs_and_runs():
    net = n3.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
        channel_base=1024, channel_max=128, conv_kernel=1, use_radial_filters=True).eval().requires_grad_(False)
    state = net.state_dict()
    assert len(state) == 114
    assert sum(p.numel() for p in net.parameters()) == 190259
    syn = net.synthesis
    for idx, name in enumerate(syn.layer_names[:-1]):
        f = state[f'synthesis.{name}.down_filter']
        assert f.shape == ((12, 12) if idx < 12 else (12,)), name
        assert state[f'synthesis.{name}.weight'].shape[-2:] == (1, 1)
    f = state[f'synthesis.{syn.layer_names[0]}.down_filter'].double()
    torch.testing.assert_close(f, f.t(), atol=1e-7, rtol=0)
    torch.testing.assert_close(f.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    img = net(torch.randn([1, 32], generator=torch.Generator().manual_seed(1)), None)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all() and img.abs().max() > 0


def test_fresh_construction_rng_order():
    # C.7: input (freqs randn, phases rand, weight randn, affine randn*0), then each layer (affine, weight), then mapping.
    torch.manual_seed(123)
    net = _small_generator()
    syn = net.synthesis
    c0 = syn.input.channels
    torch.manual_seed(123)
    freqs = torch.randn([c0, 2]).double()
    phases = torch.rand([c0]) - 0.5
    weight = torch.randn([c0, c0])
    torch.randn([4, 8])
    radii = freqs.norm(dim=1, keepdim=True)
    expected_freqs = freqs / radii * torch.exp(-radii ** 2 / 4) * float(syn.input.bandwidth)
    torch.testing.assert_close(syn.input.freqs.double(), expected_freqs, atol=1e-6, rtol=0)
    assert torch.equal(syn.input.phases, phases) and torch.equal(syn.input.weight, weight)
    assert torch.equal(syn.input.affine.weight, torch.zeros([4, 8]))
    assert torch.equal(syn.input.affine.bias, torch.tensor([1.0, 0, 0, 0]))
    for name in syn.layer_names:
        layer = getattr(syn, name)
        assert torch.equal(layer.affine.weight, torch.randn(layer.affine.weight.shape)), name
        assert torch.equal(layer.weight, torch.randn(layer.weight.shape)), name
        assert torch.equal(layer.affine.bias, torch.ones(layer.in_channels))
    assert torch.equal(net.mapping.fc0.weight, torch.randn([8, 8]) * 100) # randn * (1 / lr_multiplier 0.01)


def test_conditional_mapping_shapes_and_labels_matter():
    net = _small_generator(c_dim=5)
    state = net.state_dict()
    assert state['mapping.embed.weight'].shape == (8, 5) and state['mapping.fc0.weight'].shape == (8, 16)
    z = torch.randn([2, 8])
    c = torch.eye(5)[:2]
    ws = net.mapping(z, c)
    assert ws.shape == (2, net.num_ws, 8)
    assert not torch.allclose(ws, net.mapping(z, c.flip(0)))


def test_w_avg_updates_only_with_update_emas():
    net = _small_generator()
    mapping = net.mapping
    mapping.w_avg.copy_(torch.linspace(-1, 1, 8))
    old = mapping.w_avg.clone()
    z = torch.randn([4, 8], generator=torch.Generator().manual_seed(0))
    w = mapping(z, None)[:, 0]
    assert torch.equal(mapping.w_avg, old)
    mapping(z, None, update_emas=True)
    mean = w.double().mean(0)
    torch.testing.assert_close(mapping.w_avg.double(), mean + 0.998 * (old.double() - mean), atol=1e-6, rtol=0)


def test_magnitude_ema_updates_before_use():
    net = _small_generator()
    syn = net.synthesis
    layer = getattr(syn, syn.layer_names[1])
    layer.magnitude_ema.fill_(3.0)
    x = torch.randn([2, layer.in_channels, int(layer.in_size[1]), int(layer.in_size[0])], generator=torch.Generator().manual_seed(0))
    w = torch.randn([2, 8], generator=torch.Generator().manual_seed(1))
    y = layer(x, w, update_emas=True)
    stat = x.double().square().mean()
    expected = stat + layer.magnitude_ema_beta * (3.0 - stat)
    torch.testing.assert_close(layer.magnitude_ema.double(), expected, atol=1e-6, rtol=0)
    assert torch.equal(y, layer(x, w)) # The new EMA value was already used.
    before = {n: getattr(syn, n).magnitude_ema.clone() for n in syn.layer_names}
    net(torch.randn([2, 8]), None, update_emas=True)
    assert all(not torch.equal(before[n], getattr(syn, n).magnitude_ema) for n in syn.layer_names)


def test_synthesis_kwargs():
    net = _small_generator()
    ws = net.mapping(torch.randn([2, 8]), None)
    ref = net.synthesis(ws)
    for mode in ['random', 'const', 'none']:
        assert torch.equal(net.synthesis(ws, noise_mode=mode), ref) # StyleGAN3 has no noise.
    assert torch.equal(net.synthesis(ws, force_fp32=True), ref) # fp16 is CUDA-only.
    assert torch.equal(net.synthesis(ws.double()), ref)
    with pytest.raises(TypeError):
        net.synthesis(ws, fused_modconv=True)
    with pytest.raises(AssertionError):
        net.synthesis(ws[:, 1:])

# ----------------------------------------------------------------------------
# Building blocks against independent float64 references.

def test_modulated_conv2d_matches_float64_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([3, 5, 9, 9], generator=gen)
    w = torch.randn([4, 5, 3, 3], generator=gen)
    s = torch.randn([3, 5], generator=gen) + 1
    gain = torch.rand([], generator=gen) + 0.5
    for demodulate in [True, False]:
        y = n3.modulated_conv2d(x, w, s, demodulate=demodulate, padding=2, input_gain=gain)
        assert y.shape == (3, 4, 11, 11) and y.dtype == torch.float32
        for n in range(3):
            wn = w.double() * s[n].double()[None, :, None, None]
            if demodulate:
                wn = wn / wn.square().sum(dim=[1, 2, 3], keepdim=True).sqrt()
            ref = torch.nn.functional.conv2d(x[n:n + 1].double(), wn * gain.double(), padding=2)
            torch.testing.assert_close(y[n:n + 1].double(), ref, atol=1e-5, rtol=1e-5)


def _kaiser_beta_ref(numtaps, width, fs):
    atten = 2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def _kaiser_ref(numtaps, beta):
    i = np.arange(numtaps)
    return np.i0(beta * np.sqrt(1 - (2 * i / (numtaps - 1) - 1) ** 2)) / np.i0(beta)


@pytest.mark.parametrize('numtaps,cutoff,width,fs', [(12, 2.0, 4.58, 32), (24, 4.0, 8.3, 64), (12, 16.0, 6.0, 64)])
def test_design_lowpass_filter_separable(numtaps, cutoff, width, fs):
    f = n3.design_lowpass_filter(numtaps, cutoff, width, fs)
    assert f.dtype == torch.float32 and f.shape == (numtaps,)
    m = np.arange(numtaps) - (numtaps - 1) / 2
    ref = (cutoff / (fs / 2)) * np.sinc((cutoff / (fs / 2)) * m) * _kaiser_ref(numtaps, _kaiser_beta_ref(numtaps, width, fs))
    ref /= ref.sum()
    np.testing.assert_allclose(f.numpy(), ref, atol=1e-7, rtol=0)
    assert n3.design_lowpass_filter(1, cutoff, width, fs) is None


def test_design_lowpass_filter_radial():
    numtaps, cutoff, width, fs = 12, 3.2, 9.0, 32
    f = n3.design_lowpass_filter(numtaps, cutoff, width, fs, radial=True)
    assert f.dtype == torch.float32 and f.shape == (numtaps, numtaps)
    ref = np.zeros([numtaps, numtaps])
    window = _kaiser_ref(numtaps, _kaiser_beta_ref(numtaps, width, fs))
    for a in range(numtaps):
        for b in range(numtaps):
            r = np.sqrt(((a - (numtaps - 1) / 2) / fs) ** 2 + ((b - (numtaps - 1) / 2) / fs) ** 2)
            ref[a, b] = scipy.special.j1(2 * np.pi * cutoff * r) / (np.pi * r) * window[a] * window[b]
    ref /= ref.sum()
    np.testing.assert_allclose(f.numpy(), ref, atol=1e-7, rtol=0)

# ----------------------------------------------------------------------------
