"""Tests for sampling/volume.py: Jacobian singular values, log-volume, spaces of a generator.

References are computed independently: float64 Jacobians from torch.autograd.functional.jacobian on
float64 copies of the networks, the projection rebuilt here from its documented construction, and
linear maps with singular values fixed by construction.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sampling import volume

# ----------------------------------------------------------------------------
# Small networks.


def make_mlp(d=12, D=40, hidden=32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, D)).eval()


class FakeG(torch.nn.Module):
    """StyleGAN-shaped toy: z normalised to unit second moment, MLP mapping, w_avg truncation, MLP synthesis."""

    def __init__(self, z_dim=10, c_dim=0, w_dim=12, num_ws=3, channels=3, res=4, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.channels, self.res = channels, res
        in_dim = z_dim + (w_dim if c_dim else 0)
        self.embed = torch.nn.Parameter(torch.randn([w_dim, max(c_dim, 1)], generator=gen))
        self.fc0 = torch.nn.Parameter(torch.randn([16, in_dim], generator=gen) / in_dim ** 0.5)
        self.fc1 = torch.nn.Parameter(torch.randn([w_dim, 16], generator=gen) / 4)
        self.syn = torch.nn.Parameter(torch.randn([channels * res * res, w_dim * num_ws], generator=gen) / 4)
        self.register_buffer('w_avg', torch.randn([w_dim], generator=gen))

    @staticmethod
    def _norm(x):
        return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        x = self._norm(z)
        if self.c_dim:
            x = torch.cat([x, self._norm(c @ self.embed.T)], dim=1)
        x = F.leaky_relu(x @ self.fc0.T, 0.2) @ self.fc1.T
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            ws = self.w_avg.lerp(ws, truncation_psi)
        return ws

    def synthesis(self, ws, noise_mode='const'):
        assert noise_mode == 'const'
        x = torch.tanh(ws.flatten(1) @ self.syn.T)
        return x.reshape(-1, self.channels, self.res, self.res)


def reference_svals(g, z):
    """float64 singular values of each latent's Jacobian of ``g: [d] -> [...]`` (unbatched)."""
    return torch.stack([torch.linalg.svdvals(torch.autograd.functional.jacobian(g, zz).reshape(-1, len(zz)))
                        for zz in z.to(torch.float64)])


def relerr(a, b):
    return float(((a.to(torch.float64) - b) / b).abs().max())

# ----------------------------------------------------------------------------
# 'exact'


def test_exact_matches_float64_jacobian_mlp():
    f = make_mlp(d=12, D=40)
    z = torch.randn([5, 12], generator=torch.Generator().manual_seed(1))
    ref = reference_svals(copy.deepcopy(f).double(), z)
    got = volume.jacobian_singular_values(f, z)
    assert got.shape == (5, 12) and got.dtype == torch.float64
    assert relerr(got, ref) < 1e-4
    assert torch.all(got[:, :-1] >= got[:, 1:])
    # Wide Jacobian (D < d): min(D, d) values; float64 mode is exact to rounding.
    g = make_mlp(d=12, D=5, seed=2)
    ref = reference_svals(copy.deepcopy(g).double(), z)
    assert volume.jacobian_singular_values(g, z).shape == (5, 5)
    assert relerr(volume.jacobian_singular_values(copy.deepcopy(g).double(), z, dtype=torch.float64), ref) < 1e-10


def test_exact_chunking_batching_and_top_k():
    f = make_mlp(d=12, D=40)
    z = torch.randn([4, 12], generator=torch.Generator().manual_seed(3))
    full = volume.jacobian_singular_values(f, z)
    chunked = volume.jacobian_singular_values(f, z, chunk_size=5)
    single = volume.jacobian_singular_values(f, z[2:3])
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(single[0], full[2], rtol=1e-5, atol=0)
    torch.testing.assert_close(volume.jacobian_singular_values(f, z, top_k=3), full[:, :3])
    with pytest.raises(ValueError):
        volume.jacobian_singular_values(f, z, top_k=13)
    with pytest.raises(ValueError):
        volume.jacobian_singular_values(f, z[0])
    with pytest.raises(ValueError):
        volume.jacobian_singular_values(f, z, method='svd')


