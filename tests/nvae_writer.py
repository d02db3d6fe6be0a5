"""Writes small NVAE checkpoints with random weights in NVAE's key layout, for the tests.

Independent of training/networks_nvae.py: the layout is spelled out here from the published facts
(see the report of issue 23): the decoder tower of residual cells and combiners, the samplers
(ELU + 1x1 conv), the post-processing cells and the image-conditional ELU + 3x3 conv; 'mconv' ops
as ``conv.{0..4}`` (BN, 1x1 conv + BN-Swish, KxK grouped conv + BN-Swish, 1x1 conv, BN) behind an
optional nearest upsampling at ``conv.0``; weight-normalised convolutions with ``log_weight_norm``;
convolutions without weight normalisation repeating their weight as ``weight_normalized``.
"""

import argparse
import collections

import torch

MNIST_ARGS = dict(
    dataset='mnist', num_latent_scales=2, num_groups_per_scale=10, ada_groups=True, min_groups_per_scale=1,
    num_latent_per_group=20, num_channels_enc=32, num_channels_dec=32, num_preprocess_blocks=2,
    num_preprocess_cells=3, num_postprocess_blocks=2, num_postprocess_cells=3, num_cell_per_cond_enc=2,
    num_cell_per_cond_dec=2, use_se=True, res_dist=True, num_nf=0, arch_instance='res_mbconv', num_x_bits=8,
    batch_size=200, epochs=400, learning_rate=0.01, fast_adamax=True, save='/checkpoints/mnist',
)

SMALL_ARGS = dict(MNIST_ARGS, num_groups_per_scale=2, num_latent_per_group=3, num_channels_enc=4, num_channels_dec=4,
                  num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
                  num_cell_per_cond_enc=1, num_cell_per_cond_dec=1)

ARCH = {  # NVAE's 'res_mbconv' table, as the checkpoint's arch_instance holds it.
    'normal_enc': ['res_bnswish', 'res_bnswish'], 'down_enc': ['res_bnswish', 'res_bnswish'],
    'normal_dec': ['mconv_e6k5g0'], 'up_dec': ['mconv_e6k5g0'],
    'normal_pre': ['res_bnswish', 'res_bnswish'], 'down_pre': ['res_bnswish', 'res_bnswish'],
    'normal_post': ['mconv_e3k5g0'], 'up_post': ['mconv_e3k5g0'], 'ar_nn': [''],
}


