"""StyleGAN3 generator ("alias-free" GAN), numerically compatible with NVlabs' stylegan3 release.

Class names, constructor signatures, state_dict names and stored attributes match
``training/networks_stylegan3.py`` of NVlabs/stylegan3, so that their network pickles (which embed
the source of the module that defined each class) and their ``state_dict``s load here unchanged.
Both published configurations are supported: StyleGAN3-T (3x3 convolutions, separable Kaiser
filters) and StyleGAN3-R (``conv_kernel=1``, ``use_radial_filters=True``, doubled channels).

The code is written from the description in ``docs/stylegan-architecture.md`` (section C); no NVlabs
code is reproduced. Gains are float64 Python/NumPy scalars applied to tensors one by one, in the
documented places, because folding them changes float32 rounding (the "scalar rule").

This module's source is stored inside the pickles we save and may be executed against NVlabs' own
``torch_utils``. It therefore imports nothing from this project except the documented
``torch_utils`` entry points that NVlabs' ``torch_utils`` also provides.
"""

import numpy as np
import scipy.signal
import scipy.special
import torch

from torch_utils import misc, persistence
from torch_utils.ops import bias_act, conv2d_gradfix, filtered_lrelu

# ----------------------------------------------------------------------------

@misc.profiled_function
def modulated_conv2d(x, w, s, demodulate=True, padding=0, input_gain=None):
    """Style-modulated convolution with one weight set per sample (StyleGAN3 variant).

    Parameters
    ----------
    x : Tensor [N, I, H, W]
        Input activations (float32, or float16 on CUDA).
    w : Tensor [O, I, kh, kw]
        Shared float32 weight.
    s : Tensor [N, I]
        Per-sample styles (float32).
    demodulate : bool
        Normalise each sample's output channels to unit expected magnitude.
    padding : int or [int, int]
        Zero padding of the correlation, as in ``torch.nn.functional.conv2d``.
    input_gain : Tensor broadcastable to [N, I], optional
        Per-input-channel scale, applied after demodulation so that it survives it.

    Returns
    -------
    Tensor [N, O, H', W'] in ``x.dtype``. The weights are prepared in float32 and cast only at
    the convolution.
    """
    batch_size = int(x.shape[0])
    out_channels, in_channels, kh, kw = w.shape
    misc.assert_shape(w, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(s, [batch_size, in_channels])

    # Pre-normalise weights and styles: demodulation cancels both, but without this their magnitudes
    # can overflow float16 at the convolution.
    if demodulate:
        w = w * w.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()

    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4) # [NOIkk]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() # [NO]
        w = w * d.unsqueeze(2).unsqueeze(3).unsqueeze(4)

    # The input gain scales the input channels after demodulation, so it is not normalised away.
    if input_gain is not None:
        input_gain = input_gain.expand(batch_size, in_channels) # [NI]
        w = w * input_gain.unsqueeze(1).unsqueeze(3).unsqueeze(4)

    # One grouped convolution for the whole batch: sample n is group n.
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_gradfix.conv2d(input=x, weight=w.to(x.dtype), padding=padding, groups=batch_size)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    return x

# ----------------------------------------------------------------------------

def design_lowpass_filter(numtaps, cutoff, width, fs, radial=False):
    """Kaiser-windowed low-pass FIR filter, designed in float64 and returned as float32.

    Returns None for ``numtaps == 1`` (identity), a separable 1-D filter of length ``numtaps``
    (equal to ``scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)``), or, with ``radial=True``,
    a circularly symmetric 2-D ``[numtaps, numtaps]`` filter (jinc windowed by a separable Kaiser).
    """
    assert numtaps >= 1
    if numtaps == 1:
        return None

    if not radial:
        f = scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)

    # Ideal circular low-pass (jinc); numtaps is even, so r is never 0.
    x = (np.arange(numtaps, dtype=np.float64) - (numtaps - 1) / 2) / fs
    r = np.hypot(x[:, None], x[None, :])
    f = scipy.special.j1(2 * np.pi * cutoff * r) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f = f * np.outer(window, window)
    f = f / np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)

