"""metrics.metric_utils: detectors (local, downloaded, pickled), dataset and generator feature statistics."""

import importlib.util
import os
import pickle
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import LocalHTTPServer, Reply

import dnnlib
from metrics import metric_utils
from metrics.metric_utils import DetectorError, MetricOptions
from sampling import samplers
from training.networks_stylegan2 import Generator

# ----------------------------------------------------------------------------
# Tiny detectors, saved as TorchScript in the tests.


class PoolDetector(torch.nn.Module):
    """uint8 NCHW -> 2x2 average pools as float features (a stand-in for Inception)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.to(torch.float32), 2).flatten(1)


class KeywordDetector(torch.nn.Module):
    """Answers differently to NVlabs' keyword, to see that it is passed."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        y = x.to(torch.float32).mean(dim=[2, 3])
        return y if return_features else -y


def _pool_reference(images):
    """float64 2x2 average pooling of NCHW uint8 images, flattened (independent of torch)."""
    x = np.asarray(images, dtype=np.float64)
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).reshape(n, -1)


@pytest.fixture(scope='module')
def detector_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('detectors')
    paths = {}
    for name, module in [('pool', PoolDetector()), ('keyword', KeywordDetector())]:
        paths[name] = str(folder / f'{name}.pt')
        torch.jit.save(torch.jit.script(module), paths[name])
    return paths


pytestmark = pytest.mark.usefixtures('isolated_metrics')

# ----------------------------------------------------------------------------
# Detectors.


def test_resolve_detector(detector_files):
    assert metric_utils.resolve_detector('inception').endswith('/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt')
    assert metric_utils.resolve_detector('vgg16').endswith('/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt')
    assert metric_utils.is_nvlabs_detector(metric_utils.resolve_detector('vgg16'))
    assert metric_utils.resolve_detector(detector_files['pool']) == detector_files['pool']
    assert not metric_utils.is_nvlabs_detector(detector_files['pool'])
    assert metric_utils.resolve_detector('https://example.org/x.pt') == 'https://example.org/x.pt'
    with pytest.raises(DetectorError, match='not a known name'):
        metric_utils.resolve_detector('/no/such/detector.pt')


def test_run_detector_passes_only_accepted_kwargs_and_repeats_gray(detector_files):
    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, [3, 1, 4, 4]).astype(np.uint8))
    pool = metric_utils.get_feature_detector(detector_files['pool'])
    features = metric_utils.run_detector(pool, images, return_features=True, no_output_bias=True)
    expected = _pool_reference(np.repeat(images.numpy(), 3, axis=1))
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-6)

    keyword = metric_utils.get_feature_detector(detector_files['keyword'])
    with_kw = metric_utils.run_detector(keyword, images, return_features=True, resize_images=False)
    np.testing.assert_allclose(with_kw.numpy(), images.double().mean(dim=[2, 3]).repeat(1, 3).numpy(), rtol=1e-6)
    np.testing.assert_allclose(metric_utils.run_detector(keyword, images).numpy(), -with_kw.numpy())

    # A plain (non-scripted) module with **kwargs gets everything.
    class Recorder(torch.nn.Module):
        def forward(self, x, **kwargs):
            self.seen = kwargs
            return x.float().flatten(1)
    recorder = Recorder()
    metric_utils.run_detector(recorder, images, return_lpips=True)
    assert recorder.seen == dict(return_lpips=True)


def test_detector_is_cached_in_memory_per_device(detector_files):
    a = metric_utils.get_feature_detector(detector_files['pool'], device='cpu')
    b = metric_utils.get_feature_detector(detector_files['pool'], device=torch.device('cpu'))
    assert a is b


def test_not_torchscript_is_refused_in_one_line(tmp_path):
    path = tmp_path / 'junk.pt'
    path.write_bytes(b'this is not a TorchScript archive')
    with pytest.raises(DetectorError) as info:
        metric_utils.get_feature_detector(str(path))
    assert 'is not a TorchScript detector' in str(info.value) and '\n' not in str(info.value)


