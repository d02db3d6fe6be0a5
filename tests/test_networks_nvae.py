"""NVAE decoder and checkpoint loader: parity with a float64 reference of NVAE's sampling equations, refusals."""

import argparse
import io
import os
import pickle
import zipfile

import numpy as np
import nvae_writer
import pytest
import torch
import torch.nn.functional as F

import legacy
from training import networks_nvae, nvae_checkpoint

# ----------------------------------------------------------------------------
# Float64 reference of the documented sampling path, written from the NVAE-layout state dict alone.


def _conv(sd, prefix, x, padding=0, groups=1):
    w = sd[f'{prefix}.weight'].double()
    if f'{prefix}.log_weight_norm' in sd:
        norm = torch.sqrt((w * w).sum(dim=[1, 2, 3])).view(-1, 1, 1, 1)
        w = torch.exp(sd[f'{prefix}.log_weight_norm'].double()) * w / (norm + 1e-5)
    bias = sd.get(f'{prefix}.bias')
    return F.conv2d(x, w, None if bias is None else bias.double(), padding=padding, groups=groups)


def _bn(sd, prefix, x, swish=False):
    mean, var = sd[f'{prefix}.running_mean'].double(), sd[f'{prefix}.running_var'].double()
    gamma, beta = sd[f'{prefix}.weight'].double(), sd[f'{prefix}.bias'].double()
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) * gamma.view(1, -1, 1, 1) \
        + beta.view(1, -1, 1, 1)
    return y * torch.sigmoid(y) if swish else y


def _cell(sd, prefix, x, upsample):
    skip = x
    if upsample:
        skip = _conv(sd, f'{prefix}.skip.1', F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True))
        x = F.interpolate(x, scale_factor=2, mode='nearest')
    op, i = f'{prefix}._ops.0.conv', (1 if upsample else 0)
    y = _bn(sd, f'{op}.{i}', x)
    y = _bn(sd, f'{op}.{i + 1}.conv.1', _conv(sd, f'{op}.{i + 1}.conv.0', y), swish=True)
    y = _bn(sd, f'{op}.{i + 2}.conv.1', _conv(sd, f'{op}.{i + 2}.conv.0', y, padding=2, groups=y.shape[1]), swish=True)
    y = _bn(sd, f'{op}.{i + 4}', _conv(sd, f'{op}.{i + 3}', y))
    se = y.mean(dim=[2, 3])
    se = torch.relu(se @ sd[f'{prefix}.se.se.0.weight'].double().T + sd[f'{prefix}.se.se.0.bias'].double())
    se = torch.sigmoid(se @ sd[f'{prefix}.se.se.2.weight'].double().T + sd[f'{prefix}.se.se.2.bias'].double())
    return skip + 0.1 * y * se[:, :, None, None]


def reference_sample(sd, args, t, batch, draw):
    """NVAE's sampling loop in float64; ``draw(shape)`` gives each group's eps, called in NVAE's order."""
    _lay, plan, post, _sizes = nvae_writer.decoder_layout(args)
    L = args['num_latent_per_group']
    x = sd['prior_ftr0'].double()[None].expand(batch, -1, -1, -1)
    group = 0
    for kind, prefix, upsample in plan:
        if kind == 'cell':
            x = _cell(sd, prefix, x, upsample)
            continue
        eps = draw((batch, L, x.shape[2], x.shape[3])).double()
        if group == 0:
            mu, sigma = torch.zeros_like(eps), torch.full_like(eps, np.exp(0.0) + 0.01)
        else:
            param = _conv(sd, f'dec_sampler.{group - 1}.1', F.elu(x))
            mu, log_sigma = param[:, :L], param[:, L:]
            mu = 5 * torch.tanh(mu / 5)
            sigma = torch.exp(5 * torch.tanh(log_sigma / 5)) + 0.01
        z = mu + sigma * t * eps
        x = _conv(sd, f'{prefix}.conv', torch.cat([x, z], dim=1))
        group += 1
    for prefix, upsample in post:
        x = _cell(sd, prefix, x, upsample)
    return _conv(sd, 'image_conditional.1', F.elu(x), padding=1)