def test_fake_stylegan_pixel_space_and_radial_null_direction():
    G = FakeG(z_dim=10).eval().requires_grad_(False)
    G64 = copy.deepcopy(G).double()
    z = torch.randn([4, 10], generator=torch.Generator().manual_seed(4))
    f = volume.make_space_fn(G, 'pixel')
    assert f(z).shape == (4, 3, 4, 4) and f.z_dim == 10 and f.normalizes_z

    def g(zz):
        return G64.synthesis(G64.mapping(zz[None], torch.zeros([1, 0], dtype=torch.float64)))[0]
    ref = reference_svals(g, z)
    got = volume.jacobian_singular_values(f, z)
    assert relerr(got[:, :-1], ref[:, :-1]) < 1e-4
    # z is normalised first, so the radial direction is a null direction of the Jacobian.
    assert float((ref[:, -1] / ref[:, 0]).max()) < 1e-7   # 1e-8 in the normalisation
    assert float((got[:, -1] / got[:, 0]).max()) < 1e-5
    # Along z itself the Jacobian vanishes (independent check of the null direction).
    jz = torch.func.jvp(f, (z,), (z,))[1]
    assert float(jz.abs().max()) < 1e-5


@pytest.mark.parametrize('arch', ['stylegan2', 'stylegan3'])
def test_fp16_layers_run_in_float32(arch):
    # On CUDA, NVlabs' networks run their num_fp16_res highest resolutions in float16; lowrank's large
    # cotangents overflowed that (NaN at 256 px on an H100). The space map must ask every such layer for float32.
    if arch == 'stylegan2':
        from helpers import tiny_generator
        G = tiny_generator()
        kind = 'SynthesisBlock'
    else:
        from training import networks_stylegan3 as n3
        G = n3.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128,
                         channel_max=16, num_layers=4, mapping_kwargs=dict(num_layers=1), num_fp16_res=4)
        G = G.eval().requires_grad_(False)
        kind = 'SynthesisLayer'
    layers = [m for m in G.synthesis.modules() if type(m).__name__ == kind]
    assert layers and any(m.use_fp16 for m in layers)
    seen = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda _m, _args, kwargs: seen.append(kwargs.get('force_fp32')),
                                        with_kwargs=True)
    volume.make_space_fn(G, 'pixel')(torch.randn([2, G.z_dim]))
    assert len(seen) == len(layers) and all(seen)


def _stylegan2(architecture='skip', c_dim=0, conv_clamp=256, seed=0):
    """A tiny StyleGAN2 with non-zero biases and noise strengths (every path of the network matters)."""
    from training.networks_stylegan2 import Generator
    torch.manual_seed(seed)
    G = Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=128, channel_max=8, architecture=architecture,
                  conv_clamp=conv_clamp)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                param.add_(torch.randn_like(param) * 0.3)
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


