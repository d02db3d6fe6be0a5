"""ProGAN generator (Karras et al., ICLR 2018, the ``G_paper`` network) in PyTorch.

The network is rebuilt from the documented facts of the TF release (see ``training/convert_progan.py``):
equalized learning rate (``w * gain / sqrt(fan_in)`` at run time), pixel norm of the latent and after
every convolution, leaky ReLU 0.2, nearest-neighbour upsampling (or the fused transposed convolution),
a 1x1 ``ToRGB`` per level of detail, and a blend of two levels for a fractional ``lod``. There is no
tanh: images are nominally in [-1, 1].

It has the common generator face (``z_dim``, ``c_dim``, ``img_resolution``, ``img_channels``,
``G(z, c, truncation_psi, truncation_cutoff, noise_mode)``) but no mapping or synthesis network:
scores that need W (hubness in W, PPL in W) do not apply; score in Z.

Truncation. ProGAN normalises the latent (pixel norm) before its first layer, so scaling z changes
nothing. We truncate the *normalised* latent ``x = PN(z)``, the input of the first dense layer, which
plays the part of StyleGAN's w: ``x_avg + psi * (x - x_avg)``. Its mean over z ~ N(0, I) is 0 by
symmetry (z and -z are equally likely and PN is odd), so this is ``psi * x``: psi = 1 is the network
itself, psi = 0 the image of the average latent, the same for every z. In a conditional network the
labels are appended to z before the normalisation (our reading of ``G_paper``), so the label part of x is
``c / rms([z, c])`` and varies a little with |z|. Its centre is taken as z's typical case, |z|^2 = z_dim:
``x_avg = [0, c * sqrt((z_dim + c_dim) / (z_dim + |c|^2))]``. psi = 0 then gives one image per class,
and the label keeps its usual magnitude (the image at z = 0 would not: there PN blows the label up).

This module's source is embedded in the network pickles we write: it imports nothing from this
project but ``torch_utils.persistence``.
"""

import math

import numpy as np
import torch

from torch_utils import persistence


def feature_maps(stage, fmap_base=8192, fmap_decay=1.0, fmap_max=512):
    """ProGAN's channel count ``nf(stage)``; the block at resolution 2**r has ``nf(r - 1)`` channels."""
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def pixel_norm(x, eps=1e-8):
    """``x * rsqrt(mean over dim 1 of x**2 + eps)``: unit second moment per pixel (or per latent)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def upscale_nearest(x, factor=2):
    """Nearest-neighbour upsampling of NCHW ``x`` by an integer factor (every pixel repeated factor x factor)."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, factor, w, factor).reshape(n, c, h * factor, w * factor)


def _activate(x, use_leakyrelu):
    return torch.nn.functional.leaky_relu(x, 0.2) if use_leakyrelu else torch.relu(x)

# ----------------------------------------------------------------------------


@persistence.persistent_class
class EqualizedDense(torch.nn.Module):
    """The 4x4 block's dense layer: latent [N, in] -> [N, channels, 4, 4], bias per channel (gain sqrt(2)/4)."""

    def __init__(self, in_features, channels, use_wscale=True):
        super().__init__()
        self.in_features = in_features
        self.channels = channels
        self.weight_gain = float(np.sqrt(2) / 4 / np.sqrt(in_features)) if use_wscale else 1.0
        self.weight = torch.nn.Parameter(torch.zeros([channels * 16, in_features]))
        self.bias = torch.nn.Parameter(torch.zeros([channels]))

    def forward(self, x):
        x = torch.nn.functional.linear(x, self.weight * self.weight_gain)
        return x.reshape(-1, self.channels, 4, 4) + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self):
        return f'in_features={self.in_features}, channels={self.channels}'


