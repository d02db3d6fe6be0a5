"""Videos (sampling/video.py, generate_video.py): decoded MP4s have the expected frames and sizes, and show the
draws they claim to show."""

import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import generate_video
import legacy
from sampling import latents, samplers, video
from sampling.synthesis import set_input_transform
from training import networks_stylegan3 as n3

CAP = video.CAPTION_HEIGHT


def _uint8(img):
    return (img.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _tiles(frame, num, side):
    """The images of a one-row frame grid (below the caption band)."""
    return [frame[CAP:CAP + side, i * side:(i + 1) * side] for i in range(num)]


@pytest.fixture(scope='module')
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp('video')
    G = tiny_generator(c_dim=3, seed=3)
    legacy.save_network_pkl(root / 'net.pkl', G=G, G_ema=G)
    sha = latents.file_sha256(root / 'net.pkl')
    rng = np.random.default_rng(0)
    num = 30
    svds = np.sort(np.exp(rng.normal(0, 1.0, size=[num, 4])), axis=1)[:, ::-1].astype(np.float32)
    bank = latents.LatentBank(rng.standard_normal([num, G.z_dim]).astype(np.float32),
                              latents.one_hot(np.arange(num) % 3, 3),
                              meta=latents.make_meta(network_sha256=sha, z_dim=G.z_dim, c_dim=3), svds=svds)
    bank.save(root / 'bank.npz')
    return dict(root=root, G=G, pkl=str(root / 'net.pkl'), bank=str(root / 'bank.npz'))


def test_write_and_read_mp4_pads_to_even_and_is_atomic(tmp_path):
    frames = [np.full([21, 33, 3], 40 * i, dtype=np.uint8) for i in range(5)]
    path = tmp_path / 'v.mp4'
    assert video.write_mp4(path, frames, fps=10) == 5
    decoded, meta = video.read_mp4(path)
    assert decoded.shape == (5, 22, 34, 3)
    assert meta['fps'] == 10 and meta['codec'].startswith('h264')
    np.testing.assert_allclose(decoded[:, :21, :33].mean(axis=(1, 2, 3)), [40 * i for i in range(5)], atol=3)
    assert os.listdir(tmp_path) == ['v.mp4']

    bad = frames[:2] + [np.zeros([10, 10, 3], np.uint8)]
    with pytest.raises(ValueError, match='frame 2 is 10x10'):
        video.write_mp4(tmp_path / 'bad.mp4', bad)
    assert os.listdir(tmp_path) == ['v.mp4']  # Neither the video nor its temporary file.


def test_rho_sweep_frames_show_generate_magnets_draws(net, tmp_path):
    out, strip = tmp_path / 'rho.mp4', tmp_path / 'strip.png'
    result = CliRunner().invoke(generate_video.main, [
        'rho', '--network', net['pkl'], '--bank', net['bank'], '--frames', '3', '--num', '4', '--rho-start', '-1',
        '--rho-stop', '1', '--seed', '5', '--scale', '1', '--out', str(out), '--strip', str(strip), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    frames, meta = video.read_mp4(out)
    assert frames.shape == (3, CAP + 16, 4 * 16, 3) and meta['codec'].startswith('h264')

    # The strip holds all three frames losslessly: each is the draw of generate_magnet.py --rho R --seed 5.
    picture = np.asarray(PIL.Image.open(strip).convert('RGB'))
    assert picture.shape == (3 * (CAP + 16) + 2 * 4, 64, 3)
    for k, rho in enumerate([-1, 0, 1]):
        frame = picture[k * (CAP + 16 + 4):k * (CAP + 16 + 4) + CAP + 16]
        assert (frame[:CAP] < 128).sum() > 30  # The caption (rho = ...) is drawn.
        z, c, _ = samplers.build(f"polarity:bank={net['bank']},rho={rho}", net['G']).sample(4, seed=5)
        with torch.no_grad():
            expected = _uint8(net['G'](torch.from_numpy(z), torch.from_numpy(c), noise_mode='const'))
        for tile, image in zip(_tiles(frame, 4, 16), expected):
            # Batched CPU synthesis rounds differently from NVlabs' forward pass: uint8 within 1 (parity rule).
            assert tile.shape == image.shape and np.abs(tile.astype(int) - image.astype(int)).max() <= 1
        # The video's frame is the same picture, up to H.264's loss.
        assert np.abs(frames[k].astype(float) - frame.astype(float)).mean() < 8


def test_truncation_sweep_ends_at_the_average(net, tmp_path):
    out = tmp_path / 't.mp4'
    result = CliRunner().invoke(generate_video.main, [
        'trunc', '--network', net['pkl'], '--frames', '4', '--num', '3', '--class', '1', '--scale', '2',
        '--out', str(out), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    frames, _ = video.read_mp4(out)
    assert frames.shape == (4, CAP + 32, 3 * 32, 3)
    # psi = 0, one class: every latent maps to the same w, so the three images agree (in the lossless frames).
    G = net['G']
    z = latents.z_batch(0, 3, G.z_dim).astype(np.float32)
    c = latents.one_hot(np.full([3], 1), 3)
    first = next(video.truncation_sweep_frames(G, z, c, [0.0], scale=1))
    tiles = _tiles(first, 3, 16)
    np.testing.assert_array_equal(tiles[0], tiles[1])
    np.testing.assert_array_equal(tiles[0], tiles[2])


def test_interpolation_passes_through_the_hubs(net, tmp_path):
    G = net['G']
    rng = np.random.default_rng(1)
    z = rng.standard_normal([6, G.z_dim]).astype(np.float32)
    c = latents.one_hot(np.arange(6) % 3, 3)
    with torch.no_grad():
        w = G.mapping(torch.from_numpy(z), torch.from_numpy(c), truncation_psi=1)[:, 0].numpy()
    hubs = latents.LatentBank(z, c, meta=latents.make_meta(network_sha256=latents.file_sha256(net['pkl'])), w=w)
    hubs.save(tmp_path / 'hubs.npz')
    out = tmp_path / 'lerp.mp4'
    result = CliRunner().invoke(generate_video.main, [
        'lerp', '--network', net['pkl'], '--hubs', str(tmp_path / 'hubs.npz'), '--paths', '2', '--keys', '3',
        '--steps', '4', '--scale', '1', '--out', str(out), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    frames, _ = video.read_mp4(out)
    assert frames.shape == ((3 - 1) * 4 + 1, CAP + 16, 2 * 16, 3)

    ws = video.hub_ws(G, hubs)
    lossless = list(video.interpolation_frames(G, ws, paths=2, steps=4, scale=1))
    with torch.no_grad():
        at_hubs = _uint8(G(torch.from_numpy(z), torch.from_numpy(c), noise_mode='const'))
    # Walk i visits hubs i, i + 2, i + 4: frames 0, 4 and 8 show exactly those hubs.
    for key, frame_index in enumerate((0, 4, 8)):
        tiles = _tiles(lossless[frame_index], 2, 16)
        for path in range(2):
            np.testing.assert_array_equal(tiles[path], at_hubs[2 * key + path])


def test_stylegan3_motion_and_reset():
    torch.manual_seed(0)
    G = n3.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                     num_layers=4, mapping_kwargs=dict(num_layers=1)).eval().requires_grad_(False)
    before = G.synthesis.input.transform.clone()
    with torch.no_grad():
        ws = G.mapping(torch.randn([2, 8]), None)
    frames = list(video.interpolation_frames(G, ws, paths=1, steps=2, translate=(0.25, 0), rotate=0, scale=1))
    assert len(frames) == 3
    assert torch.equal(G.synthesis.input.transform, before)  # Reset after the video.
    set_input_transform(G, (0.25, 0), 0)
    with torch.no_grad():
        moved = _uint8(G.synthesis(ws[1:], noise_mode='const'))[0]
    set_input_transform(G)
    np.testing.assert_array_equal(frames[-1][CAP:], moved)  # The last frame: hub 1, fully translated.


def test_refusals(net, tmp_path):
    runner = CliRunner()
    result = runner.invoke(generate_video.main, ['rho', '--network', net['pkl'], '--out', str(tmp_path / 'x.mp4')])
    assert result.exit_code != 0 and '--bank is needed' in result.output
    result = runner.invoke(generate_video.main, ['lerp', '--network', net['pkl'], '--hubs', net['bank'], '--paths', '8',
                                                 '--keys', '8', '--out', str(tmp_path / 'x.mp4'), '--device', 'cpu'])
    assert result.exit_code != 0 and 'need 64' in result.output and 'Traceback' not in result.output
    assert not os.path.exists(tmp_path / 'x.mp4')