class Layout:
    """Records (key, shape) in order; ``sample`` fills them with random values of a sensible scale."""

    def __init__(self):
        self.entries = collections.OrderedDict()
        self.aliases = {}  # weight_normalized key -> weight key (the same tensor in NVAE's state dict)

    def conv(self, prefix, cin, cout, k, groups=1, bias=False, wn=True):
        self.entries[f'{prefix}.weight'] = ('conv', (cout, cin // groups, k, k))
        if bias:
            self.entries[f'{prefix}.bias'] = ('bias', (cout,))
        if wn:
            self.entries[f'{prefix}.log_weight_norm'] = ('lwn', (cout, 1, 1, 1))
        else:
            self.aliases[f'{prefix}.weight_normalized'] = f'{prefix}.weight'

    def bn(self, prefix, c):
        for leaf, kind in (('weight', 'bn_w'), ('bias', 'bias'), ('running_mean', 'bias'), ('running_var', 'var')):
            self.entries[f'{prefix}.{leaf}'] = (kind, (c,))
        self.entries[f'{prefix}.num_batches_tracked'] = ('count', ())

    def mbconv(self, prefix, cin, cout, ex, k, upsample):
        hidden = cin * ex
        i = 1 if upsample else 0
        self.bn(f'{prefix}.conv.{i}', cin)
        self.conv(f'{prefix}.conv.{i + 1}.conv.0', cin, hidden, 1, wn=False)
        self.bn(f'{prefix}.conv.{i + 1}.conv.1', hidden)
        self.conv(f'{prefix}.conv.{i + 2}.conv.0', hidden, hidden, k, groups=hidden, wn=False)
        self.bn(f'{prefix}.conv.{i + 2}.conv.1', hidden)
        self.conv(f'{prefix}.conv.{i + 3}', hidden, cout, 1, wn=False)
        self.bn(f'{prefix}.conv.{i + 4}', cout)

    def cell(self, prefix, cin, cout, ex, upsample):
        if upsample:
            self.conv(f'{prefix}.skip.1', cin, cout, 1)
        self.mbconv(f'{prefix}._ops.0', cin, cout, ex, 5, upsample)
        hidden = max(cout // 16, 4)
        self.entries[f'{prefix}.se.se.0.weight'] = ('linear', (hidden, cout))
        self.entries[f'{prefix}.se.se.0.bias'] = ('bias', (hidden,))
        self.entries[f'{prefix}.se.se.2.weight'] = ('linear', (cout, hidden))
        self.entries[f'{prefix}.se.se.2.bias'] = ('bias', (cout,))

    def sample(self, gen):
        out = collections.OrderedDict()
        for key, (kind, shape) in self.entries.items():
            if kind == 'count':
                out[key] = torch.tensor(1234, dtype=torch.int64)
                continue
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
            if kind == 'conv':
                fan_in = shape[1] * shape[2] * shape[3]
                x = x / fan_in ** 0.5
            elif kind == 'linear':
                x = x / shape[1] ** 0.5
            elif kind == 'lwn':
                x = 0.3 * x
            elif kind == 'bn_w':
                x = 1 + 0.2 * x
            elif kind == 'var':
                x = 0.5 + x.abs()
            else:
                x = 0.2 * x
            out[key] = x.float()
        return out


def groups_per_scale(args):
    groups, n = [], args['num_groups_per_scale']
    for _ in range(args['num_latent_scales']):
        groups.append(n)
        if args['ada_groups']:
            n = max(args['min_groups_per_scale'], n // 2)
    return groups


def decoder_layout(args):
    """The decoder's keys; also returns the decoding plan [('cell', key) | ('combiner', key)] and latent sizes."""
    lay = Layout()
    scales, L, C = args['num_latent_scales'], args['num_latent_per_group'], args['num_channels_dec']
    levels = args['num_preprocess_blocks'] + scales - 1
    mult, size = 2 ** levels, 32 // 2 ** levels
    lay.entries['prior_ftr0'] = ('bias', (C * mult, size, size))
    groups = groups_per_scale(args)
    plan, sizes, n_tower, n_sampler = [], [], 0, 0
    for s in range(scales):
        c = C * mult
        for g in range(groups[scales - s - 1]):
            if not (s == 0 and g == 0):
                for _ in range(args['num_cell_per_cond_dec']):
                    lay.cell(f'dec_tower.{n_tower}', c, c, 6, upsample=False)
                    plan.append(('cell', f'dec_tower.{n_tower}', False))
                    n_tower += 1
                lay.conv(f'dec_sampler.{n_sampler}.1', c, 2 * L, 1, bias=True)
                n_sampler += 1
            lay.conv(f'dec_tower.{n_tower}.conv', c + L, c, 1, bias=True)
            plan.append(('combiner', f'dec_tower.{n_tower}', None))
            sizes.append(size)
            n_tower += 1
        if s < scales - 1:
            lay.cell(f'dec_tower.{n_tower}', c, c // 2, 6, upsample=True)
            plan.append(('cell', f'dec_tower.{n_tower}', True))
            n_tower += 1
            mult //= 2
            size *= 2
    post = []
    for b in range(args['num_postprocess_blocks']):
        for i in range(args['num_postprocess_cells']):
            c = C * mult
            n = b * args['num_postprocess_cells'] + i
            if i == 0:
                lay.cell(f'post_process.{n}', c, c // 2, 3, upsample=True)
                mult //= 2
            else:
                lay.cell(f'post_process.{n}', c, c, 3, upsample=False)
            post.append((f'post_process.{n}', i == 0))
    lay.conv('image_conditional.1', C * mult, 1, 3, bias=True)
    return lay, plan, post, sizes


def encoder_layout(args, lay):
    """A few encoder entries (stem, pre_process, enc_tower, enc0, enc_sampler): the loader must ignore them."""
    C = args['num_channels_enc']
    lay.conv('stem', 1, C, 3, bias=True)
    lay.bn('pre_process.0._ops.0.bn', C)
    lay.conv('pre_process.0._ops.0.conv_0', C, C, 3, bias=True)
    lay.conv('enc_tower.0.conv', C, C, 1, bias=True)
    lay.conv('enc0.1', C, C, 1, bias=True)
    lay.conv('enc_sampler.0', C, 2 * args['num_latent_per_group'], 3, bias=True)


def nvae_state_dict(args, seed=0, encoder=True):
    """A random state dict in NVAE's layout; weight_normalized entries share their weight's tensor."""
    lay, _plan, _post, _sizes = decoder_layout(args)
    if encoder:
        encoder_layout(args, lay)
    state = lay.sample(torch.Generator().manual_seed(seed))
    for alias, key in lay.aliases.items():
        state[alias] = state[key]
    return state


def checkpoint_dict(args=SMALL_ARGS, seed=0, state=None, namespace=None, **overrides):
    """The checkpoint dict; ``args`` (a dict) builds the state dict and, unless ``namespace`` is given, args."""
    data = dict(
        epoch=399, state_dict=nvae_state_dict(args, seed) if state is None else state,
        optimizer={'state': {}, 'param_groups': [{'lr': 0.01, 'params': [0, 1]}]}, global_step=12345,
        args=argparse.Namespace(**args) if namespace is None else namespace, arch_instance=dict(ARCH),
        scheduler={'last_epoch': 399},
        grad_scalar={'scale': 65536.0, '_growth_tracker': 10},
    )
    data.update(overrides)
    return data


def write_checkpoint(path, args=SMALL_ARGS, seed=0, **overrides):
    torch.save(checkpoint_dict(args, seed, **overrides), path)
    return path
