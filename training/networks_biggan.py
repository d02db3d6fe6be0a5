"""BigGAN-deep generator (Brock et al., ICLR 2019) with the parameter names of the PyTorch port.

The state_dict names and shapes are those of the ``pytorch-pretrained-biggan`` checkpoints
(``pytorch_model.bin``), so such a file loads with ``load_state_dict(strict=True)``; reading and
checking the files is ``training/load_biggan.py``. Written from the architecture's description,
checked against the port's outputs in tests/test_networks_biggan.py.

The generator has the common face of this repository's generators: ``G.z_dim`` (128),
``G.c_dim`` (1000 ImageNet classes), ``G.img_resolution``, ``G.img_channels`` (3) and
``G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const')`` returning NCHW images in
[-1, 1]. There is no mapping network and no W space.

What ``truncation_psi`` means here: BigGAN has no average latent to interpolate towards. The
checkpoint stores ``n_stats`` (51) sets of batch-norm statistics, recorded for truncations
0, 0.02, ..., 1; psi picks the set (interpolating linearly between neighbours), and that is all
it does: **z is not scaled**. BigGAN's truncation trick also draws z from a normal truncated to
[-2, 2] and multiplied by the same value (``truncated_z``); callers that want the published samples
do both. 0 < psi <= 1.

The port blends the two neighbouring sets with swapped weights (psi = 0.515, between the grid points
0.50 and 0.52, uses 3/4 of the 0.50 set instead of 1/4), and computes the position in float64 as
``psi / (1 / (n_stats - 1))``, so a few grid values such as 0.94 land just below the grid point and
take the lower set. ``stats_blend='port'`` (the default) reproduces this, for parity with the
checkpoints' published behaviour; ``stats_blend='linear'`` is the intended interpolation.

This module's source is embedded in the network pickles we write: it imports nothing from this
project but the documented ``torch_utils`` API.
"""

import math

import numpy as np
import torch

from torch_utils import persistence

STATS_BLENDS = ('port', 'linear')

# ----------------------------------------------------------------------------


def _spectral_normalised(weight_orig, weight_u, weight_v):
    """weight_orig / sigma with sigma = u . (W v) from the stored singular vectors.

    This is eval-mode spectral norm: the vectors are not updated (no power iteration), so the
    result depends only on the checkpoint. The port's eps (1e-4) only enters that update.
    """
    sigma = torch.dot(weight_u, torch.mv(weight_orig.reshape(weight_orig.shape[0], -1), weight_v))
    return weight_orig / sigma


def _random_unit(shape):
    """A random vector of about unit norm; checkpoints overwrite it (plain ops: cheap on the meta device too)."""
    return torch.randn(shape) / np.sqrt(shape[0])


def _stats_weights(psi, n_stats, stats_blend):
    """[(index, weight), ...] of the stored batch-norm statistics that truncation ``psi`` blends."""
    if stats_blend not in STATS_BLENDS:
        raise ValueError(f'stats_blend must be one of {STATS_BLENDS}, got {stats_blend!r}')
    psi = float(psi)
    if not 0 < psi <= 1:
        raise ValueError(f'truncation_psi must be in (0, 1] for BigGAN (it selects batch-norm statistics), got {psi}')
    if stats_blend == 'port':
        frac, low = math.modf(psi / (1.0 / (n_stats - 1)))
        low = int(low)
        if frac == 0:
            return [(low, 1.0)]
        return [(low, frac), (low + 1, 1.0 - frac)]    # The port's weights, swapped.
    position = psi * (n_stats - 1)
    low = min(int(math.floor(position)), n_stats - 2)
    frac = position - low
    return [(low, 1.0 - frac), (low + 1, frac)]


# ----------------------------------------------------------------------------


