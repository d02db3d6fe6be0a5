"""Tests for training.networks_stylegan2: NVlabs numerics, state_dict layout and forward-pass options.

The reference numbers come from tests/data/nvlabs/sg2ada_tiny_state.npz (computed with NVlabs' own
StyleGAN2-ADA code); state_dict key sets are derived separately from the key tables in the shared
docs (stylegan-architecture.md, section D); everything else checks documented behaviour directly.
"""

import json
import os

import numpy as np
import pytest
import torch

from torch_utils.ops import upfirdn2d
from training import networks_stylegan2 as networks

# ----------------------------------------------------------------------------
# Helpers.




@pytest.fixture(scope='module')
def ref(fixtures_dir):
    with np.load(os.path.join(fixtures_dir, 'sg2ada_tiny_state.npz')) as data:
        return {key: data[key] for key in data.files}


def _ref_kwargs(ref):
    return json.loads(str(ref['init_kwargs']))


def _ref_state(ref):
    return {key[len('state/'):]: torch.from_numpy(value.copy()) for key, value in ref.items() if key.startswith('state/')}


def _ref_generator(ref, **synthesis_overrides):
    """The fixture generator as an ada-style network (nested kwargs), weights loaded strictly."""
    kwargs = _ref_kwargs(ref)
    kwargs['synthesis_kwargs'] = dict(kwargs['synthesis_kwargs'], **synthesis_overrides)
    G = networks.Generator(**kwargs).eval()
    G.load_state_dict(_ref_state(ref), strict=True)
    return G


def _ref_generator_sg3(ref, **synthesis_overrides):
    """The fixture weights in a generator built with the stylegan3 repository's flat signature."""
    kwargs = _ref_kwargs(ref)
    kwargs.update(kwargs.pop('synthesis_kwargs'), **synthesis_overrides)
    G = networks.Generator(**kwargs).eval()
    G.load_state_dict(_ref_state(ref), strict=True)
    return G


def _seed_z(seed, z_dim):
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim))  # float64, as generate.py


def _to_uint8(img):
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _max_abs(a, b):
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def _expected_generator_keys(R, c_dim, architecture='skip', mapping_layers=2):
    """Generator state_dict keys, written from the SG2 Generator table of doc D."""
    keys = set()
    layer = ['weight', 'noise_strength', 'bias', 'resample_filter', 'noise_const', 'affine.weight', 'affine.bias']
    r = 4
    while r <= R:
        b = f'synthesis.b{r}.'
        keys.add(b + 'resample_filter')
        if r == 4:
            keys.add(b + 'const')
        else:
            keys.update(b + 'conv0.' + k for k in layer)
        keys.update(b + 'conv1.' + k for k in layer)
        if architecture == 'skip' or r == R:
            keys.update(b + 'torgb.' + k for k in ['weight', 'bias', 'affine.weight', 'affine.bias'])
        if architecture == 'resnet' and r >= 8:
            keys.update([b + 'skip.weight', b + 'skip.resample_filter'])
        r *= 2
    keys.add('mapping.w_avg')
    if c_dim > 0:
        keys.update(['mapping.embed.weight', 'mapping.embed.bias'])
    for i in range(mapping_layers):
        keys.update([f'mapping.fc{i}.weight', f'mapping.fc{i}.bias'])
    return keys


def _expected_discriminator_keys(R, c_dim, architecture='resnet', mapping_layers=8):
    """Discriminator state_dict keys, written from the SG2 Discriminator table of doc D."""
    keys = set()
    conv = ['weight', 'bias', 'resample_filter']
    r = R
    while r >= 8:
        b = f'b{r}.'
        keys.add(b + 'resample_filter')
        if r == R or architecture == 'skip':
            keys.update(b + 'fromrgb.' + k for k in conv)
        keys.update(b + 'conv0.' + k for k in conv)
        keys.update(b + 'conv1.' + k for k in conv)
        if architecture == 'resnet':
            keys.update([b + 'skip.weight', b + 'skip.resample_filter'])
        r //= 2
    if c_dim > 0:
        keys.update(['mapping.embed.weight', 'mapping.embed.bias'])
        for i in range(mapping_layers):
            keys.update([f'mapping.fc{i}.weight', f'mapping.fc{i}.bias'])
    if architecture == 'skip':
        keys.update('b4.fromrgb.' + k for k in conv)
    keys.update('b4.conv.' + k for k in conv)
    keys.update(['b4.fc.weight', 'b4.fc.bias', 'b4.out.weight', 'b4.out.bias'])
    return keys


