"""montage.py: layout, labels, and the images of every tile (naive latents of the seed, generate_magnet's draw)."""

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import legacy
import montage as montage_script
from sampling import latents, samplers
from sampling.montage import GROUP_GAP, HEADER_HEIGHT, KIND_GAP, LABEL_WIDTH

ROWS, COLS, SEED, RHO = 2, 3, 4, -0.5


@pytest.fixture(scope='module')
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp('montage')
    out = {}
    for name, c_dim in (('cond', 3), ('uncond', 0)):
        G = tiny_generator(c_dim=c_dim, seed=5, img_channels=1)
        legacy.save_network_pkl(root / f'{name}.pkl', G=G, G_ema=G)
        rng = np.random.default_rng(c_dim)
        svds = np.sort(np.exp(rng.normal(0, 1.0, size=[24, 4])), axis=1)[:, ::-1].astype(np.float32)
        labels = latents.one_hot(np.arange(24) % c_dim, c_dim) if c_dim else None
        meta = latents.make_meta(network_sha256=latents.file_sha256(root / f'{name}.pkl'), z_dim=G.z_dim, c_dim=c_dim)
        latents.LatentBank(rng.standard_normal([24, G.z_dim]).astype(np.float32), labels, meta=meta,
                           svds=svds).save(root / f'{name}.npz')
        out[name] = dict(G=G, pkl=str(root / f'{name}.pkl'), bank=str(root / f'{name}.npz'))
    return out


def _run(net, out, *extra):
    return CliRunner().invoke(montage_script.main, [
        '--network', net['pkl'], '--bank', net['bank'], '--rho', str(RHO), '--rows', str(ROWS), '--cols', str(COLS),
        '--seed', str(SEED), '--scale', '1', '--out', str(out), '--device', 'cpu', *extra])


def _images(G, z, c, psi):
    with torch.no_grad():
        img = G(torch.from_numpy(z).float(), torch.from_numpy(c).float(), truncation_psi=psi, noise_mode='const')
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()[:, 0]


def _assert_same_image(tile, image):
    # Batched synthesis on the CPU rounds differently from NVlabs' forward pass (sampling/synthesis.py):
    # the parity rule, uint8 within 1.
    assert tile.shape == image.shape
    assert np.abs(tile.astype(int) - image.astype(int)).max() <= 1


def _block(picture, group, kind, side=16):
    x = LABEL_WIDTH + group * (COLS * side + GROUP_GAP)
    y = HEADER_HEIGHT + kind * (ROWS * side + KIND_GAP)
    block = picture[y:y + ROWS * side, x:x + COLS * side]
    return [block[r * side:(r + 1) * side, col * side:(col + 1) * side] for r in range(ROWS) for col in range(COLS)]


def _check_labels(picture, groups, side=16):
    for g in range(groups):  # A title above every group.
        x = LABEL_WIDTH + g * (COLS * side + GROUP_GAP)
        assert (picture[:HEADER_HEIGHT, x:x + COLS * side] < 128).sum() > 10
    for kind in range(2):  # 'naive' and the method, left of their rows.
        y = HEADER_HEIGHT + kind * (ROWS * side + KIND_GAP)
        assert (picture[y:y + ROWS * side, :LABEL_WIDTH] < 128).sum() > 10


def test_psi_groups_same_latents_in_every_group(net, tmp_path):
    cond = net['cond']
    G = cond['G']
    result = _run(cond, tmp_path / 'm.png', '--psi', '0.5,1')
    assert result.exit_code == 0, result.output
    picture = np.asarray(PIL.Image.open(tmp_path / 'm.png'))
    assert picture.shape == (HEADER_HEIGHT + 2 * ROWS * 16 + KIND_GAP, LABEL_WIDTH + 2 * COLS * 16 + GROUP_GAP)
    _check_labels(picture, 2)
    num = ROWS * COLS
    # The polarity rows are the draw of generate_magnet.py --rho RHO --seed SEED (its sampler spec).
    z_pol, c_pol, _ = samplers.build(f"polarity:bank={cond['bank']},rho={RHO}", G).sample(num, seed=SEED)
    z_naive = np.random.RandomState(SEED).standard_normal([num, G.z_dim])
    for g, psi in enumerate((0.5, 1)):
        for tile, image in zip(_block(picture, g, 0), _images(G, z_naive, c_pol, psi)):
            _assert_same_image(tile, image)
        for tile, image in zip(_block(picture, g, 1), _images(G, z_pol, c_pol, psi)):
            _assert_same_image(tile, image)
    assert 'polarity rho=-0.5' in result.output


def test_class_groups(net, tmp_path):
    cond = net['cond']
    G = cond['G']
    result = _run(cond, tmp_path / 'c.png', '--by', 'class', '--trunc', '0.7')
    assert result.exit_code == 0, result.output
    picture = np.asarray(PIL.Image.open(tmp_path / 'c.png'))
    assert picture.shape[1] == LABEL_WIDTH + 3 * COLS * 16 + 2 * GROUP_GAP
    _check_labels(picture, 3)
    num = ROWS * COLS
    z_naive = np.random.RandomState(SEED).standard_normal([num, G.z_dim])
    for k in range(3):
        c = latents.one_hot(np.full([num], k), 3)
        for tile, image in zip(_block(picture, k, 0), _images(G, z_naive, c, 0.7)):
            _assert_same_image(tile, image)
        z_k, c_k, _ = samplers.build(f"polarity:bank={cond['bank']},rho={RHO};class={k}", G).sample(num, seed=SEED)
        assert (c_k.argmax(axis=1) == k).all()
        for tile, image in zip(_block(picture, k, 1), _images(G, z_k, c_k, 0.7)):
            _assert_same_image(tile, image)


def test_refusals(net, tmp_path):
    result = _run(net['uncond'], tmp_path / 'u.png', '--by', 'class')
    assert result.exit_code != 0 and 'conditional network' in result.output and 'Traceback' not in result.output
    result = _run(net['uncond'], tmp_path / 'u.png', '--psi', '0.5,x')
    assert result.exit_code != 0 and 'comma-separated' in result.output
    result = CliRunner().invoke(montage_script.main, ['--network', net['cond']['pkl'], '--out', str(tmp_path / 'u.png')])
    assert result.exit_code != 0 and '--bank is needed' in result.output
    assert not (tmp_path / 'u.png').exists()