def nvae_eps_draws(seed, batch, sizes, L):
    """Each group's eps drawn in NVAE's order from one seeded stream, and our z built from the same draws."""
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn((batch, L, s, s), generator=gen) for s in sizes]
    z = torch.cat([d.reshape(batch, -1) for d in draws], dim=1)
    return draws, z


@pytest.fixture(scope='module')
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('nvae') / 'checkpoint.pt'
    return nvae_writer.write_checkpoint(str(path), seed=1)


def load(path):
    return legacy.load_network(str(path))


@pytest.fixture(autouse=True)
def _private_rng():
    """Seeded, and leaves torch's global random state as it found it (other tests build networks from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield

# ----------------------------------------------------------------------------


def test_mnist_configuration_facts():
    """The release's MNIST configuration: 15 groups (5 at 4x4, 10 at 8x8), 14,400 eps dims, about 12.7 M parameters."""
    with torch.device('meta'):
        kwargs = nvae_checkpoint.generator_kwargs(argparse.Namespace(**nvae_writer.MNIST_ARGS))
        G = networks_nvae.NVAEGenerator(**kwargs)
    assert G.latent_sizes == [4] * 5 + [8] * 10
    assert G.z_dim == 14_400
    assert abs(sum(p.numel() for p in G.parameters()) - 12.7e6) < 0.05e6
    lay, _plan, _post, _sizes = nvae_writer.decoder_layout(nvae_writer.MNIST_ARGS)
    ours = G.state_dict()
    assert set(ours) == set(lay.entries)
    assert all(tuple(ours[k].shape) == tuple(shape) for k, (_kind, shape) in lay.entries.items())
    assert G.img_resolution == 32 and G.img_channels == 1 and G.c_dim == 0


@pytest.mark.parametrize('t', [1.0, 0.6, 1.3])
def test_decoder_matches_float64_reference(small_checkpoint, t):
    G = load(small_checkpoint)
    args = nvae_writer.SMALL_ARGS
    sd = torch.load(small_checkpoint, weights_only=False)['state_dict']
    draws, z = nvae_eps_draws(seed=7, batch=3, sizes=G.latent_sizes, L=args['num_latent_per_group'])
    queue = list(draws)
    logits_ref = reference_sample(sd, args, t, 3, lambda shape: queue.pop(0))
    assert not queue
    p_ref = torch.sigmoid(logits_ref)
    assert float(logits_ref.std()) > 0.1 and float(p_ref.max()) < 0.99 and float(p_ref.min()) > 0.01  # not saturated

    logits = G(z, None, truncation_psi=t, return_logits=True)
    np.testing.assert_allclose(logits.double().numpy(), logits_ref.numpy(), rtol=0, atol=2e-4)
    img = G(z, None, truncation_psi=t)
    assert img.shape == (3, 1, 32, 32) and img.dtype == torch.float32
    np.testing.assert_allclose(img.double().numpy(), (2 * p_ref - 1).numpy(), rtol=0, atol=1e-4)
    with open(small_checkpoint, 'rb') as f:
        G28, _info = nvae_checkpoint.load_nvae_checkpoint(f, crop=28)
    assert G28.img_resolution == 28
    np.testing.assert_allclose(G28(z, truncation_psi=t).double().numpy(), (2 * p_ref - 1)[:, :, 2:30, 2:30].numpy(),
                               rtol=0, atol=1e-4)