def _tiny_cond_kwargs(compat):
    """The conditional fixture configuration of doc D (c_dim 4, fp16 blocks at 16 and 32, clamp 256)."""
    syn = dict(channel_base=1024, channel_max=64, num_fp16_res=2, conv_clamp=256)
    if compat == 'ada':
        G = dict(z_dim=32, c_dim=4, w_dim=32, img_resolution=32, img_channels=3,
                 mapping_kwargs=dict(num_layers=2), synthesis_kwargs=syn)
        # The 43-key ada D of doc D has the fixture's 2-layer label mapping.
        D = dict(c_dim=4, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2), compat='ada', **syn)
    else:
        G = dict(z_dim=32, c_dim=4, w_dim=32, img_resolution=32, img_channels=3,
                 mapping_kwargs=dict(num_layers=2), **syn)
        D = dict(c_dim=4, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=8), compat='sg3', **syn)
    return G, D


def _one_hot(labels, c_dim):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), c_dim).to(torch.float32)


def _perturb_(net, seed=0):
    """Give zero-initialised parameters (biases, noise strengths) non-zero values so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().gt(0).any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net

# ----------------------------------------------------------------------------
# The NVlabs fixture.


def test_fixture_state_facts(ref):
    G = _ref_generator(ref)
    state = G.state_dict()
    assert len(state) == 75
    assert set(state) == _expected_generator_keys(32, 0, 'skip', mapping_layers=2)
    assert sum(p.numel() for p in G.parameters()) == 237_299
    assert sum(b.numel() for b in G.buffers()) == 2_912
    assert G.num_ws == 8 and G.synthesis.num_ws == 8
    for key, value in _ref_state(ref).items():
        assert tuple(state[key].shape) == tuple(value.shape), key


def test_fixture_z_follows_generate_py(ref):
    for i, seed in enumerate(ref['ref/seeds']):
        z = _seed_z(int(seed), 32)
        assert _max_abs(z[0].float(), ref['ref/z'][i]) == 0


def test_fixture_per_seed(ref):
    G = _ref_generator(ref)
    assert _max_abs(G.mapping.w_avg, ref['ref/w_avg']) <= 1e-5
    with torch.no_grad():
        for i, seed in enumerate(ref['ref/seeds']):
            z = _seed_z(int(seed), G.z_dim)
            ws1 = G.mapping(z, None)
            assert ws1.dtype == torch.float32 and ws1.shape == (1, 8, 32)
            assert _max_abs(ws1[0], ref['ref/ws_psi1'][i]) <= 1e-5, seed
            assert _max_abs(G.mapping(z, None, truncation_psi=0.7)[0], ref['ref/ws_psi07'][i]) <= 1e-5, seed
            ws05 = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
            assert _max_abs(ws05[0], ref['ref/ws_psi05_cutoff2'][i]) <= 1e-5, seed

            img1 = G(z, None, truncation_psi=1, noise_mode='const')
            img07 = G(z, None, truncation_psi=0.7, noise_mode='const')
            assert img1.shape == (1, 3, 32, 32) and img1.dtype == torch.float32
            assert _max_abs(img1[0], ref['ref/img_psi1'][i]) <= 1e-4, seed
            assert _max_abs(img07[0], ref['ref/img_psi07'][i]) <= 1e-4, seed
            ws_ref = torch.from_numpy(ref['ref/ws_psi1'][i:i + 1])
            img_ws = G.synthesis(ws_ref, noise_mode='const')
            assert _max_abs(img_ws[0], ref['ref/img_psi1_from_ws'][i]) <= 1e-4, seed

            for img, key in ((img1, 'ref/img_uint8_psi1'), (img07, 'ref/img_uint8_psi07')):
                u8 = _to_uint8(img)
                assert u8.dtype == torch.uint8 and u8.shape == (1, 32, 32, 3)
                diff = (u8[0].to(torch.int16) - torch.from_numpy(ref[key][i]).to(torch.int16)).abs()
                assert int(diff.max()) <= 1, (seed, key)


def test_fixture_batched(ref):
    G = _ref_generator(ref)
    z = torch.cat([_seed_z(int(s), G.z_dim) for s in ref['ref/seeds']])
    with torch.no_grad():
        for psi, key in ((1, 'psi1'), (0.7, 'psi07')):
            ws = torch.cat([G.mapping(z[:3], None, truncation_psi=psi), G.mapping(z[3:], None, truncation_psi=psi)])
            assert _max_abs(ws, ref[f'ref/ws_{key}']) <= 1e-5
            img = torch.cat([G(z[:3], None, truncation_psi=psi, noise_mode='const'),
                             G(z[3:], None, truncation_psi=psi, noise_mode='const')])
            assert img.shape == (8, 3, 32, 32)
            assert _max_abs(img, ref[f'ref/img_{key}']) <= 1e-4
            diff = (_to_uint8(img).to(torch.int16) - torch.from_numpy(ref[f'ref/img_uint8_{key}']).to(torch.int16))
            assert int(diff.abs().max()) <= 1
        ws = torch.cat([G.mapping(z[:5], None, truncation_psi=0.5, truncation_cutoff=2),
                        G.mapping(z[5:], None, truncation_psi=0.5, truncation_cutoff=2)])
        assert _max_abs(ws, ref['ref/ws_psi05_cutoff2']) <= 1e-5
        img = G.synthesis(torch.from_numpy(ref['ref/ws_psi1']), noise_mode='const')
        assert _max_abs(img, ref['ref/img_psi1_from_ws']) <= 1e-4


def test_fixture_float64_ws_are_cast(ref):
    G = _ref_generator(ref)
    ws = torch.from_numpy(ref['ref/ws_psi1'][:2])
    with torch.no_grad():
        img32 = G.synthesis(ws, noise_mode='const')
        img64 = G.synthesis(ws.double(), noise_mode='const')
    assert img64.dtype == torch.float32
    assert torch.equal(img32, img64)

# ----------------------------------------------------------------------------
# State layout (doc D fixture facts).


def test_discriminator_ada_tiny_keys():
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64,
                               compat='ada')
    state = D.state_dict()
    assert len(state) == 37
    assert set(state) == _expected_discriminator_keys(32, 0, 'resnet')
    assert state['b4.fc.weight'].shape == (64, 64 * 16)
    assert state['b4.out.weight'].shape == (1, 64)
    assert state['b4.conv.weight'].shape == (64, 65, 3, 3)


@pytest.mark.parametrize('compat, G_keys, D_keys, D_mapping_layers', [('ada', 77, 43, 2), ('sg3', 77, 55, 8)])
def test_conditional_key_counts(compat, G_keys, D_keys, D_mapping_layers):
    G_kwargs, D_kwargs = _tiny_cond_kwargs(compat)
    G = networks.Generator(**G_kwargs)
    D = networks.Discriminator(**D_kwargs)
    assert len(G.state_dict()) == G_keys
    assert set(G.state_dict()) == _expected_generator_keys(32, 4, 'skip', mapping_layers=2)
    assert len(D.state_dict()) == D_keys
    assert set(D.state_dict()) == _expected_discriminator_keys(32, 4, 'resnet', mapping_layers=D_mapping_layers)
    assert G.state_dict()['mapping.fc0.weight'].shape == (32, 64)  # z_dim + embed_features
    assert D.state_dict()['b4.out.weight'].shape == (64, 64)       # cmap_dim defaults to C4
    # fp16 blocks at the two highest resolutions only.
    assert [G.synthesis.b4.use_fp16, G.synthesis.b8.use_fp16, G.synthesis.b16.use_fp16, G.synthesis.b32.use_fp16] \
        == [False, False, True, True]
    assert [D.b32.use_fp16, D.b16.use_fp16, D.b8.use_fp16] == [True, True, False]
    assert all(t.dtype == torch.float32 for t in list(G.state_dict().values()) + list(D.state_dict().values()))


def test_frozen_discriminator_layers_are_buffers():
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32,
                               block_kwargs=dict(freeze_layers=2), compat='ada')
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    # Layer 0 = b16.fromrgb, 1 = b16.conv0 (frozen), 2 = b16.conv1 (trainable).
    for name in ('b16.fromrgb.weight', 'b16.fromrgb.bias', 'b16.conv0.weight', 'b16.conv0.bias'):
        assert name in buffers and name not in params
    for name in ('b16.conv1.weight', 'b16.skip.weight', 'b8.conv0.weight'):
        assert name in params
    assert set(D.state_dict()) == _expected_discriminator_keys(16, 0, 'resnet')

# ----------------------------------------------------------------------------
# Discriminator forward passes.


@pytest.mark.parametrize('compat', ['ada', 'sg3'])
def test_discriminator_runs_and_r1_is_twice_differentiable(compat):
    _, D_kwargs = _tiny_cond_kwargs(compat)
    D_kwargs = dict(D_kwargs, num_fp16_res=0)  # fp16 gradients on CPU are not what R1 is about
    D = _perturb_(networks.Discriminator(**D_kwargs))
    img = torch.randn([4, 3, 32, 32], generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    c = _one_hot([0, 1, 2, 3], 4)
    logits = D(img, c)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    grad, = torch.autograd.grad(outputs=logits.sum(), inputs=img, create_graph=True)
    assert grad.shape == img.shape and grad.abs().sum() > 0
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    grads = {name: p.grad for name, p in D.named_parameters()}
    # The output bias shifts every logit equally, so the input gradient does not depend on it.
    assert grads.pop('b4.out.bias') is None
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads['b32.fromrgb.weight'].abs().sum() > 0
    assert grads['b4.fc.weight'].abs().sum() > 0


def test_discriminator_fp16_blocks_on_cpu():
    _, ada_kwargs = _tiny_cond_kwargs('ada')
    D = _perturb_(networks.Discriminator(**ada_kwargs)).eval()
    D_sg3 = networks.Discriminator(**_tiny_cond_kwargs('sg3')[1]).eval()
    seen = {}
    D.b32.conv0.register_forward_hook(lambda m, i, o: seen.__setitem__('ada', o.dtype))
    D_sg3.b32.conv0.register_forward_hook(lambda m, i, o: seen.__setitem__('sg3', o.dtype))
    img = torch.randn([2, 3, 32, 32], generator=torch.Generator().manual_seed(2))
    c = _one_hot([1, 3], 4)
    with torch.no_grad():
        fp16 = D(img, c)
        assert seen['ada'] == torch.float16
        fp32 = D(img, c, force_fp32=True)
        assert seen['ada'] == torch.float32
        D_sg3(img, c)
        assert seen['sg3'] == torch.float32  # sg3 sources never use float16 off CUDA
    assert fp16.dtype == torch.float32
    assert 0 < _max_abs(fp16, fp32) < 1e-2


def _ref_minibatch_std(x, group_size, num_channels):
    """Brute force over samples in float64: sample i's group is {j : j = i mod (N/G)}."""
    x = x.double().numpy()
    N, C, H, W = x.shape
    G = N if group_size is None else min(group_size, N)
    M = N // G
    c = C // num_channels
    out = np.zeros((N, num_channels, H, W))
    for i in range(N):
        members = x[[j for j in range(N) if j % M == i % M]]
        for f in range(num_channels):
            block = members[:, f * c:(f + 1) * c]
            std = np.sqrt(((block - block.mean(axis=0)) ** 2).mean(axis=0) + 1e-8)
            out[i, f] = std.mean()
    return np.concatenate([x, out], axis=1)