@persistence.persistent_class
class EqualizedConv2d(torch.nn.Module):
    """Convolution with SAME padding and run-time weight scaling, optionally after a 2x upsampling.

    ``up``: None, 'nearest' (repeat pixels, then convolve) or 'fused' (ProGAN's fused_scale: the 3x3
    kernel padded to 4x4 and summed over its 4 shifts, then a stride-2 transposed convolution). The fan-in
    is ``kernel_size**2 * in_channels`` in every mode.
    """

    def __init__(self, in_channels, out_channels, kernel_size, gain=2 ** 0.5, use_wscale=True, up=None):
        super().__init__()
        assert up in (None, 'nearest', 'fused')
        assert up != 'fused' or kernel_size == 3
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.up = up
        self.weight_gain = float(gain / np.sqrt(in_channels * kernel_size ** 2)) if use_wscale else 1.0
        self.weight = torch.nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x):
        w = self.weight * self.weight_gain
        if self.up == 'fused':
            w = torch.nn.functional.pad(w, [1, 1, 1, 1])
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = torch.nn.functional.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=1)
        else:
            if self.up == 'nearest':
                x = upscale_nearest(x)
            x = torch.nn.functional.conv2d(x, w, padding=self.kernel_size // 2)
        return x + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self):
        return f'in_channels={self.in_channels}, out_channels={self.out_channels}, ' \
               f'kernel_size={self.kernel_size}, up={self.up}'


@persistence.persistent_class
class InputBlock(torch.nn.Module):
    """4x4: dense from the (normalised) latent, then a 3x3 conv; each followed by activation and pixel norm."""

    def __init__(self, in_features, channels, img_channels, use_wscale=True, use_pixelnorm=True,
                 use_leakyrelu=True, pixelnorm_epsilon=1e-8):
        super().__init__()
        self.use_pixelnorm = use_pixelnorm
        self.use_leakyrelu = use_leakyrelu
        self.pixelnorm_epsilon = pixelnorm_epsilon
        self.dense = EqualizedDense(in_features, channels, use_wscale=use_wscale)
        self.conv = EqualizedConv2d(channels, channels, 3, use_wscale=use_wscale)
        self.torgb = EqualizedConv2d(channels, img_channels, 1, gain=1.0, use_wscale=use_wscale)

    def forward(self, x):
        for layer in (self.dense, self.conv):
            x = _activate(layer(x), self.use_leakyrelu)
            if self.use_pixelnorm:
                x = pixel_norm(x, self.pixelnorm_epsilon)
        return x


@persistence.persistent_class
class UpBlock(torch.nn.Module):
    """Doubles the resolution: conv0 (with the upsampling), conv1; each followed by activation and pixel norm."""

    def __init__(self, in_channels, out_channels, img_channels, fused_scale=True, use_wscale=True,
                 use_pixelnorm=True, use_leakyrelu=True, pixelnorm_epsilon=1e-8):
        super().__init__()
        self.use_pixelnorm = use_pixelnorm
        self.use_leakyrelu = use_leakyrelu
        self.pixelnorm_epsilon = pixelnorm_epsilon
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, use_wscale=use_wscale,
                                     up='fused' if fused_scale else 'nearest')
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, use_wscale=use_wscale)
        self.torgb = EqualizedConv2d(out_channels, img_channels, 1, gain=1.0, use_wscale=use_wscale)

    def forward(self, x):
        for layer in (self.conv0, self.conv1):
            x = _activate(layer(x), self.use_leakyrelu)
            if self.use_pixelnorm:
                x = pixel_norm(x, self.pixelnorm_epsilon)
        return x

# ----------------------------------------------------------------------------