# ----------------------------------------------------------------------------

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate: ``act(x @ (weight * gain).T + bias * lr)``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    activation : str
        Any ``bias_act`` activation name ('linear', 'lrelu', ...).
    bias : bool
        Whether to learn an additive bias (otherwise ``self.bias`` is None).
    lr_multiplier : float
        Learning-rate multiplier; parameters are stored divided by it and scaled back at runtime.
    weight_init : float
        Standard deviation of the initial weight (0 still draws, to keep the RNG order).
    bias_init : float or array-like [out_features]
        Initial bias value.
    """

    def __init__(self, in_features, out_features, activation='linear', bias=True, lr_multiplier=1, weight_init=1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        if bias:
            bias_init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
            self.bias = torch.nn.Parameter(torch.from_numpy(bias_init / lr_multiplier))
        else:
            self.bias = None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            x = torch.addmm(b.unsqueeze(0), x, w.t())
        else:
            x = x.matmul(w.t())
            x = bias_act.bias_act(x, b, act=self.activation)
        return x

    def extra_repr(self):
        return f'{self.in_features}->{self.out_features}, activation={self.activation}'

# ----------------------------------------------------------------------------

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """Maps (z, c) to ``num_ws`` copies of w, optionally truncated towards the running mean ``w_avg``.

    Parameters
    ----------
    z_dim, c_dim, w_dim : int
        Widths of the latent z, the label c (0 for unconditional) and the intermediate latent w.
    num_ws : int
        Number of copies of w to output (one per synthesis layer, plus the input).
    num_layers : int
        Number of lrelu dense layers.
    lr_multiplier : float
        Learning-rate multiplier of those layers.
    w_avg_beta : float
        Decay of the ``w_avg`` moving average (updated only when ``update_emas=True``).
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        self.embed = FullyConnectedLayer(self.c_dim, self.w_dim) if self.c_dim > 0 else None
        features = [self.z_dim + (self.w_dim if self.c_dim > 0 else 0)] + [self.w_dim] * self.num_layers
        for idx in range(self.num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation='lrelu', lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        misc.assert_shape(z, [None, self.z_dim])
        if truncation_cutoff is None:
            truncation_cutoff = self.num_ws

        # Both inputs are scaled to unit second moment, so the label carries as much weight as z.
        x = z.to(torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        if self.c_dim > 0:
            misc.assert_shape(c, [z.shape[0], self.c_dim])
            y = self.embed(c.to(torch.float32))
            y = y * (y.square().mean(1, keepdim=True) + 1e-8).rsqrt()
            x = torch.cat([x, y], dim=1)

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        # Broadcast (a real copy: truncation below writes into a slice) and truncate.
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self):
        return f'z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}'

# ----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisInput(torch.nn.Module):
    """Fourier-feature input whose rotation and translation are predicted from w.

    The ``transform`` buffer (identity by default) holds the *inverse* of an extra user transform
    of the image plane: writing the inverse of a translation/rotation into it translates/rotates
    the generated image.

    Parameters
    ----------
    w_dim : int
        Width of w.
    channels : int
        Number of Fourier features (output channels).
    size : int or [int, int]
        Output size (width, height) in samples, margin included.
    sampling_rate : float
        Samples per unit length of the output grid.
    bandwidth : float
        Radius of the disc the frequencies are drawn in (the first layer's cutoff).
    """

    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = np.broadcast_to(np.asarray(size, dtype=np.int64), [2]).copy()
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth

        # Random frequencies inside a disc of radius `bandwidth`, denser towards the centre.
        freqs = torch.randn([self.channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25))
        freqs = freqs * bandwidth
        phases = torch.rand([self.channels]) - 0.5

        self.weight = torch.nn.Parameter(torch.randn([self.channels, self.channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer('transform', torch.eye(3, 3)) # Identity until a caller writes an inverse transform.
        self.register_buffer('freqs', freqs)
        self.register_buffer('phases', phases)

    def forward(self, w):
        batch_size = w.shape[0]
        transforms = self.transform.unsqueeze(0) # [1, 3, 3]
        freqs = self.freqs.unsqueeze(0)          # [1, C, 2]
        phases = self.phases.unsqueeze(0)        # [1, C]

        # Rotation (t0, t1) and translation (t2, t3) from w, normalised so that the rotation is unitary.
        t = self.affine(w) # [N, 4]
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat([batch_size, 1, 1])
        m_r[:, 0, 0] = t[:, 0]
        m_r[:, 0, 1] = -t[:, 1]
        m_r[:, 1, 0] = t[:, 1]
        m_r[:, 1, 1] = t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat([batch_size, 1, 1])
        m_t[:, 0, 2] = -t[:, 2]
        m_t[:, 1, 2] = -t[:, 3]
        transforms = m_r @ m_t @ transforms # [N, 3, 3]

        # Move the transform into the phases and frequencies of the Fourier features.
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2) # [N, C]
        freqs = freqs @ transforms[:, :2, :2]                        # [N, C, 2]

        # Fade out frequencies that the rotation pushed close to the Nyquist limit.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        # Sample coordinates of the pixel centres, in units of 1 / sampling_rate.
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grids = torch.nn.functional.affine_grid(theta.unsqueeze(0), [1, 1, self.size[1], self.size[0]], align_corners=False) # [1, H, W, 2]

        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3) # [N, H, W, C]
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)

        # Channel mixing; the weight is divided (not multiplied by a reciprocal) for rounding parity.
        weight = self.weight / np.sqrt(self.channels)
        x = x @ weight.t()

        x = x.permute(0, 3, 1, 2) # [N, C, H, W]
        misc.assert_shape(x, [batch_size, self.channels, int(self.size[1]), int(self.size[0])])
        return x

    def extra_repr(self):
        return f'channels={self.channels}, size={self.size.tolist()}, sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}'

# ----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated convolution, then leaky ReLU at a raised sampling rate between low-pass filters.

    The ToRGB layer (``is_torgb``) is a 1x1 non-demodulated modulated convolution plus bias and clamp.

    Parameters
    ----------
    w_dim : int
        Width of w.
    is_torgb : bool
        Whether this is the final ToRGB layer.
    is_critically_sampled : bool
        Whether the output cutoff sits at the output Nyquist frequency (the last layers); such
        layers never use a radial down filter.
    use_fp16 : bool
        Run in float16 (only ever on CUDA, and not with ``force_fp32``).
    in_channels, out_channels : int
        Channel counts.
    in_size, out_size : int or [int, int]
        Input and output sizes (width, height), margins included.
    in_sampling_rate, out_sampling_rate : int
        Input and output sampling rates.
    in_cutoff, out_cutoff : float
        Cutoff frequencies of the up and down filters.
    in_half_width, out_half_width : float
        Transition-band half widths of the up and down filters.
    conv_kernel : int
        Kernel size (ToRGB always uses 1).
    filter_size : int
        Taps of a resampling filter per unit of resampling factor.
    lrelu_upsampling : int
        How much higher than max(in, out) the nonlinearity's sampling rate is.
    use_radial_filters : bool
        Use a 2-D radially symmetric down filter where allowed (StyleGAN3-R).
    conv_clamp : float or None
        Clamp of the activations (applied at the raised rate).
    magnitude_ema_beta : float
        Decay of the input-magnitude moving average ``magnitude_ema``.
    """

    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16,
        in_channels, out_channels, in_size, out_size, in_sampling_rate, out_sampling_rate,
        in_cutoff, out_cutoff, in_half_width, out_half_width,
        conv_kernel=3, filter_size=6, lrelu_upsampling=2, use_radial_filters=False, conv_clamp=256, magnitude_ema_beta=0.999,
    ):
        super().__init__()
        self.w_dim = w_dim
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size, dtype=np.int64), [2]).copy()
        self.out_size = np.broadcast_to(np.asarray(out_size, dtype=np.int64), [2]).copy()
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        # Learnable parameters (draw order: affine.weight, then weight).
        self.affine = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = torch.nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer('magnitude_ema', torch.ones([]))

        # Upsampling filter (None = identity, absent from the state_dict).
        self.up_factor = int(np.rint(self.tmp_sampling_rate / self.in_sampling_rate))
        assert self.in_sampling_rate * self.up_factor == self.tmp_sampling_rate
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        self.register_buffer('up_filter', design_lowpass_filter(
            numtaps=self.up_taps, cutoff=self.in_cutoff, width=self.in_half_width * 2, fs=self.tmp_sampling_rate))

        # Downsampling filter; radial only where the layer is not critically sampled.
        self.down_factor = int(np.rint(self.tmp_sampling_rate / self.out_sampling_rate))
        assert self.out_sampling_rate * self.down_factor == self.tmp_sampling_rate
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        self.down_radial = use_radial_filters and not self.is_critically_sampled
        self.register_buffer('down_filter', design_lowpass_filter(
            numtaps=self.down_taps, cutoff=self.out_cutoff, width=self.out_half_width * 2, fs=self.tmp_sampling_rate, radial=self.down_radial))

        # Padding (negative = crop) that turns the grown conv output into exactly out_size samples;
        # the extra `up` in pad_lo keeps the sample grid centred after zero insertion.
        pad_total = (self.out_size - 1) * self.down_factor + 1 - (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total = pad_total + self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    # Kept reachable under NVlabs' name as well.
    design_lowpass_filter = staticmethod(design_lowpass_filter)

    def forward(self, x, w, noise_mode='random', force_fp32=False, update_emas=False):
        assert noise_mode in ['random', 'const', 'none'] # Unused: StyleGAN3 has no noise inputs.
        misc.assert_shape(x, [None, self.in_channels, int(self.in_size[1]), int(self.in_size[0])])
        misc.assert_shape(w, [x.shape[0], self.w_dim])

        # The EMA is refreshed before this call uses it.
        if update_emas:
            magnitude_cur = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude_cur.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()

        styles = self.affine(w)
        if self.is_torgb:
            weight_gain = 1 / np.sqrt(self.in_channels * (self.conv_kernel ** 2))
            styles = styles * weight_gain

        # float16 only on CUDA: the CPU reference ops would be slow and NVlabs never uses it there.
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == 'cuda') else torch.float32
        x = modulated_conv2d(x=x.to(dtype), w=self.weight, s=styles,
            padding=self.conv_kernel - 1, demodulate=(not self.is_torgb), input_gain=input_gain)

        gain = 1 if self.is_torgb else np.sqrt(2)
        slope = 1 if self.is_torgb else 0.2
        x = filtered_lrelu.filtered_lrelu(x=x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype),
            up=self.up_factor, down=self.down_factor, padding=self.padding, gain=gain, slope=slope, clamp=self.conv_clamp)

        misc.assert_shape(x, [None, self.out_channels, int(self.out_size[1]), int(self.out_size[0])])
        assert x.dtype == dtype
        return x

    def extra_repr(self):
        return (f'{self.in_channels}->{self.out_channels} ch, {self.in_size[0]}->{self.out_size[0]} px, '
            f'rate {self.in_sampling_rate}->{self.out_sampling_rate} via {self.tmp_sampling_rate}, '
            f'cutoff {self.in_cutoff:g}->{self.out_cutoff:g}, torgb={self.is_torgb}, fp16={bool(self.use_fp16)}')

# ----------------------------------------------------------------------------

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """Fourier-feature input, ``num_layers`` synthesis layers and a ToRGB layer.

    Layer ``i`` is stored as attribute ``L{i}_{out_size}_{out_channels}``; ``layer_names`` lists them.

    Parameters
    ----------
    w_dim, img_resolution, img_channels : int
        Width of w, output resolution and number of image channels.
    channel_base, channel_max : int
        Layer ``i`` has ``rint(min(channel_base / 2 / cutoff_i, channel_max))`` channels.
    num_layers : int
        Number of synthesis layers, not counting the input and ToRGB.
    num_critical : int
        Number of critically sampled layers at the end.
    first_cutoff, first_stopband : float
        Cutoff and minimum stopband of the first layer.
    last_stopband_rel : float
        Minimum stopband of the last layer relative to its cutoff (img_resolution / 2).
    margin_size : int
        Extra samples computed on each side of the image in the non-final layers.
    output_scale : float
        Factor applied to the ToRGB output.
    num_fp16_res : int
        Layers whose sampling rate is among the ``num_fp16_res`` highest run in float16 on CUDA.
    **layer_kwargs
        Passed to every SynthesisLayer (conv_kernel, use_radial_filters, conv_clamp, ...).
    """

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
        num_layers=14, num_critical=2, first_cutoff=2, first_stopband=2**2.1, last_stopband_rel=2**0.3,
        margin_size=10, output_scale=0.25, num_fp16_res=4, **layer_kwargs,
    ):
        super().__init__()
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        # Per-layer filter schedule (float64): cutoffs and stopbands grow geometrically up to the
        # first critically sampled layer, then stay at the output Nyquist band.
        last_cutoff = self.img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(self.num_layers + 1) / (self.num_layers - self.num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        # Smallest power of two that holds the stopband, capped at the image resolution.
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, self.img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + self.margin_size * 2
        sizes[-2:] = self.img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = self.img_channels

        self.input = SynthesisInput(
            w_dim=self.w_dim, channels=int(channels[0]), size=int(sizes[0]),
            sampling_rate=sampling_rates[0], bandwidth=cutoffs[0])
        self.layer_names = []
        for idx in range(self.num_layers + 1):
            prev = max(idx - 1, 0)
            is_torgb = (idx == self.num_layers)
            is_critically_sampled = (idx >= self.num_layers - self.num_critical)
            use_fp16 = (sampling_rates[idx] * (2 ** self.num_fp16_res) > self.img_resolution)
            layer = SynthesisLayer(
                w_dim=self.w_dim, is_torgb=is_torgb, is_critically_sampled=is_critically_sampled, use_fp16=use_fp16,
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx],
                **layer_kwargs)
            name = f'L{idx}_{layer.out_size[0]}_{layer.out_channels}'
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32).unbind(dim=1)

        # ws[0] drives the input transform; layer i gets ws[i + 1] (the last one goes to ToRGB).
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, **layer_kwargs)
        if self.output_scale != 1:
            x = x * self.output_scale

        misc.assert_shape(x, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x = x.to(torch.float32)
        return x

    def extra_repr(self):
        return f'num_ws={self.num_ws}, img_resolution={self.img_resolution}, num_layers={self.num_layers}, num_critical={self.num_critical}'

# ----------------------------------------------------------------------------

@persistence.persistent_class
class Generator(torch.nn.Module):
    """StyleGAN3 generator: ``G(z, c) = synthesis(mapping(z, c))``.

    Parameters
    ----------
    z_dim, c_dim, w_dim : int
        Widths of z, of the label c (0 for unconditional) and of w.
    img_resolution, img_channels : int
        Output image resolution and channels.
    mapping_kwargs : dict, optional
        Passed to MappingNetwork.
    **synthesis_kwargs
        Passed to SynthesisNetwork, flat (its own and SynthesisLayer's arguments), as NVlabs' stylegan3 does.

    ``forward(z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs)``
    returns float32 images in NCHW, roughly in [-1, 1].
    """

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        img = self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        return img

# ----------------------------------------------------------------------------
