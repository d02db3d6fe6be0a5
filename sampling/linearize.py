"""Forward-mode derivatives of a StyleGAN2 generator written out layer by layer (a "linearised forward").

``linearize_stylegan2`` runs the generator once for a batch of latents ``z [B, d]`` and returns its output
and a linear function ``jvp(dz [n, B, d]) -> [n, B, ...]``: ``n`` tangents per latent are pushed through the
network as one ordinary batch of ``n * B`` rows. Each layer's tangent rule is plain torch code with the
primal quantities it needs computed once (styles, demodulation coefficients, activation slopes):

* modulated convolution (unfused, as ``make_space_fn`` runs it): ``y = conv(x * s) * d``, so
  ``dy = conv(dx * s + x * ds) * d + conv(x * s) * dd`` with ``dd_o = -d_o^3 sum_i s_i ds_i sum_k W_oik^2``;
* bias + activation + gain + clamp: ``dy = dx * slope`` (``bias_act.bias_act_with_slope``), folded with the
  demodulation into two passes over the tangents; ToRGB's 1x1 convolution as matrix products;
* fully connected layers, the normalisation of ``z``, truncation, FIR upsampling: their own linear maps.

Under ``torch.func.jvp`` + ``vmap`` the same derivatives cost every elementwise op a Python-level batching and
forward-mode rule per call, and the primal is recomputed for every chunk of tangents; here the convolutions
run once per chunk on the merged batch and the primal runs once. It is the derivative of exactly the map
``sampling.volume.make_space_fn`` builds (same operations for the primal, so the same values bit for bit).
"""

import numpy as np
import torch

from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

# ----------------------------------------------------------------------------


def supports(G, noise_mode):
    """Whether :func:`linearize_stylegan2` handles ``G`` (a StyleGAN2 of ``training.networks_stylegan2``)."""
    from training import networks_stylegan2 as n2
    if noise_mode not in ('const', 'none'):
        return False
    if not isinstance(getattr(G, 'mapping', None), n2.MappingNetwork):
        return False
    if not isinstance(getattr(G, 'synthesis', None), n2.SynthesisNetwork):
        return False
    for module in list(G.mapping.modules()) + list(G.synthesis.modules()):
        act = getattr(module, 'activation', None)
        if act is not None and act not in bias_act.PIECEWISE_LINEAR:
            return False
        if isinstance(module, n2.ToRGBLayer) and tuple(module.weight.shape[2:]) != (1, 1):
            return False                                          # _torgb writes the 1x1 convolution as a product
    return all(type(getattr(G.synthesis, f'b{res}')) is n2.SynthesisBlock for res in G.synthesis.block_resolutions)