@persistence.persistent_class
class Generator(torch.nn.Module):
    """ProGAN's G_paper. Blocks ``b4``, ``b8``, ... each with a ``torgb``; buffer ``lod`` (0 when fully grown)."""

    def __init__(self,
        z_dim               = 512,      # Latent size (ProGAN: latent_size, default nf(0)).
        c_dim               = 0,        # Label size, appended to z.
        img_resolution      = 1024,     # Output resolution, a power of two >= 4.
        img_channels        = 3,        # Output channels.
        fmap_base           = 8192,
        fmap_decay          = 1.0,
        fmap_max            = 512,
        normalize_latents   = True,     # Pixel norm of the latent (with the labels) before the dense layer.
        use_wscale          = True,     # Equalized learning rate.
        use_pixelnorm       = True,     # Pixel norm after every convolution.
        use_leakyrelu       = True,     # Leaky ReLU 0.2 (else ReLU).
        fused_scale         = True,     # Upsample with the fused transposed convolution.
        pixelnorm_epsilon   = 1e-8,
    ):
        super().__init__()
        log2 = int(np.log2(img_resolution)) if img_resolution >= 4 else 0
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.resolution_log2 = log2
        self.normalize_latents = normalize_latents
        self.pixelnorm_epsilon = pixelnorm_epsilon
        self.block_resolutions = [2 ** r for r in range(2, log2 + 1)]

        def nf(stage):
            return feature_maps(stage, fmap_base, fmap_decay, fmap_max)

        common = dict(use_wscale=use_wscale, use_pixelnorm=use_pixelnorm, use_leakyrelu=use_leakyrelu,
                      pixelnorm_epsilon=pixelnorm_epsilon)
        self.b4 = InputBlock(z_dim + c_dim, nf(1), img_channels, **common)
        for r in range(3, log2 + 1):
            setattr(self, f'b{2 ** r}', UpBlock(nf(r - 2), nf(r - 1), img_channels, fused_scale=fused_scale, **common))
        self.register_buffer('lod', torch.zeros([]))  # Level of detail being faded in; 0 when fully grown.

    @property
    def normalizes_z(self):
        """Whether the images are constant along z's radial direction (true unless labels share the norm)."""
        return bool(self.normalize_latents and self.c_dim == 0)

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode='const', update_emas=False,
                force_fp32=False):
        """Images [N, img_channels, img_resolution, img_resolution], nominally in [-1, 1].

        ``truncation_psi`` moves the normalised latent toward its mean (see the module docstring).
        ProGAN has no per-layer latents and no noise: ``truncation_cutoff`` must be None; ``noise_mode``,
        ``update_emas`` and ``force_fp32`` are accepted for the common face and change nothing.
        """
        if truncation_cutoff is not None:
            raise ValueError('ProGAN has no per-layer latents: truncation_cutoff must be None')
        if noise_mode not in ('const', 'random', 'none'):
            raise ValueError(f'noise_mode must be const, random or none, got {noise_mode!r}')
        dtype = self.b4.dense.weight.dtype
        x = z.to(dtype)
        if self.c_dim > 0:
            if c is None or c.shape != (z.shape[0], self.c_dim):
                raise ValueError(f'c must have shape [{z.shape[0]}, {self.c_dim}], got '
                                 f'{None if c is None else list(c.shape)}')
            x = torch.cat([x, c.to(dtype)], dim=1)
        if self.normalize_latents:
            x = pixel_norm(x, self.pixelnorm_epsilon)
        if truncation_psi != 1:
            x_z, x_c = x[:, :self.z_dim] * truncation_psi, x[:, self.z_dim:]
            if self.c_dim > 0 and self.normalize_latents:
                c = c.to(dtype)
                centre = c * ((self.z_dim + self.c_dim) / (self.z_dim + c.square().sum(dim=1, keepdim=True))).sqrt()
                x_c = centre + (x_c - centre) * truncation_psi
            x = torch.cat([x_z, x_c], dim=1)

        # A fractional lod blends the top level with the upscaled level below it; finer levels are unused.
        lod = min(max(float(self.lod), 0.0), float(self.resolution_log2 - 2))
        top = self.resolution_log2 - math.floor(lod)
        blend = lod - math.floor(lod)
        x = self.b4(x)
        below = None
        for r in range(3, top + 1):
            if r == top and blend > 0:
                below = upscale_nearest(getattr(self, f'b{2 ** (r - 1)}').torgb(x))
            x = getattr(self, f'b{2 ** r}')(x)
        img = getattr(self, f'b{2 ** top}').torgb(x)
        if below is not None:
            img = img + (below - img) * blend
        return upscale_nearest(img, 2 ** (self.resolution_log2 - top))