@pytest.mark.parametrize('architecture,c_dim,conv_clamp,space,kwargs', [
    ('skip', 0, 256, 'pixel', {}),
    ('orig', 0, 0.5, 'pixel', dict(truncation_psi=0.7)),          # a small clamp that many pixels hit
    ('resnet', 3, None, 'pixel', dict(resize=8, noise_mode='none')),
    ('skip', 0, 256, 'style', dict(truncation_psi=0.5)),
])
def test_stylegan2_linearized_jvp_matches_autograd(architecture, c_dim, conv_clamp, space, kwargs):
    # make_space_fn gives a StyleGAN2 an explicit layer-by-layer derivative (sampling/linearize.py); its JVPs
    # must equal torch.func's forward-mode AD through the same network, and its primal the map's own output.
    G = _stylegan2(architecture, c_dim, conv_clamp)
    c = torch.eye(3)[[1]] if c_dim else None
    f = volume.make_space_fn(G, space, c=c, **kwargs)
    assert callable(getattr(f, 'linearize', None))
    z = torch.randn([3, 12], generator=torch.Generator().manual_seed(9))
    tangents = torch.randn([5, 3, 12], generator=torch.Generator().manual_seed(10))
    out, jvp = f.linearize(z)
    torch.testing.assert_close(out, f(z), rtol=0, atol=0)
    expected = torch.stack([torch.func.jvp(f, (z,), (t,))[1] for t in tangents])
    got = jvp(tangents)
    assert got.shape == expected.shape
    torch.testing.assert_close(jvp(tangents, chunk_size=2), got)
    assert float((got - expected).abs().max()) < 2e-5 * float(expected.abs().max())
    if conv_clamp == 0.5:  # the clamp's zero slope is exercised
        assert bool((out.abs() == 0.5).any())
    # The singular values through the linearised JVPs equal those through torch.func (a map without the attribute).
    plain = volume.jacobian_singular_values(lambda x: f(x), z)
    fast = volume.jacobian_singular_values(f, z)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6 * float(plain.max()))
    if space == 'pixel':  # lowrank (a Krylov space of 6 < 12 directions, so not the exact fallback)
        lowrank = dict(method='lowrank', top_k=3, block_size=2, num_iters=2, tol=0)
        torch.testing.assert_close(volume.jacobian_singular_values(f, z, **lowrank),
                                   volume.jacobian_singular_values(lambda x: f(x), z, **lowrank), rtol=1e-4, atol=0)


def test_linearized_path_is_taken(monkeypatch):
    # The StyleGAN2 space map's JVPs go through its explicit derivative, not torch.func's forward mode.
    f = volume.make_space_fn(_stylegan2(), 'pixel')
    z = torch.randn([2, 12], generator=torch.Generator().manual_seed(11))
    expected = volume.jacobian_singular_values(f, z)

    def refuse(*args, **kwargs):
        raise AssertionError('torch.func.jvp called')
    monkeypatch.setattr(torch.func, 'jvp', refuse)
    torch.testing.assert_close(volume.jacobian_singular_values(f, z), expected, rtol=0, atol=0)
    with pytest.raises(AssertionError, match='torch.func.jvp'):
        volume.jacobian_singular_values(lambda x: f(x), z)


def test_linearize_not_offered_where_unsupported():
    G = _stylegan2()
    assert not hasattr(volume.make_space_fn(G, 'pixel', noise_mode='random'), 'linearize')
    assert not hasattr(volume.make_space_fn(G, 'feature', embedder=torch.nn.Flatten()), 'linearize')
    assert not hasattr(volume.make_space_fn(FakeG(), 'pixel'), 'linearize')


def test_check_top_k():
    assert volume.check_top_k(30, 512) == 30
    assert volume.check_top_k(512, 512, normalizes_z=False) == 512
    with pytest.raises(ValueError, match='null'):
        volume.check_top_k(512, 512)
    with pytest.raises(ValueError, match='null'):
        volume.check_top_k(None, 512)
    with pytest.raises(ValueError):
        volume.check_top_k(0, 512)
    with pytest.raises(ValueError):
        volume.check_top_k(513, 512, normalizes_z=False)

# ----------------------------------------------------------------------------
# Spaces.


def test_style_space_and_truncation_scaling():
    G = FakeG(z_dim=10).eval().requires_grad_(False)
    G64 = copy.deepcopy(G).double()
    z = torch.randn([3, 10], generator=torch.Generator().manual_seed(5))
    f = volume.make_space_fn(G, 'style')
    assert f(z).shape == (3, 12)
    ref = reference_svals(lambda zz: G64.mapping(zz[None], torch.zeros([1, 0], dtype=torch.float64))[0, 0], z)
    got = volume.jacobian_singular_values(f, z)
    assert relerr(got[:, :9], ref[:, :9]) < 1e-4
    # w = w_avg + psi * (w - w_avg): every singular value scales by psi.
    half = volume.jacobian_singular_values(volume.make_space_fn(G, 'style', truncation_psi=0.5), z)
    torch.testing.assert_close(half[:, :9], 0.5 * got[:, :9], rtol=1e-5, atol=0)