@pytest.mark.parametrize('N, group_size, num_channels', [(8, 4, 1), (6, 2, 2), (4, None, 1), (2, 4, 1)])
def test_minibatch_std_against_brute_force(N, group_size, num_channels):
    layer = networks.MinibatchStdLayer(group_size=group_size, num_channels=num_channels)
    x = torch.randn([N, 4, 3, 3], generator=torch.Generator().manual_seed(N))
    y = layer(x)
    assert y.shape == (N, 4 + num_channels, 3, 3)
    assert np.abs(y.double().numpy() - _ref_minibatch_std(x, group_size, num_channels)).max() < 1e-5

# ----------------------------------------------------------------------------
# Generator options.


@pytest.mark.parametrize('compat', ['ada', 'sg3'])
def test_conditional_generator(compat):
    G_kwargs, _ = _tiny_cond_kwargs(compat)
    G = _perturb_(networks.Generator(**G_kwargs)).eval()
    z = torch.randn([3, 32], generator=torch.Generator().manual_seed(3))
    c = _one_hot([0, 1, 3], 4)
    with torch.no_grad():
        img = G(z, c, noise_mode='const')
        assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32
        assert torch.isfinite(img).all()
        ws = G.mapping(z, c)
        ws_other = G.mapping(z, _one_hot([2, 2, 2], 4))
    assert ws.shape == (3, G.num_ws, 32)
    assert (ws - ws_other).abs().amax(dim=[1, 2]).min() > 0  # the label changes every sample's w


