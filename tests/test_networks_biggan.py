"""BigGAN-deep: parity with the pytorch-pretrained-biggan port, safe checkpoint loading, our own pickles."""

import collections
import os
import pickle
import struct

import numpy as np
import pytest
import pytorch_pretrained_biggan as port  # The reference implementation: a test-only requirement.
import torch
from biggan_helpers import TINY_CONFIG, tiny_biggan, write_checkpoint

import legacy
from training import load_biggan
from training.networks_biggan import Generator, _stats_weights, truncated_z

TINY_KNOWN = {'tiny': TINY_CONFIG}


def port_model(config, state_dict=None):
    model = port.BigGAN(port.BigGANConfig.from_dict(config))
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def inputs(seed, batch=3, z_dim=8, c_dim=10):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([batch, z_dim], generator=gen)
    one_hot = torch.nn.functional.one_hot(torch.randint(c_dim, [batch], generator=gen), c_dim).float()
    soft = torch.softmax(2 * torch.randn([batch, c_dim], generator=gen), dim=1)
    return z, one_hot, soft


@pytest.fixture(scope='module')
def tiny():
    G = tiny_biggan(seed=3)
    return G, port_model(TINY_CONFIG, G.state_dict())


# Grid points (0.5, 1, 0.02), values between them (0.515, 0.03, 0.333), and grid values that the port's
# float64 division puts just off the grid (0.14 just above, 0.94 just below).
@pytest.mark.parametrize('psi', [1.0, 0.5, 0.02, 0.515, 0.03, 0.333, 0.14, 0.94])
def test_outputs_equal_the_ports(tiny, psi):
    G, ref = tiny
    z, one_hot, soft = inputs(seed=int(psi * 1000))
    for c in (one_hot, soft):
        with torch.no_grad():
            expected = ref(z, c, psi)
            ours = G(z, c, truncation_psi=psi, noise_mode='const')
        assert ours.shape == (3, 3, 32, 32) and ours.dtype == torch.float32
        assert expected.std() > 0.2  # Not saturated: the comparison means something.
        assert (ours - expected).abs().max() < 1e-5


def test_psi_selects_statistics_without_scaling_z(tiny):
    G, _ = tiny
    z, one_hot, _ = inputs(seed=5)
    with torch.no_grad():
        assert (G(z, one_hot, truncation_psi=0.5) - G(z, one_hot, truncation_psi=1.0)).abs().max() > 1e-3
        # Zeroing every statistic set but 25 (psi = 0.5) leaves psi = 0.5 unchanged.
        G2 = tiny_biggan(seed=3)
        for name, buf in G2.named_buffers():
            if name.endswith(('running_means', 'running_vars')):
                keep = buf[25].clone()
                buf.fill_(0.0 if name.endswith('means') else 1.0)
                buf[25] = keep
        assert torch.equal(G2(z, one_hot, truncation_psi=0.5), G(z, one_hot, truncation_psi=0.5))


def test_bad_shapes_are_one_clear_error(tiny):
    G, _ = tiny
    z, one_hot, _ = inputs(seed=2)
    with pytest.raises(ValueError, match=r'z must be \[batch, 8\]'):
        G(z[:, :4], one_hot)
    with pytest.raises(ValueError, match=r'c must be \[3, 10\]'):
        G(z, one_hot[:, :5])


def test_stats_blends():
    assert _stats_weights(0.5, 51, 'port') == [(25, 1.0)]
    assert _stats_weights(1.0, 51, 'linear') == [(49, 0.0), (50, 1.0)]
    port_w = dict(_stats_weights(0.515, 51, 'port'))
    linear_w = dict(_stats_weights(0.515, 51, 'linear'))
    assert port_w.keys() == linear_w.keys() == {25, 26}
    assert port_w[25] == pytest.approx(0.75) and linear_w[25] == pytest.approx(0.25)  # The port's swap.
    assert _stats_weights(0.94, 51, 'port')[0][0] == 46 and _stats_weights(0.94, 51, 'port')[0][1] > 0.999
    for bad in (0, -0.1, 1.01):
        with pytest.raises(ValueError, match='truncation_psi'):
            _stats_weights(bad, 51, 'port')


def test_linear_blend_equals_the_port_where_the_swap_does_not_matter(tiny):
    G, ref = tiny
    G_linear = tiny_biggan(seed=3, stats_blend='linear')
    z, one_hot, _ = inputs(seed=9)
    with torch.no_grad():
        for psi in (0.51, 0.5):  # Halfway between grid points, and on one.
            assert (G_linear(z, one_hot, truncation_psi=psi) - ref(z, one_hot, psi)).abs().max() < 1e-5
        assert (G_linear(z, one_hot, truncation_psi=0.515) - ref(z, one_hot, 0.515)).abs().max() > 1e-4
        assert torch.equal(G(z, one_hot, truncation_psi=0.515, stats_blend='linear'),
                           G_linear(z, one_hot, truncation_psi=0.515))


