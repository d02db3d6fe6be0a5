"""sampling.samplers: the spec language and every sampler, against independent references."""

import numpy as np
import pytest
import torch

from sampling import samplers
from sampling.latents import LatentBank, make_meta, random_labels
from sampling.samplers import SamplerSpecError

# ----------------------------------------------------------------------------


class FakeG(torch.nn.Module):
    """The generator interface a sampler uses: z_dim, c_dim and mapping() (a fixed random tanh layer)."""

    def __init__(self, z_dim=6, c_dim=0, w_dim=5, num_ws=3):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.weight = torch.nn.Parameter(torch.randn([z_dim + c_dim, w_dim], generator=gen), requires_grad=False)

    def mapping(self, z, c, truncation_psi=1):
        assert truncation_psi == 1
        w = torch.tanh(torch.cat([z, c], dim=1) @ self.weight)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)


def _save_bank(path, latents, labels=None, **arrays):
    LatentBank(latents, labels, meta=make_meta(z_dim=latents.shape[1]), **arrays).save(path)
    return str(path)


def _hubs_reference(points, k, threshold, count_self):
    """float64 brute force: k-occurrence over the batch, hub if score >= threshold."""
    x = np.asarray(points, dtype=np.float64)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if not count_self:
        np.fill_diagonal(dist, np.inf)
    neighbours = np.argsort(dist, axis=1, kind='stable')[:, :k]
    scores = np.bincount(neighbours.ravel(), minlength=len(x))
    return np.flatnonzero(scores >= threshold)

# ----------------------------------------------------------------------------
# Parsing.


def test_parse_forms():
    spec = samplers.parse('random')
    assert [t.name for t in spec.terms] == ['random'] and spec.psi == 1 and not spec.is_mixture

    spec = samplers.parse('trunc:0.7')
    assert [t.name for t in spec.terms] == ['random'] and spec.psi == 0.7

    spec = samplers.parse('hubness:k=3,t=10,space=z,batch=500,count_self=0;trunc=0.8')
    assert spec.terms[0].args == dict(k=3, t=10.0, top=None, quantile=None, space='z', batch=500, count_self=False,
                                      max_batches=1000, labels='auto')
    assert spec.psi == 0.8

    spec = samplers.parse('mix:0.2*polarity(bank=/x/b.npz,rho=-1e-2,top_k=30)+0.8*random;trunc=0.9')
    assert spec.is_mixture and [t.weight for t in spec.terms] == [0.2, 0.8]
    assert spec.terms[0].args['bank'] == '/x/b.npz' and spec.terms[0].args['rho'] == -0.01
    assert spec.terms[0].args['top_k'] == 30 and spec.psi == 0.9

    # Quotes protect delimiters in paths; spaces around tokens are allowed; 'mix:' is optional.
    spec = samplers.parse(' 0.5 * bank:"a,b (1).npz" + 0.5*random ')
    assert spec.terms[0].args['path'] == 'a,b (1).npz' and spec.terms[1].name == 'random'

    spec = samplers.parse('polarity:C:\\banks\\m.npz')
    assert spec.terms[0].args['bank'] == 'C:\\banks\\m.npz'


@pytest.mark.parametrize('text', [
    'random', 'trunc:0.5', 'hubness:k=3,t=7.5,space=z;trunc=0.25',
    'mix:0.25*polarity(bank="x,y.npz",rho=2,replace=0)+0.75*hubness(k=4)', 'bank:hubs.npz',
    'hubness:top=20,space=z;class=3', 'mix:0.5*polarity(b.npz)+0.5*random;trunc=0.7,class=random', 'truncnorm',
    'random;class="golden retriever"',
])
def test_describe_round_trips(text):
    spec = samplers.parse(text)
    again = samplers.parse(spec.describe())
    assert again.terms == spec.terms and again.psi == spec.psi and again.class_idx == spec.class_idx
    assert samplers.parse('random;class="golden retriever"').class_idx == 207  # ImageNet names, as --class.