def _merge(t):
    """``[n, B, ...] -> [n * B, ...]`` (a view)."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _split(t, n):
    return t.reshape(n, t.shape[0] // n, *t.shape[1:])


def _channels(t):
    """Per-(row, channel) values ``[..., C]`` as ``[..., C, 1, 1]`` to scale feature maps."""
    return t[..., None, None]

# ----------------------------------------------------------------------------
# Layers: each returns the primal output and the layer's tangent map.


def _fc(layer, x):
    """FullyConnectedLayer: ``(y, tangent)`` with ``tangent(dx [n, B, in]) -> [n, B, out]``."""
    w = layer.weight.to(x.dtype) * layer.weight_gain
    b = layer.bias
    if b is not None:
        b = b.to(x.dtype)
        if layer.bias_gain != 1:
            b = b * layer.bias_gain
    wt = w.t()
    if layer.activation == 'linear' and b is not None:
        return torch.addmm(b.unsqueeze(0), x, wt), lambda dx: dx @ wt
    y, slope = bias_act.bias_act_with_slope(x.matmul(wt), b, act=layer.activation)
    return y, lambda dx: (dx @ wt).mul_(slope)


def _normalize_2nd_moment(x, eps=1e-8):
    """``x * r`` with ``r = (mean(x^2) + eps)^-1/2``; ``d(x r) = dx r - x r^3 mean(x dx)``."""
    r = (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()

    def tangent(dx):
        return (dx * r).sub_(x * r.pow(3) * (x * dx).mean(dim=-1, keepdim=True))
    return x * r, tangent


def _modulated_layer(layer, x, w, noise_mode, gain=1):
    """SynthesisLayer with ``fused_modconv=False``: ``(y, tangent(dx or None, dw) -> dy)``."""
    s, styles_tangent = _fc(layer.affine, w)
    weight = layer.weight.to(x.dtype)
    wsq = weight.square().sum(dim=[2, 3]).T                        # [I, O]
    dcoefs = (s.square() @ wsq + 1e-8).rsqrt()                    # [B, O]
    noise = None
    if layer.use_noise and noise_mode == 'const':
        noise = layer.noise_const * layer.noise_strength
    conv = dict(w=weight, f=layer.resample_filter, up=layer.up, padding=layer.padding, flip_weight=(layer.up == 1))
    yc = conv2d_resample.conv2d_resample(x=x * _channels(s), **conv)
    y = yc * _channels(dcoefs) if noise is None else torch.addcmul(noise.to(x.dtype), yc, _channels(dcoefs))
    act_clamp = layer.conv_clamp * gain if layer.conv_clamp is not None else None
    y, slope = bias_act.bias_act_with_slope(y, layer.bias.to(x.dtype), act=layer.activation,
                                            gain=layer.act_gain * gain, clamp=act_clamp)
    # d(act(yc * d)) = (dyc * d + yc * dd) * slope = dyc * (d * slope) + (yc * slope) * dd: two passes over the
    # tangents instead of three.
    scale_dyc = _channels(dcoefs) * slope
    scale_dd = yc * slope

    def tangent(dx, dw):
        ds = styles_tangent(dw)                                   # [n, B, I]
        n = ds.shape[0]
        dmod = x * _channels(ds)
        if dx is not None:
            dmod.addcmul_(dx, _channels(s))
        dyc = _split(conv2d_resample.conv2d_resample(x=_merge(dmod), **conv), n)
        ddcoefs = ((s * ds) @ wsq).mul_(dcoefs.pow(3)).neg_()     # [n, B, O]
        return dyc.mul_(scale_dyc).addcmul_(scale_dd, _channels(ddcoefs))
    return y, tangent


def _torgb(layer, x, w):
    """ToRGBLayer (no demodulation): ``(y, tangent(dx, dw) -> dy)``."""
    s_raw, styles_tangent = _fc(layer.affine, w)
    s = s_raw * layer.weight_gain
    weight = layer.weight.to(x.dtype)
    yc = conv2d_resample.conv2d_resample(x=x * _channels(s), w=weight)
    y, slope = bias_act.bias_act_with_slope(yc, layer.bias.to(x.dtype), clamp=layer.conv_clamp)

    # The 1x1 convolution as matrix products: conv(dx * s + x * ds) = (W s_b) dx + (W ds) x, per row, without
    # the two passes over dx that form its input.
    w2 = weight[:, :, 0, 0]                                       # [O, I]
    w_s = w2 * s.unsqueeze(1)                                     # [B, O, I]
    B, _, H, W = x.shape
    x_flat = x.reshape(B, -1, H * W)                              # [B, I, HW]

    def tangent(dx, dw):
        ds = styles_tangent(dw) * layer.weight_gain                # [n, B, I]
        n = ds.shape[0]
        dy = torch.matmul(w_s, dx.reshape(n, B, -1, H * W))        # [n, B, O, HW]
        w_ds = (w2 * ds.unsqueeze(-2)).transpose(0, 1).reshape(B, -1, w2.shape[1])   # [B, n * O, I]
        dy += torch.bmm(w_ds, x_flat).reshape(B, n, -1, H * W).transpose(0, 1)
        return dy.reshape(n, B, -1, H, W).mul_(slope)
    return y, tangent


def _conv2d_layer(layer, x, gain=1):
    """Conv2dLayer (the resnet skip): ``(y, tangent(dx) -> dy)``."""
    w = (layer.weight * layer.weight_gain).to(x.dtype)
    b = layer.bias.to(x.dtype) if layer.bias is not None else None
    conv = dict(w=w, f=layer.resample_filter, up=layer.up, down=layer.down, padding=layer.padding,
                flip_weight=(layer.up == 1))
    act_clamp = layer.conv_clamp * gain if layer.conv_clamp is not None else None
    y, slope = bias_act.bias_act_with_slope(conv2d_resample.conv2d_resample(x=x, **conv), b, act=layer.activation,
                                            gain=layer.act_gain * gain, clamp=act_clamp)

    def tangent(dx):
        return _split(conv2d_resample.conv2d_resample(x=_merge(dx), **conv), dx.shape[0]).mul_(slope)
    return y, tangent


def _block(block, x, img, w, noise_mode):
    """SynthesisBlock in float32: ``(x, img, tangent(dx, dimg, dw) -> (dx, dimg))``."""
    steps = []
    if block.in_channels == 0:
        x = block.const.to(torch.float32).unsqueeze(0).repeat([w.shape[0], 1, 1, 1])
        x, t1 = _modulated_layer(block.conv1, x, w, noise_mode)
        steps.append(lambda dx, dw: t1(None, dw))
    elif block.architecture == 'resnet':
        y, ts = _conv2d_layer(block.skip, x, gain=np.sqrt(0.5))
        x, t0 = _modulated_layer(block.conv0, x, w, noise_mode)
        x, t1 = _modulated_layer(block.conv1, x, w, noise_mode, gain=np.sqrt(0.5))
        x = y.add_(x)
        steps.append(lambda dx, dw: ts(dx).add_(t1(t0(dx, dw), dw)))
    else:
        x, t0 = _modulated_layer(block.conv0, x, w, noise_mode)
        x, t1 = _modulated_layer(block.conv1, x, w, noise_mode)
        steps.append(lambda dx, dw: t1(t0(dx, dw), dw))
    if img is not None:
        img = upfirdn2d.upsample2d(img, block.resample_filter)
    trgb = None
    if block.is_last or block.architecture == 'skip':
        y, trgb = _torgb(block.torgb, x, w)
        img = img.add_(y) if img is not None else y

    def tangent(dx, dimg, dw):
        for step in steps:
            dx = step(dx, dw)
        if dimg is not None:
            dimg = _split(upfirdn2d.upsample2d(_merge(dimg), block.resample_filter), dimg.shape[0])
        if trgb is not None:
            dy = trgb(dx, dw)
            dimg = dimg.add_(dy) if dimg is not None else dy
        return dx, dimg
    return x, img, tangent

# ----------------------------------------------------------------------------


def linearize_stylegan2(G, z, c, space='pixel', truncation_psi=1, noise_mode='const', post=None):
    """Run ``G`` on ``z [B, d]`` (labels ``c [B, c_dim]``) and return ``(out, jvp)``.

    ``out`` is ``ws[:, 0]`` ('style') or the image ('pixel'), passed through ``post`` (a linear map of the
    image, e.g. a resize) if given; ``jvp(dz, chunk_size=None)`` maps tangents ``[n, B, d]`` to
    ``[n, B, *out.shape[1:]]``, pushing ``chunk_size`` of them at a time through the synthesis network;
    ``jvp.row_bytes`` is the size of the largest feature map of one latent (to size the chunks).
    Everything runs in float32 (as ``make_space_fn`` asks of the network).
    """
    assert space in ('pixel', 'style')
    assert supports(G, noise_mode)
    mapping, synthesis = G.mapping, G.synthesis
    x, t_norm = _normalize_2nd_moment(z.to(torch.float32))
    embed_dim = 0
    if mapping.c_dim > 0:
        e, _ = _normalize_2nd_moment(_fc(mapping.embed, c.to(torch.float32))[0])   # no tangent: c is fixed
        embed_dim = e.shape[1]
        x = torch.cat([x, e], dim=1)
    fc_tangents = []
    for idx in range(mapping.num_layers):
        x, t = _fc(getattr(mapping, f'fc{idx}'), x)
        fc_tangents.append(t)
    if truncation_psi != 1:
        x = mapping.w_avg.lerp(x, truncation_psi)
    w = x

    def mapping_tangent(dz):
        dx = t_norm(dz.to(torch.float32))
        if embed_dim:
            dx = torch.cat([dx, dx.new_zeros([*dx.shape[:-1], embed_dim])], dim=-1)
        for t in fc_tangents:
            dx = t(dx)
        return dx * truncation_psi if truncation_psi != 1 else dx

    if space == 'style':
        return w, lambda dz, chunk_size=None: mapping_tangent(dz)

    img = None
    x = None
    block_tangents = []
    row_bytes = 0                                                 # the largest feature map of one latent
    for res in synthesis.block_resolutions:
        x, img, t = _block(getattr(synthesis, f'b{res}'), x, img, w, noise_mode)
        block_tangents.append(t)
        row_bytes = max(row_bytes, x[0].numel() * x.element_size())
    out = img if post is None else post(img)

    def synthesis_tangent(dw):
        dx = dimg = None
        for t in block_tangents:
            dx, dimg = t(dx, dimg, dw)
        if post is not None:
            dimg = _split(post(_merge(dimg)), dw.shape[0])
        return dimg

    def jvp(dz, chunk_size=None):
        # The mapping's matrix products gain from the whole batch of tangents at once; the synthesis runs
        # chunk_size tangents at a time (activation memory, CPU caches).
        dw = mapping_tangent(dz)
        n = dz.shape[0]
        chunk_size = n if chunk_size is None else chunk_size
        chunk_size = -(-n // -(-n // chunk_size))                 # equal chunks: 10 rows in 5 + 5, not 8 + 2
        return torch.cat([synthesis_tangent(dw[i:i + chunk_size]) for i in range(0, n, chunk_size)])
    jvp.row_bytes = row_bytes
    return out, jvp
