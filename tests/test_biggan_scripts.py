"""Every script on a BigGAN checkpoint folder (a tiny one, admitted as a known config), class-conditional."""

import json
import os

import numpy as np
import pytest
import torch
from biggan_helpers import TINY_CONFIG, tiny_biggan, write_checkpoint
from click.testing import CliRunner

import compute_volume_scalars
import generate
import generate_hubness
import generate_magnet
from sampling import imagenet
from sampling.images import load_png
from training import load_biggan


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(load_biggan, 'PUBLISHED_CONFIGS', dict(load_biggan.PUBLISHED_CONFIGS, tiny=TINY_CONFIG))
    G = tiny_biggan(seed=1)
    return str(write_checkpoint(tmp_path / 'biggan-tiny', G.state_dict())), G


def _invoke(main, *args):
    return CliRunner().invoke(main, [str(a) for a in args] + ['--device', 'cpu'])


def _one_hot(index, num, c_dim=10):
    c = torch.zeros([num, c_dim])
    c[:, index] = 1
    return c


def test_class_names_table():
    names = imagenet.class_names()
    assert len(names) == 1000 and names[0] == 'tench' and names[1] == 'goldfish' and names[980] == 'volcano'
    assert imagenet.class_index('Golden_Retriever') == 207 == imagenet.class_index('n02099601')
    assert imagenet.class_index('Carassius auratus') == 1 and imagenet.class_index('933') == 933
    with pytest.raises(ValueError, match=r"'crane' names 2 ImageNet classes: 134 .*517"):
        imagenet.class_index('crane')
    with pytest.raises(ValueError, match="did you mean 'goldfish'"):
        imagenet.class_index('goldfsh')


def test_generate_by_class_name_matches_the_network(checkpoint, tmp_path):
    path, G = checkpoint
    result = _invoke(generate.main, '--network', path, '--seeds', '0-2', '--class', 'goldfish', '--trunc', 0.5,
                     '--outdir', tmp_path / 'out')
    assert result.exit_code == 0, result.output
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in range(3)]))
    with torch.no_grad():
        img = G(z, _one_hot(1, 3), truncation_psi=0.5)
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for seed in range(3):
        got = load_png(tmp_path / 'out' / f'seed{seed:04d}.png')
        assert np.abs(got.astype(int) - expected[seed].astype(int)).max() <= 1


def test_generate_truncnorm_samples_as_the_port(checkpoint, tmp_path):
    from training.networks_biggan import truncated_z
    path, G = checkpoint
    result = _invoke(generate.main, '--network', path, '--seeds', '5,6', '--class', 3, '--trunc', 0.4, '--truncnorm',
                     '--outdir', tmp_path)
    assert result.exit_code == 0, result.output
    z = torch.from_numpy(np.stack([truncated_z(1, G.z_dim, truncation=0.4, seed=s)[0] for s in (5, 6)]))
    assert z.abs().max() <= 0.8
    with torch.no_grad():
        img = G(z, _one_hot(3, 2), truncation_psi=0.4)
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy().astype(int)
    for i, seed in enumerate((5, 6)):
        assert np.abs(load_png(tmp_path / f'seed{seed:04d}.png').astype(int) - expected[i]).max() <= 1


@pytest.mark.parametrize('value,message', [
    ('crane', 'names 2 ImageNet classes'),
    ('goldfsh', "not a class index or 'random', nor an ImageNet class name; did you mean 'goldfish'"),
    ('volcano', 'out of range for 10 classes')])
def test_generate_refuses_a_bad_class_in_one_line(checkpoint, tmp_path, value, message):
    path, _ = checkpoint
    result = _invoke(generate.main, '--network', path, '--seeds', '0', '--class', value, '--outdir', tmp_path)
    assert result.exit_code != 0 and message in result.output
    assert 'Traceback' not in result.output


def test_hubness_in_z_for_one_class(checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / 'hubs'
    result = _invoke(generate_hubness.main, '--network', path, '--class', 'tench', '--num', 4, '--top', 2,
                     '--batch-size', 40, '--synth-batch', 4, '--outdir', out)
    assert result.exit_code == 0, result.output
    with np.load(out / 'hubs.npz') as bank:
        assert bank['latents'].shape == (4, TINY_CONFIG['z_dim'])
        assert (bank['labels'].argmax(axis=1) == 0).all() and 'w' not in bank.files
        meta = json.loads(str(bank['meta']))
    assert meta['space'] == 'z' and meta['extras']['class_idx'] == 0
    assert len([f for f in os.listdir(out) if f.startswith('hub0')]) == 4


def test_volumes_per_class_in_pixel_space_then_magnet_per_class(checkpoint, tmp_path):
    path, G = checkpoint
    vol = tmp_path / 'vol'
    result = _invoke(compute_volume_scalars.main, '--network', path, '--num', 1, '--class', 'all', '--space', 'pixel',
                     '--resize', 16, '--method', 'exact', '--top-k', 4, '--outdir', vol)
    assert result.exit_code == 0, result.output
    with np.load(vol / 'volumes.npz') as bank:
        assert bank['svds'].shape == (10, 4) and (bank['svds'] > 0).all()
        assert sorted(bank['labels'].argmax(axis=1).tolist()) == list(range(10))
        z0, c0, svd0 = bank['latents'][0], bank['labels'][0], bank['svds'][0]
    # The first row's singular values are those of d(resized image)/dz of the network itself (float64 reference).
    G64 = tiny_biggan(seed=1).double()

    def f(z):
        img = G64(z[None], torch.from_numpy(c0[None]).double())
        return torch.nn.functional.interpolate(img, size=(16, 16), mode='area').flatten()
    z0 = torch.from_numpy(z0).double()
    jac = torch.stack([torch.func.jvp(f, (z0,), (e,))[1] for e in torch.eye(len(z0), dtype=torch.float64)], dim=1)
    expected = torch.linalg.svdvals(jac)[:4].numpy()
    assert np.allclose(svd0, expected, rtol=2e-3)

    out = tmp_path / 'magnet'
    result = _invoke(generate_magnet.main, '--network', path, '--bank', vol / 'volumes.npz', '--per-class',
                     '--num', 10, '--outdir', out)
    assert result.exit_code == 0, result.output
    with np.load(out / 'selection.npz') as selection:
        assert sorted(selection['labels'].argmax(axis=1).tolist()) == list(range(10))
    result = _invoke(generate_magnet.main, '--network', path, '--bank', vol / 'volumes.npz', '--class', 'goldfish',
                     '--num', 2, '--z-scale', 0.9, '--outdir', tmp_path / 'goldfish')
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / 'goldfish' / 'selection.npz') as selection:
        assert (selection['labels'].argmax(axis=1) == 1).all()
        z = torch.from_numpy(selection['latents'][:1])
    with torch.no_grad():  # The authors' BigGAN setting: z * 0.9 at synthesis, psi 1.
        img = G(0.9 * z, _one_hot(1, 1), truncation_psi=1)
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy().astype(int)
    assert np.abs(load_png(tmp_path / 'goldfish' / 'magnet000000.png').astype(int) - expected).max() <= 1