def test_download_through_open_url_cache(detector_files, tmp_path):
    with open(detector_files['pool'], 'rb') as f:
        payload = f.read()
    server = LocalHTTPServer()
    server.routes['/metrics/pool.pt'] = [Reply(payload)]
    try:
        url = server.url('/metrics/pool.pt')
        images = torch.from_numpy(np.random.RandomState(1).randint(0, 256, [2, 3, 4, 4]).astype(np.uint8))
        detector = metric_utils.get_feature_detector(url)
        assert server.hits['/metrics/pool.pt'] == 1
        np.testing.assert_allclose(metric_utils.run_detector(detector, images).numpy(), _pool_reference(images),
                                   rtol=1e-6)
        cached = [name for name in os.listdir(tmp_path / 'cache' / 'downloads') if name.endswith('pool.pt')]
        assert len(cached) == 1

        metric_utils._detector_cache.clear()  # A new process: the download cache serves it, no request.
        again = metric_utils.get_feature_detector(url)
        assert server.hits['/metrics/pool.pt'] == 1
        np.testing.assert_allclose(metric_utils.run_detector(again, images).numpy(), _pool_reference(images),
                                   rtol=1e-6)

        with pytest.raises(DetectorError) as info:
            metric_utils.get_feature_detector(server.url('/metrics/missing.pt'))
        assert 'HTTP 404' in str(info.value) and '\n' not in str(info.value)
    finally:
        server.close()


_PICKLED_DETECTOR_SRC = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class PickledDetector(torch.nn.Module):
    def forward(self, x, return_features=False):
        return x.float().mean(dim=[2, 3]) * 2
