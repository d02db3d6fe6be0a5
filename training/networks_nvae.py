"""NVAE's decoder (Vahdat & Kautz, NeurIPS 2020) as a generator of this toolkit: the prior / sampling path only.

Written for this repository from the published description of NVAE's sampling path (no NVlabs code): a
learned feature map ``prior_ftr0`` is refined by a tower of residual cells; at each of the latent groups a
"combiner" concatenates a latent ``z_g`` and mixes it in with a 1x1 convolution; the groups after the first
draw ``z_g = mu + sigma * eps_g`` from a Normal whose ``(mu, log sigma)`` a small "sampler" convolution reads
from the features so far (both soft-clamped by ``5 tanh(x / 5)``, ``sigma = (exp(log sigma) + 0.01) * t``);
the first group draws ``z_0 = (1 + 0.01) t eps_0``. Post-processing cells bring the features to the image
size and a 3x3 convolution gives Bernoulli logits.

The generator face is the GANs' one: ``G(z, c, truncation_psi=t)`` where ``z`` (``[B, z_dim]``) is the
concatenation of every group's standard-normal ``eps_g``, in the order NVAE draws them (group 0 first, then
in decoding order), each flattened as ``(C, H, W)``; ``truncation_psi`` is NVAE's temperature ``t``. The
output is the Bernoulli mean (``sigmoid(logits)``) mapped to [-1, 1], 32 px by default: NVAE's MNIST images
are 28 px digits padded by 2 px of background to 32, the framing of this toolkit's ``mnist32`` datasets and
of the shipped MNIST classifier, so metrics compare like with like; ``crop=28`` gives NVAE's ``[2:30]`` crop.

Module names and parameter shapes follow NVAE's checkpoints (``dec_tower.N._ops.0.conv.1.conv.0.weight``
...), so a checkpoint's decoder entries map one to one onto ``state_dict()``; see
``training.nvae_checkpoint`` for the loader. Batch norm runs as in eval mode unless ``G.train()``: sample
only after :func:`readjust_bn` (NVAE's own advice), or from a checkpoint whose statistics were re-estimated.
"""

import re

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import persistence

CHANNEL_MULT = 2      # NVAE halves the channels at every upsampling step (doubles at every downsampling).
BN_EPS = 1e-5
BN_MOMENTUM = 0.05
WEIGHT_NORM_EPS = 1e-5
SIGMA_FLOOR = 0.01    # sigma = exp(log sigma) + 0.01
SOFT_CLAMP = 5.0      # x -> 5 tanh(x / 5)
RESIDUAL_SCALE = 0.1  # cell output = skip + 0.1 * branch

# NVAE's 'res_mbconv' architecture, the cell types the decoder path uses (the encoder's are not needed).
RES_MBCONV_DECODER = {
    'normal_dec': ['mconv_e6k5g0'],
    'up_dec': ['mconv_e6k5g0'],
    'normal_post': ['mconv_e3k5g0'],
    'up_post': ['mconv_e3k5g0'],
}
DECODER_CELL_TYPES = tuple(RES_MBCONV_DECODER)

_MBCONV_OP = re.compile(r'^mconv_e(\d+)k(\d+)g(\d+)$')  # expansion, kernel, groups (0: depthwise).


def parse_mbconv_op(name):
    """``'mconv_e6k5g0'`` -> ``(6, 5, 0)``; None for an op the decoder does not model."""
    match = _MBCONV_OP.match(name) if isinstance(name, str) else None
    return tuple(int(v) for v in match.groups()) if match else None