def test_noise_modes(ref):
    G = _ref_generator(ref)
    assert all(float(m.noise_strength.detach()) != 0 for m in G.modules() if hasattr(m, 'noise_strength'))
    z = torch.cat([_seed_z(s, G.z_dim) for s in (0, 1)])
    with torch.no_grad():
        const_a = G(z, None, noise_mode='const')
        const_b = G(z, None, noise_mode='const')
        random_a = G(z, None, noise_mode='random')
        random_b = G(z, None, noise_mode='random')
        torch.manual_seed(123)
        seeded_a = G(z, None, noise_mode='random')
        torch.manual_seed(123)
        seeded_b = G(z, None, noise_mode='random')
        torch.manual_seed(123)
        default = G(z, None)  # the network default is 'random'
        none = G(z, None, noise_mode='none')
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(random_a, random_b, atol=1e-4)
    assert torch.equal(seeded_a, seeded_b)
    assert torch.equal(default, seeded_a)
    assert not torch.allclose(random_a, const_a, atol=1e-4)
    assert not torch.allclose(none, const_a, atol=1e-4)
    # Random noise is per sample: the same z twice in one batch gets different images.
    with torch.no_grad():
        twins = G(z[:1].repeat(2, 1), None, noise_mode='random')
    assert not torch.allclose(twins[0], twins[1], atol=1e-4)