'''


def test_pickled_detector_needs_allow_pickle_code(tmp_path):
    # A persistence pickle, like the StyleGAN3 repository's detectors: it carries its module source.
    src = tmp_path / 'pickled_detector_mod.py'
    src.write_text(_PICKLED_DETECTOR_SRC)
    spec = importlib.util.spec_from_file_location('pickled_detector_mod', src)
    module = importlib.util.module_from_spec(spec)
    sys.modules['pickled_detector_mod'] = module
    try:
        spec.loader.exec_module(module)
        path = tmp_path / 'detector.pkl'
        with open(path, 'wb') as f:
            pickle.dump(module.PickledDetector(), f)
    finally:
        del sys.modules['pickled_detector_mod']

    with pytest.raises(DetectorError) as info:
        metric_utils.get_feature_detector(str(path))
    assert '--allow-pickle-code' in str(info.value) and '\n' not in str(info.value)
    detector = metric_utils.get_feature_detector(str(path), allow_pickle_code=True)
    images = torch.full([2, 3, 4, 4], 10, dtype=torch.uint8)
    np.testing.assert_array_equal(metric_utils.run_detector(detector, images).numpy(), np.full([2, 3], 20.0))

# ----------------------------------------------------------------------------
# Work split.


@pytest.mark.parametrize('num_items, batch_size, num_gpus', [(20, 8, 1), (20, 8, 2), (5, 8, 3), (64, 16, 3)])
def test_rank_batches_cover_every_item_once_in_order(num_items, batch_size, num_gpus):
    per_rank = [metric_utils.rank_batches(num_items, batch_size, num_gpus, rank) for rank in range(num_gpus)]
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(b) == batch_size for batches in per_rank for b in batches)
    # Gathering round by round in rank order gives the global order, then padding.
    order = np.concatenate([per_rank[r][k] for k in range(len(per_rank[0])) for r in range(num_gpus)])
    np.testing.assert_array_equal(order[:num_items], np.arange(num_items))

# ----------------------------------------------------------------------------
# Dataset features.


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rnd = np.random.RandomState(5)
    images = rnd.randint(0, 256, [20, 8, 8, 3]).astype(np.uint8)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f'img{i:03d}.png')
    return str(folder), images.transpose(0, 3, 1, 2)


def _dataset_kwargs(path, **kwargs):
    return dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=path, use_labels=False,
                           max_size=None, xflip=False, resolution=8, **kwargs)


def test_dataset_features_and_cache(image_folder, detector_files, monkeypatch):
    path, images = image_folder
    opts = MetricOptions(dataset_kwargs=_dataset_kwargs(path), num_workers=0)
    url = detector_files['pool']
    stats = metric_utils.compute_feature_stats_for_dataset(opts, url, dict(return_features=True), batch_size=8,
                                                           capture_all=True, capture_mean_cov=True)
    expected = _pool_reference(images)
    np.testing.assert_allclose(stats.get_all(), expected, rtol=1e-6)
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(mean, expected.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(cov, np.cov(expected.T, bias=True), rtol=1e-6, atol=1e-6)

    cache_file = metric_utils.dataset_stats_cache_path(
        'images0', url, opts.dataset_kwargs, dict(return_features=True),
        dict(capture_all=True, capture_mean_cov=True))
    assert os.path.isfile(cache_file)

    def no_detector(*args, **kwargs):
        raise AssertionError('the detector ran although the statistics are cached')
    with monkeypatch.context() as patch:
        patch.setattr(metric_utils, 'run_detector', no_detector)
        cached = metric_utils.compute_feature_stats_for_dataset(opts, url, dict(return_features=True), batch_size=8,
                                                                capture_all=True, capture_mean_cov=True)
    np.testing.assert_array_equal(cached.get_all(), stats.get_all())

    # NVlabs' cache name ignores max_items: a cached file with another count is recomputed, not trusted.
    fewer = metric_utils.compute_feature_stats_for_dataset(opts, url, dict(return_features=True), batch_size=8,
                                                           max_items=7, capture_all=True, capture_mean_cov=True)
    np.testing.assert_allclose(fewer.get_all(), expected[:7], rtol=1e-6)


def test_dataset_features_mirrored(image_folder, detector_files):
    path, images = image_folder
    opts = MetricOptions(dataset_kwargs=_dataset_kwargs(path, random_seed=0) | dict(xflip=True), num_workers=0,
                         cache=False)
    stats = metric_utils.compute_feature_stats_for_dataset(opts, detector_files['pool'], {}, batch_size=16,
                                                           capture_all=True)
    expected = _pool_reference(np.concatenate([images, images[:, :, :, ::-1]]))
    np.testing.assert_allclose(stats.get_all(), expected, rtol=1e-6)

# ----------------------------------------------------------------------------
# Generator features.


@pytest.fixture(scope='module')
def tiny_G():
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  channel_base=128, channel_max=16)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('noise_strength'):
                param.fill_(0.5)
    return G.eval()


def _reference_images(G, z, psi, noise_mode):
    with torch.no_grad():
        img = G(torch.from_numpy(z).float(), torch.zeros([len(z), 0]), truncation_psi=psi, noise_mode=noise_mode)
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


def test_generator_features_match_independent_synthesis(tiny_G, detector_files):
    opts = MetricOptions(G=tiny_G, G_kwargs=dict(noise_mode='const'), sampler='trunc:0.6', seed=5)
    stats = metric_utils.compute_feature_stats_for_generator(opts, detector_files['pool'], {}, batch_size=8,
                                                             capture_all=True, max_items=10)
    z = np.random.RandomState(5).randn(10, 8)
    expected = _pool_reference(_reference_images(tiny_G, z, 0.6, 'const'))
    got = stats.get_all()
    assert got.shape == expected.shape
    # Batched synthesis may round a pixel the other way: at most one grey level in one pixel of a pool.
    assert np.abs(got - expected).max() <= 0.25 + 1e-6
    assert np.mean(got == expected.astype(np.float32)) > 0.9


def test_generator_random_noise_is_seeded(tiny_G, detector_files):
    def features(seed, **kwargs):
        opts = MetricOptions(G=tiny_G, seed=seed, **kwargs)
        return metric_utils.compute_feature_stats_for_generator(opts, detector_files['pool'], {}, batch_size=8,
                                                                capture_all=True, max_items=12).get_all()
    torch.manual_seed(123)
    a = features(3)
    state = torch.get_rng_state()
    b = features(3)
    assert torch.equal(state, torch.get_rng_state())  # The global generator is left as it was.
    np.testing.assert_array_equal(a, b)
    z = np.random.RandomState(3).randn(12, 8)
    const = _pool_reference(_reference_images(tiny_G, z, 1, 'const'))
    assert np.abs(a - const).max() > 1  # The noise is random, not the const buffers...
    assert not np.array_equal(a[:4], a[4:8])
    assert not np.array_equal(features(4), a)  # ...and depends on the seed.


def test_generator_feature_memo_reuses_the_images(tiny_G, detector_files, monkeypatch):
    memo = {}
    sampler = samplers.build('random', tiny_G)
    opts = MetricOptions(G=tiny_G, seed=1, sampler=sampler, feature_memo=memo)
    first = metric_utils.compute_feature_stats_for_generator(opts, detector_files['pool'], {}, capture_mean_cov=True,
                                                             max_items=9)
    assert len(memo) == 1
    monkeypatch.setattr(metric_utils, 'run_detector', lambda *a, **k: pytest.fail('features were recomputed'))
    second = metric_utils.compute_feature_stats_for_generator(opts, detector_files['pool'], {}, capture_all=True,
                                                              capture_mean_cov=True, max_items=9)
    np.testing.assert_array_equal(first.raw_mean, second.raw_mean)
    np.testing.assert_array_equal(first.raw_cov, second.raw_cov)
    assert second.get_all().shape == (9, 48)

# ----------------------------------------------------------------------------