def test_the_256_px_layout_has_the_ports_602_tensors():
    config = load_biggan.PUBLISHED_CONFIGS['biggan-deep-256']
    with torch.device('meta'):
        ours = Generator(**load_biggan.generator_kwargs(config)).state_dict()
        theirs = port.BigGAN(port.BigGANConfig.from_dict(config)).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert len(ours) == 602


def test_the_ports_default_config_is_the_published_128_px_one():
    default = port.BigGANConfig().to_dict()
    default['layers'] = [list(layer) for layer in default['layers']]
    assert default == load_biggan.PUBLISHED_CONFIGS['biggan-deep-128']
    # 512 px adds one more resolution at channel_width x 1; 256 px is 512 px without it.
    layers512 = load_biggan.PUBLISHED_CONFIGS['biggan-deep-512']['layers']
    assert layers512[-2:] == [[False, 1, 1], [True, 1, 1]]
    assert load_biggan.PUBLISHED_CONFIGS['biggan-deep-256']['layers'] == layers512[:-2]


def test_checkpoint_folder_and_pair_load(tmp_path, tiny):
    G, ref = tiny
    folder = write_checkpoint(tmp_path / 'ckpt', G.state_dict())
    pair = write_checkpoint(tmp_path / 'pair', G.state_dict(), weights_name='tiny-pytorch_model.bin',
                            config_name='tiny-config.json')
    legacy_format = write_checkpoint(tmp_path / 'legacy', {})  # torch.save before PyTorch 1.6: not a zip file.
    torch.save(G.state_dict(), legacy_format / 'pytorch_model.bin', _use_new_zipfile_serialization=False)
    z, one_hot, _ = inputs(seed=11)
    for path in (folder, os.path.join(pair, 'tiny-pytorch_model.bin'), legacy_format):
        loaded = load_biggan.load_generator(path, known_configs=TINY_KNOWN)
        assert isinstance(loaded, Generator) and not loaded.training
        assert all(not p.requires_grad for p in loaded.parameters())
        with torch.no_grad():
            assert (loaded(z, one_hot, truncation_psi=0.7) - ref(z, one_hot, 0.7)).abs().max() < 1e-5


def _refusal(path, known=TINY_KNOWN):
    with pytest.raises(load_biggan.CheckpointError) as info:
        load_biggan.load_generator(path, known_configs=known)
    message = str(info.value)
    assert '\n' not in message
    return message


def test_wrong_files_are_refused_with_one_line(tmp_path, tiny):
    G, _ = tiny
    state = G.state_dict()

    missing = dict(state)
    del missing['generator.layers.3.gamma']
    assert 'lacks 1 of the' in _refusal(write_checkpoint(tmp_path / 'missing', missing))

    extra = dict(state, **{'generator.extra': torch.zeros(2)})
    assert 'does not have' in _refusal(write_checkpoint(tmp_path / 'extra', extra))

    reshaped = dict(state, **{'embeddings.weight': torch.zeros(8, 11)})
    assert 'embeddings.weight has shape [8, 11]' in _refusal(write_checkpoint(tmp_path / 'shape', reshaped))

    other = dict(TINY_CONFIG, channel_width=8)
    assert 'channel_width = 8, expected 4' in _refusal(write_checkpoint(tmp_path / 'config', state, config=other))
    assert 'output_dim 64' in _refusal(write_checkpoint(tmp_path / 'size', state, config=dict(TINY_CONFIG, output_dim=64)))
    assert "has 'dropout'" in _refusal(write_checkpoint(tmp_path / 'key', state, config=dict(TINY_CONFIG, dropout=0)))

    no_config = write_checkpoint(tmp_path / 'noconfig', state)
    os.remove(no_config / 'config.json')
    assert 'config.json' in _refusal(no_config)
    (tmp_path / 'empty').mkdir()
    assert 'is a folder without pytorch_model.bin' in _refusal(tmp_path / 'empty')

    (tmp_path / 'notjson').mkdir()
    torch.save(dict(state), tmp_path / 'notjson' / 'pytorch_model.bin')
    (tmp_path / 'notjson' / 'config.json').write_text('{output_dim: 32')
    assert 'as JSON' in _refusal(tmp_path / 'notjson')


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_posing_as_a_bin_is_refused_without_running_it(tmp_path):
    folder = write_checkpoint(tmp_path / 'evil', {})
    marker = str(tmp_path / 'code-ran')
    with open(folder / 'pytorch_model.bin', 'wb') as f:
        pickle.dump({'embeddings.weight': _RunsCode(marker)}, f, protocol=2)
    assert 'not a plain tensor checkpoint (weights only): it references os.makedirs' in _refusal(folder)
    assert not os.path.exists(marker)

    (folder / 'pytorch_model.bin').write_bytes(b'not a checkpoint at all')
    assert 'cannot read' in _refusal(folder)

    # A list of tensors is loadable with weights_only but is not a state dict.
    torch.save([torch.zeros(1)], folder / 'pytorch_model.bin')
    assert 'does not hold a state dict' in _refusal(folder)


