"""Safe mode calls nothing a file names: one victim-file test per entry point that reads a description from a file.

The payload is NVlabs-shaped dataset kwargs naming ``logging.basicConfig`` with ``filemode='w'``: called, it
empties the victim file (the premise test shows it would). Each entry point must leave the victim intact.
"""

import io
import json
import logging
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_generator

import calc_metrics
import demo_samplers
import dnnlib
import legacy
from metrics import evaluation, metric_utils
from sampling import chunks, latents
from training import dataset as dataset_module

PRECIOUS = 'precious data\n'

pytestmark = pytest.mark.usefixtures('isolated_metrics')


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / 'victim.txt'
    path.write_text(PRECIOUS)
    yield path
    for handler in list(logging.root.handlers):  # Only the premise test attaches one.
        if getattr(handler, 'baseFilename', None) == str(path):
            logging.root.removeHandler(handler)
            handler.close()


def hostile_kwargs(victim):
    return dict(class_name='logging.basicConfig', filename=str(victim), filemode='w', force=True)


def intact(victim):
    return victim.read_text() == PRECIOUS


def test_premise_the_payload_empties_the_victim(victim):
    dnnlib.util.construct_class_by_name(**hostile_kwargs(victim))
    assert not intact(victim)


@pytest.fixture(scope='module')
def tiny_G():
    return tiny_generator()


def _snapshot(tmp_path, G, training_set_kwargs):
    path = tmp_path / 'net.pkl'
    legacy.save_network_pkl(path, G=G, G_ema=G, training_set_kwargs=training_set_kwargs)
    return str(path)


def _one_line_error(result):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    return lines[0]


def _hostile_variants(victim, real_dir):
    ours = 'training.dataset.ImageFolderDataset'
    return [
        hostile_kwargs(victim),
        dict(class_name='os.remove', path=str(victim)),
        dict(class_name=ours, path=str(real_dir), filename=str(victim), filemode='w'),  # an option not ours
        dict(class_name=ours, path=str(real_dir), max_size='all'),                      # a type not ours
    ]


def test_calc_metrics_never_calls_the_pickled_dataset_class(tmp_path, victim, tiny_G):
    for kwargs in _hostile_variants(victim, tmp_path):
        net = _snapshot(tmp_path, tiny_G, kwargs)
        result = CliRunner().invoke(calc_metrics.main, ['--network', net, '--metrics', 'fid1k_full', '--device',
                                                        'cpu', '--verbose', 'false'])
        line = _one_line_error(result)
        assert 'pass --data' in line and net in line, line  # names the file and what to do
        assert intact(victim) and os.path.exists(victim)


def test_demo_samplers_never_calls_the_pickled_dataset_class(tmp_path, victim, tiny_G):
    for kwargs in _hostile_variants(victim, tmp_path):
        net = _snapshot(tmp_path, tiny_G, kwargs)
        result = CliRunner().invoke(demo_samplers.main, ['--network', net, '--device', 'cpu', '--outdir',
                                                         str(tmp_path / 'out')])
        line = _one_line_error(result)
        assert 'pass --data' in line and net in line, line
        assert intact(victim) and os.path.exists(victim)


def _real_images(folder, count=3):
    import PIL.Image
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        PIL.Image.fromarray(np.full([16, 16, 3], 40 * i, dtype=np.uint8)).save(folder / f'img{i}.png')
    return folder


def test_recorded_dataset_is_opened_as_our_class_and_announced(tmp_path, tiny_G, capsys):
    real = _real_images(tmp_path / 'real')
    recorded = dict(class_name='training.dataset.ImageFolderDataset', path=str(real), use_labels=False,
                    max_size=None, xflip=False, resolution=16)
    with open(_snapshot(tmp_path, tiny_G, recorded), 'rb') as f:
        snapshot = legacy.load_network_pkl(f)
    kwargs = evaluation.dataset_kwargs(None, snapshot['training_set_kwargs'], tiny_G, mirror=None)
    assert list(kwargs) == list(recorded)  # NVlabs' key order: the statistics cache is named by its repr.
    dataset = evaluation.open_dataset(kwargs, tiny_G, from_pickle=True)
    assert type(dataset) is dataset_module.ImageFolderDataset and len(dataset) == 3
    assert f'{real}' in capsys.readouterr().err  # The user is told which images are used.


def test_metric_utils_and_training_open_only_our_dataset_class(tmp_path, victim):
    for kwargs in _hostile_variants(victim, tmp_path):
        with pytest.raises(dataset_module.DatasetError):
            metric_utils.make_dataset(metric_utils.MetricOptions(dataset_kwargs=kwargs))
        with pytest.raises(dataset_module.DatasetError):
            dataset_module.open_dataset(**kwargs)
        assert intact(victim)


