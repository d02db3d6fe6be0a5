"""The embedded default network pretrained/mnist32-stylegan2.pkl: what the README says about it holds."""

import pytest

import legacy
from metrics import mnist_classifier as mc
from sampling import cli


@pytest.fixture(scope='module')
def snapshot():
    with open(cli.DEFAULT_NETWORK, 'rb') as f:
        return legacy.load_network_pkl(f)  # Safe mode: no code from the file runs.


def test_is_a_full_class_conditional_snapshot(snapshot):
    assert {'G', 'D', 'G_ema', 'training_set_kwargs'} <= set(snapshot)
    G = snapshot['G_ema']
    assert (G.z_dim, G.w_dim, G.c_dim, G.img_resolution, G.img_channels) == (64, 64, 10, 32, 1)
    assert snapshot['D'].c_dim == 10 and snapshot['training_set_kwargs']['use_labels'] is True


def test_samples_look_like_the_digits_they_were_asked_for(snapshot):
    """The quality target: >= 80 % of 1,000 samples (psi 1, seeds 0..999, random classes) are confident digits."""
    report = mc.digit_report(snapshot['G_ema'].eval(), num=1000, seed=0, batch_size=250)
    assert report['confident_fraction'] >= 0.8, report
    assert report['all_classes_present'] and min(report['confident_class_histogram']) > 0
    assert report['label_agreement'] >= 0.9, report
