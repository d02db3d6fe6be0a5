"""metrics.perceptual_path_length against an independent float64 computation with a stand-in LPIPS."""

import math

import numpy as np
import pytest
import torch

from metrics import metric_main, metric_utils, perceptual_path_length
from training.networks_stylegan2 import Generator

# ----------------------------------------------------------------------------


class ProjectionLPIPS(torch.nn.Module):
    """A fixed random projection of the image, standing in for VGG16's LPIPS embedding."""

    def __init__(self, proj):
        super().__init__()
        self.register_buffer('proj', proj)

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        assert return_lpips and not resize_images
        return x.to(torch.float32).flatten(1) @ self.proj.t()


def _tiny_G(noise_strength=0.0):
    torch.manual_seed(2)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  channel_base=128, channel_max=16)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('noise_strength'):
                param.fill_(noise_strength)
    return G.eval()


@pytest.fixture(scope='module')
def lpips_file(tmp_path_factory):
    proj = torch.from_numpy(np.random.RandomState(0).randn(10, 3 * 16 * 16) / 100).float()
    path = tmp_path_factory.mktemp('lpips') / 'lpips.pt'
    torch.jit.save(torch.jit.script(ProjectionLPIPS(proj)), str(path))
    return str(path), proj.double().numpy()


pytestmark = pytest.mark.usefixtures('isolated_metrics')


def _filtered_mean_reference(d):
    s = np.sort(d)
    n = len(s)
    lo, hi = s[int(math.floor(0.01 * (n - 1)))], s[int(math.ceil(0.99 * (n - 1)))]
    return d[(d >= lo) & (d <= hi)].mean()


def _slerp_reference(a, b, t):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    omega = np.arccos(np.clip((a * b).sum(1), -1, 1))[:, None]
    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def _ppl_reference(G, proj, seed, num, epsilon, space, crop):
    z = np.random.RandomState(seed).randn(2 * num, G.z_dim)
    z0, z1 = z[0::2], z[1::2]
    c = torch.zeros([num, 0])
    with torch.no_grad():
        if space == 'w':
            w0 = G.mapping(torch.from_numpy(z0).float(), c).double()
            w1 = G.mapping(torch.from_numpy(z1).float(), c).double()
            ws = [w0, w0 + (w1 - w0) * epsilon]
        else:
            ws = [G.mapping(torch.from_numpy(_slerp_reference(z0, z1, t)).float(), c).double()
                  for t in (np.zeros(num), np.full(num, epsilon))]
        emb = []
        for w in ws:
            img = G.synthesis(w.float(), noise_mode='const', force_fp32=True).double()
            if crop:
                img = img[:, :, 6:14, 4:12]   # rows [3c, 7c), cols [2c, 6c) with c = 16 / 8
            emb.append(((img + 1) * 127.5).flatten(1).numpy() @ proj.T)
    d = ((emb[0] - emb[1]) ** 2).sum(axis=1) / epsilon ** 2
    return _filtered_mean_reference(d)

# ----------------------------------------------------------------------------


def test_filtered_mean_matches_sorted_reference():
    d = np.random.RandomState(0).lognormal(size=1001)
    assert perceptual_path_length.filtered_mean(d) == pytest.approx(_filtered_mean_reference(d), rel=1e-12)
    assert perceptual_path_length.filtered_mean(d) < d.mean()   # The heavy tail is dropped.


def test_slerp_and_box_downsample():
    rnd = np.random.RandomState(1)
    a, b, t = rnd.randn(5, 7), rnd.randn(5, 7), rnd.rand(5)
    got = perceptual_path_length.slerp(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(got, _slerp_reference(a, b, t), rtol=1e-10, atol=1e-12)
    img = rnd.randn(2, 3, 8, 8)
    got = perceptual_path_length.box_downsample(torch.from_numpy(img), 4).numpy()
    np.testing.assert_allclose(got, img.reshape(2, 3, 2, 4, 2, 4).mean(axis=(3, 5)), rtol=1e-12)


@pytest.mark.parametrize('space, crop', [('w', False), ('z', True)])
def test_ppl_matches_independent_computation(lpips_file, space, crop):
    path, proj = lpips_file
    if crop:  # The crop keeps 3 x 8 x 8 values; project only those.
        proj = np.random.RandomState(3).randn(10, 3 * 8 * 8) / 100
        path = path.replace('lpips.pt', 'lpips_crop.pt')
        torch.jit.save(torch.jit.script(ProjectionLPIPS(torch.from_numpy(proj).float())), path)
    G = _tiny_G()   # noise_strength 0: the random noise buffers cannot matter.
    opts = metric_utils.MetricOptions(G=G, seed=7, detectors=dict(vgg16=path))
    got = perceptual_path_length.compute_ppl(opts, num_samples=24, epsilon=1e-2, space=space, sampling='end',
                                             crop=crop, batch_size=2)
    expected = _ppl_reference(G, proj, seed=7, num=24, epsilon=1e-2, space=space, crop=crop)
    assert got == pytest.approx(expected, rel=1e-4)


def test_ppl_noise_is_randomised_and_seeded(lpips_file):
    path, _ = lpips_file
    G = _tiny_G(noise_strength=2.0)
    before = {name: buf.clone() for name, buf in G.named_buffers() if name.endswith('noise_const')}

    def run(seed, sampling='end'):
        result = metric_main.calc_metric(f'ppl2_w{sampling}_12', G=G, seed=seed, detectors=dict(vgg16=path))
        return result.results[f'ppl2_w{sampling}_12']

    a = run(0)
    assert run(0) == a
    assert run(1) != a
    assert run(0, 'full') != a
    for name, buf in G.named_buffers():
        if name in before:
            assert torch.equal(buf, before[name])   # Only a copy of G was touched.
    result = metric_main.calc_metric('ppl2_wend_12', G=G, seed=0, detectors=dict(vgg16=path))
    assert set(result) >= {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus'}
    assert result.metric == 'ppl2_wend_12' and result.num_gpus == 1 and result.detectors == dict(vgg16=path)

# ----------------------------------------------------------------------------