@persistence.persistent_class
class SNLinear(torch.nn.Module):
    """Spectral-normalised linear layer (weight_orig [out, in], weight_u [out], weight_v [in])."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_orig = torch.nn.Parameter(torch.randn([out_features, in_features]) / np.sqrt(in_features))
        self.bias = torch.nn.Parameter(torch.zeros([out_features])) if bias else None
        self.register_buffer('weight_u', _random_unit([out_features]))
        self.register_buffer('weight_v', _random_unit([in_features]))

    def forward(self, x):
        weight = _spectral_normalised(self.weight_orig, self.weight_u, self.weight_v)
        return torch.nn.functional.linear(x, weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


@persistence.persistent_class
class SNConv2d(torch.nn.Module):
    """Spectral-normalised convolution, stride 1, 'same' padding."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        fan_in = in_channels * kernel_size * kernel_size
        self.weight_orig = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                              / np.sqrt(fan_in))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.register_buffer('weight_u', _random_unit([out_channels]))
        self.register_buffer('weight_v', _random_unit([fan_in]))

    def forward(self, x):
        weight = _spectral_normalised(self.weight_orig, self.weight_u, self.weight_v)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.conv2d(x, weight.to(x.dtype), bias, padding=self.kernel_size // 2)


@persistence.persistent_class
class ClassEmbedding(torch.nn.Module):
    """Linear map of a one-hot (or soft) class vector [B, num_classes] to [B, embed_dim], no bias."""

    def __init__(self, num_classes, embed_dim):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.weight = torch.nn.Parameter(torch.randn([embed_dim, num_classes]) * 0.02)

    def forward(self, c):
        return torch.nn.functional.linear(c, self.weight.to(c.dtype))


@persistence.persistent_class
class TruncatedBatchNorm(torch.nn.Module):
    """Batch norm with n_stats stored statistic sets chosen by truncation; conditional or affine.

    Conditional: ``(x - mean) / sqrt(var + eps) * (1 + scale(cond)) + offset(cond)`` with
    spectral-normalised linear ``scale`` and ``offset`` (no bias). Otherwise a plain weight and bias.
    """

    def __init__(self, num_features, cond_dim=None, n_stats=51, eps=1e-4):
        super().__init__()
        self.num_features = num_features
        self.n_stats = n_stats
        self.eps = eps
        self.conditional = cond_dim is not None
        self.register_buffer('running_means', torch.zeros([n_stats, num_features]))
        self.register_buffer('running_vars', torch.ones([n_stats, num_features]))
        if self.conditional:
            self.scale = SNLinear(cond_dim, num_features, bias=False)
            self.offset = SNLinear(cond_dim, num_features, bias=False)
        else:
            self.weight = torch.nn.Parameter(torch.ones([num_features]))
            self.bias = torch.nn.Parameter(torch.zeros([num_features]))

    def forward(self, x, stats, cond=None):
        mean = sum(self.running_means[index] * weight for index, weight in stats)
        var = sum(self.running_vars[index] * weight for index, weight in stats)
        x = (x - mean[None, :, None, None]) / torch.sqrt(var + self.eps)[None, :, None, None]
        if self.conditional:
            gain = 1 + self.scale(cond)
            return x * gain[:, :, None, None] + self.offset(cond)[:, :, None, None]
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


@persistence.persistent_class
class GenBlock(torch.nn.Module):
    """BigGAN-deep residual block: four BN-ReLU-conv stages (1x1 down to in/4, 3x3, 3x3, 1x1 up).

    The skip path keeps the first ``out_channels`` channels; both paths upsample (nearest, x2) when
    ``up`` is set, the residual one before its first 3x3 convolution.
    """

    def __init__(self, in_channels, out_channels, cond_dim, up, n_stats=51, eps=1e-4, reduction=4):
        super().__init__()
        assert out_channels <= in_channels, 'the skip path keeps a subset of the input channels'
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = bool(up)
        mid = in_channels // reduction
        self.bn_0 = TruncatedBatchNorm(in_channels, cond_dim, n_stats, eps)
        self.conv_0 = SNConv2d(in_channels, mid, 1)
        self.bn_1 = TruncatedBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = SNConv2d(mid, mid, 3)
        self.bn_2 = TruncatedBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = SNConv2d(mid, mid, 3)
        self.bn_3 = TruncatedBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = SNConv2d(mid, out_channels, 1)

    def forward(self, x, cond, stats):
        relu = torch.nn.functional.relu
        skip = x[:, :self.out_channels]
        y = self.conv_0(relu(self.bn_0(x, stats, cond)))
        y = relu(self.bn_1(y, stats, cond))
        if self.up:
            y = torch.nn.functional.interpolate(y, scale_factor=2, mode='nearest')
            skip = torch.nn.functional.interpolate(skip, scale_factor=2, mode='nearest')
        y = self.conv_1(y)
        y = self.conv_2(relu(self.bn_2(y, stats, cond)))
        y = self.conv_3(relu(self.bn_3(y, stats, cond)))
        return y + skip


@persistence.persistent_class
class SelfAttention(torch.nn.Module):
    """SAGAN self-attention: theta/phi 1x1 to C/8, g to C/2, phi and g max-pooled 2x2, x + gamma * o(...)."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = torch.nn.Parameter(torch.zeros([1]))

    def forward(self, x):
        batch, channels, height, width = x.shape
        theta = self.snconv1x1_theta(x).flatten(2)                                         # [B, C/8, HW]
        phi = torch.nn.functional.max_pool2d(self.snconv1x1_phi(x), 2).flatten(2)         # [B, C/8, HW/4]
        g = torch.nn.functional.max_pool2d(self.snconv1x1_g(x), 2).flatten(2)             # [B, C/2, HW/4]
        attention = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)          # [B, HW, HW/4]
        o = torch.bmm(g, attention.transpose(1, 2)).reshape(batch, channels // 2, height, width)
        return x + self.gamma.to(x.dtype) * self.snconv1x1_o_conv(o)


@persistence.persistent_class
class LayerList(torch.nn.Module):
    """Numbered children ('0', '1', ...) so that state_dict names match the port's ModuleList."""

    def __init__(self, specs, cond_dim, n_stats, eps):
        super().__init__()
        for index, spec in enumerate(specs):
            if spec[0] == 'attention':
                layer = SelfAttention(spec[1])
            else:
                _, up, in_channels, out_channels = spec
                layer = GenBlock(in_channels, out_channels, cond_dim, up, n_stats, eps)
            self.add_module(str(index), layer)


@persistence.persistent_class
class GeneratorTrunk(torch.nn.Module):
    """Everything after the conditioning vector: gen_z, the blocks, the final BN-ReLU-conv."""

    def __init__(self, cond_dim, channel_width, layers, attention_layer_position, n_stats, eps, img_channels):
        super().__init__()
        self.first_channels = layers[0][1] * channel_width
        specs = []
        for index, (up, in_mult, out_mult) in enumerate(layers):
            if index == attention_layer_position:
                specs.append(('attention', in_mult * channel_width))
            specs.append(('block', bool(up), in_mult * channel_width, out_mult * channel_width))
        last_channels = layers[-1][2] * channel_width
        assert last_channels >= img_channels
        self.img_channels = img_channels
        self.gen_z = SNLinear(cond_dim, 4 * 4 * self.first_channels)
        self.layers = LayerList(specs, cond_dim, n_stats, eps)
        self.bn = TruncatedBatchNorm(last_channels, None, n_stats, eps)
        self.conv_to_rgb = SNConv2d(last_channels, last_channels, 3)

    def forward(self, cond, stats):
        x = self.gen_z(cond)
        x = x.reshape(x.shape[0], 4, 4, self.first_channels).permute(0, 3, 1, 2)  # The checkpoints' order is NHWC.
        for layer in self.layers.children():
            x = layer(x) if isinstance(layer, SelfAttention) else layer(x, cond, stats)
        x = torch.nn.functional.relu(self.bn(x, stats))
        x = self.conv_to_rgb(x)[:, :self.img_channels]
        return torch.tanh(x)


# ----------------------------------------------------------------------------


@persistence.persistent_class
class Generator(torch.nn.Module):
    """BigGAN-deep generator with the common face: ``G(z, c, truncation_psi)`` -> images in [-1, 1].

    ``c`` is a one-hot or soft class vector [B, c_dim]. ``truncation_psi`` selects batch-norm
    statistics only (see the module docstring); ``stats_blend`` ('port' or 'linear') how it blends
    two neighbouring sets. ``truncation_cutoff`` and ``noise_mode`` are accepted for the common face
    and have no effect: BigGAN has no per-layer truncation and no noise inputs.
    """

    normalizes_z = False  # z enters as it is (StyleGAN normalises it): d(image)/dz has no null direction.

    def __init__(self,
        z_dim               = 128,
        c_dim               = 1000,
        img_resolution      = 256,
        img_channels        = 3,
        channel_width       = 128,
        layers              = None,     # [(upsample, in_mult, out_mult), ...]; None: the official layout for img_resolution.
        attention_layer_position = 8,   # The self-attention layer comes before this block.
        class_embed_dim     = None,     # None: z_dim, as in every published checkpoint.
        n_stats             = 51,
        eps                 = 1e-4,
        stats_blend         = 'port',
    ):
        super().__init__()
        if layers is None:
            layers = official_layers(img_resolution)
        layers = [(bool(up), int(in_mult), int(out_mult)) for up, in_mult, out_mult in layers]
        assert 4 * 2 ** sum(up for up, _, _ in layers) == img_resolution, 'layers do not reach img_resolution'
        assert stats_blend in STATS_BLENDS
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.n_stats = n_stats
        self.stats_blend = stats_blend
        embed_dim = z_dim if class_embed_dim is None else class_embed_dim
        self.embeddings = ClassEmbedding(c_dim, embed_dim)
        self.generator = GeneratorTrunk(z_dim + embed_dim, channel_width, layers, attention_layer_position, n_stats,
                                        eps, img_channels)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const', stats_blend=None):
        del truncation_cutoff, noise_mode  # No per-layer truncation, no noise inputs.
        stats = _stats_weights(truncation_psi, self.n_stats, stats_blend or self.stats_blend)
        dtype = self.embeddings.weight.dtype
        z = z.to(dtype)
        c = c.to(dtype)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f'z must be [batch, {self.z_dim}], got {list(z.shape)}')
        if c.ndim != 2 or c.shape[1] != self.c_dim or c.shape[0] != z.shape[0]:
            raise ValueError(f'c must be [{z.shape[0]}, {self.c_dim}] (one-hot or soft class vectors), got {list(c.shape)}')
        cond = torch.cat([z, self.embeddings(c)], dim=1)
        return self.generator(cond, stats)


def official_layers(img_resolution):
    """The block layout (upsample, in_mult, out_mult) of the published 128, 256 and 512 px checkpoints."""
    mults = {128: [16, 16, 8, 4, 2, 1], 256: [16, 16, 8, 8, 4, 2, 1], 512: [16, 16, 8, 8, 4, 2, 1, 1]}
    if img_resolution not in mults:
        raise ValueError(f'no published BigGAN-deep layout at {img_resolution} px; pass layers=')
    m = mults[img_resolution]
    layers = []
    for in_mult, out_mult in zip(m[:-1], m[1:]):
        layers += [(False, in_mult, in_mult), (True, in_mult, out_mult)]
    return layers


def truncated_z(num, z_dim=128, truncation=1.0, seed=None):
    """BigGAN's latents: ``truncation * truncnorm(-2, 2)`` as float32 [num, z_dim], from numpy RandomState(seed).

    Draws by rejection (redraw every value outside [-2, 2]); the port draws with scipy's truncnorm,
    so the values differ from its samples but have the same distribution.
    """
    rnd = np.random.RandomState(seed)
    values = rnd.standard_normal([num, z_dim])
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rnd.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2
    return (truncation * values).astype(np.float32)