def test_noise_none_equals_zero_strength(ref):
    G = _ref_generator(ref)
    G_zero = _ref_generator(ref)
    with torch.no_grad():
        for m in G_zero.modules():
            if hasattr(m, 'noise_strength'):
                m.noise_strength.zero_()
    z = torch.cat([_seed_z(s, G.z_dim) for s in (2, 3)])
    with torch.no_grad():
        assert _max_abs(G(z, None, noise_mode='none'), G_zero(z, None, noise_mode='const')) <= 1e-6


def test_truncation_semantics(ref):
    G = _ref_generator(ref)
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(4)])
    w_avg = G.mapping.w_avg.double()
    with torch.no_grad():
        ws1 = G.mapping(z, None)
        assert torch.equal(G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=0), ws1)
        ws0 = G.mapping(z, None, truncation_psi=0)
        assert torch.equal(ws0, G.mapping.w_avg.expand_as(ws0))
        for psi in (0.7, 0.5, 1.5, -0.3):
            expected = w_avg + psi * (ws1.double() - w_avg)
            assert _max_abs(G.mapping(z, None, truncation_psi=psi), expected) <= 1e-5, psi
            cut = G.mapping(z, None, truncation_psi=psi, truncation_cutoff=3)
            assert _max_abs(cut[:, :3], expected[:, :3]) <= 1e-5
            assert torch.equal(cut[:, 3:], ws1[:, 3:])
        # Every w is identical before truncation: one w broadcast to num_ws.
        assert torch.equal(ws1, ws1[:, :1].expand_as(ws1))
        img0 = G(z, None, truncation_psi=0, noise_mode='const')
    assert _max_abs(img0, img0[:1].expand_as(img0)) <= 1e-5  # psi = 0 gives the same image for any z


def test_force_fp32_is_a_noop_for_fp32_networks(ref):
    G = _ref_generator(ref)
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(2)])
    with torch.no_grad():
        assert torch.equal(G(z, None, noise_mode='const'), G(z, None, noise_mode='const', force_fp32=True))


def test_ada_fp16_blocks_run_in_float16_on_cpu(ref):
    G = _ref_generator(ref, num_fp16_res=2, conv_clamp=256)
    dtypes = {}
    for res in (8, 16, 32):
        getattr(G.synthesis, f'b{res}').conv1.register_forward_hook(
            lambda m, i, o, res=res: dtypes.__setitem__(res, o.dtype))
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(3)])
    with torch.no_grad():
        fp16 = G(z, None, noise_mode='const')
        assert dtypes == {8: torch.float32, 16: torch.float16, 32: torch.float16}
        fp32 = G(z, None, noise_mode='const', force_fp32=True)
        assert dtypes == {8: torch.float32, 16: torch.float32, 32: torch.float32}
    assert fp16.dtype == torch.float32
    assert 0 < _max_abs(fp16, fp32) < 1e-2
    # Forced to float32, the fp16 configuration computes NVlabs' fp32 images (the clamp never bites here).
    assert _max_abs(fp32, ref['ref/img_psi1'][:3]) <= 1e-4