@pytest.mark.parametrize('text, fragment', [
    ('', 'empty'),
    ('nope', "unknown sampler 'nope'"),
    ('hubness:k=0', 'k must be >= 1'),
    ('hubness:q=1', "unknown argument 'q'"),
    ('hubness:space=x', 'space must be one of'),
    ('hubness:k=2.5', 'must be an integer'),
    ('random;trunc=abc', 'trunc must be a number'),
    ('random;foo=1', "unknown global option 'foo'"),
    ('mix:0.3*random+0.3*random', 'sum to 1'),
    ('0.2*random+random', 'give every mixture component a weight'),
    ('polarity:rho=1', 'needs bank='),
    ('mix:0.5*trunc(0.7)+0.5*random', 'cannot be a mixture component'),
    ('trunc:0.7;trunc=0.5', 'given twice'),
    ('random)', "unexpected ')'"),
    ('bank:"unterminated', 'unterminated'),
    ('hubness:k=1,k=2', 'given twice'),
    ('0.5*random', 'cannot have weight'),
    ('hubness:t=5,top=3', 'choose one selection rule, got threshold and top'),
    ('hubness:quantile=2', 'quantile must be in [0, 1]'),
    ('random;class=-1', 'negative'),
    ('random;class=goldfishy', "did you mean 'goldfish'"),
])
def test_parse_errors_are_one_line(text, fragment):
    with pytest.raises(SamplerSpecError) as info:
        samplers.parse(text)
    message = str(info.value)
    assert fragment in message and '\n' not in message

# ----------------------------------------------------------------------------
# Samplers.


def test_random_matches_seed_convention_and_is_reproducible():
    G = FakeG(z_dim=7)
    sampler = samplers.build('random', G)
    z, c, psi = sampler.sample(20, seed=42)
    assert z.dtype == np.float32 and z.shape == (20, 7) and c.shape == (20, 0) and psi == 1
    np.testing.assert_array_equal(z, np.random.RandomState(42).randn(20, 7).astype(np.float32))
    # Row 0 is generate.py's latent of the same seed.
    np.testing.assert_array_equal(z[0], np.random.RandomState(42).randn(1, 7)[0].astype(np.float32))
    z2, _, _ = samplers.build('random', G).sample(20, seed=42)
    np.testing.assert_array_equal(z, z2)
    z3, _, _ = sampler.sample(20, seed=43)
    assert not np.allclose(z, z3)
    z[:] = 0  # The sampler hands out copies.
    assert np.abs(sampler.sample(20, seed=42)[0]).sum() > 0

    _, _, psi = samplers.build('trunc:0.6', G).sample(3, seed=0)
    assert psi == 0.6


def test_random_labels_follow_the_dataset_or_are_uniform():
    G = FakeG(c_dim=3)
    pool = np.zeros([10, 3], dtype=np.float32)
    pool[:8, 0] = 1
    pool[8:, 1] = 1                                    # 80 % class 0, 20 % class 1, never class 2.
    z, c, _ = samplers.build('random', G, label_pool=pool).sample(5000, seed=3)
    freq = c.mean(axis=0)
    assert abs(freq[0] - 0.8) < 0.03 and abs(freq[1] - 0.2) < 0.03 and freq[2] == 0
    np.testing.assert_array_equal(z, np.random.RandomState(3).randn(5000, 6).astype(np.float32))

    _, c, _ = samplers.build('random:labels=uniform', G, label_pool=pool).sample(6000, seed=3)
    assert set(c.sum(axis=1)) == {1.0} and np.all(np.abs(c.mean(axis=0) - 1 / 3) < 0.03)
    _, c, _ = samplers.build('random', G).sample(6000, seed=3)    # No dataset: uniform.
    assert np.all(np.abs(c.mean(axis=0) - 1 / 3) < 0.03)
    with pytest.raises(SamplerSpecError, match='labels=dataset needs a dataset'):
        samplers.build('random:labels=dataset', G)


@pytest.mark.parametrize('space, count_self', [('w', True), ('z', False)])
def test_hubness_matches_brute_force(space, count_self):
    G = FakeG()
    k, t, batch, seed, num = 5, 9, 120, 11, 30
    sampler = samplers.build(f'hubness:k={k},t={t},space={space},batch={batch},count_self={int(count_self)};trunc=0.7',
                             G)
    z, c, psi = sampler.sample(num, seed=seed)
    assert psi == 0.7 and c.shape == (num, 0)

    expected = []
    for b in range(100):
        zb = np.random.RandomState(seed + b).randn(batch, G.z_dim)
        if space == 'w':
            with torch.no_grad():
                points = G.mapping(torch.from_numpy(zb).float(), torch.zeros([batch, 0]))[:, 0].numpy()
        else:
            points = zb
        expected.extend(zb[_hubs_reference(points, k, t, count_self)])
        if len(expected) >= num:
            break
    np.testing.assert_array_equal(z, np.stack(expected[:num]).astype(np.float32))


