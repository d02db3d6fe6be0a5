"""metrics.metric_utils: FeatureStats accumulation, pickling, gathering, and the stats cache name."""

import glob
import hashlib
import os
import pickle
import time

import numpy as np
import pytest
import torch
import torch.distributed
import torch.multiprocessing

from dnnlib import EasyDict, util
from metrics.metric_utils import FeatureStats, dataset_stats_cache_path, get_feature_detector_name


def _batches(rng, sizes, d=5):
    return [(rng.randn(n, d) * 3 + 1).astype(np.float32) for n in sizes]


def test_mean_cov_and_all_match_numpy():
    batches = _batches(np.random.RandomState(0), [7, 1, 12, 4])
    stats = FeatureStats(capture_all=True, capture_mean_cov=True)
    for b in batches:
        stats.append(b)
    data = np.concatenate(batches)
    assert stats.num_items == 24 and stats.num_features == 5
    assert stats.get_all().dtype == np.float32
    np.testing.assert_array_equal(stats.get_all(), data)
    np.testing.assert_array_equal(stats.get_all_torch().numpy(), data)
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(mean, np.mean(data.astype(np.float64), axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(data.astype(np.float64), rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    # Raw fields hold sums, as NVlabs' cache files do.
    np.testing.assert_allclose(stats.raw_mean, data.astype(np.float64).sum(axis=0), rtol=1e-12)


def test_max_items_truncates():
    batches = _batches(np.random.RandomState(1), [7, 7, 7])
    stats = FeatureStats(capture_all=True, capture_mean_cov=True, max_items=10)
    stats.append(batches[0])
    assert not stats.is_full()
    stats.append(batches[1])  # crosses the limit: truncated
    assert stats.is_full() and stats.num_items == 10
    stats.append(batches[2])  # ignored
    assert stats.num_items == 10
    first = np.concatenate(batches)[:10]
    np.testing.assert_array_equal(stats.get_all(), first)
    np.testing.assert_allclose(stats.get_mean_cov()[1], np.cov(first.astype(np.float64), rowvar=False, bias=True),
                               rtol=1e-10, atol=1e-12)


def test_capture_flags_and_shape_checks():
    stats = FeatureStats(capture_mean_cov=True)
    stats.append(np.ones((2, 3)))
    with pytest.raises(RuntimeError):
        stats.get_all()
    with pytest.raises(ValueError):
        stats.append(np.ones((2, 4)))
    with pytest.raises(RuntimeError):
        FeatureStats(capture_all=True).get_mean_cov()


def test_save_load_round_trip(tmp_path):
    stats = FeatureStats(capture_all=True, capture_mean_cov=True, max_items=50)
    for b in _batches(np.random.RandomState(2), [6, 9]):
        stats.append(b)
    path = str(tmp_path / 'sub' / 'stats.pkl')
    stats.save(path)
    assert os.listdir(tmp_path / 'sub') == ['stats.pkl']  # no temporary file left behind
    with open(path, 'rb') as f:
        raw = pickle.load(f)
    assert set(raw) == {'capture_all', 'capture_mean_cov', 'max_items', 'num_items', 'num_features',
                        'all_features', 'raw_mean', 'raw_cov'}
    loaded = FeatureStats.load(path)
    assert (loaded.capture_all, loaded.capture_mean_cov, loaded.max_items, loaded.num_items) == (True, True, 50, 15)
    np.testing.assert_array_equal(loaded.get_all(), stats.get_all())
    for a, b in zip(loaded.get_mean_cov(), stats.get_mean_cov()):
        np.testing.assert_array_equal(a, b)
    loaded.append(np.zeros((1, 5), dtype=np.float32))  # still usable
    assert loaded.num_items == 16


def test_load_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('true',))

    path = str(tmp_path / 'evil.pkl')
    with open(path, 'wb') as f:
        pickle.dump({'num_items': 0, 'x': Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        FeatureStats.load(path)


def test_append_torch_single_process_equals_append():
    x = torch.randn(6, 4)
    a, b = FeatureStats(capture_all=True), FeatureStats(capture_all=True)
    a.append_torch(x)
    b.append(x.numpy())
    np.testing.assert_array_equal(a.get_all(), b.get_all())
    with pytest.raises(RuntimeError):
        FeatureStats().append_torch(x, num_gpus=2, rank=0)  # no process group


def _gather_worker(rank, world_size, init_file, out_file):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        stats = FeatureStats(capture_all=True)
        for step in range(2):
            # Row i of rank r at step s holds the value 100 * s + 10 * i + r.
            x = torch.arange(3, dtype=torch.float32)[:, None] * 10 + rank + 100 * step
            stats.append_torch(x.repeat(1, 2), num_gpus=world_size, rank=rank)
        if rank == 0:
            stats.save(out_file)
    finally:
        torch.distributed.destroy_process_group()


def test_append_torch_gathers_rank_interleaved(tmp_path):
    out_file = str(tmp_path / 'gathered.pkl')
    # fork keeps the test fast (no re-import of torch); the workers only touch tiny tensors.
    ctx = torch.multiprocessing.start_processes(_gather_worker, args=(2, str(tmp_path / 'pg_init'), out_file),
                                                nprocs=2, join=False, start_method='fork')
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail('distributed gather workers did not finish within 60 s')
    got = FeatureStats.load(out_file).get_all()[:, 0]
    expected = [100 * s + 10 * i + r for s in range(2) for i in range(3) for r in range(2)]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_cache_path_naming(tmp_path):
    url = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
    dataset_kwargs = EasyDict(class_name='training.dataset.ImageFolderDataset', path='/data/ffhq.zip', max_size=None)
    detector_kwargs = dict(return_features=True)
    stats_kwargs = dict(capture_mean_cov=True, max_items=None)
    key = repr([('dataset_kwargs', dataset_kwargs), ('detector_kwargs', detector_kwargs),
                ('detector_url', url), ('stats_kwargs', stats_kwargs)])
    name = f'ffhq-inception-2015-12-05-{hashlib.md5(key.encode()).hexdigest()}.pkl'

    path = dataset_stats_cache_path('ffhq', url, dataset_kwargs, detector_kwargs, stats_kwargs)
    assert path == util.make_cache_dir_path('gan-metrics', name)
    assert dataset_stats_cache_path('ffhq', url, dataset_kwargs, detector_kwargs, stats_kwargs,
                                    cache_dir=str(tmp_path)) == os.path.join(str(tmp_path), 'gan-metrics', name)

    # Key order of the dataset kwargs and the detector URL both change the key, as for NVlabs.
    reordered = EasyDict(path='/data/ffhq.zip', class_name='training.dataset.ImageFolderDataset', max_size=None)
    assert dataset_stats_cache_path('ffhq', url, reordered, detector_kwargs, stats_kwargs) != path
    sg3_url = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
    sg3_path = dataset_stats_cache_path('ffhq', sg3_url, dataset_kwargs, detector_kwargs, stats_kwargs)
    assert os.path.basename(sg3_path).startswith('ffhq-inception-2015-12-05-') and sg3_path != path
    assert get_feature_detector_name(sg3_url) == 'inception-2015-12-05'
    assert not glob.glob(str(tmp_path / '*'))  # naming only, nothing written