def groups_per_scale(num_latent_scales, num_groups_per_scale, ada_groups, min_groups_per_scale=1):
    """Latent groups of each scale, finest scale first (NVAE: halved per coarser scale with ``ada_groups``)."""
    groups, n = [], num_groups_per_scale
    for _ in range(num_latent_scales):
        groups.append(n)
        if ada_groups:
            n = max(min_groups_per_scale, n // 2)
    return groups


def soft_clamp(x):
    return SOFT_CLAMP * torch.tanh(x / SOFT_CLAMP)

#----------------------------------------------------------------------------
# Layers. Every class is persistent, so our own pickles of the generator re-load safely (legacy.py).


@persistence.persistent_class
class Conv2D(torch.nn.Module):
    """NVAE's convolution: optionally weight-normalised, ``w * exp(log_weight_norm) / (||w|| + 1e-5)``."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, groups=1, bias=False, weight_norm=True):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.padding = int(padding)
        self.groups = int(groups)
        self.weight_norm = bool(weight_norm)
        fan_in = self.in_channels // self.groups * self.kernel_size ** 2
        self.weight = torch.nn.Parameter(torch.randn([self.out_channels, self.in_channels // self.groups,
                                                      self.kernel_size, self.kernel_size]) / np.sqrt(fan_in))
        self.bias = torch.nn.Parameter(torch.zeros([self.out_channels])) if bias else None
        if self.weight_norm:
            self.log_weight_norm = torch.nn.Parameter(torch.zeros([self.out_channels, 1, 1, 1]))

    def effective_weight(self):
        if not self.weight_norm:
            return self.weight
        norm = self.weight.square().sum(dim=[1, 2, 3], keepdim=True).sqrt()
        return self.log_weight_norm.exp() * self.weight / (norm + WEIGHT_NORM_EPS)

    def forward(self, x):
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding, groups=self.groups)


@persistence.persistent_class
class BatchNorm(torch.nn.Module):
    """Batch norm (eps 1e-5, momentum 0.05), optionally followed by Swish (NVAE fuses the two on CUDA)."""

    def __init__(self, num_features, swish=False):
        super().__init__()
        self.num_features = int(num_features)
        self.swish = bool(swish)
        self.eps = BN_EPS
        self.momentum = BN_MOMENTUM
        self.weight = torch.nn.Parameter(torch.ones([self.num_features]))
        self.bias = torch.nn.Parameter(torch.zeros([self.num_features]))
        self.register_buffer('running_mean', torch.zeros([self.num_features]))
        self.register_buffer('running_var', torch.ones([self.num_features]))
        self.register_buffer('num_batches_tracked', torch.zeros([], dtype=torch.int64))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         training=self.training, momentum=self.momentum, eps=self.eps)
        return F.silu(x) if self.swish else x


@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = torch.nn.Parameter(torch.randn([self.out_features, self.in_features]) / np.sqrt(in_features))
        self.bias = torch.nn.Parameter(torch.zeros([self.out_features]))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


@persistence.persistent_class
class Activation(torch.nn.Module):
    """A parameterless layer: 'elu', 'relu', 'sigmoid', 'identity', 'up_nearest', 'up_bilinear' (x2)."""

    def __init__(self, kind):
        super().__init__()
        assert kind in ('elu', 'relu', 'sigmoid', 'identity', 'up_nearest', 'up_bilinear')
        self.kind = kind

    def forward(self, x):
        if self.kind == 'elu':
            return F.elu(x)
        if self.kind == 'relu':
            return F.relu(x)
        if self.kind == 'sigmoid':
            return torch.sigmoid(x)
        if self.kind == 'up_nearest':
            return F.interpolate(x, scale_factor=2, mode='nearest')
        if self.kind == 'up_bilinear':
            return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)
        return x


@persistence.persistent_class
class Chain(torch.nn.Module):
    """Layers named '0', '1', ... built from plain specs ``(kind, kwargs)`` and applied in order.

    Built from specs rather than from modules so that the constructor arguments are plain data: the
    safe loader rebuilds a pickled generator from them without running code from the file.
    """

    def __init__(self, specs):
        super().__init__()
        for index, (kind, kwargs) in enumerate(specs):
            self.add_module(str(index), _build_layer(kind, kwargs))

    def __getitem__(self, index):
        return self._modules[str(index)]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


@persistence.persistent_class
class ConvBNSwish(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, groups=1):
        super().__init__()
        self.conv = Chain([
            ('conv', dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                          padding=(kernel_size - 1) // 2, groups=groups, weight_norm=False)),
            ('bn', dict(num_features=out_channels, swish=True)),
        ])

    def forward(self, x):
        return self.conv(x)


@persistence.persistent_class
class InvertedResidual(torch.nn.Module):
    """NVAE's 'mconv_e{E}k{K}g{G}' op: [x2 nearest] BN, 1x1 expand + BN-Swish, KxK grouped + BN-Swish, 1x1, BN."""

    def __init__(self, in_channels, out_channels, upsample, expansion, kernel_size, groups):
        super().__init__()
        hidden = int(round(in_channels * expansion))
        specs = [('act', dict(kind='up_nearest'))] if upsample else []
        specs += [
            ('bn', dict(num_features=in_channels)),
            ('conv_bn_swish', dict(in_channels=in_channels, out_channels=hidden, kernel_size=1)),
            ('conv_bn_swish', dict(in_channels=hidden, out_channels=hidden, kernel_size=kernel_size,
                                   groups=hidden if groups == 0 else groups)),
            ('conv', dict(in_channels=hidden, out_channels=out_channels, kernel_size=1, weight_norm=False)),
            ('bn', dict(num_features=out_channels)),
        ]
        self.conv = Chain(specs)

    def forward(self, x):
        return self.conv(x)


@persistence.persistent_class
class SqueezeExcitation(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        hidden = max(channels // 16, 4)
        self.se = Chain([('linear', dict(in_features=channels, out_features=hidden)), ('act', dict(kind='relu')),
                         ('linear', dict(in_features=hidden, out_features=channels)), ('act', dict(kind='sigmoid'))])

    def forward(self, x):
        return x * self.se(x.mean(dim=[2, 3]))[:, :, None, None]


@persistence.persistent_class
class Cell(torch.nn.Module):
    """A residual cell: ``skip(x) + 0.1 * SE(ops(x))``; 'up' cells double the size and halve the channels."""

    def __init__(self, in_channels, out_channels, cell_type, ops, use_se):
        super().__init__()
        self.cell_type = cell_type
        upsample = cell_type.startswith('up')
        assert upsample or cell_type.startswith('normal'), cell_type
        if upsample:
            self.skip = Chain([('act', dict(kind='up_bilinear')),
                               ('conv', dict(in_channels=in_channels, out_channels=out_channels, kernel_size=1))])
        else:
            self.skip = Activation('identity')
        specs = []
        for index, name in enumerate(ops):
            expansion, kernel_size, groups = parse_mbconv_op(name)
            specs.append(('mbconv', dict(in_channels=in_channels if index == 0 else out_channels,
                                         out_channels=out_channels, upsample=upsample and index == 0,
                                         expansion=expansion, kernel_size=kernel_size, groups=groups)))
        self._ops = Chain(specs)
        self.se = SqueezeExcitation(out_channels) if use_se else None

    def forward(self, x):
        branch = self._ops(x)
        if self.se is not None:
            branch = self.se(branch)
        return self.skip(x) + RESIDUAL_SCALE * branch


@persistence.persistent_class
class DecCombinerCell(torch.nn.Module):
    """Mixes a latent group into the features: 1x1 weight-normalised conv of ``cat([x, z])``."""

    def __init__(self, channels, latent_channels):
        super().__init__()
        self.cell_type = 'combiner_dec'
        self.conv = Conv2D(channels + latent_channels, channels, kernel_size=1, bias=True)

    def forward(self, x, z):
        return self.conv(torch.cat([x, z], dim=1))


_LAYERS = {
    'conv': lambda kw: Conv2D(**kw),
    'bn': lambda kw: BatchNorm(**kw),
    'linear': lambda kw: Linear(**kw),
    'act': lambda kw: Activation(**kw),
    'chain': lambda kw: Chain(**kw),
    'conv_bn_swish': lambda kw: ConvBNSwish(**kw),
    'mbconv': lambda kw: InvertedResidual(**kw),
    'cell': lambda kw: Cell(**kw),
    'combiner': lambda kw: DecCombinerCell(**kw),
}


def _build_layer(kind, kwargs):
    return _LAYERS[kind](dict(kwargs))

#----------------------------------------------------------------------------


@persistence.persistent_class
class NVAEGenerator(torch.nn.Module):
    """NVAE's prior / decoder path with the toolkit's generator face (see the module docstring).

    The constructor takes NVAE's own argument names (those of its ``args``) that shape the decoder;
    ``arch`` maps NVAE's decoder cell types to their op names (default: 'res_mbconv'), ``crop`` is the
    output size after a centred crop (None: the full ``input_size``).
    """

    def __init__(self,
        num_latent_scales       = 2,
        num_groups_per_scale    = 10,
        ada_groups              = True,
        min_groups_per_scale    = 1,
        num_latent_per_group    = 20,
        num_channels_dec        = 32,
        num_preprocess_blocks   = 2,
        num_postprocess_blocks  = 2,
        num_postprocess_cells   = 3,
        num_cell_per_cond_dec   = 2,
        use_se                  = True,
        input_size              = 32,
        img_channels            = 1,
        arch                    = None,
        crop                    = None,
    ):
        super().__init__()
        arch = dict(RES_MBCONV_DECODER if arch is None else arch)
        for cell_type in DECODER_CELL_TYPES:
            ops = arch.get(cell_type)
            if not ops or any(parse_mbconv_op(op) is None for op in ops):
                raise ValueError(f'decoder cell type {cell_type!r} has ops {ops!r}; only mconv_e*k*g* ops are modelled')
        spatial_scaling = 2 ** (num_preprocess_blocks + num_latent_scales - 1)
        if input_size % spatial_scaling != 0 or num_postprocess_blocks != num_preprocess_blocks:
            raise ValueError('the decoder must end at the input size: input_size divisible by '
                             f'{spatial_scaling} and num_postprocess_blocks == num_preprocess_blocks')
        if crop is not None and not (0 < crop <= input_size and (input_size - crop) % 2 == 0):
            raise ValueError(f'crop={crop} must be a centred crop of {input_size} px')

        self.img_channels = int(img_channels)
        self.input_size = int(input_size)
        self.crop = None if crop is None else int(crop)
        self.img_resolution = self.input_size if crop is None else self.crop
        self.c_dim = 0
        self.normalizes_z = False  # f(a z) != f(z): every direction of z matters (sampling.volume.check_top_k).
        self.num_latent_per_group = int(num_latent_per_group)

        # Decoding goes coarse to fine: the coarsest scale's groups (fewest with ada_groups) first.
        groups = groups_per_scale(num_latent_scales, num_groups_per_scale, ada_groups, min_groups_per_scale)
        mult = CHANNEL_MULT ** (num_preprocess_blocks + num_latent_scales - 1)
        size = self.input_size // spatial_scaling
        self.prior_ftr0 = torch.nn.Parameter(torch.rand([int(num_channels_dec * mult), size, size]))

        tower, samplers, latent_sizes = [], [], []
        for scale in range(num_latent_scales):
            channels = int(num_channels_dec * mult)
            for group in range(groups[num_latent_scales - scale - 1]):
                if not (scale == 0 and group == 0):
                    for _ in range(num_cell_per_cond_dec):
                        tower.append(('cell', dict(in_channels=channels, out_channels=channels,
                                                   cell_type='normal_dec', ops=arch['normal_dec'], use_se=use_se)))
                    samplers.append(('chain', dict(specs=[
                        ('act', dict(kind='elu')),
                        ('conv', dict(in_channels=channels, out_channels=2 * num_latent_per_group, kernel_size=1,
                                      bias=True))])))
                tower.append(('combiner', dict(channels=channels, latent_channels=num_latent_per_group)))
                latent_sizes.append(size)
            if scale < num_latent_scales - 1:
                tower.append(('cell', dict(in_channels=channels, out_channels=channels // CHANNEL_MULT,
                                           cell_type='up_dec', ops=arch['up_dec'], use_se=use_se)))
                mult /= CHANNEL_MULT
                size *= 2
        self.dec_tower = Chain(tower)
        self.dec_sampler = Chain(samplers)

        post = []
        for _ in range(num_postprocess_blocks):
            for index in range(num_postprocess_cells):
                channels = int(num_channels_dec * mult)
                if index == 0:
                    post.append(('cell', dict(in_channels=channels, out_channels=channels // CHANNEL_MULT,
                                              cell_type='up_post', ops=arch['up_post'], use_se=use_se)))
                    mult /= CHANNEL_MULT
                else:
                    post.append(('cell', dict(in_channels=channels, out_channels=channels,
                                              cell_type='normal_post', ops=arch['normal_post'], use_se=use_se)))
        self.post_process = Chain(post)
        self.image_conditional = Chain([
            ('act', dict(kind='elu')),
            ('conv', dict(in_channels=int(num_channels_dec * mult), out_channels=self.img_channels, kernel_size=3,
                          padding=1, bias=True))])

        self.latent_sizes = latent_sizes   # Spatial size of each group, in drawing order.
        self.z_dim = int(sum(num_latent_per_group * s * s for s in latent_sizes))
        # The temperature batch norm was last re-estimated at (NaN: never, statistics from training).
        self.register_buffer('bn_readjust_temperature', torch.tensor(float('nan')), persistent=False)

    def split_eps(self, z):
        """``[B, z_dim]`` -> one ``[B, C, H, W]`` eps per group, in drawing order."""
        out, start = [], 0
        for size in self.latent_sizes:
            n = self.num_latent_per_group * size * size
            out.append(z[:, start:start + n].reshape(z.shape[0], self.num_latent_per_group, size, size))
            start += n
        return out

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode='const', return_logits=False):
        """Images in [-1, 1] (Bernoulli means) from eps ``z`` at temperature ``truncation_psi``.

        ``c``, ``truncation_cutoff`` and ``noise_mode`` are accepted for the common face and have no effect
        (NVAE is unconditional and all its randomness is in ``z``). ``return_logits=True`` returns the
        uncropped Bernoulli logits instead.
        """
        del c, truncation_cutoff, noise_mode
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f'z must have shape [batch, {self.z_dim}], got {tuple(z.shape)}')
        t = float(truncation_psi)
        eps = self.split_eps(z.to(self.prior_ftr0.dtype))
        x = self.prior_ftr0[None].expand(z.shape[0], -1, -1, -1)
        group = 0
        for cell in self.dec_tower.children():
            if cell.cell_type != 'combiner_dec':
                x = cell(x)
                continue
            if group == 0:
                latent = (1 + SIGMA_FLOOR) * t * eps[0]  # mu = 0, log sigma = 0
            else:
                mu, log_sigma = self.dec_sampler[group - 1](x).chunk(2, dim=1)
                latent = soft_clamp(mu) + (soft_clamp(log_sigma).exp() + SIGMA_FLOOR) * t * eps[group]
            x = cell(x, latent)
            group += 1
        for cell in self.post_process.children():
            x = cell(x)
        logits = self.image_conditional(x)
        if return_logits:
            return logits
        if self.crop is not None:
            lo = (self.input_size - self.crop) // 2
            logits = logits[:, :, lo:lo + self.crop, lo:lo + self.crop]
        return torch.sigmoid(logits) * 2 - 1


def batch_norms(G):
    return [m for m in G.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def readjust_bn(G, num_passes=500, batch_size=100, temperature=1.0, seed=0, device=None, progress=None):
    """Re-estimate every batch norm's running statistics from samples, as NVAE does before sampling.

    Train mode, ``num_passes`` sampling passes of ``batch_size`` latents at ``temperature`` (each batch
    norm's momentum is 0.05), then eval mode. Returns ``G`` (modified in place). ``progress`` wraps the
    range of passes (e.g. ``tqdm.tqdm``).
    """
    device = torch.device(device) if device is not None else G.prior_ftr0.device
    gen = torch.Generator(device='cpu').manual_seed(int(seed))
    passes = range(int(num_passes))
    G.train()
    try:
        for _ in (progress(passes) if progress is not None else passes):
            z = torch.randn([batch_size, G.z_dim], generator=gen, dtype=torch.float32)
            G(z.to(device), truncation_psi=temperature)
    finally:
        G.eval()
    G.bn_readjust_temperature.fill_(float(temperature))
    return G