def test_hubness_finds_the_hubs_of_generate_hubness():
    from sampling.hub_sampler import HubSearch, score_batch
    G = FakeG()
    search = HubSearch(space='w', k=4, count_self=True, batch_size=150, seed=21, threshold=8)
    expected = np.concatenate([score_batch(G, search, b).latents for b in range(3)])
    z, _, _ = samplers.build('hubness:k=4,t=8,batch=150', G).sample(len(expected), seed=21)
    np.testing.assert_array_equal(z, expected.astype(np.float32))


def test_hubness_gives_up_with_a_clear_error():
    sampler = samplers.build('hubness:k=3,t=1000,batch=50,max_batches=2', FakeG())
    with pytest.raises(ValueError, match='found only 0 of 5 hubs in 2 batches'):
        sampler.sample(5, seed=0)


def test_polarity_probabilities_and_without_replacement(tmp_path):
    a = np.array([0.0, 1.0, 2.0, -1.0])
    svds = np.stack([np.exp(a), np.full(4, 0.1)], axis=1)     # Largest first: top_k=1 gives log-volume a.
    latents = np.arange(24, dtype=np.float64).reshape(4, 6)
    path = _save_bank(tmp_path / 'bank.npz', latents, svds=svds)
    G = FakeG()

    z, c, _ = samplers.build(f'polarity:bank={path},rho=0.5,top_k=1', G).sample(20000, seed=1)
    rows = (z[:, 0] / 6).astype(int)
    freq = np.bincount(rows, minlength=4) / len(rows)
    expected = np.exp(0.5 * a) / np.exp(0.5 * a).sum()
    np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_array_equal(z, latents[rows].astype(np.float32))
    z2, _, _ = samplers.build(f'polarity:bank={path},rho=0.5,top_k=1', G).sample(20000, seed=1)
    np.testing.assert_array_equal(z, z2)
    # Kish's effective sample size of the weights w_i = exp(0.5 a_i): (sum w)^2 / sum w^2.
    ess = samplers.build(f'polarity:bank={path},rho=0.5,top_k=1', G).source.effective_sample_size()
    assert ess == pytest.approx(np.exp(0.5 * a).sum() ** 2 / np.exp(a).sum(), rel=1e-12)

    z, _, _ = samplers.build(f'polarity:bank={path},rho=1,replace=0', G).sample(4, seed=2)
    assert sorted((z[:, 0] / 6).astype(int)) == [0, 1, 2, 3]


def test_polarity_per_class_gives_equal_class_counts(tmp_path):
    latents = np.random.RandomState(0).randn(30, 6)
    labels = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    svds = np.exp(np.random.RandomState(1).randn(30, 2))
    path = _save_bank(tmp_path / 'cond.npz', latents, labels, svds=svds)
    sampler = samplers.build(f'polarity:bank={path}', FakeG(c_dim=3))
    _, c, _ = sampler.sample(31, seed=0)
    assert sorted(c.sum(axis=0).tolist()) == [10, 10, 11]
    # Normalised per class, the effective sample size is the sum of the classes' own.
    w = svds.prod(axis=1)
    expected = sum(w[k::3].sum() ** 2 / (w[k::3] ** 2).sum() for k in range(3))
    assert sampler.source.effective_sample_size() == pytest.approx(expected, rel=1e-9)


def test_polarity_reads_the_authors_per_class_folder(tmp_path):
    # Their BigGAN layout: {class}_{name}.npz, 3-D [num_batches, batch, ...], labels from the file name.
    rs = np.random.RandomState(2)
    for class_idx in (0, 2):
        svds = np.exp(rs.randn(2, 5, 3))
        svds[1, 4] = 0  # padding row
        np.savez(tmp_path / f'{class_idx}_thing.npz', svds=svds, latents=rs.randn(2, 5, 6), labels=np.array([]))
    sampler = samplers.build(f'polarity:bank={tmp_path}', FakeG(c_dim=3))
    assert len(sampler.source.bank) == 18 and sampler.source.bank.meta['dropped_zero_rows'] == 2
    _, c, _ = sampler.sample(10, seed=0)
    assert c.sum(axis=0).tolist() == [5, 0, 5]