class _Storage:
    """Stands for a tensor storage in a hand-written legacy-format torch.save file."""


class _Tensor:
    def __init__(self, numel):
        self.numel = numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (_Storage(), 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _LegacyPickler(pickle.Pickler):
    def __init__(self, f, declared):
        super().__init__(f, protocol=2)
        self.declared = declared

    def persistent_id(self, obj):
        return ('storage', torch.FloatStorage, '0', 'cpu', self.declared, None) if isinstance(obj, _Storage) else None


def test_a_small_file_declaring_a_huge_storage_is_refused_before_allocating(tmp_path):
    # The legacy torch.save layout (magic, version, sys info, object, storage keys, sized data) with one tensor
    # whose storage claims 2**40 floats but holds 4: torch.load's legacy reader would allocate 4 TiB first.
    folder = write_checkpoint(tmp_path / 'bomb', {})
    with open(folder / 'pytorch_model.bin', 'wb') as f:
        for header in (0x1950a86a20f9469cfc6c, 1001, dict(protocol_version=1001, little_endian=True,
                                                           type_sizes=dict(short=2, int=4, long=4))):
            pickle.dump(header, f, protocol=2)
        _LegacyPickler(f, declared=2 ** 40).dump(collections.OrderedDict([('embeddings.weight', _Tensor(4))]))
        pickle.dump(['0'], f, protocol=2)
        f.write(struct.pack('<q', 4) + np.zeros(4, np.float32).tobytes())
    assert 'more than the file holds' in _refusal(folder)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, tiny, monkeypatch):
    G, _ = tiny
    folder = write_checkpoint(tmp_path / 'big', dict(G.state_dict(), padding=torch.zeros(1 << 19)))
    monkeypatch.setattr(torch, 'load', lambda *a, **k: pytest.fail('torch.load ran on an oversized file'))
    assert 'more than this architecture' in _refusal(folder)


def test_legacy_load_network_dispatches_folders_and_bins(tmp_path, tiny):
    G, _ = tiny
    # The published 256 px config with the tiny weights: one line, through the common entry point.
    folder = write_checkpoint(tmp_path / 'ckpt', G.state_dict(), config=load_biggan.PUBLISHED_CONFIGS['biggan-deep-256'])
    for path in (str(folder), str(folder / 'pytorch_model.bin')):
        with pytest.raises(legacy.NetworkLoadError, match=r'lacks \d+ of the 602 tensors') as info:
            legacy.load_network(path)
        assert '\n' not in str(info.value)
    with pytest.raises(legacy.NetworkLoadError, match='is a folder without pytorch_model.bin'):
        legacy.load_network(str(tmp_path))


def test_load_network_reads_a_checkpoint(tmp_path, tiny, monkeypatch):
    G, ref = tiny
    folder = write_checkpoint(tmp_path / 'ckpt', G.state_dict())
    monkeypatch.setattr(load_biggan, 'PUBLISHED_CONFIGS', TINY_KNOWN)
    loaded = legacy.load_network(str(folder))
    z, _, soft = inputs(seed=13)
    with torch.no_grad():
        assert (loaded(z, soft, truncation_psi=0.4) - ref(z, soft, 0.4)).abs().max() < 1e-5


def test_our_pickles_save_and_reload_safely(tmp_path, tiny):
    G, _ = tiny
    path = tmp_path / 'biggan.pkl'
    legacy.save_network_pkl(path, G_ema=G)
    with open(path, 'rb') as f:
        loaded = legacy.load_network_pkl(f)['G_ema']
    assert isinstance(loaded, Generator)
    z, one_hot, _ = inputs(seed=17)
    with torch.no_grad():
        assert torch.equal(loaded(z, one_hot, truncation_psi=0.3), G(z, one_hot, truncation_psi=0.3))


def test_truncated_z():
    z = truncated_z(2000, 128, truncation=0.4, seed=1)
    assert z.shape == (2000, 128) and z.dtype.name == 'float32'
    assert abs(z).max() <= 0.8 + 1e-6 and abs(z).max() > 0.79
    assert (truncated_z(5, 128, 0.4, seed=2) == truncated_z(5, 128, 0.4, seed=2)).all()
    assert abs(float(z.std()) / 0.4 - 0.8796) < 0.01  # std of N(0, 1) truncated to [-2, 2].
