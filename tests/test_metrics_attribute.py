"""The attribute-distribution metric: its figures on hand-made predictions, and attr{N} through calc_metrics.py."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import scipy.stats
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import calc_metrics
import legacy
from metrics import attribute_distribution as attr
from metrics import metric_main, metric_utils

CENTERS = (90.0, 128.0, 166.0)


class BrightnessClassifier(torch.nn.Module):
    """Three 'attributes' by mean brightness: a classifier with class outputs, as TorchScript sees one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mean(dim=(1, 2, 3)).unsqueeze(1)

    @torch.jit.export
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        m = x.to(torch.float32).mean(dim=(1, 2, 3)).unsqueeze(1)
        centers = torch.tensor([90.0, 128.0, 166.0], device=x.device)
        return torch.softmax(-((m - centers) / 10) ** 2, dim=1)


def _classes_of_uint8(images_nchw):
    m = np.asarray(images_nchw, dtype=np.float64).mean(axis=(1, 2, 3))
    return np.argmin(np.abs(m[:, None] - np.asarray(CENTERS)[None]), axis=1)


def test_figures_equal_an_independent_computation():
    predictions = np.array([0, 0, 1, 2, 0, 1, 0, 0, 1, 2])
    real_predictions = np.array([0, 1, 2, 3, 1, 2, 3, 0, 1, 2, 3, 0])
    counts, real_counts = attr.histogram(predictions, 4), attr.histogram(real_predictions, 4)
    assert counts.tolist() == [5, 3, 2, 0]
    p, q = counts / counts.sum(), real_counts / real_counts.sum()
    out = attr.summarize(counts, real_counts)
    assert out['entropy'] == pytest.approx(scipy.stats.entropy(p), rel=1e-12)
    assert out['kl_uniform'] == pytest.approx(scipy.stats.entropy(p, np.full(4, 0.25)), rel=1e-12)
    assert out['kl_real'] == pytest.approx(scipy.stats.entropy(p, q), rel=1e-12)
    assert out['bias'] == 0.5 and out['majority'] == 0


def test_kl_to_real_is_infinite_for_a_class_the_real_images_lack():
    out = attr.summarize(np.array([1, 1, 1]), np.array([2, 2, 0]))
    assert out['kl_real'] == float('inf')
    assert np.isnan(attr.summarize(np.array([1, 3]))['kl_real'])
    with pytest.raises(ValueError):
        attr.predicted_classes(np.zeros([4]))


class _Pixels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).flatten(1)


@pytest.mark.usefixtures('isolated_metrics')
def test_attr_metric_through_calc_metrics(tmp_path):
    G = tiny_generator()
    network = str(tmp_path / 'net.pkl')
    legacy.save_network_pkl(network, G=G, G_ema=G)
    classifier = str(tmp_path / 'classifier.pt')
    torch.jit.save(torch.jit.script(BrightnessClassifier()), classifier)
    real = tmp_path / 'real'
    real.mkdir()
    rng = np.random.RandomState(0)
    real_images = np.stack([np.full([16, 16, 3], level, np.uint8) + rng.randint(0, 5, [16, 16, 3]).astype(np.uint8)
                            for level in (80, 85, 130, 125, 170, 90, 95)])
    for i, image in enumerate(real_images):
        PIL.Image.fromarray(image).save(real / f'{i:03d}.png')

    out = tmp_path / 'metrics.jsonl'
    result = CliRunner().invoke(calc_metrics.main, [
        f'--network={network}', f'--data={real}', '--metrics=attr40', f'--detector=attribute={classifier}',
        '--seed=3', '--device=cpu', '--workers=0', '--cache=0', f'--out={out}', '--verbose=0'])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text().splitlines()[-1])

    # The same 40 images through the toolkit's generation path, classified here in float64.
    opts = metric_utils.MetricOptions(G=G, sampler='random', seed=3)
    pixels = str(tmp_path / 'pixels.pt')
    torch.jit.save(torch.jit.script(_Pixels()), pixels)
    features = np.concatenate(list(metric_utils._generator_feature_rounds(
        opts, metric_utils.get_sampler(opts), pixels, {}, 40, 64, 4)))[:40]
    gen_classes = _classes_of_uint8(features.reshape(40, 3, 16, 16))
    real_classes = _classes_of_uint8(real_images.transpose(0, 3, 1, 2))
    expected = attr.summarize(np.bincount(gen_classes, minlength=3), np.bincount(real_classes, minlength=3))
    assert record['details']['histogram'] == np.bincount(gen_classes, minlength=3).tolist()
    assert record['details']['real_histogram'] == [4, 2, 1]
    for key, value in expected.items():
        assert record['results'][f'attr40_{key}'] == pytest.approx(value, rel=1e-12)


def test_attr_needs_a_classifier():
    assert metric_main.is_valid_metric('attr5k') and metric_main.metric_kind('attr5k') == 'attr'
    result = CliRunner().invoke(calc_metrics.main, ['--metrics=attr5k', '--device=cpu'])
    assert result.exit_code != 0 and 'attribute=PATH' in result.output and 'Traceback' not in result.output
    assert os.path.exists(metric_main.__file__)