def test_eps_order_replays_nvae_stream(small_checkpoint):
    """A sample drawn NVAE's way (one seeded stream, group by group) is G(z) for z = the same draws concatenated."""
    G = load(small_checkpoint)
    gen = torch.Generator().manual_seed(3)
    sd = torch.load(small_checkpoint, weights_only=False)['state_dict']
    ref = reference_sample(sd, nvae_writer.SMALL_ARGS, 0.8, 2, lambda shape: torch.randn(shape, generator=gen))
    _draws, z = nvae_eps_draws(seed=3, batch=2, sizes=G.latent_sizes, L=3)
    np.testing.assert_allclose(G(z, truncation_psi=0.8, return_logits=True).double().numpy(), ref.numpy(),
                               rtol=0, atol=2e-4)
    # Another order of the same draws gives another image: the order is part of the definition of z.
    swapped = torch.cat([z[:, G.z_dim // 2:], z[:, :G.z_dim // 2]], dim=1)
    assert not torch.allclose(G(swapped), G(z), atol=1e-3)


def test_fast_adamax_views_into_stacked_storages(tmp_path, small_checkpoint):
    """Parameters stored as views (with offsets) into a few shared storages load as the right slices."""
    data = nvae_writer.checkpoint_dict(seed=1)
    flat = torch.cat([v.reshape(-1).float() for k, v in data['state_dict'].items() if v.dtype.is_floating_point])
    pool = torch.cat([torch.full([17], 9.0), flat, torch.full([5], -9.0)])  # offset 17, spare tail
    by_shape = {}
    offset = 17
    state = {}
    seen = {}
    for key, value in data['state_dict'].items():
        if not value.dtype.is_floating_point:
            state[key] = value
            continue
        if id(value) in seen:  # weight_normalized: the same tensor as its weight
            state[key] = state[seen[id(value)]]
            continue
        seen[id(value)] = key
        state[key] = pool[offset:offset + value.numel()].view(value.shape)
        by_shape.setdefault(tuple(value.shape), []).append(key)
        offset += value.numel()
    assert len({s.untyped_storage().data_ptr() for s in state.values() if s.dtype.is_floating_point}) == 1
    data['state_dict'] = state
    torch.save(data, tmp_path / 'views.pt')
    G_views, G_plain = load(tmp_path / 'views.pt'), load(small_checkpoint)
    for (k, a), (_, b) in zip(G_views.state_dict().items(), G_plain.state_dict().items()):
        assert torch.equal(a, b), k
        assert a.untyped_storage().nbytes() == a.numel() * a.element_size(), f'{k} keeps the shared storage alive'


def test_out_of_bounds_view_refused(tmp_path):
    """A tensor whose offset + size runs past its storage is refused (torch checks the bounds), in one line."""
    data = nvae_writer.checkpoint_dict()
    key = 'prior_ftr0'
    base = torch.zeros(data['state_dict'][key].numel() + 0xA7)
    data['state_dict'][key] = base[0xA7:].view(data['state_dict'][key].shape)  # storage offset 167
    torch.save(data, tmp_path / 'ok.pt')
    assert load(tmp_path / 'ok.pt') is not None
    with zipfile.ZipFile(tmp_path / 'ok.pt') as src, zipfile.ZipFile(tmp_path / 'bad.pt', 'w') as dst:
        for item in src.infolist():
            payload = src.read(item.filename)
            if item.filename.endswith('data.pkl'):
                assert payload.count(b'K\xa7') == 1
                payload = payload.replace(b'K\xa7', b'M\x00\x10')  # offset 4096: past the end of the storage
            dst.writestr(item, payload)
    with pytest.raises(legacy.NetworkLoadError) as err:
        load(tmp_path / 'bad.pt')
    assert '\n' not in str(err.value) and 'not a readable PyTorch checkpoint' in str(err.value)


def test_encoder_ignored_and_each_decoder_key_required(tmp_path):
    data = nvae_writer.checkpoint_dict()
    assert any(k.startswith('enc_tower.') for k in data['state_dict'])
    # Without the encoder entries it loads the same.
    data['state_dict'] = {k: v for k, v in data['state_dict'].items() if not k.startswith(nvae_checkpoint.ENCODER_PREFIXES)}
    torch.save(data, tmp_path / 'dec_only.pt')
    G = load(tmp_path / 'dec_only.pt')
    assert G.z_dim == 3 * 64 + 2 * 3 * 256
    # NVAE's earlier checkpoints had no weight_normalized entries: they load the same.
    data['state_dict'] = {k: v for k, v in data['state_dict'].items() if not k.endswith('.weight_normalized')}
    torch.save(data, tmp_path / 'no_wn.pt')
    z = torch.randn(2, G.z_dim)
    assert torch.equal(load(tmp_path / 'no_wn.pt')(z), G(z))


def _refusal(tmp_path, data, name='bad.pt'):
    path = tmp_path / name
    torch.save(data, path)
    with pytest.raises(legacy.NetworkLoadError) as err:
        load(path)
    message = str(err.value)
    assert '\n' not in message and message
    return message


def test_wrong_checkpoints_refused_in_one_line(tmp_path):
    def with_state(edit):
        data = nvae_writer.checkpoint_dict()
        edit(data['state_dict'])
        return data

    assert 'unexpected state_dict entry mystery.weight' in _refusal(
        tmp_path, with_state(lambda sd: sd.__setitem__('mystery.weight', torch.zeros(1))))
    assert 'missing' in _refusal(tmp_path, with_state(lambda sd: sd.pop('dec_tower.0.conv.bias')))
    assert 'dec_sampler.9.1.weight' in _refusal(
        tmp_path, with_state(lambda sd: sd.__setitem__('dec_sampler.9.1.weight', torch.zeros(1))))
    assert 'shape' in _refusal(
        tmp_path, with_state(lambda sd: sd.__setitem__('prior_ftr0', torch.zeros(16, 8, 9))))
    key = 'dec_tower.2._ops.0.conv.3.weight_normalized'
    assert 'differs' in _refusal(tmp_path, with_state(lambda sd: sd.__setitem__(key, sd[key] + 1)))
    assert 'weight_normalized' in _refusal(
        tmp_path, with_state(lambda sd: sd.__setitem__('dec_tower.0.conv.weight_normalized', torch.zeros(2))))
    # args that disagree with the weights
    args = dict(nvae_writer.SMALL_ARGS, num_latent_per_group=4)
    assert 'refusing' in _refusal(tmp_path, nvae_writer.checkpoint_dict(
        args=args, state=nvae_writer.nvae_state_dict(nvae_writer.SMALL_ARGS)))
    assert "dataset is 'cifar10'" in _refusal(tmp_path, nvae_writer.checkpoint_dict(
        namespace=argparse.Namespace(**dict(nvae_writer.SMALL_ARGS, dataset='cifar10'))))
    assert 'num_channels_dec' in _refusal(tmp_path, nvae_writer.checkpoint_dict(
        namespace=argparse.Namespace(**dict(nvae_writer.SMALL_ARGS, num_channels_dec='4'))))
    assert 'argparse.Namespace' in _refusal(tmp_path, nvae_writer.checkpoint_dict(namespace=dict(nvae_writer.SMALL_ARGS)))
    assert 'unexpected top-level' in _refusal(tmp_path, nvae_writer.checkpoint_dict(model='x'))
    assert 'not a dict' in _refusal(tmp_path, [1, 2, 3])
    bad_arch = dict(nvae_writer.ARCH, normal_dec=['res_bnswish'])
    assert 'res_bnswish' in _refusal(tmp_path, nvae_writer.checkpoint_dict(arch_instance=bad_arch))


class _Payload:
    """Pickles as a call that would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_hostile_checkpoints_refused_nothing_runs(tmp_path):
    marker = tmp_path / 'pwned'
    message = _refusal(tmp_path, nvae_writer.checkpoint_dict(namespace=_Payload(marker)), 'evil_args.pt')
    assert 'refusing to load' in message and ('posix.system' in message or 'os.system' in message)
    data = nvae_writer.checkpoint_dict()
    data['state_dict']['dec_tower.0.conv.bias'] = _Payload(marker)
    _refusal(tmp_path, data, 'evil_tensor.pt')
    data = nvae_writer.checkpoint_dict(optimizer={'state': _Payload(marker)})
    _refusal(tmp_path, data, 'evil_optimizer.pt')
    assert not marker.exists()

    # A legacy-format (non-zip) torch.save file with the payload.
    buf = io.BytesIO()
    torch.save(nvae_writer.checkpoint_dict(namespace=_Payload(marker)), buf, _use_new_zipfile_serialization=False)
    (tmp_path / 'legacy_evil.pt').write_bytes(buf.getvalue())
    with pytest.raises(legacy.NetworkLoadError):
        load(tmp_path / 'legacy_evil.pt')
    assert not marker.exists()


def test_damaged_files_refused_in_one_line(tmp_path, small_checkpoint):
    blob = open(small_checkpoint, 'rb').read()
    (tmp_path / 'trunc.pt').write_bytes(blob[:len(blob) // 2])
    (tmp_path / 'junk.pt').write_bytes(b'PK\x03\x04' + os.urandom(300))
    for name in ('trunc.pt', 'junk.pt'):
        with pytest.raises(legacy.NetworkLoadError) as err:
            load(tmp_path / name)
        assert '\n' not in str(err.value)


def test_legacy_format_checkpoint_loads(tmp_path, small_checkpoint):
    buf = io.BytesIO()
    torch.save(nvae_writer.checkpoint_dict(seed=1), buf, _use_new_zipfile_serialization=False)
    (tmp_path / 'old.pt').write_bytes(buf.getvalue())
    z = torch.randn(2, 1728)
    assert torch.equal(load(tmp_path / 'old.pt')(z), load(small_checkpoint)(z))


def test_readjust_bn_then_own_pickle_reloads_safely(tmp_path, small_checkpoint):
    G = load(small_checkpoint)
    before = G.dec_tower[2]._ops[0].conv[0].running_mean.clone()
    networks_nvae.readjust_bn(G, num_passes=3, batch_size=4, temperature=0.7)
    assert not G.training and all(not m.training for m in G.modules())
    after = G.dec_tower[2]._ops[0].conv[0].running_mean
    assert not torch.allclose(before, after)
    assert int(G.dec_tower[2]._ops[0].conv[0].num_batches_tracked) == 1234 + 3
    assert float(G.bn_readjust_temperature) == pytest.approx(0.7)

    legacy.save_network_pkl(tmp_path / 'nvae.pkl', G_ema=G)
    G2 = legacy.load_network(str(tmp_path / 'nvae.pkl'))  # safe mode: rebuilt as our class, no code run
    assert type(G2) is type(G) and G2.z_dim == G.z_dim
    assert float(G2.bn_readjust_temperature) == pytest.approx(0.7)
    z = torch.randn(2, G.z_dim)
    assert torch.equal(G2(z, truncation_psi=0.7), G(z, truncation_psi=0.7))
    # The pickle's embedded classes are exactly the ones legacy.py recognises as this network file.
    data = pickle.loads((tmp_path / 'nvae.pkl').read_bytes())  # our own file: running its code is fine here
    assert type(data['G_ema']).__name__ == 'NVAEGenerator'
    assert legacy._defined_classes(networks_nvae.NVAEGenerator._orig_module_src) == legacy._NVAE_CLASSES


def test_train_mode_batch_statistics_and_eval_rows_independent(small_checkpoint):
    G = load(small_checkpoint)
    z = torch.randn(4, G.z_dim)
    one = G(z[:1])
    assert torch.allclose(G(z)[:1], one, atol=1e-6)  # eval: a latent's image does not depend on its batch