def test_bank_problems_are_clear(tmp_path):
    G = FakeG()
    with pytest.raises(SamplerSpecError, match='latent bank not found'):
        samplers.build(f'polarity:bank={tmp_path / "missing.npz"}', G)
    path = _save_bank(tmp_path / 'wide.npz', np.zeros([3, 9]), svds=np.ones([3, 2]))
    with pytest.raises(SamplerSpecError, match='z_dim = 9'):
        samplers.build(f'polarity:bank={path}', G)
    path = _save_bank(tmp_path / 'plain.npz', np.zeros([3, 6]))
    with pytest.raises(SamplerSpecError, match='no singular values'):
        samplers.build(f'polarity:bank={path}', G)
    with pytest.raises(ValueError, match='holds 3 latents, fewer than the 4'):
        samplers.build(f'bank:{path}', G).sample(4, seed=0)


def test_mixture_has_exact_counts(tmp_path):
    latents = 100 + np.arange(60, dtype=np.float64).reshape(10, 6)
    path = _save_bank(tmp_path / 'hubs.npz', latents)
    G = FakeG()
    sampler = samplers.build(f'mix:0.3*bank(path={path})+0.7*random;trunc=0.9', G)
    for num, expected_bank in [(10, 3), (7, 2), (5, 2)]:       # round(1.5) = 2: half rounds up.
        z, _, psi = sampler.sample(num, seed=4)
        from_bank = z[:, 0] >= 100
        assert from_bank.sum() == expected_bank and psi == 0.9
        np.testing.assert_array_equal(z[:expected_bank], latents[:expected_bank].astype(np.float32))
        # The random part has its own seed, independent of the bank component.
        own = np.random.RandomState(samplers.derive_seed(4, 1)).randn(num - expected_bank, 6).astype(np.float32)
        np.testing.assert_array_equal(z[expected_bank:], own)

# ----------------------------------------------------------------------------


def test_class_option(tmp_path):
    """;class=N gives fresh latents class N and keeps a bank's latents of class N; class=random, uniform classes."""
    G = FakeG(c_dim=3)
    z, c, _ = samplers.build('random;class=2', G).sample(5, seed=1)
    np.testing.assert_array_equal(c, np.eye(3, dtype=np.float32)[[2] * 5])
    np.testing.assert_array_equal(z, samplers.build('random', G).sample(5, seed=1)[0])  # The class moves no latent.
    _, c, _ = samplers.build('random;class=random', G).sample(5, seed=1)
    np.testing.assert_array_equal(c, random_labels(1, 5, 3))
    with pytest.raises(SamplerSpecError, match='out of range for 3 classes'):
        samplers.build('random;class=3', G)

    rng = np.random.RandomState(0)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 1, 0]]
    path = _save_bank(tmp_path / 'b.npz', rng.randn(6, 6), labels, svds=rng.uniform(1, 2, [6, 2]))
    drawn = samplers.build(f'polarity:bank={path};class=1', G).draw(20, seed=0)
    assert set(drawn.bank_index) <= {1, 3, 4} and (drawn.c.argmax(axis=1) == 1).all()
    drawn = samplers.build(f'bank:{path};class=0', G).draw(2, seed=0)
    np.testing.assert_array_equal(drawn.bank_index, [0, 5])
    with pytest.raises(ValueError, match='fewer than the 3 needed'):
        samplers.build(f'bank:{path};class=0', G).sample(3)
    # An unlabelled bank serves a conditional network only with a class, which it then labels its latents with.
    plain = _save_bank(tmp_path / 'plain.npz', rng.randn(4, 6), svds=rng.uniform(1, 2, [4, 2]))
    with pytest.raises(SamplerSpecError, match='the bank has no labels'):
        samplers.build(f'polarity:bank={plain}', G)
    _, c, _ = samplers.build(f'polarity:bank={plain};class=2', G).sample(4, seed=0)
    np.testing.assert_array_equal(c, np.eye(3, dtype=np.float32)[[2] * 4])
    # An unconditional network ignores the class.
    assert samplers.build('random;class=5', FakeG()).sample(2)[1].shape == (2, 0)