def test_sg3_compat_forces_fp32_on_cpu(ref):
    G = _ref_generator_sg3(ref, num_fp16_res=2, conv_clamp=256)
    assert G.synthesis.b32.use_fp16
    dtypes = {}
    G.synthesis.b32.conv1.register_forward_hook(lambda m, i, o: dtypes.__setitem__(32, o.dtype))
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(3)])
    with torch.no_grad():
        auto = G(z, None, noise_mode='const')
        assert dtypes[32] == torch.float32
        forced = G(z, None, noise_mode='const', force_fp32=True)
    assert torch.equal(auto, forced)
    assert _max_abs(auto, ref['ref/img_psi1'][:3]) <= 1e-4


def test_compat_defaults():
    ada = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                             mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    sg3 = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                             mapping_kwargs=dict(num_layers=1), channel_base=64, channel_max=8)
    assert ada.mapping.w_avg_beta == 0.995 and sg3.mapping.w_avg_beta == 0.998
    assert ada.synthesis.b8.conv1.conv_clamp is None and sg3.synthesis.b8.conv1.conv_clamp == 256
    assert not ada.synthesis.b8.use_fp16 and sg3.synthesis.b8.use_fp16  # sg3 default num_fp16_res=4
    assert hasattr(sg3.synthesis.b8, 'fused_modconv_default') and not hasattr(ada.synthesis.b8, 'fused_modconv_default')
    assert hasattr(sg3.mapping.fc0, 'in_features') and not hasattr(ada.mapping.fc0, 'in_features')


def _expected_w_avg(G, z, beta):
    with torch.no_grad():
        was_training = G.mapping.training
        G.mapping.eval()
        w = G.mapping(z, None)[:, 0].double()  # the untruncated w before the update (eval: no update)
        G.mapping.train(was_training)
    mean = w.mean(dim=0)
    return mean + beta * (G.mapping.w_avg.double() - mean)


def test_w_avg_update_ada(ref):
    G = _ref_generator(ref)
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(4)])
    old = G.mapping.w_avg.clone()
    with torch.no_grad():
        G(z, None, noise_mode='const')  # eval mode: no update
        G.mapping(z, None)
        assert torch.equal(G.mapping.w_avg, old)

        G.train()
        G.mapping(z, None, skip_w_avg_update=True)
        assert torch.equal(G.mapping.w_avg, old)
        expected = _expected_w_avg(G, z, beta=0.995)
        G(z, None, noise_mode='const')  # training mode: w_avg tracks the batch mean
    assert not torch.equal(G.mapping.w_avg, old)
    assert _max_abs(G.mapping.w_avg, expected) <= 1e-6


def test_w_avg_update_sg3(ref):
    G = _ref_generator_sg3(ref)
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(4)])
    old = G.mapping.w_avg.clone()
    with torch.no_grad():
        G.train()
        G(z, None, noise_mode='const')  # training mode alone does not update in sg3
        assert torch.equal(G.mapping.w_avg, old)
        G.eval()
        expected = _expected_w_avg(G, z, beta=0.998)
        G(z, None, noise_mode='const', update_emas=True)
    assert _max_abs(G.mapping.w_avg, expected) <= 1e-6


@pytest.mark.parametrize('compat', ['ada', 'sg3'])
@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_architectures(compat, architecture):
    syn = dict(channel_base=256, channel_max=32, architecture=architecture)
    common = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2))
    if compat == 'ada':
        G = networks.Generator(synthesis_kwargs=syn, **common)
    else:
        G = networks.Generator(**syn, **common)
    G = _perturb_(G).eval()
    assert set(G.state_dict()) == _expected_generator_keys(16, 0, architecture, mapping_layers=2)
    assert G.num_ws == 6
    z = torch.randn([2, 16], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        img = G(z, None, noise_mode='const')
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()

    D = _perturb_(networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, architecture=architecture,
                                         channel_base=256, channel_max=32, compat=compat)).eval()
    assert set(D.state_dict()) == _expected_discriminator_keys(16, 0, architecture)
    with torch.no_grad():
        logits = D(img, None)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()


def test_orig_image_is_last_torgb_only():
    """With 'orig' no earlier block makes an image: the output is exactly the last block's ToRGB output."""
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=128, channel_max=8, architecture='orig'))
    G = _perturb_(G).eval()
    ws = torch.randn([1, G.num_ws, 8], generator=torch.Generator().manual_seed(5))
    captured = {}
    G.synthesis.b16.torgb.register_forward_hook(lambda m, i, o: captured.__setitem__('rgb', o))
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode='const')
    assert torch.equal(img, captured['rgb'].float())