class _Call:
    def __init__(self, fn, kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __reduce__(self):
        import functools
        return functools.partial(self.fn, **self.kwargs), ()


def test_pickled_detector_payload_is_refused(tmp_path, victim):
    path = tmp_path / 'detector.pkl'
    path.write_bytes(pickle.dumps(_Call(logging.basicConfig, dict(filename=str(victim), filemode='w')), protocol=4))
    with pytest.raises(metric_utils.DetectorError, match='allow-pickle-code'):
        metric_utils.get_feature_detector(str(path))
    assert intact(victim)


def test_stats_cache_payload_is_refused(tmp_path, victim):
    path = tmp_path / 'stats.pkl'
    payload = _Call(logging.basicConfig, dict(filename=str(victim), filemode='w'))
    path.write_bytes(pickle.dumps(dict(num_items=1, raw_mean=payload), protocol=4))
    with pytest.raises(pickle.UnpicklingError):
        metric_utils.FeatureStats.load(str(path))
    assert intact(victim)
    path.write_bytes(b'\x80\x04' + b']' * 3000 + b'a' * 2999 + b'.')  # Deep nesting: refused, no RecursionError.
    with pytest.raises(pickle.UnpicklingError, match='nested'):
        metric_utils.FeatureStats.load(str(path))


def test_bank_meta_and_chunk_manifest_are_data(tmp_path, victim):
    # A bank whose metadata looks like dataset kwargs: loaded and checked as data, nothing called or written.
    bank = latents.LatentBank(np.zeros([2, 3], np.float32), meta=dict(hostile_kwargs(victim), z_dim=3, c_dim=0))
    bank.save(tmp_path / 'bank.npz')
    loaded = latents.LatentBank.load(tmp_path / 'bank.npz')
    latents.check_compatible(loaded, z_dim=3, c_dim=0)
    assert loaded.meta['class_name'] == 'logging.basicConfig' and intact(victim)
    # A bank holding a pickled object array is refused rather than unpickled.
    with open(tmp_path / 'pickled.npz', 'wb') as f:
        np.savez(f, latents=np.zeros([2, 3]), extra=np.array([_Call(logging.basicConfig, {})] * 2, dtype=object))
    with pytest.raises(ValueError):
        latents.LatentBank.load(tmp_path / 'pickled.npz')
    # A chunk manifest naming a callable and a path: compared as data, the job refuses the folder.
    store_dir = tmp_path / 'chunks'
    os.makedirs(store_dir)
    (store_dir / 'chunks.json').write_text(json.dumps(dict(format=1, num_chunks=2, config=hostile_kwargs(victim))))
    with pytest.raises(ValueError, match='other settings'):
        chunks.ChunkStore(str(store_dir), 2, config=dict(seed=0))
    assert intact(victim)


def test_dataset_json_is_bounded_and_data(tmp_path):
    real = _real_images(tmp_path / 'real')
    (real / 'dataset.json').write_text('{"labels": ' + '[' * 100_000 + ']' * 100_000 + '}')
    with pytest.raises(dataset_module.DatasetError, match='dataset.json'):
        dataset_module.ImageFolderDataset(str(real), use_labels=True)


def test_legacy_snapshot_kwargs_are_never_called_on_load(tmp_path, victim, tiny_G):
    # Loading alone (legacy.load_network_pkl in safe mode) keeps the kwargs as plain data.
    with open(_snapshot(tmp_path, tiny_G, hostile_kwargs(victim)), 'rb') as f:
        data = legacy.load_network_pkl(io.BufferedReader(f))
    assert data['training_set_kwargs']['class_name'] == 'logging.basicConfig' and intact(victim)


# Every place in the package that can turn something into code or unpickle, with why it is safe. A new one
# must be reviewed (does any of its input come from a file?) and added here with its reason.
_CODE_SITES = {
    ('dnnlib/util.py', 'call_func_by_name'): 3,       # the mechanism itself (definitions, docstring)
    ('dnnlib/util.py', 'construct_class_by_name'): 3,
    ('dnnlib/util.py', 'get_obj_by_name'): 2,
    ('training/training_loop.py', 'construct_class_by_name'): 4,  # G, D, loss, optimiser: train.py's own options
    ('torch_utils/persistence.py', 'exec'): 1,        # embedded source, only with allow_code=True
    ('metrics/metric_utils.py', 'pickle.load'): 1,    # .pkl detectors, only with allow_pickle_code=True
    ('metrics/metric_utils.py', 'torch.jit.load'): 1,  # TorchScript detectors named on the command line
    ('metrics/mnist_classifier.py', 'torch.jit.load'): 1,  # the classifier named on the command line
    ('sampling/volume_job.py', 'torch.jit.load'): 1,  # --embedder named on the command line
    ('generate.py', 'np.load'): 1,                    # np.load refuses pickles by default (allow_pickle=False)
    ('metrics/evaluation.py', 'np.load'): 1,
    ('sampling/latents.py', 'np.load'): 2,
}


def test_every_code_or_unpickle_site_is_reviewed():
    import collections
    import re

    from helpers import REPO_ROOT
    pattern = re.compile(r'(?<![\w.])(?:dnnlib\.util\.|util\.)?(construct_class_by_name|call_func_by_name|'
                         r'get_obj_by_name|import_module|__import__|exec|eval)\s*\(|\b(pickle\.loads?|torch\.load|'
                         r'torch\.hub\.\w+|torch\.jit\.load|np\.load|numpy\.load)\s*\(|(allow_pickle\s*=\s*True)')
    found = collections.Counter()
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in ('tests', 'benchmarks', '.git', '__pycache__') and not d.startswith('.')]
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(root, name)
                with open(path, encoding='utf-8') as f:
                    for line in f:
                        for match in pattern.finditer(line):
                            site = next(group for group in match.groups() if group)
                            found[(os.path.relpath(path, REPO_ROOT).replace(os.sep, '/'), site)] += 1
    unexpected = {site: count for site, count in found.items() if count > _CODE_SITES.get(site, 0)}
    assert not unexpected, f'new places that can run code or unpickle; review them and list them: {unexpected}'