def test_pixel_resize_and_feature_space():
    G = FakeG(z_dim=10, channels=1, res=8).eval().requires_grad_(False)
    z = torch.randn([2, 10], generator=torch.Generator().manual_seed(6))
    c0 = torch.zeros([2, 0])
    small = volume.make_space_fn(G, 'pixel', resize=4)
    assert small(z).shape == (2, 1, 4, 4)
    # Shrinking by 2 with area interpolation is a 2x2 box average.
    torch.testing.assert_close(small(z), F.avg_pool2d(G.synthesis(G.mapping(z, c0)), 2))
    assert volume.make_space_fn(G, 'pixel', resize=(16, 12))(z).shape == (2, 1, 16, 12)

    torch.manual_seed(0)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 7)).eval()
    f = volume.make_space_fn(G, 'feature', embedder=embed)
    img = G.synthesis(G.mapping(z, c0))
    expected = embed((img * 127.5 + 128).clamp(0, 255).repeat(1, 3, 1, 1))
    torch.testing.assert_close(f(z), expected)
    assert volume.jacobian_singular_values(f, z).shape == (2, 7)
    with pytest.raises(ValueError):
        volume.make_space_fn(G, 'feature')
    with pytest.raises(ValueError):
        volume.make_space_fn(G, 'style', resize=4)
    with pytest.raises(ValueError):
        volume.make_space_fn(G, 'latent')


def test_conditional_labels():
    G = FakeG(z_dim=10, c_dim=3).eval().requires_grad_(False)
    z = torch.randn([4, 10], generator=torch.Generator().manual_seed(7))
    c = torch.eye(3)[[1]]
    with pytest.raises(ValueError, match='conditional'):
        volume.make_space_fn(G, 'pixel')
    one = volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel', c=c), z)
    per = volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel', c=c.repeat(4, 1)), z)
    torch.testing.assert_close(one, per)
    other = volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel', c=torch.eye(3)[[2]]), z)
    assert not torch.allclose(one, other)

# ----------------------------------------------------------------------------
# 'projected'


def reference_projection(D, P, seed):
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn([D, P], generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T


def test_projected_matches_projected_float64_jacobian():
    G = FakeG(z_dim=10, res=4).eval().requires_grad_(False)
    G64 = copy.deepcopy(G).double()
    z = torch.randn([3, 10], generator=torch.Generator().manual_seed(8))
    P = reference_projection(48, 16, seed=5)
    torch.testing.assert_close(volume.projection_matrix(48, 16, seed=5, dtype=torch.float64), P, rtol=0, atol=1e-12)
    torch.testing.assert_close(P @ P.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)

    def g(zz):
        return P @ G64.synthesis(G64.mapping(zz[None], torch.zeros([1, 0], dtype=torch.float64)))[0].flatten()
    ref = reference_svals(g, z)
    got = volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel'), z, method='projected',
                                          num_projections=16, projection_seed=5)
    assert got.shape == (3, 10)
    assert relerr(got[:, :-1], ref[:, :-1]) < 1e-4
    # Fewer rows than z_dim: the [P, d] Jacobian has P singular values.
    assert volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel'), z, method='projected',
                                           num_projections=4).shape == (3, 4)
    with pytest.raises(ValueError):
        volume.projection_matrix(48, 49)

# ----------------------------------------------------------------------------
# 'lowrank'