def test_calc_metrics_loads_a_checkpoint_folder(checkpoint):
    from metrics import evaluation
    path, G = checkpoint
    loaded, training_set_kwargs = evaluation.load_snapshot(path, torch.device('cpu'), allow_code=False)
    assert training_set_kwargs is None
    z = torch.randn([2, G.z_dim])
    with torch.no_grad():
        assert torch.equal(loaded(z, _one_hot(4, 2), truncation_psi=0.8), G(z, _one_hot(4, 2), truncation_psi=0.8))


def test_magnet_from_the_authors_per_class_files(checkpoint, tmp_path):
    """The MaGNET authors' BigGAN banks: {class}_{name}.npz per class, 3-D arrays; --z-scale 0.9 at psi 1."""
    path, G = checkpoint
    rs = np.random.RandomState(0)
    folder = tmp_path / 'authors'
    folder.mkdir()
    for class_idx, name in ((1, 'goldfish'), (3, 'tiger_shark')):
        svds = np.sort(rs.uniform(0.5, 2, [2, 3, 6]), axis=2)[..., ::-1]   # 2 batches of 3 latents, K = 6
        np.savez(folder / f'{class_idx}_{name}.npz', svds=svds.astype(np.float32),
                 latents=rs.randn(2, 3, G.z_dim).astype(np.float32), labels=np.array([]))
    out = tmp_path / 'magnet'
    result = _invoke(generate_magnet.main, '--network', path, '--bank', folder, '--per-class', '--top-k', 6,
                     '--z-scale', 0.9, '--trunc', 1, '--num', 4, '--outdir', out)
    assert result.exit_code == 0, result.output
    with np.load(out / 'selection.npz') as selection:
        z, labels = selection['latents'], selection['labels']
    assert sorted(labels.argmax(axis=1).tolist()) == [1, 1, 3, 3]
    with torch.no_grad():
        img = G(0.9 * torch.from_numpy(z), torch.from_numpy(labels).float(), truncation_psi=1)
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy().astype(int)
    for i in range(4):
        assert np.abs(load_png(out / f'magnet{i:06d}.png').astype(int) - expected[i]).max() <= 1


def test_calc_metrics_on_a_checkpoint_folder(checkpoint, tmp_path, isolated_metrics):
    import PIL.Image

    import calc_metrics

    class PoolDetector(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), 4).flatten(1)

    path, _ = checkpoint
    detector = str(tmp_path / 'pool.pt')
    torch.jit.save(torch.jit.script(PoolDetector()), detector)
    real = tmp_path / 'real'
    real.mkdir()
    rs = np.random.RandomState(0)
    for i in range(60):
        PIL.Image.fromarray(rs.randint(0, 256, [32, 32, 3], dtype=np.uint8)).save(real / f'img{i:03d}.png')
    out = tmp_path / 'metrics.jsonl'
    result = CliRunner().invoke(calc_metrics.main, ['--network', path, '--metrics', 'fid1k_full', '--data', str(real),
                                                    '--detector', detector, '--device', 'cpu', '--workers', '0',
                                                    '--verbose', 'false', '--out', str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text().splitlines()[-1])
    assert np.isfinite(record['results']['fid1k_full']) and record['results']['fid1k_full'] > 0


def test_legacy_converts_a_checkpoint_folder_to_a_pickle(checkpoint, tmp_path):
    import legacy
    path, G = checkpoint
    dest = tmp_path / 'biggan.pkl'
    result = CliRunner().invoke(legacy.convert_network_pickle, ['--source', path, '--dest', str(dest)])
    assert result.exit_code == 0, result.output
    converted = legacy.load_network(str(dest))  # Safe mode: the pickle is ours, no code runs.
    z, c = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(0)), _one_hot(4, 2)
    with torch.no_grad():
        assert torch.equal(converted(z, c, truncation_psi=0.6), G.eval()(z, c, truncation_psi=0.6))
    result = CliRunner().invoke(legacy.convert_network_pickle, ['--source', path, '--dest', str(dest), '--force-fp16'])
    assert result.exit_code != 0 and 'does not apply to BigGAN' in result.output