def _synthesis_by_hand(S, ws):
    """SynthesisNetwork.forward composed from its layers as doc A.8/A.9 describe (noise 'const')."""
    N = ws.shape[0]
    x = img = None
    for r in S.block_resolutions:
        block = getattr(S, f'b{r}')
        k = int(np.log2(r))
        if r == 4:
            x = block.conv1(block.const.unsqueeze(0).repeat(N, 1, 1, 1), ws[:, 0], noise_mode='const')
        elif block.architecture == 'resnet':
            y = block.skip(x, gain=np.sqrt(0.5))
            x = block.conv0(x, ws[:, 2 * k - 5], noise_mode='const')
            x = block.conv1(x, ws[:, 2 * k - 4], noise_mode='const', gain=np.sqrt(0.5))
            x = y + x
        else:
            x = block.conv0(x, ws[:, 2 * k - 5], noise_mode='const')
            x = block.conv1(x, ws[:, 2 * k - 4], noise_mode='const')
        if img is not None:
            img = upfirdn2d.upsample2d(img, block.resample_filter)
        if block.architecture == 'skip' or r == S.img_resolution:
            y = block.torgb(x, ws[:, 2 * k - 3] if r > 4 else ws[:, 1])
            img = y if img is None else img + y
    return img


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_synthesis_wiring_with_distinct_ws(architecture):
    """Each layer takes its own w (a ToRGB shares the next block's conv0 w): the fixture's ws cannot show this."""
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=128, channel_max=8, architecture=architecture))
    G = _perturb_(G).eval()
    ws = torch.randn([2, G.num_ws, 8], generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode='const')
        expected = _synthesis_by_hand(G.synthesis, ws)
    assert _max_abs(img, expected) <= 1e-6


def _discriminator_by_hand(D, img, c):
    """Discriminator.forward composed from its layers as doc A.11 describes."""
    x = None
    for r in D.block_resolutions:
        block = getattr(D, f'b{r}')
        if r == D.img_resolution or block.architecture == 'skip':
            y = block.fromrgb(img)
            x = y if x is None else x + y
            img = upfirdn2d.downsample2d(img, block.resample_filter) if block.architecture == 'skip' else None
        if block.architecture == 'resnet':
            x = block.skip(x, gain=np.sqrt(0.5)) + block.conv1(block.conv0(x), gain=np.sqrt(0.5))
        else:
            x = block.conv1(block.conv0(x))
    epilogue = D.b4
    if epilogue.architecture == 'skip':
        x = x + epilogue.fromrgb(img)
    x = torch.from_numpy(_ref_minibatch_std(x, 4, 1)).float()
    x = epilogue.out(epilogue.fc(epilogue.conv(x).flatten(1)))
    if D.c_dim > 0:
        cmap = D.mapping(None, c)
        x = (x.double() * cmap.double()).sum(dim=1, keepdim=True) / np.sqrt(cmap.shape[1])
    return x


@pytest.mark.parametrize('c_dim', [0, 3])
@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_discriminator_wiring(architecture, c_dim):
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, architecture=architecture,
                               channel_base=128, channel_max=8, mapping_kwargs=dict(num_layers=2), compat='ada')
    D = _perturb_(D).eval()
    img = torch.randn([4, 3, 16, 16], generator=torch.Generator().manual_seed(7))
    c = _one_hot([0, 1, 2, 0], c_dim) if c_dim else None
    with torch.no_grad():
        logits = D(img, c)
        expected = _discriminator_by_hand(D, img, c)
    assert logits.shape == (4, 1)
    assert _max_abs(logits, expected) <= 1e-5


def test_fused_and_unfused_modconv_agree(ref):
    G = _ref_generator(ref)
    z = torch.cat([_seed_z(s, G.z_dim) for s in range(4)])
    with torch.no_grad():
        fused = G(z, None, truncation_psi=0.7, noise_mode='const', fused_modconv=True)
        unfused = G(z, None, truncation_psi=0.7, noise_mode='const', fused_modconv=False)
    assert _max_abs(fused, unfused) <= 1e-5
    assert _max_abs(unfused, ref['ref/img_psi07'][:4]) <= 1e-4