def linear_with_spectrum(s, D, seed):
    """f(z) = z A^T with A = U diag(s) V^T (float64 construction), run in float32."""
    gen = torch.Generator().manual_seed(seed)
    d = len(s)
    U = torch.linalg.qr(torch.randn([D, d], generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn([d, d], generator=gen, dtype=torch.float64))[0]
    A = (U * s) @ V.T
    A32 = A.to(torch.float32)
    return lambda z: z @ A32.T


@pytest.mark.parametrize('name, tol', [('pow0.5', 1e-4), ('exp3', 2e-4), ('exp2+null', 0.015)])
def test_lowrank_top30_log_volume_within_documented_tolerance(name, tol):
    d, K = 512, 30
    i = torch.arange(1, d + 1, dtype=torch.float64)
    s = {'pow0.5': i ** -0.5, 'exp3': torch.exp(-3 * i / d),
         'exp2+null': torch.cat([torch.exp(-2 * i[:-1] / d), torch.zeros(1, dtype=torch.float64)])}[name]
    f = linear_with_spectrum(s, D=520, seed=9)
    z = torch.randn([1, d], generator=torch.Generator().manual_seed(11))
    got = volume.jacobian_singular_values(f, z, method='lowrank', top_k=K)
    exact = torch.log(s[:K]).sum()
    err = exact - volume.log_volume(got)
    assert got.shape == (1, K)
    assert float(err.abs().max()) < tol
    # Rayleigh-Ritz values never exceed the true ones (up to float32 rounding).
    assert torch.all(got <= s[:K] * (1 + 1e-4))


def test_lowrank_on_nonlinear_generator_and_exact_fallback():
    G = FakeG(z_dim=40, w_dim=24, res=6).eval().requires_grad_(False)
    f = volume.make_space_fn(G, 'pixel')
    z = torch.randn([3, 40], generator=torch.Generator().manual_seed(10))
    exact = volume.jacobian_singular_values(f, z)
    low = volume.jacobian_singular_values(f, z, method='lowrank', top_k=5, block_size=4, num_iters=4)
    assert torch.all(low <= exact[:, :5] * (1 + 1e-4))
    assert float((volume.log_volume(exact, 5) - volume.log_volume(low)).abs().max()) < 0.05
    # Stopping early (any tol reached after one block) gives smaller Ritz values than running all blocks.
    early = volume.jacobian_singular_values(f, z, method='lowrank', top_k=5, block_size=4, num_iters=4, tol=1e9)
    full_run = volume.jacobian_singular_values(f, z, method='lowrank', top_k=5, block_size=4, num_iters=4, tol=0)
    assert torch.all(early <= full_run * (1 + 1e-6)) and torch.all(full_run <= exact[:, :5] * (1 + 1e-4))
    assert float((volume.log_volume(full_run) - volume.log_volume(early)).min()) > 1e-3
    # Per-latent results do not depend on the batch (one start block for all latents).
    alone = volume.jacobian_singular_values(f, z[1:2], method='lowrank', top_k=5, block_size=4, num_iters=4)
    torch.testing.assert_close(alone[0], low[1], rtol=1e-4, atol=0)
    # A Krylov space as large as z_dim: the exact method runs.
    full = volume.jacobian_singular_values(f, z, method='lowrank', top_k=5, block_size=10, num_iters=3)
    torch.testing.assert_close(full, exact[:, :5])
    with pytest.raises(ValueError):
        volume.jacobian_singular_values(f, z, method='lowrank')
    with pytest.raises(ValueError):
        volume.jacobian_singular_values(f, z, method='lowrank', top_k=9, block_size=4, num_iters=1)

# ----------------------------------------------------------------------------
# log_volume


def test_log_volume():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.1, 3.0, size=(6, 9))
    ref = np.array([sum(np.log(sorted(row, reverse=True)[:4])) for row in s])
    np.testing.assert_allclose(volume.log_volume(s, top_k=4), ref, rtol=1e-12)
    np.testing.assert_allclose(volume.log_volume(s), np.log(s).sum(axis=1), rtol=1e-12)
    out = volume.log_volume(torch.as_tensor(s, dtype=torch.float32), top_k=4)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(volume.log_volume(s, top_k=2, eps=0.5),
                               [sum(np.log(np.sort(r)[::-1][:2] + 0.5)) for r in s], rtol=1e-12)
    # A product of 30 values of 1e-20 underflows float32 and float64; its log does not.
    tiny = torch.full([1, 30], 1e-20, dtype=torch.float32)
    assert float(volume.log_volume(tiny)) == pytest.approx(30 * np.log(np.float32(1e-20)), rel=1e-12)
    assert volume.log_volume(np.zeros([1, 3]))[0] == -np.inf
    with pytest.raises(ValueError):
        volume.log_volume(s, top_k=10)

# ----------------------------------------------------------------------------
